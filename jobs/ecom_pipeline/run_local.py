"""run-local: every batch through the job entry points, against emulated AWS and local Spark.

Each batch is uploaded to the emulated bucket as ``incoming/<batch_id>/`` with a ``_SUCCESS``
marker, each dataset present is validated, and only if all pass the KPI job runs. A failed
batch changes no KPI item and does not stop the batches after it.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecom_pipeline import logs
from ecom_pipeline.config import PipelineConfig
from ecom_pipeline.contract import DATASET_ORDER, dataset_of_file
from ecom_pipeline.kpi_job import compute_kpis
from ecom_pipeline.local_aws import LocalAws
from ecom_pipeline.notify import failure_notice, publish, success_notice
from ecom_pipeline.spark import get_spark
from ecom_pipeline.storage import DATA_DOCS, incoming_prefix
from ecom_pipeline.validation import validate_dataset

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # noqa: T201 - human progress for long runs


@dataclass
class BatchOutcome:
    batch_id: str
    source: Path
    success: bool
    notice: dict[str, Any]


@dataclass
class RunSummary:
    outcomes: list[BatchOutcome] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)


def batch_ids(batch_dirs: Sequence[Path]) -> list[str]:
    """Readable ids from folder names; a repeated name gets -2, -3 ... so ids stay distinct."""
    ids: list[str] = []
    for folder in batch_dirs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "batch"
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}-{n}"
        ids.append(candidate)
    return ids


def upload_batch(aws: LocalAws, folder: Path, batch_id: str) -> list[str]:
    """Upload a folder's files under incoming/<batch_id>/, then the _SUCCESS marker last."""
    if not folder.is_dir():
        raise FileNotFoundError(f"batch folder not found: {folder}")
    keys = aws.store.upload_dir(folder, incoming_prefix(batch_id), skip_hidden=False)
    aws.client("s3").put_object(
        Bucket=aws.bucket, Key=f"{incoming_prefix(batch_id)}_SUCCESS", Body=b""
    )
    return keys


def run_batch(
    spark: Any,
    aws: LocalAws,
    config: PipelineConfig,
    folder: Path,
    batch_id: str,
    progress: Progress,
) -> BatchOutcome:
    started = time.perf_counter()
    keys = upload_batch(aws, folder, batch_id)
    relative = [k[len(incoming_prefix(batch_id)) :] for k in keys]
    present = {dataset_of_file(r) for r in relative} - {None}
    unrecognised = [r for r in relative if dataset_of_file(r) is None]
    datasets = [d for d in DATASET_ORDER if d in present]
    if unrecognised or not datasets:
        error = (
            f"files with names that fit no dataset: {', '.join(unrecognised)}"
            if unrecognised
            else f"no dataset files in {folder}"
        )
        notice = failure_notice(
            batch_id,
            stage="intake",
            failed_datasets=[],
            duration_s=time.perf_counter() - started,
            error=error,
        )
        progress(f"  rejected: {error}")
        return _finish(aws, config, folder, batch_id, notice)
    reports = []
    for dataset in datasets:
        progress(f"  validating {dataset} ...")
        report = validate_dataset(spark, config, batch_id, dataset)
        verdict = "ok" if report.success else f"FAILED ({len(report.failures)} rules)"
        progress(f"  validated {dataset}: {report.rows} rows, {verdict}")
        for message in report.messages():
            progress(f"    {message}")
        reports.append(report)
    docs = {r.dataset: r.data_docs for r in reports}
    failed = [r for r in reports if not r.success]
    if failed:
        notice = failure_notice(
            batch_id,
            stage="validation",
            failed_datasets=[
                {
                    "dataset": r.dataset,
                    "failed_rules": [
                        {
                            "rule": f.rule,
                            "unexpected_count": f.unexpected_count,
                            "message": f.describe(r.dataset),
                        }
                        for f in r.failures
                    ],
                    "data_docs": r.data_docs,
                }
                for r in failed
            ],
            duration_s=time.perf_counter() - started,
        )
        return _finish(aws, config, folder, batch_id, notice)
    progress("  computing KPIs ...")
    kpis = compute_kpis(spark, config, batch_id)
    progress(
        f"  KPIs: {len(kpis.dates_recomputed)} dates recomputed, "
        f"{kpis.category_items_written} category items, {kpis.order_items_written} order items"
    )
    notice = success_notice(
        batch_id,
        rows_accepted=kpis.rows_accepted,
        dates_recomputed=kpis.dates_recomputed,
        duration_s=time.perf_counter() - started,
        data_docs=docs,
    )
    return _finish(aws, config, folder, batch_id, notice)


def _finish(
    aws: LocalAws, config: PipelineConfig, folder: Path, batch_id: str, notice: dict[str, Any]
) -> BatchOutcome:
    publish(notice, aws.topic_arn, config.aws)
    return BatchOutcome(batch_id, folder, notice["status"] == "SUCCEEDED", notice)


def run_local(
    batch_dirs: Sequence[Path], out_dir: Path, *, progress: Progress = _stderr
) -> RunSummary:
    """Run each batch in order, then export the tables, notices and Data Docs to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = out_dir / "pipeline.log.jsonl"
    logs.configure(path=log_file)
    progress(f"JSON logs: {log_file}")
    summary = RunSummary(out_dir=out_dir)
    ids = batch_ids(batch_dirs)
    with LocalAws() as aws:
        config = PipelineConfig(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=out_dir / "work"
        )
        progress("starting Spark ...")
        spark = get_spark("ecom-pipeline-run-local")
        try:
            for number, (folder, batch_id) in enumerate(zip(batch_dirs, ids, strict=True), 1):
                progress(f"[{number}/{len(ids)}] batch {batch_id} ({folder})")
                try:
                    outcome = run_batch(spark, aws, config, folder, batch_id, progress)
                except Exception as e:  # a broken batch must not stop the ones after it
                    log.exception("batch failed", extra={"batch_id": batch_id})
                    notice = failure_notice(
                        batch_id,
                        stage="pipeline",
                        failed_datasets=[],
                        duration_s=0.0,
                        error=f"{type(e).__name__}: {e}",
                    )
                    outcome = _finish(aws, config, folder, batch_id, notice)
                progress(f"  batch {batch_id}: {outcome.notice['status']}")
                summary.outcomes.append(outcome)
        finally:
            summary.exported = aws.export_tables(out_dir)
            aws.export_notifications(out_dir / "notifications.jsonl")
            docs = out_dir / "data_docs"
            shutil.rmtree(docs, ignore_errors=True)
            aws.store.download_prefix(DATA_DOCS, docs)
            shutil.rmtree(config.work_dir, ignore_errors=True)
    return summary
