"""One measured job in its own process: a warm-up run, then N timed runs.

Run by ``bench.run`` as ``python -m bench.worker TASK ...`` so that each job has its own process
tree (and, for Spark, its own JVM sized by the tier), whose peak RSS the parent samples.
Spark jobs are called through the project's job functions on local files
(``validation.check_dataset``, ``kpi_job.plan`` with ``kpi_job.write_new_state``): the same code the
containers run, without the S3/DynamoDB staging around it (see the README, "Benchmark").

Tasks: ``validate:<dataset>``, ``scan`` (one plain parse of each dataset), ``kpis`` (the KPI job
on the staged rows the validations wrote), ``duckdb``, ``pandas``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.datasets import dataset_files
from bench.kpi_rows import CategoryRows, OrderRows, category_row, order_row

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from ecom_pipeline.transforms.ingest import DataFile


WARMUPS = 1


def _timed(runs: int, job: Callable[[int], Any]) -> tuple[list[dict[str, Any]], Any]:
    """Warm-up runs (excluded from the medians) then ``runs`` timed runs; returns the timings
    and the last run's result."""
    timings = []
    result = None
    for run in range(WARMUPS + runs):
        start_wall = time.time()
        clock = time.perf_counter()
        result = job(run)
        seconds = time.perf_counter() - clock
        timings.append(
            {"warmup": run < WARMUPS, "seconds": seconds, "start": start_wall, "end": time.time()}
        )
    return timings, result


SPARK_START_S: float | None = None  # how long this worker waited for its SparkSession


def _spark() -> SparkSession:
    global SPARK_START_S
    from pyspark.sql import SparkSession

    from ecom_pipeline.adapters.spark import get_spark

    fresh = SparkSession.getActiveSession() is None
    clock = time.perf_counter()
    spark = get_spark("ecom-pipeline-bench")
    if fresh:
        SPARK_START_S = round(time.perf_counter() - clock, 3)
    return spark


def _data_files(batch: Path, dataset: str) -> list[DataFile]:
    from ecom_pipeline.transforms.ingest import DataFile

    root = batch
    return [DataFile(p, p.relative_to(root).as_posix()) for p in dataset_files(root)[dataset]]


def validate(batch: Path, work: Path, dataset_name: str, runs: int) -> dict[str, Any]:
    from ecom_pipeline.core.contract import DATASETS
    from ecom_pipeline.tasks.validation import check_dataset, known_references

    spark = _spark()
    dataset = DATASETS[dataset_name]
    files = _data_files(batch, dataset_name)
    referenced = {fk.dataset for fk in dataset.foreign_keys}
    target_files = {name: _data_files(batch, name) for name in referenced}
    no_curated = {name: work / "no-curated" / name for name in referenced}
    steps: list[dict[str, float]] = []
    outcome: dict[str, Any] = {}

    def job(run: int) -> None:
        run_dir = work / f"validate-{dataset_name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        checked = check_dataset(
            spark,
            dataset,
            files,
            known_references=lambda: known_references(spark, dataset, target_files, no_curated),
            run_name=f"bench-{run}",
            work=run_dir,
        )
        if not checked.success:
            raise SystemExit(
                f"{dataset_name}: the generated data failed validation: "
                + "; ".join(f.describe(dataset_name) for f in checked.failures)
            )
        staged = work / "staged" / dataset_name
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(checked.staged_dir), staged)
        steps.append(checked.seconds)
        outcome.update(rows=checked.rows, rules=checked.rules_evaluated)

    timings, _ = _timed(runs, job)
    return {"timings": timings, "steps": steps, **outcome}


def scan(batch: Path, runs: int) -> dict[str, Any]:
    """One full scan: every file parsed once with the job's CSV reader, every field counted."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    from ecom_pipeline.transforms.ingest import csv_reader, read_header

    spark = _spark()
    files = dataset_files(batch)
    result: dict[str, Any] = {}
    for name, paths in files.items():
        header = read_header(paths[0])
        schema = StructType([StructField(c, StringType()) for c in header])

        def job(
            _run: int,
            paths: list[Path] = paths,
            schema: StructType = schema,
            header: list[str] = header,
        ) -> int:
            frame = csv_reader(spark, schema).csv([str(p) for p in paths])
            counts = frame.agg(F.count(F.lit(1)), *[F.count(c) for c in header]).first()
            return int(counts[0])

        timings, rows = _timed(runs, job)
        result[name] = {"timings": timings, "rows": rows}
    return result


def kpis(work: Path, runs: int) -> dict[str, Any]:
    from ecom_pipeline.adapters.curated_store import read_curated
    from ecom_pipeline.core.contract import DATASETS
    from ecom_pipeline.tasks.kpi_job import batch_stats, persisted, plan, write_new_state
    from ecom_pipeline.transforms.curated import Batch, Tables
    from ecom_pipeline.transforms.ingest import typed_schema

    spark = _spark()
    staged = work / "staged"
    empty = work / "no-curated"
    steps: list[dict[str, float]] = []

    def job(_run: int) -> tuple[CategoryRows, OrderRows]:
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def step(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = now - clock
            clock = now

        # as compute_kpis: the batch's staged rows and the (here empty) curated store
        frames = {
            name: spark.read.schema(typed_schema(d)).parquet(str(staged / name))
            for name, d in DATASETS.items()
        }
        batch = Batch(frames["products"], frames["orders"], frames["order_items"])
        old = Tables(*(read_curated(spark, empty / name, d) for name, d in DATASETS.items()))
        batch_stats(batch)  # rows accepted and the fingerprint, for the notice and replays
        step("read")
        # the dates, the merge, and the new curated Parquet the KPIs read back
        new = work / "curated-new"
        changes = plan(
            old,
            batch,
            stage=lambda *state: write_new_state(*state, where=lambda name: str(new / name)),
        )
        step("plan")
        with persisted(changes):
            # what write_items / delete_keys send to DynamoDB, collected here instead
            categories = changes.category_items.collect()
            order_rows = changes.order_items.collect()
            changes.category_deletes.count()
            changes.order_deletes.count()
            step("KPIs")
        steps.append(seconds)
        return (
            {(r.category, r.order_date): category_row(r.asDict()) for r in categories},
            {r.order_date: order_row(r.asDict()) for r in order_rows},
        )

    timings, rows = _timed(runs, job)
    return {"timings": timings, "kpis": rows, "steps": steps}


def engine(batch: Path, runs: int, compute: Callable[[Path], Any]) -> dict[str, Any]:
    timings, rows = _timed(runs, lambda _run: compute(batch))
    return {"timings": timings, "kpis": rows}


def _jsonable(kpis: tuple[CategoryRows, OrderRows]) -> dict[str, Any]:
    categories, orders = kpis
    return {
        "category": [{k: str(v) for k, v in row.items()} for row in categories.values()],
        "order": [{k: str(v) for k, v in row.items()} for row in orders.values()],
    }


def run_task(task: str, batch: Path, work: Path, runs: int) -> dict[str, Any]:
    """One task's timings (and KPI rows, for the KPI engines) as JSON-ready values."""
    work.mkdir(parents=True, exist_ok=True)
    if task.startswith("validate:"):
        result = validate(batch, work, task.split(":", 1)[1], runs)
    elif task == "scan":
        result = scan(batch, runs)
    elif task == "kpis":
        result = kpis(work, runs)
    elif task == "duckdb":
        from bench import duckdb_kpis

        result = engine(batch, runs, duckdb_kpis.compute)
    elif task == "pandas":
        from bench import pandas_kpis

        result = engine(batch, runs, pandas_kpis.compute)
    else:
        raise ValueError(f"unknown task {task!r}")
    if "kpis" in result:
        result["kpis"] = _jsonable(result["kpis"])
    if SPARK_START_S is not None:
        result["spark_start_s"] = SPARK_START_S
    return result


def main(argv: list[str] | None = None) -> int:
    global WARMUPS
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("task")
    parser.add_argument("--batch", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    WARMUPS = args.warmups
    result = run_task(args.task, args.batch, args.work, args.runs)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
