"""A batch with a manifest.json is exactly the files it lists, end to end through run-local:
a file beside them is not checked, and is no reference for the listed ones either, so an item
whose order sits only in an unlisted file fails validation instead of vanishing from the KPIs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import DATASETS, ExitCode
from ecom_pipeline.local.generator import generate


def _rows(folder: Path, pattern: str) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(folder.glob(pattern)):
        with path.open(newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def _write(path: Path, dataset: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, DATASETS[dataset].column_names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _reported_files(out: Path, dataset: str) -> list[str]:
    """The files a validation task read, from the report it printed (in run-local's log)."""
    for line in (out / "pipeline.log.jsonl").read_text(encoding="utf-8").splitlines():
        message = json.loads(line).get("message", "")
        if message.startswith("{") and json.loads(message).get("dataset") == dataset:
            return json.loads(message)["files"]
    raise AssertionError(f"no {dataset} report in the log")


def test_items_whose_orders_are_in_an_unlisted_file_fail_validation(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 30, seed=5, days=4, products=15)
    orders = _rows(source, "orders/*.csv")
    batch = tmp_path / "m1"
    _write(batch / "products.csv", "products", _rows(source, "products.csv"))
    _write(batch / "orders" / "orders_part1.csv", "orders", orders[:20])
    _write(batch / "orders" / "orders_part2.csv", "orders", orders[20:])  # not in the manifest
    _write(batch / "order_items.csv", "order_items", _rows(source, "order_items/*.csv"))
    listed = ["products.csv", "orders/orders_part1.csv", "order_items.csv"]
    (batch / "manifest.json").write_text(json.dumps({"files": listed}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["run-local", str(batch), "--export", str(out)]) == ExitCode.DATA_REJECTED
    (line,) = (out / "notifications.jsonl").read_text(encoding="utf-8").splitlines()
    notice = json.loads(line)["message"]
    assert (notice["status"], notice["stage"]) == ("FAILED", "validation")
    failed = {
        v["dataset"]: [r["rule"] for r in v["result"]["failed_rules"]]
        for v in notice["validations"]
        if v["status"] == "FAILED"
    }
    assert failed == {"order_items": ["order_id refers to a known order"]}
    assert _reported_files(out, "orders") == ["incoming/m1/orders/orders_part1.csv"]
    assert not (out / "order_kpis.jsonl").read_text(encoding="utf-8").strip()  # nothing written
