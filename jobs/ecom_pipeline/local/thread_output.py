"""Per-thread redirection of ``sys.stdout`` and ``sys.stderr``.

``contextlib.redirect_stdout`` swaps one process-wide attribute, so two threads that redirect at
overlapping times restore each other's stream: run-local delivering a marker event to the Lambda
handler while a task of a running execution prints its report sent that report to the terminal
instead of the run's log. Here, while any thread redirects, ``sys.stdout`` is a router that writes
to the redirecting thread's own target and to the original stream for every other thread.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_lock = threading.Lock()
_users = 0
_routers: list[_ThreadRouter] = []
_targets = threading.local()


class _ThreadRouter(io.TextIOBase):
    def __init__(self, name: str, original: TextIO) -> None:
        self._name = name
        self.original = original

    def _target(self) -> TextIO:
        return getattr(_targets, self._name, None) or self.original

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()


@contextmanager
def redirect_thread_output(stdout: TextIO, stderr: TextIO | None = None) -> Iterator[None]:
    """Send this thread's ``print`` output to ``stdout`` (and its stderr to ``stderr``) for the
    block; other threads keep writing where they did."""
    global _users
    with _lock:
        if _users == 0:
            _routers[:] = [_ThreadRouter("stdout", sys.stdout), _ThreadRouter("stderr", sys.stderr)]
            sys.stdout, sys.stderr = _routers
        _users += 1
    saved = getattr(_targets, "stdout", None), getattr(_targets, "stderr", None)
    _targets.stdout = stdout
    _targets.stderr = stderr if stderr is not None else saved[1]
    try:
        yield
    finally:
        _targets.stdout, _targets.stderr = saved
        with _lock:
            _users -= 1
            if _users == 0:
                # Put back only what is still ours (a caller may have redirected since).
                if sys.stdout is _routers[0]:
                    sys.stdout = _routers[0].original
                if sys.stderr is _routers[1]:
                    sys.stderr = _routers[1].original
                _routers.clear()
