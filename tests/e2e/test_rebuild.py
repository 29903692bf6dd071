"""`ecom-pipeline rebuild`: the KPI tables recomputed from the curated store equal a full
recomputation over every accepted row, in the range asked for and nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_exactly_once import _corrections
from test_run_local import _expected, _exported

from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import CATEGORY_TABLE, ORDER_TABLE, ExitCode
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.local.ecs_stand_in import InProcessRunner, enable_interpreter, local_ecs
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.local.generator import generate
from ecom_pipeline.local.run_local import LocalPipeline, run_batch


def _tables(aws: LocalAws, out: Path) -> tuple[dict, dict]:
    aws.export_tables(out)
    return _exported(out)


def _damage(aws: LocalAws, day: str, other_day: str) -> None:
    """What a changed KPI definition or a bad restore leaves: a wrong value, a missing item and
    an item the rows no longer give, on ``day``; a wrong value on ``other_day``."""
    ddb = aws.client("dynamodb")
    for when in (day, other_day):
        ddb.update_item(
            TableName=ORDER_TABLE,
            Key={"order_date": {"S": when}},
            UpdateExpression="SET total_revenue = :v",
            ExpressionAttributeValues={":v": {"N": "1"}},
        )
    (item,) = ddb.query(
        TableName=CATEGORY_TABLE,
        IndexName="by-date",
        KeyConditionExpression="order_date = :d",
        ExpressionAttributeValues={":d": {"S": day}},
        Limit=1,
    )["Items"]
    ddb.delete_item(TableName=CATEGORY_TABLE, Key={k: item[k] for k in ("category", "order_date")})
    ghost = dict(item) | {"category": {"S": "Discontinued"}}
    ddb.put_item(TableName=CATEGORY_TABLE, Item=ghost)


def test_rebuild_recomputes_the_range_from_the_curated_store_and_leaves_the_rest(spark, tmp_path):
    first = tmp_path / "a"
    generate(first, 40, seed=51, days=6, products=12)
    second = _corrections(first, tmp_path / "c", price="3.33", status="Cancelled", shift_days=2)
    with LocalAws() as aws, local_ecs(InProcessRunner(main)):
        enable_interpreter("127.0.0.1", aws.port)
        config = Settings(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=tmp_path / "w"
        )
        pipeline = LocalPipeline(aws, config)
        for folder, batch_id in ((first, "a"), (second, "c")):
            outcome = run_batch(pipeline, folder, batch_id, lambda _: None, tmp_path / "log")
            assert outcome.status == "SUCCEEDED"
        expected = _expected([first, second])
        assert _tables(aws, tmp_path / "t0") == expected
        days = sorted(expected[1])
        inside, outside = days[2], days[-1]
        _damage(aws, inside, outside)
        damaged = _tables(aws, tmp_path / "t1")
        assert damaged != expected

        connection = ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url]
        connection += ["--work-dir", str(tmp_path / "rebuild")]
        # the range only: the damage inside it is repaired, the one outside stays
        code = main(["rebuild", "--from", days[1], "--to", days[3], *connection])
        assert code == ExitCode.OK
        categories, orders = _tables(aws, tmp_path / "t2")
        assert orders[inside] == expected[1][inside]
        assert orders[outside] == damaged[1][outside] != expected[1][outside]
        assert {k: v for k, v in categories.items() if k[1] == inside} == {
            k: v for k, v in expected[0].items() if k[1] == inside
        }
        # everything: equal to a full recomputation again
        assert main(["rebuild", *connection]) == ExitCode.OK
        assert _tables(aws, tmp_path / "t3") == expected


def test_rebuild_refuses_a_backwards_range_and_an_empty_store(spark, tmp_path, capsys):
    with LocalAws() as aws:
        connection = ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url]
        backwards = ["rebuild", "--from", "2025-04-02", "--to", "2025-04-01", *connection]
        assert main(backwards) == ExitCode.USAGE
        assert "--from 2025-04-02 is after --to 2025-04-01" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exited:  # argparse's own error
            main(["rebuild", "--from", "April", *connection])
        assert exited.value.code == ExitCode.USAGE
        assert "not a date YYYY-MM-DD: 'April'" in capsys.readouterr().err
        assert main(["rebuild", *connection]) == ExitCode.DATA_REJECTED
        assert "holds no order yet: nothing to rebuild" in capsys.readouterr().err
