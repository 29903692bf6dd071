"""End to end through `ecom-pipeline run-local`, checked against the independent reference."""

from __future__ import annotations

import csv
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ecom_pipeline.cli import main
from ecom_pipeline.config import PipelineConfig
from ecom_pipeline.contract import CATEGORY_TABLE, DATASETS, ORDER_TABLE, ExitCode
from ecom_pipeline.generator import generate
from ecom_pipeline.local_aws import LocalAws
from ecom_pipeline.local_sfn import InProcessRunner, enable_interpreter, local_ecs
from ecom_pipeline.run_local import LocalPipeline, run_local, s3_event
from ecom_pipeline.tiers import TIERS
from reference_kpis import as_json_ready, kpis_from_batches

SEED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-sample"
pytestmark = pytest.mark.e2e


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _exported(out: Path) -> tuple[dict, dict]:
    categories = {
        (r["category"], r["order_date"]): r for r in _read_jsonl(out / "category_kpis.jsonl")
    }
    orders = {r["order_date"]: r for r in _read_jsonl(out / "order_kpis.jsonl")}
    return categories, orders


def _expected(batch_dirs: list[Path]) -> tuple[dict, dict]:
    categories, orders = kpis_from_batches(batch_dirs)
    return (
        {k: as_json_ready(v) for k, v in categories.items()},
        {k: as_json_ready(v) for k, v in orders.items()},
    )


@pytest.fixture(scope="module")
def seed_run(spark, tmp_path_factory):
    if not SEED_SAMPLE.is_dir():
        pytest.fail(f"the seed sample is missing: {SEED_SAMPLE}")
    out = tmp_path_factory.mktemp("seed-out")
    code = main(["run-local", str(SEED_SAMPLE), "--export", str(out)])
    return code, out


def test_seed_sample_succeeds_with_the_worked_example(seed_run):
    code, out = seed_run
    assert code == ExitCode.OK
    _, orders = _exported(out)
    # worked example from the issue, derived by hand from the CSV files
    day = orders["2025-03-25"]
    assert (day["total_orders"], day["total_revenue"], day["total_items_sold"]) == (
        342,
        79153.56,
        999,
    )
    assert (day["unique_customers"], day["return_rate"]) == (335, 0.1842)


def test_seed_sample_tables_equal_the_reference_everywhere(seed_run):
    _, out = seed_run
    expected_categories, expected_orders = _expected([SEED_SAMPLE])
    categories, orders = _exported(out)
    assert len(orders) == 31
    assert orders == expected_orders
    assert categories == expected_categories


def test_seed_sample_exports_notice_and_data_docs(seed_run):
    _, out = seed_run
    notices = _read_jsonl(out / "notifications.jsonl")
    assert [n["message"]["status"] for n in notices] == ["SUCCEEDED"]
    notice = notices[0]["message"]
    assert notice["rows_accepted"] == {"products": 10000, "orders": 9000, "order_items": 27007}
    assert len(notice["dates_recomputed"]) == 31
    assert notice["execution_id"].endswith(":seed-sample")
    assert notice["duration_s"] > 0
    assert [v["status"] for v in notice["validations"]] == ["PASSED"] * 3
    for dataset in DATASETS:
        assert (out / "data_docs" / "seed-sample" / dataset / "index.html").is_file()


def _write_rows(path: Path, dataset: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=DATASETS[dataset].column_names)
        writer.writeheader()
        writer.writerows(rows)


def _read_rows(folder: Path, pattern: str) -> list[dict]:
    rows = []
    for path in sorted(folder.glob(pattern)):
        with path.open(newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def _shift(value: str, delta: timedelta) -> str:
    return (datetime.fromisoformat(value) + delta).isoformat() if value else value


def random_batches(source: Path, target: Path, seed: int, count: int = 3) -> list[Path]:
    """Split a generated dataset into batches at random, respecting references (an item arrives
    with or after its order and product), and re-send some rows later with corrections: orders
    moved to another date with another status, items with another price, products with another
    category."""
    rng = random.Random(seed)
    products = _read_rows(source, "products.csv")
    orders = _read_rows(source, "orders/*.csv")
    items = _read_rows(source, "order_items/*.csv")
    batches: list[dict[str, list[dict]]] = [
        {"products": [], "orders": [], "order_items": []} for _ in range(count)
    ]
    product_batch = {}
    for row in products:
        product_batch[row["id"]] = b = rng.randrange(count)
        batches[b]["products"].append(row)
    order_batch = {}
    for row in orders:
        order_batch[row["order_id"]] = b = rng.randrange(count)
        batches[b]["orders"].append(row)
    for row in items:
        first = max(order_batch[row["order_id"]], product_batch[row["product_id"]])
        batches[rng.randrange(first, count)]["order_items"].append(row)
    for row in rng.sample(orders, len(orders) // 10):
        later = rng.randrange(order_batch[row["order_id"]], count)
        delta = timedelta(days=rng.choice([-3, -1, 1, 2]), hours=rng.randrange(24))
        moved = {k: _shift(v, delta) if k.endswith("_at") else v for k, v in row.items()}
        moved["status"] = rng.choice(["returned", "cancelled", "Delivered"])
        batches[later]["orders"].append(moved)
    for row in rng.sample(items, len(items) // 10):
        later = rng.randrange(
            max(order_batch[row["order_id"]], product_batch[row["product_id"]]), count
        )
        batches[later]["order_items"].append(
            row | {"sale_price": f"{rng.randrange(100, 99999) / 100:.2f}"}
        )
    for row in rng.sample(products, len(products) // 10):
        later = rng.randrange(product_batch[row["id"]], count)
        batches[later]["products"].append(
            row | {"category": rng.choice(["Books", "Garden", "Toys"])}
        )
    folders = []
    for number, batch in enumerate(batches, 1):
        folder = target / f"batch-{number}"
        for dataset, rows in batch.items():
            # a row re-sent in the same batch would be a duplicate key: keep the correction
            unique = list({r[DATASETS[dataset].key]: r for r in rows}.values())
            if unique:
                _write_rows(folder / f"{dataset}.csv", dataset, unique)
        if folder.exists():
            folders.append(folder)
    return folders


@pytest.mark.parametrize("seed", [11, 29])
def test_random_splits_give_the_tables_of_one_run_over_all_data(spark, tmp_path, seed):
    source = tmp_path / "source"
    generate(source, 120, seed=seed, days=12, products=30)
    folders = random_batches(source, tmp_path / "batches", seed)
    out = tmp_path / "out"
    assert main(["run-local", *map(str, folders), "--export", str(out)]) == ExitCode.OK
    expected_categories, expected_orders = _expected(folders)
    categories, orders = _exported(out)
    assert orders == expected_orders
    assert categories == expected_categories


def test_failed_batch_changes_nothing_and_later_batches_still_run(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 40, seed=3, days=5, products=20)
    good = tmp_path / "good"
    _write_rows(good / "products.csv", "products", _read_rows(source, "products.csv"))
    _write_rows(good / "orders.csv", "orders", _read_rows(source, "orders/*.csv"))
    _write_rows(good / "order_items.csv", "order_items", _read_rows(source, "order_items/*.csv"))
    bad = tmp_path / "bad"
    orders = _read_rows(source, "orders/*.csv")
    orders[0] = orders[0] | {"status": "lost-in-space"}
    _write_rows(bad / "orders.csv", "orders", orders)
    out = tmp_path / "out"
    code = main(["run-local", str(good), str(bad), str(good), "--export", str(out)])
    assert code == ExitCode.DATA_REJECTED
    notices = [n["message"] for n in _read_jsonl(out / "notifications.jsonl")]
    assert [n["status"] for n in notices] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    failure = notices[1]
    assert failure["stage"] == "validation"
    assert failure["execution_id"].endswith(":bad")
    statuses = {v["dataset"]: v["status"] for v in failure["validations"]}
    assert statuses == {"products": "SKIPPED", "orders": "FAILED", "order_items": "SKIPPED"}
    result = next(v["result"] for v in failure["validations"] if v["status"] == "FAILED")
    assert result["failed_rules"][0]["rule"] == "status allowed"
    assert result["failed_rules"][0]["unexpected_count"] == 1
    assert "lost-in-space" in result["failed_rules"][0]["message"]
    assert result["data_docs"].startswith("s3://")
    expected_categories, expected_orders = _expected([good])
    categories, orders_out = _exported(out)
    assert orders_out == expected_orders
    assert categories == expected_categories


def test_duplicate_event_and_reuploaded_marker_start_nothing_new(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 20, seed=5, days=3, products=10)
    with LocalAws() as aws, local_ecs(InProcessRunner()):
        enable_interpreter("127.0.0.1", aws.port)
        config = PipelineConfig(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=tmp_path / "w"
        )
        pipeline = LocalPipeline(aws, config)
        marker = pipeline.upload(source, "dup")
        event = s3_event(aws.bucket, marker, 0)
        first = pipeline.deliver(event)
        assert len(first["started"]) == 1
        arn = pipeline.execution_arn(first["started"][0])
        assert pipeline.wait(arn)["status"] == "SUCCEEDED"
        assert pipeline.deliver(event)["duplicates"] == first["started"]  # the same event again
        marker = pipeline.upload(source, "dup")  # the marker uploaded again
        assert pipeline.deliver(s3_event(aws.bucket, marker, 0))["duplicates"] == first["started"]
        executions = pipeline.sfn.list_executions(stateMachineArn=pipeline.state_machine_arn)
        assert len(executions["executions"]) == 1


class FailingKpiRunner(InProcessRunner):
    """Runs validation for real, but the KPI container dies (exit 137, as when OOM-killed)."""

    def __call__(self, command, environment):
        if command[0] == "compute-kpis":
            self.calls.append((list(command), dict(environment)))
            return 137
        return super().__call__(command, environment)


def test_kpi_task_failure_is_caught_notified_and_writes_nothing(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 20, seed=6, days=3, products=10)
    runner = FailingKpiRunner()
    summary = run_local([source], tmp_path / "out", runner=runner, progress=lambda _: None)
    assert [o.status for o in summary.outcomes] == ["FAILED"]
    assert summary.outcomes[0].error == "Kpi.Failed"
    notice = summary.outcomes[0].notice
    assert notice["stage"] == "kpis"
    assert notice["error"]["Error"] == "States.TaskFailed"
    assert '"ExitCode": 137' in notice["error"]["Cause"]
    assert summary.exported == {CATEGORY_TABLE: 0, ORDER_TABLE: 0}
    # the overrides the state machine sent reached the container: command and tier settings
    commands = [call[0][0] for call in runner.calls]
    assert sorted(commands) == ["compute-kpis", "validate", "validate", "validate"]
    kpi_env = next(env for command, env in runner.calls if command[0] == "compute-kpis")
    assert kpi_env["SPARK_DRIVER_MEMORY"] == TIERS[0].driver_memory
    assert kpi_env["PIPELINE_BUCKET"] == "ecom-pipeline-local"
    assert kpi_env["EXECUTION_ID"].endswith(":source")
