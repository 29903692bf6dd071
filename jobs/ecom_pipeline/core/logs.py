"""Structured logs: one JSON object a line, so CloudWatch Logs Insights can filter on any field."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_context: dict[str, Any] = {}
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context,
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO", *, path: Path | None = None) -> None:
    """Send this process's logs as JSON lines to stderr, or to a file (one handler at a time)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(old)
        old.close()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("py4j", "botocore", "boto3", "urllib3", "great_expectations", "werkzeug", "moto"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a line is logged (a Lambda's log stream; a
    caller's redirection)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class FieldsAdapter(logging.LoggerAdapter):
    """Adds its fields to every line, next to the fields each call passes as ``extra``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def stdout_logger(name: str) -> logging.Logger:
    """A logger of its own that writes JSON lines to stdout (the Lambda's), whatever the
    process's other logging does."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def bind(**fields: Any) -> None:
    """Add fields (batch_id, dataset, job, ...) to every later log line of this process."""
    _context.update({k: v for k, v in fields.items() if v is not None})


def context() -> dict[str, Any]:
    """The fields bound so far (a copy)."""
    return dict(_context)


def unbind(*names: str) -> None:
    for name in names:
        _context.pop(name, None)


@contextmanager
def isolated_context() -> Iterator[None]:
    """Fields bound inside stay inside: a job run in this process (run-local's tasks) does not
    leave its batch_id or dataset on the lines logged after it."""
    saved = dict(_context)
    try:
        yield
    finally:
        _context.clear()
        _context.update(saved)


class LineLogger(io.TextIOBase):
    """A text stream that logs each line written to it, so a job's printed output (its report
    JSON, its error messages) stays one JSON object a line in the log it is redirected to.

    Logging itself may write to the redirected stream (a handler reporting its own error on
    sys.stderr): such a nested write goes to the process's real stderr instead of looping."""

    def __init__(self, logger: logging.Logger, stream: str) -> None:
        self._logger = logger
        self._stream = stream
        self._pending = ""
        self._writing = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if getattr(self._writing, "active", False):
            sys.__stderr__.write(text)
            return len(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        line, self._pending = self._pending, ""
        self._log(line)

    def _log(self, line: str) -> None:
        if not line:
            return
        self._writing.active = True
        try:
            self._logger.info(line, extra={"event": "task_output", "stream": self._stream})
        finally:
            self._writing.active = False


@contextmanager
def step(logger: logging.Logger, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log a step's start and end with its duration; the yielded dict adds fields to the end."""
    extra: dict[str, Any] = {}
    started = time.perf_counter()
    logger.info("%s started", name, extra={"step": name, **fields})
    try:
        yield extra
    except BaseException:
        # The traceback is logged once, by whoever handles the exception.
        logger.error(  # noqa: TRY400
            "%s failed",
            name,
            extra={"step": name, "duration_s": round(time.perf_counter() - started, 3), **fields},
        )
        raise
    logger.info(
        "%s finished",
        name,
        extra={
            "step": name,
            "duration_s": round(time.perf_counter() - started, 3),
            **fields,
            **extra,
        },
    )


METRICS_NAMESPACE = "EcomPipeline"


def metric_name(step_name: str) -> str:
    """The metric of a step's seconds: "write KPIs" -> "WriteKpisSeconds"."""
    return "".join(part.title() for part in step_name.split()) + "Seconds"


def emit_metrics(
    logger: logging.Logger,
    dimensions: dict[str, str],
    values: dict[str, float],
    units: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log one line in CloudWatch Embedded Metric Format: CloudWatch turns ``values`` into
    metrics of :data:`METRICS_NAMESPACE` with ``dimensions``, and the line stays queryable as a
    log (batch_id and the other context fields ride along). Returns the line's fields."""
    units = units or {}
    fields: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": METRICS_NAMESPACE,
                    "Dimensions": [sorted(dimensions)],
                    "Metrics": [
                        {"Name": name, "Unit": units.get(name, "Count")} for name in values
                    ],
                }
            ],
        },
        **dimensions,
        **values,
    }
    logger.info("metrics", extra=fields)
    return fields
