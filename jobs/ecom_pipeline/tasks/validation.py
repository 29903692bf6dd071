"""Validation job: one dataset of one batch, checked with its Great Expectations suite.

extract (download the batch's files, read text) -> transform (typed + diagnostic columns, pure)
-> check (GX suite) -> load (result JSON, Data Docs, accepted rows to staging).

In direct I/O mode (``Settings.direct_io``) nothing is downloaded: the driver reads each
file's first bytes through the store for the checks before Spark, Spark reads the files at their
URIs and writes the accepted rows to the staging URI itself.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType

from ecom_pipeline.adapters.curated_store import download_curated, read_curated, read_curated_at
from ecom_pipeline.adapters.quality import RuleFailure, run_suite
from ecom_pipeline.adapters.storage import Store, open_store
from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import DATASETS, Dataset, dataset_of_file
from ecom_pipeline.core.layout import (
    data_docs_prefix,
    incoming_prefix,
    result_key,
    run_upload_key,
    staging_prefix,
)
from ecom_pipeline.core.planning import MANIFEST_MARKER, read_manifest
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.core.upload import Upload, UploadedFile
from ecom_pipeline.transforms.curated import empty_as_local
from ecom_pipeline.transforms.ingest import (
    HEAD_BYTES,
    DataFile,
    HeaderError,
    accepted,
    expected_checkable_columns,
    file_has_no_data_rows,
    file_header,
    parquet_options,
    read_raw,
    to_checkable,
    unreadable_reasons,
)

log = logging.getLogger(__name__)

ORPHAN_SUFFIX = "__orphan"
ORDER_USER_ID = "order__user_id"
# both user ids where an item's differs from its order's (the rule's column, null when they agree)
USER_MISMATCH = "user_id__not_the_orders"
# Referenced datasets small enough to broadcast to the join with the checked rows (products is
# the catalogue, a dimension; the kpi job broadcasts it too), so the checked rows are not
# shuffled for their reference to it.
BROADCAST_REFERENCES = frozenset({"products"})


def reference_columns(dataset: Dataset) -> list[str]:
    """Diagnostic columns the referential checks add to a checkable frame."""
    names = [f"{fk.column}{ORPHAN_SUFFIX}" for fk in dataset.foreign_keys]
    if any(fk.dataset == "orders" for fk in dataset.foreign_keys):
        names += [ORDER_USER_ID, USER_MISMATCH]
    return names


def checkable_columns(dataset: Dataset) -> list[str]:
    return expected_checkable_columns(dataset) + reference_columns(dataset)


def with_reference_checks(
    checkable: DataFrame, dataset: Dataset, known: dict[str, DataFrame]
) -> DataFrame:
    """Add ``<fk>__orphan`` (the value when the referenced row is unknown) and, for items, the
    referenced order's user_id and ``user_id__not_the_orders`` (both ids where they differ), so
    the suite can check references like any other column.

    ``known[dataset]`` holds the referenced dataset's rows: this batch's together with all
    accepted before, one row per key.
    """
    frame = checkable
    for fk in dataset.foreign_keys:
        orphan = f"{fk.column}{ORPHAN_SUFFIX}"
        if fk.column not in frame.columns:
            frame = frame.withColumn(orphan, F.lit(None).cast(LongType()))
            continue
        marker = f"__known_{fk.dataset}"
        carried = [ORDER_USER_ID] if fk.dataset == "orders" else []
        reference = known[fk.dataset].select(
            F.col(fk.target_column).alias(marker),
            *([F.col("user_id").alias(ORDER_USER_ID)] if carried else []),
        )
        if fk.dataset in BROADCAST_REFERENCES:
            reference = F.broadcast(reference)
        frame = frame.join(reference, frame[fk.column] == reference[marker], "left")
        frame = frame.withColumn(
            orphan, F.when(F.col(fk.column).isNotNull() & F.col(marker).isNull(), F.col(fk.column))
        ).drop(marker)
    if ORDER_USER_ID in reference_columns(dataset):
        if ORDER_USER_ID not in frame.columns:
            frame = frame.withColumn(ORDER_USER_ID, F.lit(None).cast(LongType()))
        if "user_id" in frame.columns:
            item_user, order_user = F.col("user_id"), F.col(ORDER_USER_ID)
            both = F.concat(
                F.lit("item's "), item_user.cast("string"),
                F.lit(", order's "), order_user.cast("string"),
            )  # fmt: skip
            frame = frame.withColumn(USER_MISMATCH, F.when(item_user != order_user, both))
        else:
            frame = frame.withColumn(USER_MISMATCH, F.lit(None).cast("string"))
    return frame


def known_rows(batch_rows: DataFrame | None, curated_rows: DataFrame, key: str) -> DataFrame:
    """Rows of a referenced dataset as known after this batch: batch rows win over curated."""
    columns = curated_rows.columns
    if batch_rows is None:
        return curated_rows
    batch_rows = batch_rows.select(*columns).where(F.col(key).isNotNull()).dropDuplicates([key])
    older = curated_rows.join(batch_rows.select(key), on=key, how="left_anti")
    return batch_rows.unionByName(older)


@dataclass
class ValidationReport:
    batch_id: str
    dataset: str
    files: list[str]
    rows: int
    success: bool
    failures: list[RuleFailure] = field(default_factory=list)
    rules_evaluated: int = 0
    data_docs: str | None = None
    # the Step Functions execution that ran this validation (custody reads only its own results)
    execution_id: str | None = None

    def messages(self) -> list[str]:
        return [f.describe(self.dataset) for f in self.failures]

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "dataset": self.dataset,
            "success": self.success,
            "files": self.files,
            "rows": self.rows,
            "rules_evaluated": self.rules_evaluated,
            "failed_rules": [
                f.as_dict() | {"message": f.describe(self.dataset)} for f in self.failures
            ],
            "data_docs": self.data_docs,
            "execution_id": self.execution_id,
        }


def file_failures(
    dataset: Dataset, files: list[DataFile], spark: SparkSession | None = None
) -> tuple[list[RuleFailure], list[DataFile]]:
    """Per-file problems, named by file (GX sees only the union of all files), and the files
    Spark can read. A file that is not UTF-8 CSV text at all is reported and left out; a file
    with a wrong header is reported and still read, so the Data Docs show its columns.
    ``spark`` scans files read in place (direct I/O) for invalid UTF-8 past their first bytes
    (ingest.unreadable_reasons); local files need none."""
    failures = []
    readable = []
    for data_file, reason in zip(files, unreadable_reasons(spark, files), strict=True):
        if reason is not None:
            failures.append(_file_failure("CSV text file", data_file, error=reason))
            continue
        readable.append(data_file)
        if file_has_no_data_rows(data_file):
            failures.append(
                _file_failure("at least one row", data_file, error="the file has a header only")
            )
        error, details = _header_problem(dataset, data_file)
        if error or details:
            failures.append(_file_failure("exact columns", data_file, error=error, details=details))
    return failures, readable


def _file_failure(
    rule: str, data_file: DataFile, *, error: str | None = None, details: dict | None = None
) -> RuleFailure:
    return RuleFailure(
        rule,
        "file",
        column=None,
        unexpected_count=None,
        element_count=None,
        details=details or {},
        error=error,
        file=data_file.name,
    )


def _header_problem(
    dataset: Dataset, data_file: DataFile
) -> tuple[str | None, dict[str, list[str]]]:
    try:
        header = file_header(data_file)
    except HeaderError as e:
        return str(e), {}
    if not header:
        return "the file is empty (no header row)", {}
    expected = set(dataset.column_names)
    problems = {
        "missing": sorted(expected - set(header)),
        "unexpected": sorted(set(header) - expected),
        "duplicated": sorted({name for name in header if header.count(name) > 1}),
    }
    return None, {kind: names for kind, names in problems.items() if names}


def read_checkable(spark: SparkSession, dataset: Dataset, files: list[DataFile]) -> DataFrame:
    return to_checkable(read_raw(spark, files), dataset)


class BatchFiles:
    """The batch's files in the store, grouped by dataset: downloaded on demand (staged), or,
    with ``direct``, named by their URIs with their first bytes read through the store.

    With the run's ``upload`` (``core.upload``, listed by intake when it planned the run), the
    files are exactly its versions: a file uploaded or replaced since is not this run's.
    Without one (a job started by hand), the folder as it is now.
    """

    def __init__(
        self,
        store: Store,
        batch_id: str,
        local_root: Path,
        *,
        direct: bool = False,
        upload: Upload | None = None,
    ) -> None:
        self.store = store
        self.batch_id = batch_id
        self.local_root = local_root
        self.direct = direct
        self.by_dataset: dict[str, list[str]] = {}
        self.sizes: dict[str, int] = {}
        self.unrecognised: list[str] = []
        self.read_keys: list[str] = []
        prefix = incoming_prefix(batch_id)
        listing = list(upload.files) if upload is not None else store.current_versions(prefix)
        self.versions: dict[str, UploadedFile] = {f.key: f for f in listing}
        # A folder with a manifest is exactly the files it lists (as the plan took them): a
        # file beside them is neither checked nor a reference for the listed ones.
        listed: set[str] | None = None
        manifest = self.versions.get(prefix + MANIFEST_MARKER)
        if manifest is not None:
            body = store.get_bytes(manifest.key, version_id=manifest.version_id)
            listed = set(read_manifest(body.decode("utf-8-sig")))
        for stored in listing:
            self.sizes[stored.key] = stored.size
            relative = stored.key[len(prefix) :]
            if relative.startswith("_") or relative == MANIFEST_MARKER:
                continue
            if listed is not None and relative not in listed:
                continue
            dataset = dataset_of_file(relative)
            if dataset is None:
                self.unrecognised.append(stored.key)
            else:
                self.by_dataset.setdefault(dataset, []).append(stored.key)

    def files(self, dataset: str) -> list[DataFile]:
        keys = sorted(self.by_dataset.get(dataset, []))
        self.read_keys += keys
        if self.direct:
            # Spark reads the current objects: each must still be this run's version
            self.check_unchanged(keys)
            return [
                DataFile(
                    None,
                    key,
                    uri=self.store.uri(key),
                    size=self.sizes[key],
                    head=self.store.get_range(key, 0, HEAD_BYTES) if self.sizes[key] else b"",
                )
                for key in keys
            ]
        versions = {key: self.versions[key].version_id for key in keys}
        paths = self.store.download(keys, self.local_root, versions=versions)
        return [DataFile(path, key) for path, key in zip(paths, keys, strict=True)]

    def check_unchanged(self, keys: list[str]) -> None:
        """Raise UploadReplacedError when a file is no longer the version this run takes."""
        replaced = [
            key
            for key in keys
            if (head := self.store.head(key)) is None or not self.versions[key].is_version_of(head)
        ]
        if replaced:
            raise UploadReplacedError(
                f"batch {self.batch_id}: {', '.join(replaced)} replaced or removed since this "
                "run was planned (Spark reads the objects in place): no verdict; the files stay "
                f"in incoming/ for `ecom-pipeline replay {self.batch_id}`"
            )


class UploadReplacedError(RuntimeError):
    """A file Spark reads in place changed during the run (direct I/O): no verdict on it."""


@dataclass
class CheckOutcome:
    """What checking one dataset's local files found (no S3 involved)."""

    rows: int
    failures: list[RuleFailure]
    success: bool
    rules_evaluated: int
    docs_dir: Path | None
    docs_page: str | None
    staged_dir: Path | None  # the accepted rows as Parquet, when the dataset passed
    staged_uri: str | None = None  # ... written there by Spark instead (direct I/O)
    files_refused: int = 0  # files not read at all (not UTF-8 CSV text)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, for profiling


def check_dataset(
    spark: SparkSession,
    dataset: Dataset,
    files: list[DataFile],
    *,
    known_references: Callable[[], dict[str, DataFrame]],
    run_name: str,
    work: Path,
    stage_uri: str | None = None,
) -> CheckOutcome:
    """The validation job on a dataset's files: per-file checks, one parse, the GX suite, and
    on success the accepted rows written as Parquet to ``work/staged``, or by Spark to
    ``stage_uri`` when given (direct I/O).

    ``known_references`` gives the referenced datasets' known rows (only called for a dataset
    with foreign keys). The parsed frame is cached once and every expectation reads the cache.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    failures, readable = file_failures(dataset, files, spark)
    if not readable:
        # No file is CSV text: nothing for Spark and the suite to check (they would only
        # report every column missing), so the dataset is refused before Spark reads anything.
        return CheckOutcome(
            rows=0,
            failures=failures,
            success=False,
            rules_evaluated=0,
            docs_dir=None,
            docs_page=None,
            staged_dir=None,
            files_refused=len(files),
            seconds=seconds,
        )
    with logs.step(log, "read", files=len(readable), refused_files=len(files) - len(readable)):
        frame = read_checkable(spark, dataset, readable)
        if dataset.foreign_keys:
            frame = with_reference_checks(frame, dataset, known_references())
        frame = frame.cache()
        rows = frame.count()
    seconds["read"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with logs.step(log, "expectations", rows=rows) as outcome_fields:
        outcome = run_suite(
            frame,
            dataset,
            checkable_columns=checkable_columns(dataset),
            run_name=run_name,
            project_dir=work / "gx-project",
        )
        outcome_fields["failed_rules"] = len(outcome.failures)
    seconds["expectations"] = time.perf_counter() - clock
    failures.extend(outcome.failures)
    success = outcome.success and not failures
    staged = None
    if success:
        clock = time.perf_counter()
        with logs.step(log, "stage accepted rows", rows=rows, to=stage_uri or "work dir"):
            if stage_uri is None:
                staged = work / "staged"
            accepted(frame, dataset).write.mode("overwrite").options(
                **parquet_options(dataset)
            ).parquet(stage_uri or str(staged))
        seconds["stage"] = time.perf_counter() - clock
    frame.unpersist()
    return CheckOutcome(
        rows=rows,
        failures=failures,
        success=success,
        rules_evaluated=outcome.evaluated,
        docs_dir=outcome.docs_dir,
        docs_page=outcome.docs_page,
        staged_dir=staged,
        staged_uri=stage_uri if success else None,
        files_refused=len(files) - len(readable),
        seconds=seconds,
    )


def validate_dataset(
    spark: SparkSession,
    config: Settings,
    batch_id: str,
    dataset_name: str,
    *,
    execution_id: str | None = None,
) -> ValidationReport:
    """Check one dataset of a batch; on success stage its accepted rows for the KPI job."""
    started = time.perf_counter()
    dataset = DATASETS[dataset_name]
    logs.bind(batch_id=batch_id, dataset=dataset_name, job="validate")
    store = open_store(config)
    work = config.work_dir / "validate" / batch_id / dataset_name
    shutil.rmtree(work, ignore_errors=True)
    planned = store.get_json_or_none(run_upload_key(batch_id, config.run_id))
    batch = BatchFiles(
        store,
        batch_id,
        work / "s3",
        direct=config.direct_io,
        upload=Upload.from_document(planned) if planned is not None else None,
    )
    files = batch.files(dataset_name)
    if not files:
        raise ValueError(
            f"batch {batch_id} has no {dataset_name} files under {incoming_prefix(batch_id)}"
        )
    checked = check_dataset(
        spark,
        dataset,
        files,
        known_references=lambda: _known_references(spark, dataset, batch, store, work),
        run_name=batch_id,
        work=work,
        stage_uri=store.uri(staging_prefix(batch_id, config.run_id, dataset_name))
        if config.direct_io
        else None,
    )
    if config.direct_io:  # Spark has read every file now: still the versions it set out to read
        batch.check_unchanged(batch.read_keys)
    rows = checked.rows
    report = ValidationReport(
        batch_id=batch_id,
        dataset=dataset_name,
        files=[f.name for f in files],
        rows=rows,
        success=checked.success,
        failures=checked.failures,
        rules_evaluated=checked.rules_evaluated,
        execution_id=execution_id,
    )
    if checked.docs_dir is not None:
        prefix = data_docs_prefix(batch_id, dataset_name)
        store.upload_dir(checked.docs_dir, prefix, skip_hidden=False)
        report.data_docs = store.uri(f"{prefix}{checked.docs_page or 'index.html'}")
    if checked.staged_dir is not None:
        with logs.step(log, "upload accepted rows", rows=rows):
            stage = staging_prefix(batch_id, config.run_id, dataset_name)
            store.delete([o.key for o in store.list(stage)])
            store.upload_dir(checked.staged_dir, stage)
    store.put_json(result_key(batch_id, dataset_name), report.as_dict())
    from ecom_pipeline.read.docs_index import publish_index  # the cross-batch Data Docs index

    with logs.step(log, "publish data docs index") as index_fields:
        index_fields["index"] = store.uri(publish_index(store))
    for message in report.messages():
        log.error(message, extra={"event": "rule_failed"})
    logs.emit_metrics(
        log,
        {"job": "validate", "dataset": dataset_name},
        {
            "FilesRead": len(files),
            "FilesRefused": checked.files_refused,
            "RowsRead": rows,
            "RulesFailed": len(report.failures),
            # a failed rule refuses the whole batch: every row read is rejected with it
            "RowsRejected": 0 if report.success else rows,
            # bad rows summed over the failed rules (a row breaking two rules counts twice)
            "RuleViolations": sum(f.unexpected_count or 0 for f in report.failures),
            "BatchRejected": 0 if report.success else 1,
            **{logs.metric_name(step): round(s, 3) for step, s in checked.seconds.items()},
            "ValidationSeconds": round(time.perf_counter() - started, 3),
        },
        dict.fromkeys(["ValidationSeconds", *map(logs.metric_name, checked.seconds)], "Seconds"),
    )
    log.info(
        "validation %s",
        "passed" if report.success else "failed",
        extra={"event": "validation_result", "rows": rows, "failed_rules": len(report.failures)},
    )
    return report


def _known_references(
    spark: SparkSession, dataset: Dataset, batch: BatchFiles, store: Store, work: Path
) -> dict[str, DataFrame]:
    targets = sorted({fk.dataset for fk in dataset.foreign_keys})
    files = {name: batch.files(name) for name in targets}
    if batch.direct:
        curated = {name: read_curated_at(spark, store, DATASETS[name]) for name in targets}
        return known_references(spark, dataset, files, curated=curated)
    curated_dirs = {
        name: download_curated(store, DATASETS[name], work / "store") for name in targets
    }
    return known_references(spark, dataset, files, curated_dirs)


def known_references(
    spark: SparkSession,
    dataset: Dataset,
    batch_files: dict[str, list[DataFile]],
    curated_dirs: Mapping[str, Path] | None = None,
    *,
    curated: Mapping[str, DataFrame] | None = None,
) -> dict[str, DataFrame]:
    """Known rows of each dataset ``dataset`` refers to: the batch's files of it and its
    curated store, staged to ``curated_dirs[name]`` (missing or empty: nothing yet) or read in
    place (``curated[name]``, direct I/O)."""
    known = {}
    for fk in dataset.foreign_keys:
        target = DATASETS[fk.dataset]
        if curated is not None:
            curated_rows = curated[target.name]
        else:
            curated_rows = read_curated(spark, (curated_dirs or {})[target.name], target)
        # empty: the optimizer drops the anti-join and union with it, so the batch's rows of
        # the target are parsed once, not twice
        curated_rows = empty_as_local(curated_rows)
        keep = [fk.target_column] + (["user_id"] if target.name == "orders" else [])
        candidates = batch_files.get(target.name, [])
        readable = [
            f
            for f, reason in zip(candidates, unreadable_reasons(spark, candidates), strict=True)
            if reason is None
        ]
        batch_rows = read_checkable(spark, target, readable) if readable else None
        if batch_rows is not None and not set(keep) <= set(batch_rows.columns):
            batch_rows = None  # that file's own validation reports the missing columns
        if batch_rows is not None:
            batch_rows = batch_rows.select(*keep)
        known[target.name] = known_rows(batch_rows, curated_rows.select(*keep), fk.target_column)
    return known
