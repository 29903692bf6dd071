"""Structured logs: one JSON object a line with the bound context; metrics in CloudWatch EMF."""

from __future__ import annotations

import contextlib
import json
import logging
import sys

import pytest

from ecom_pipeline.cli import main
from ecom_pipeline.core import logs


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "log.jsonl"
    logs.configure(path=path)
    yield path
    logs.unbind("batch_id", "execution_id")
    logs.configure()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_is_json_with_the_bound_context(log_file):
    logs.bind(batch_id="b7", execution_id="arn:exec")
    logger = logging.getLogger("ecom_pipeline.test")
    with logs.step(logger, "read", files=3) as fields:
        fields["rows"] = 10
    lines = _lines(log_file)
    assert [line["message"] for line in lines] == ["read started", "read finished"]
    assert all(line["batch_id"] == "b7" and line["execution_id"] == "arn:exec" for line in lines)
    assert lines[1]["rows"] == 10
    assert lines[1]["duration_s"] >= 0


def test_metrics_are_embedded_metric_format(log_file):
    logs.bind(batch_id="b8")
    logs.emit_metrics(
        logging.getLogger("ecom_pipeline.test"),
        {"job": "validate", "dataset": "orders"},
        {"RowsRead": 9000, "ValidationSeconds": 4.2},
        {"ValidationSeconds": "Seconds"},
    )
    (line,) = _lines(log_file)
    directive = line["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == logs.METRICS_NAMESPACE
    assert directive["Dimensions"] == [["dataset", "job"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "RowsRead": "Count",
        "ValidationSeconds": "Seconds",
    }
    # EMF reads dimension and metric values from the same object's top level
    assert (line["job"], line["dataset"], line["RowsRead"]) == ("validate", "orders", 9000)
    assert isinstance(line["_aws"]["Timestamp"], int)
    assert line["batch_id"] == "b8"


def test_a_task_run_in_process_logs_to_the_callers_file_not_the_terminal(log_file, tmp_path, capfd):
    from ecom_pipeline.local.ecs_stand_in import InProcessRunner

    logs.unbind("command")  # left by earlier tests that ran the command in this process
    logs.bind(batch_id="outer")
    code = InProcessRunner(main)(
        ["generate", "--out", str(tmp_path / "sample"), "--orders", "3", "--parts", "1"], {}
    )
    logging.getLogger("ecom_pipeline.test").info("after the task")

    assert code == 0
    terminal = capfd.readouterr()
    assert terminal.out == ""
    assert terminal.err == ""
    lines = _lines(log_file)
    printed = [line for line in lines if line.get("event") == "task_output"]
    assert [(line["stream"], line["message"][:12]) for line in printed] == [
        ("stdout", "wrote 50 pro")
    ]
    assert all(line["command"] == "generate" for line in printed)
    # the task's bound fields do not outlive it; the caller's do
    assert lines[-1]["message"] == "after the task"
    assert lines[-1]["batch_id"] == "outer"
    assert "command" not in lines[-1]


def test_line_logger_logs_whole_lines_and_flushes_the_rest(log_file):
    stream = logs.LineLogger(logging.getLogger("ecom_pipeline.test"), "stdout")
    stream.write("one\ntw")
    stream.write("o\n\nthree")
    stream.flush()
    assert [line["message"] for line in _lines(log_file)] == ["one", "two", "three"]


def test_line_logger_sends_what_logging_writes_while_logging_to_the_real_stderr(capfd):
    class Reporter(logging.Handler):
        """A handler that writes to sys.stderr, as logging.Handler.handleError does."""

        def emit(self, record):
            sys.stderr.write(f"handler saw: {record.getMessage()}\n")

    logger = logging.getLogger("ecom_pipeline.test.reporting")
    logger.propagate = False
    logger.addHandler(Reporter())
    stream = logs.LineLogger(logger, "stderr")
    with contextlib.redirect_stderr(stream):
        stream.write("from the task\n")  # would recurse forever without the guard
    assert capfd.readouterr().err == "handler saw: from the task\n"
