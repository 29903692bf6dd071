import io
import sys
import threading

from ecom_pipeline.local.thread_output import redirect_thread_output


def test_overlapping_redirections_in_two_threads_keep_each_threads_output_apart(capsys):
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    first, second = io.StringIO(), io.StringIO()

    def early() -> None:  # redirects first and leaves first, while the other still prints
        with redirect_thread_output(first):
            first_in.set()
            second_in.wait()
            print("from the first")
        first_out.set()

    def late() -> None:
        first_in.wait()
        with redirect_thread_output(second, second):
            second_in.set()
            first_out.wait()
            print("from the second")
            print("an error", file=sys.stderr)

    threads = [threading.Thread(target=early), threading.Thread(target=late)]
    for thread in threads:
        thread.start()
    first_in.wait()
    print("from the main thread")
    for thread in threads:
        thread.join()
    print("after both")

    assert first.getvalue() == "from the first\n"
    assert second.getvalue() == "from the second\nan error\n"
    assert capsys.readouterr().out == "from the main thread\nafter both\n"


def test_the_original_streams_come_back_after_the_last_redirection():
    before = sys.stdout, sys.stderr
    with redirect_thread_output(io.StringIO()):
        assert sys.stdout is not before[0]
    assert (sys.stdout, sys.stderr) == before
