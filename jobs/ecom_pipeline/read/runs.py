"""The history of batch runs, newest first: what ``ecom-pipeline runs`` prints.

A run's record is its notice, the one message the state machine published at its end (status,
stage, duration, rows, where the files are, the next step). It is read from one of two places:

- a run-local or demo export: ``notifications.jsonl``, every notice the run published;
- AWS: the state machine's executions, newest first; an ended execution's notice is read back
  from its history (the output of its ``ComposeNotice`` state), a running one shows the state it
  is in.

Turning notices into rows is pure; :func:`runs_from_executions` is the thin I/O around it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecom_pipeline.core.layout import NOTICES_EXPORT_FILE
from ecom_pipeline.core.planning import execution_name, replay_execution_name

COLUMNS = ("started", "batch", "run", "status", "stage", "seconds", "rows", "next")
# the state that composes the notice; its output holds it at $.outcome.notice
NOTICE_STATE = "ComposeNotice"
REPLAY_NAME = re.compile(r".+-replay-([0-9]+)")


class RunsError(ValueError):
    """Where the runs were to be read from has none (a folder that is no export)."""


@dataclass(frozen=True)
class RunRecord:
    started: str  # when the batch arrived (its marker), UTC, to the second
    batch: str
    run: str  # the execution's name: the batch id, or <batch>-replay-<n>
    status: str  # SUCCEEDED, FAILED, RUNNING (or Step Functions' ABORTED, TIMED_OUT)
    stage: (
        str  # where a failed run stopped (intake, validation, kpis, archive); a running one's state
    )
    seconds: float | None
    rows: int | None  # rows accepted, all datasets
    next: str  # the next step, or where the files are

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _when(value: str | datetime | None) -> str:
    if value is None or value == "":
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _next_step(notice: Mapping[str, Any]) -> str:
    custody = notice.get("custody") or {}
    if custody.get("replay"):
        return f"fix the cause, then: {custody['replay']}"
    if notice.get("status") == "FAILED" and custody.get("reason"):
        return f"fix the files, then replay; reason: {custody['reason']}"
    return str(custody.get("files", ""))


def _seconds(notice: Mapping[str, Any]) -> float | None:
    """A success's own duration (marker to KPIs written), else marker to the run's ending."""
    if notice.get("duration_s") is not None:
        return notice["duration_s"]
    if notice.get("received_at") and notice.get("ended_at"):
        ended = datetime.fromisoformat(notice["ended_at"])
        received = datetime.fromisoformat(notice["received_at"])
        return round((ended - received).total_seconds(), 1)
    return None


def record_of(notice: Mapping[str, Any], *, status: str | None = None) -> RunRecord:
    """A run's row from its notice; ``status`` (the execution's) wins when it says more, e.g.
    an execution that timed out after its notice."""
    rows = notice.get("rows_accepted")
    return RunRecord(
        started=_when(notice.get("received_at")),
        batch=str(notice.get("batch_id", "")),
        run=str(notice.get("execution_id", "")).rsplit(":", 1)[-1],
        status=status or str(notice.get("status", "")),
        stage=str(notice.get("stage") or ""),
        seconds=_seconds(notice),
        rows=sum(rows.values()) if isinstance(rows, Mapping) else None,
        next=_next_step(notice),
    )


def select(runs: Iterable[RunRecord], *, batch: str | None, last: int) -> list[RunRecord]:
    """The first ``last`` of ``runs`` (newest first), of ``batch`` only when given."""
    return [r for r in runs if batch is None or r.batch == batch][:last]


def runs_from_export(out: Path) -> list[RunRecord]:
    """Every run of a run-local or demo export, newest first: the notices it published, in
    the reverse of their order (a refusal by the trigger Lambda carries no time)."""
    path = out / NOTICES_EXPORT_FILE
    if not path.is_file():
        raise RunsError(f"{out} has no {NOTICES_EXPORT_FILE}: not a run-local or demo export")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        message = json.loads(line).get("message") if line.strip() else None
        if isinstance(message, Mapping):
            records.append(record_of(message))
    return records[::-1]


def _history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    """The execution's last events, newest first (the notice is among the last few)."""
    return sfn.get_execution_history(
        executionArn=execution_arn, reverseOrder=True, maxResults=50, includeExecutionData=True
    )["events"]


def _notice_in(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for event in events:
        exited = event.get("stateExitedEventDetails") or {}
        if exited.get("name") == NOTICE_STATE and exited.get("output"):
            return json.loads(exited["output"]).get("outcome", {}).get("notice")
    return None


def _current_state(events: list[dict[str, Any]]) -> str:
    for event in events:
        entered = event.get("stateEnteredEventDetails") or {}
        if entered.get("name"):
            return entered["name"]
    return ""


def runs_from_executions(
    sfn: Any, state_machine_arn: str, *, last: int, batch: str | None = None
) -> list[RunRecord]:
    """The ``last`` newest executions of the state machine (of ``batch`` only, when given),
    each with its notice, or the state it is in while it runs."""
    records: list[RunRecord] = []
    pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn)
    for page in pages:
        for execution in page["executions"]:
            if batch is not None and not _named_for(execution["name"], batch):
                continue  # another batch's: its history is not read
            record = _record_of_execution(sfn, execution)
            if batch is None or record.batch == batch:
                records.append(record)
            if len(records) == last:
                return records
    return records


def _named_for(name: str, batch: str) -> bool:
    """Whether an execution name is one the batch's runs get (its first, a replay's)."""
    replay = REPLAY_NAME.fullmatch(name)
    if replay is not None:
        return name == replay_execution_name(batch, int(replay.group(1)))
    return name == execution_name(batch)


def _record_of_execution(sfn: Any, execution: Mapping[str, Any]) -> RunRecord:
    status = execution["status"]
    started = execution["startDate"]
    seconds = round(((execution.get("stopDate") or datetime.now(UTC)) - started).total_seconds(), 1)
    events = _history(sfn, execution["executionArn"])
    notice = _notice_in(events)
    if status != "RUNNING" and notice is not None:
        # the execution's status says more only when it ended otherwise than its notice says
        record = record_of(notice, status=None if status in ("SUCCEEDED", "FAILED") else status)
        # a notice from before notices carried their times: the execution's
        return replace(
            record,
            started=record.started or _when(started),
            seconds=record.seconds if record.seconds is not None else seconds,
        )
    described = sfn.describe_execution(executionArn=execution["executionArn"])
    plan = json.loads(described.get("input") or "{}")
    return RunRecord(
        started=_when(plan.get("received_at") or started),
        batch=str(plan.get("batch_id", "")),
        run=execution["name"],
        status=status,
        # a running execution: the state it is in; an ended one without a notice: why
        stage=_current_state(events) if status == "RUNNING" else "no notice",
        seconds=seconds,
        rows=None,
        next=str(described.get("error") or ""),
    )
