import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber

from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import ExitCode
from ecom_pipeline.core.layout import NOTICES_EXPORT_FILE
from ecom_pipeline.read.runs import (
    COLUMNS,
    NOTICE_STATE,
    RunRecord,
    record_of,
    runs_from_executions,
    runs_from_export,
    select,
)

ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:ecom-pipeline"


def _execution_arn(name: str) -> str:
    return f"arn:aws:states:us-east-1:123456789012:execution:ecom-pipeline:{name}"


SUCCEEDED = {
    "batch_id": "b1",
    "status": "SUCCEEDED",
    "execution_id": _execution_arn("b1"),
    "received_at": "2025-04-07T06:00:01.500Z",
    "duration_s": 63.8,
    "rows_accepted": {"products": 10, "orders": 9, "order_items": 27},
    "custody": {"moved": True, "files": "s3://data/archive/b1/"},
}
REJECTED = {
    "batch_id": "b2",
    "status": "FAILED",
    "stage": "validation",
    "execution_id": _execution_arn("b2"),
    "received_at": "2025-04-08T06:00:00Z",
    "duration_s": 20.1,
    "custody": {
        "moved": True,
        "files": "s3://data/rejected/b2/",
        "reason": "s3://data/rejected/b2/_reason.json",
    },
}
KILLED = {
    "batch_id": "b3",
    "status": "FAILED",
    "stage": "kpis",
    "execution_id": _execution_arn("b3"),
    "received_at": "2025-04-09T06:00:00+00:00",
    "duration_s": 40.0,
    "custody": {
        "moved": False,
        "files": "s3://data/incoming/b3/",
        "replay": "ecom-pipeline replay b3",
    },
}


def test_a_notice_gives_the_runs_row():
    assert record_of(SUCCEEDED) == RunRecord(
        started="2025-04-07 06:00:01",
        batch="b1",
        run="b1",
        status="SUCCEEDED",
        stage="",
        seconds=63.8,
        rows=46,
        next="s3://data/archive/b1/",
    )
    rejected = record_of(REJECTED)
    assert (rejected.status, rejected.stage, rejected.rows) == ("FAILED", "validation", None)
    assert rejected.next == "fix the files, then replay; reason: s3://data/rejected/b2/_reason.json"
    assert record_of(KILLED).next == "fix the cause, then: ecom-pipeline replay b3"
    # a failure's duration: from the marker's arrival to the run's ending
    ended = REJECTED | {"ended_at": "2025-04-08T06:00:42.250+00:00", "duration_s": None}
    assert record_of(ended).seconds == 42.2
    assert record_of(SUCCEEDED, status="TIMED_OUT").status == "TIMED_OUT"


def test_select_keeps_the_first_n_of_a_batch():
    runs = [record_of(n) for n in (KILLED, REJECTED, SUCCEEDED)]
    assert [r.batch for r in select(runs, batch=None, last=20)] == ["b3", "b2", "b1"]
    assert [r.batch for r in select(runs, batch=None, last=2)] == ["b3", "b2"]
    assert [r.batch for r in select(runs, batch="b2", last=20)] == ["b2"]


def _export(tmp_path, *notices):
    lines = [json.dumps({"subject": f"ecom-pipeline {n['status']}", "message": n}) for n in notices]
    (tmp_path / NOTICES_EXPORT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_runs_from_an_export_are_its_notices(tmp_path):
    runs = runs_from_export(_export(tmp_path, SUCCEEDED, REJECTED))  # in publish order
    assert [(r.run, r.status) for r in runs] == [("b2", "FAILED"), ("b1", "SUCCEEDED")]


def _execution(name, status, started, stopped=None):
    """A list_executions entry."""
    entry = {
        "executionArn": _execution_arn(name),
        "stateMachineArn": ARN,
        "name": name,
        "status": status,
        "startDate": started,
    }
    return entry | ({"stopDate": stopped} if stopped else {})


def _history(*events):
    return {
        "events": [
            {"id": i, "timestamp": datetime(2025, 4, 9, tzinfo=UTC), **e}
            for i, e in enumerate(events, 1)
        ]
    }


def _exited(name, output):
    return {
        "type": "PassStateExited",
        "stateExitedEventDetails": {"name": name, "output": json.dumps(output)},
    }


def _entered(name):
    return {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name, "input": "{}"}}


def test_runs_from_executions_read_each_notice_back_and_show_a_running_ones_state():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    started = datetime(2025, 4, 10, 6, 0, tzinfo=UTC)
    executions = [
        _execution("b4", "RUNNING", started),
        _execution("b3", "FAILED", started, started + timedelta(seconds=42)),
        _execution("b1", "SUCCEEDED", started, started),
    ]
    untimed = {k: v for k, v in KILLED.items() if k not in ("received_at", "duration_s")}
    with Stubber(sfn) as stub:
        stub.add_response(
            "list_executions",
            {"executions": executions[:2], "nextToken": "t"},
            {"stateMachineArn": ARN},
        )
        history = {"reverseOrder": True, "maxResults": 50, "includeExecutionData": True}
        stub.add_response(
            "get_execution_history",
            _history(_entered("ValidateOnEmr"), _entered("ValidateDatasets")),
            {"executionArn": _execution_arn("b4"), **history},
        )
        plan = {"batch_id": "b4", "received_at": "2025-04-10T05:59:58Z"}
        stub.add_response(
            "describe_execution",
            {
                "executionArn": _execution_arn("b4"),
                "stateMachineArn": ARN,
                "status": "RUNNING",
                "startDate": started,
                "input": json.dumps(plan),
            },
            {"executionArn": _execution_arn("b4")},
        )
        stub.add_response(
            "get_execution_history",
            _history(
                {"type": "ExecutionFailed"},
                _exited("PublishNotice", {}),
                _exited(NOTICE_STATE, {"outcome": {"notice": untimed}}),
            ),
            {"executionArn": _execution_arn("b3"), **history},
        )
        stub.add_response(
            "list_executions",
            {"executions": executions[2:]},
            {"stateMachineArn": ARN, "nextToken": "t"},
        )
        stub.add_response(
            "get_execution_history",
            _history(_exited(NOTICE_STATE, {"outcome": {"notice": SUCCEEDED}})),
            {"executionArn": _execution_arn("b1"), **history},
        )
        runs = runs_from_executions(sfn, ARN, last=20)
        stub.assert_no_pending_responses()
    # a failure notice without times of its own takes the execution's
    running, killed, succeeded = runs
    assert (running.batch, running.run, running.status, running.stage) == (
        "b4",
        "b4",
        "RUNNING",
        "ValidateOnEmr",
    )
    assert running.started == "2025-04-10 05:59:58"
    assert killed == replace(record_of(KILLED), started="2025-04-10 06:00:00", seconds=42.0)
    assert succeeded == record_of(SUCCEEDED)


def test_runs_from_executions_stop_at_the_last_n():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    started = datetime(2025, 4, 10, 6, 0, tzinfo=UTC)
    execution = _execution("b1", "SUCCEEDED", started, started)
    with Stubber(sfn) as stub:
        stub.add_response(
            "list_executions", {"executions": [execution, execution]}, {"stateMachineArn": ARN}
        )
        stub.add_response(
            "get_execution_history",
            _history(_exited(NOTICE_STATE, {"outcome": {"notice": SUCCEEDED}})),
        )
        assert len(runs_from_executions(sfn, ARN, last=1)) == 1


def test_runs_command_prints_an_exports_runs_newest_first(tmp_path, capsys):
    out = _export(tmp_path, SUCCEEDED, REJECTED, KILLED)
    assert main(["runs", "--from-export", str(out)]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert [line.split()[2] for line in lines[2:]] == ["b3", "b2", "b1"]
    assert main(["runs", "--from-export", str(out), "--batch", "b2", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["run"], row["status"], row["stage"]) == ("b2", "FAILED", "validation")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from-export", "{tmp}"], "has no notifications.jsonl: not a run-local or demo export"),
        (["--from-export", "{tmp}", "--region", "eu-west-1"], "--from-export reads a local folder"),
        ([], "STATE_MACHINE_ARN is not set"),
    ],
)
def test_runs_command_mistakes_get_one_line_and_exit_2(
    tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.delenv("STATE_MACHINE_ARN", raising=False)
    code = main(["runs", *(a.format(tmp=tmp_path) for a in argv)], environ={})
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_runs_command_says_so_when_there_are_none(tmp_path, capsys):
    out = _export(tmp_path, SUCCEEDED)
    assert main(["runs", "--from-export", str(out), "--batch", "nope"]) == ExitCode.DATA_REJECTED
    assert capsys.readouterr().err.strip() == "no runs of batch nope found"


def test_runs_command_refuses_a_last_below_1(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["runs", "--last", "0"])
    assert exited.value.code == ExitCode.USAGE
    assert "argument --last: must be at least 1, got 0" in capsys.readouterr().err


def test_runs_of_one_batch_read_no_other_batchs_history():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    started = datetime(2025, 4, 10, 6, 0, tzinfo=UTC)
    names = ["b10", "b1-replay-2", "b2-replay-1", "b1x", "b1"]
    replayed = SUCCEEDED | {"execution_id": _execution_arn("b1-replay-2")}
    with Stubber(sfn) as stub:
        stub.add_response(
            "list_executions",
            {"executions": [_execution(n, "SUCCEEDED", started, started) for n in names]},
        )
        # only the two of b1 are read (a history call for another would find no response)
        for notice in (replayed, SUCCEEDED):
            stub.add_response(
                "get_execution_history",
                _history(_exited(NOTICE_STATE, {"outcome": {"notice": notice}})),
            )
        runs = runs_from_executions(sfn, ARN, last=20, batch="b1")
        stub.assert_no_pending_responses()
    assert [r.run for r in runs] == ["b1-replay-2", "b1"]
