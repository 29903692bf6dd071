"""``ecom-pipeline check DIR``: the pipeline's validation of a folder of CSV files, run on this
machine before the folder is uploaded, for the people who produce the files.

No emulator and no AWS. The folder's files are planned as intake plans a batch
(``core.planning.plan_execution``: a file whose name fits no dataset refuses the batch with the
intake rule), then each dataset goes through the validation job's own steps
(``tasks/validation.py``): the per-file checks, the parse, the reference checks and the dataset's
Great Expectations suite. References between datasets are checked within the folder, as for a
batch that arrives first (no curated store yet), so a folder that passes here passes the
pipeline's validation as a first batch.

What it adds for people: each bad row's line number in its file, and every bad row (up to
:data:`BAD_ROWS_PER_RULE` per rule) written to a CSV file.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecom_pipeline.adapters.curated_store import curated_schema
from ecom_pipeline.adapters.quality import RuleFailure, run_suite
from ecom_pipeline.core.contract import DATASET_ORDER, DATASETS, Dataset, dataset_of_file
from ecom_pipeline.core.layout import incoming_prefix
from ecom_pipeline.core.planning import (
    EMPTY_BATCH_RULE,
    INTAKE_RULE,
    MARKERS,
    EmptyBatchError,
    plan_execution,
)
from ecom_pipeline.core.tiers import BatchTooLargeError
from ecom_pipeline.tasks.validation import (
    ORPHAN_SUFFIX,
    checkable_columns,
    file_failures,
    known_references,
    with_reference_checks,
)
from ecom_pipeline.transforms.ingest import (
    MALFORMED_ROW,
    MISSING_SUFFIX,
    SOURCE_FILE,
    UNPARSABLE_SUFFIX,
    DataFile,
    read_raw,
    to_checkable,
)

log = logging.getLogger(__name__)

EXPECTED_FILES = "products*.csv, orders*.csv, order_items*.csv"
# The intake refusal's text, as the state machine's intake notice words it.
UNRECOGNISED_ERROR = f"files whose names fit no dataset (expected {EXPECTED_FILES})"
# A rule for a batch above the pipeline's size limit (the notice gives size and limit only).
SIZE_RULE = "batch size within the limit"
# Each row's place among its file's rows, 0 for the first after the header (see read_numbered).
RECORD = "__record"
# multiLine CSV files are never split, so each file is one partition of the read, and
# monotonically_increasing_id puts the partition in the upper 31 bits and the row's place in
# the partition in the lower 33.
_ROW_IN_PARTITION = (1 << 33) - 1
# Bad rows kept per rule, in the CSV file (the count printed is always the full count).
BAD_ROWS_PER_RULE = 1000
# Bad rows printed per rule; the CSV file has the rest.
PRINTED_PER_RULE = 5
# A bad row's text in the CSV file is cut here (an unclosed quote can run to the end of a file).
ROW_TEXT_LIMIT = 2000
BAD_ROWS_HEADER = ("file", "line", "dataset", "rule", "column", "value", "row")


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a batch folder (one line), or None: it must be a folder holding
    at least one CSV file. The pipeline would refuse such a batch only after starting it."""
    try:
        if not path.exists():
            return f"{path}: no such folder"
        if not path.is_dir():
            return f"{path}: a file, not a folder (a batch is a folder of CSV files)"
        files = [p for p in path.rglob("*") if p.is_file()]
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror or e})"
    if not files:
        return f"{path}: the folder is empty (a batch holds {EXPECTED_FILES})"
    if not any(p.suffix.lower() == ".csv" for p in files):
        return f"{path}: no CSV file in the folder (a batch holds {EXPECTED_FILES})"
    return None


@dataclass(frozen=True)
class BadRow:
    """One broken rule on one row (or on a whole file or dataset: no line)."""

    file: str
    line: int | None
    dataset: str
    rule: str
    column: str
    value: str
    row: str = ""


@dataclass(frozen=True)
class IntakeRefusal:
    """Why intake would refuse the folder as a batch before validating anything."""

    rule: str
    message: str
    files: tuple[str, ...] = ()


@dataclass
class DatasetCheck:
    dataset: str
    files: list[str]
    rows: int
    success: bool
    rules_evaluated: int
    seconds: float
    # each failed rule with the rows that broke it (one row without a line for a rule about a
    # whole file or the dataset)
    broken: list[tuple[RuleFailure, list[BadRow]]] = field(default_factory=list)

    @property
    def failures(self) -> list[RuleFailure]:
        return [failure for failure, _ in self.broken]

    @property
    def bad_rows(self) -> list[BadRow]:
        return [row for _, rows in self.broken for row in rows]


@dataclass
class FolderCheck:
    folder: Path
    files: int
    refusal: IntakeRefusal | None
    datasets: list[DatasetCheck]
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return self.refusal is None and all(d.success for d in self.datasets)

    @property
    def bad_rows(self) -> list[BadRow]:
        rows = []
        if self.refusal is not None:
            rows += [
                BadRow(f, None, "", self.refusal.rule, "", self.refusal.message)
                for f in self.refusal.files or ("",)
            ]
        for checked in self.datasets:
            rows += checked.bad_rows
        return rows

    @property
    def rules_failed(self) -> int:
        return (self.refusal is not None) + sum(
            len({f.rule for f in d.failures}) for d in self.datasets
        )


def default_bad_rows_path(folder: Path) -> Path:
    """Next to the folder, never in it (a file in it would be part of the batch)."""
    folder = folder.resolve()
    return folder.parent / f"{folder.name}.bad-rows.csv"


def check_folder(
    spark: Callable[[], SparkSession],
    folder: Path,
    *,
    work: Path,
    on_dataset: Callable[[DatasetCheck], None] | None = None,
) -> FolderCheck:
    """Check ``folder`` as the pipeline checks a batch that arrives first. ``spark`` gives the
    session (started only when there is a dataset file); ``work`` is scratch space (the Great
    Expectations project); ``on_dataset`` hears of each dataset as soon as it is checked."""
    started = time.perf_counter()
    relatives = _relative_files(folder)
    refusal = _intake_refusal(folder, relatives)
    by_dataset: dict[str, list[DataFile]] = {}
    for relative in sorted(relatives):
        if relative.startswith("_") or relative in MARKERS:
            continue  # markers and side files: the validation job skips them too (BatchFiles)
        dataset = dataset_of_file(relative)
        if dataset is not None:
            # named as the user named the folder, so messages point at the files they know
            by_dataset.setdefault(dataset, []).append(
                DataFile(folder / relative, (folder / relative).as_posix())
            )
    checked = []
    for name in DATASET_ORDER:
        if name in by_dataset:
            result = check_dataset(
                spark(), DATASETS[name], by_dataset[name], by_dataset, work=work / name
            )
            checked.append(result)
            if on_dataset is not None:
                on_dataset(result)
    return FolderCheck(
        folder=folder,
        files=len(relatives),
        refusal=refusal,
        datasets=checked,
        seconds=time.perf_counter() - started,
    )


def _relative_files(folder: Path) -> dict[str, int]:
    """Every file below the folder (hidden ones too, as run-local uploads them): size by
    relative path."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _intake_refusal(folder: Path, relatives: Mapping[str, int]) -> IntakeRefusal | None:
    """What the trigger and the state machine's intake check decide, from the same plan."""
    batch_id = "check"
    prefix = incoming_prefix(batch_id)
    try:
        plan = plan_execution(
            "local", batch_id, [(prefix + relative, size) for relative, size in relatives.items()]
        )
    except EmptyBatchError:
        return IntakeRefusal(EMPTY_BATCH_RULE, f"no dataset file (expected {EXPECTED_FILES})")
    except BatchTooLargeError as e:
        return IntakeRefusal(SIZE_RULE, str(e).replace(f"batch {batch_id!r}", str(folder)))
    unrecognised = [(folder / key[len(prefix) :]).as_posix() for key in plan["unrecognised_files"]]
    if unrecognised:
        # the plan names the first ones only (the execution's input stays small): say so
        count = plan["unrecognised_count"]
        shown = "" if count == len(unrecognised) else f"; {count}, the first {len(unrecognised)}:"
        return IntakeRefusal(INTAKE_RULE, UNRECOGNISED_ERROR + shown, tuple(unrecognised))
    return None


def read_numbered(spark: SparkSession, dataset: Dataset, files: Sequence[DataFile]) -> DataFrame:
    """The validation job's checkable frame (``validation.read_checkable``) plus :data:`RECORD`.

    Each file is read on its own and the frames are unioned by name, as ``read_raw`` unions
    files of different headers: the same rows and columns. Read alone, a file is one partition
    (see :data:`_ROW_IN_PARTITION`), so the id's lower bits number its rows in order.
    """
    raw = reduce(
        lambda left, right: left.unionByName(right, allowMissingColumns=True),
        [read_raw(spark, [data_file]) for data_file in files],
    )
    checkable = to_checkable(raw, dataset)
    return checkable.withColumn(
        RECORD, F.monotonically_increasing_id().bitwiseAND(F.lit(_ROW_IN_PARTITION))
    )


def check_dataset(
    spark: SparkSession,
    dataset: Dataset,
    files: list[DataFile],
    batch_files: Mapping[str, list[DataFile]],
    *,
    work: Path,
) -> DatasetCheck:
    """The validation job's steps (``validation.check_dataset``) on local files, without
    staging accepted rows, asking Great Expectations for every bad row (up to
    :data:`BAD_ROWS_PER_RULE` per rule) with its file and :data:`RECORD`."""
    started = time.perf_counter()
    failures, readable = file_failures(dataset, files, spark)
    rows, evaluated, success = 0, 0, False
    if readable:
        frame = read_numbered(spark, dataset, readable)
        if dataset.foreign_keys:
            frame = with_reference_checks(
                frame, dataset, first_batch_references(spark, dataset, batch_files)
            )
        frame = frame.cache()
        rows = frame.count()
        outcome = run_suite(
            frame,
            dataset,
            # RECORD is this command's own column: expected, so the column-set rule judges
            # exactly the columns the pipeline's does
            checkable_columns=[*checkable_columns(dataset), RECORD],
            run_name="check",
            project_dir=work / "gx-project",
            failure_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": [SOURCE_FILE, RECORD, dataset.key],
                "partial_unexpected_count": BAD_ROWS_PER_RULE,
            },
        )
        frame.unpersist()
        failures.extend(outcome.failures)
        evaluated = outcome.evaluated
        success = outcome.success and not failures
    return DatasetCheck(
        dataset=dataset.name,
        files=[f.name for f in files],
        rows=rows,
        success=success,
        rules_evaluated=evaluated,
        seconds=time.perf_counter() - started,
        broken=_broken(dataset, failures, files),
    )


def first_batch_references(
    spark: SparkSession, dataset: Dataset, batch_files: Mapping[str, list[DataFile]]
) -> dict[str, DataFrame]:
    """The referenced datasets' known rows for a batch that arrives first: its own files of
    them, and an empty curated store."""
    curated = {
        fk.dataset: spark.createDataFrame([], curated_schema(DATASETS[fk.dataset]))
        for fk in dataset.foreign_keys
    }
    return known_references(spark, dataset, dict(batch_files), curated=curated)


def value_label(column: str | None) -> str:
    """The name people know a rule's column by: the rule columns the parse adds carry the
    contract column's name and a suffix; a malformed row's column holds the whole row."""
    if not column:
        return ""
    if column == MALFORMED_ROW:
        return "row"
    for suffix in (UNPARSABLE_SUFFIX, MISSING_SUFFIX, ORPHAN_SUFFIX):
        if column.endswith(suffix):
            return column[: -len(suffix)]
    return column


def shown(value: Any) -> str:
    """A value as text for people: bare, quoted only when its edges or commas would hide it."""
    if value is None:
        return "(empty)"
    text = str(value)
    if text == "" or text != text.strip() or any(c in text for c in ",'\"\n\r"):
        return repr(text)
    return text


def _details(failure: RuleFailure) -> str:
    if failure.error:
        return failure.error
    return "; ".join(
        f"{kind}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
        for kind, value in failure.details.items()
    )


def _broken(
    dataset: Dataset, failures: list[RuleFailure], files: list[DataFile]
) -> list[tuple[RuleFailure, list[BadRow]]]:
    """Each failure with its bad rows, each row with its line and text."""
    paths = {f.name: f.local_path for f in files if f.local_path is not None}
    wanted: dict[str, set[int]] = {}
    for failure in failures:
        for row in failure.rows:
            if row.get(RECORD) is not None and row.get(SOURCE_FILE) in paths:
                wanted.setdefault(row[SOURCE_FILE], set()).add(int(row[RECORD]))
    located = {name: record_lines(paths[name], records) for name, records in wanted.items()}
    broken = []
    for failure in failures:
        if not failure.rows:
            header = failure.rule == "exact columns" and failure.file is not None
            whole = BadRow(
                file=failure.file or "",
                # a header problem is on line 1; the other file rules concern the whole file
                line=1 if header else None,
                dataset=dataset.name,
                rule=failure.rule,
                column="",
                value=_details(failure),
            )
            broken.append((failure, [whole]))
            continue
        rows = []
        for row in failure.rows:
            name = str(row.get(SOURCE_FILE) or "")
            record = row.get(RECORD)
            line, text = (
                located.get(name, {}).get(int(record), (None, ""))
                if record is not None
                else (None, "")
            )
            rows.append(
                BadRow(
                    file=name,
                    line=line,
                    dataset=dataset.name,
                    rule=failure.rule,
                    column=value_label(failure.column),
                    value=shown(row.get(failure.column)),
                    row=text,
                )
            )
        broken.append((failure, rows))
    return broken


class _Lines:
    """A file's lines as csv.reader takes them, keeping those of the record being read."""

    def __init__(self, handle: Iterator[str]) -> None:
        self._handle = handle
        self.current: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._handle)
        self.current.append(line)
        return line


def record_lines(path: Path, records: set[int]) -> dict[int, tuple[int, str]]:
    """For the wanted records of a CSV file (0: the first after the header), the line each
    starts on and its text. Records are counted as Spark's reader counts them: the header
    first, a record may span lines inside quotes, an empty line is no record (a line of blanks
    is one)."""
    found: dict[int, tuple[int, str]] = {}
    if not records:
        return found
    last = max(records)
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        lines = _Lines(handle)
        reader = csv.reader(lines)
        record = -2  # the header will be -1
        line_before = 0
        while record < last:
            lines.current = []
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error:
                # the rest cannot be parsed (a field past csv's size limit, as an unclosed
                # quote can make): the record started here and is the file's last
                if record + 1 in records:
                    found[record + 1] = (line_before + 1, _text(lines.current))
                break
            start, line_before = line_before + 1, reader.line_num
            if not fields:
                continue
            record += 1
            if record in records:
                found[record] = (start, _text(lines.current))
    return found


def _text(lines: list[str]) -> str:
    text = "".join(lines).rstrip("\r\n")
    return text if len(text) <= ROW_TEXT_LIMIT else text[:ROW_TEXT_LIMIT] + "…"


def write_bad_rows(rows: Sequence[BadRow], path: Path) -> None:
    """The bad rows as CSV, ordered by file and line (an existing file is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: (r.file, r.line or 0, r.dataset, r.rule))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BAD_ROWS_HEADER)
        for row in ordered:
            writer.writerow(
                (
                    row.file,
                    "" if row.line is None else row.line,
                    row.dataset,
                    row.rule,
                    row.column,
                    row.value,
                    row.row,
                )
            )


def _where(row: BadRow) -> str:
    return f"{row.file} line {row.line}" if row.line is not None else row.file


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' * (n != 1)}"


def dataset_lines(checked: DatasetCheck) -> list[str]:
    """What people read about one dataset: its verdict, then each failed rule and its rows."""
    read = f"{_count(checked.rows, 'row')} in {_count(len(checked.files), 'file')}"
    took = f"({checked.seconds:.1f} s)"
    if checked.success:
        return [f"{checked.dataset}: PASSED, {read}, {checked.rules_evaluated} rules {took}"]
    broken = len(dict.fromkeys(f.rule for f in checked.failures))
    if checked.rules_evaluated:
        summary = f"{read}, {broken} of {checked.rules_evaluated} rules broken"
    else:  # as in the validation job: no file is CSV text, so the suite had nothing to read
        summary = f"{_count(broken, 'rule')} broken, no file could be read"
    lines = [f"{checked.dataset}: FAILED, {summary} {took}"]
    for failure, rows in checked.broken:
        if not failure.rows:
            if failure.file is None and failure.error:
                lines.append(f"  rule '{failure.rule}' could not be checked: {failure.error}")
            else:
                where = rows[0].file or checked.dataset
                lines.append(f"  rule '{failure.rule}' failed for {where}: {rows[0].value}")
            continue
        lines.append(
            f"  rule '{failure.rule}' failed on {failure.unexpected_count} of "
            f"{_count(failure.element_count or 0, 'row')}"
        )
        lines += [f"    {_where(row)}: {row.column}={row.value}" for row in rows[:PRINTED_PER_RULE]]
        more = (failure.unexpected_count or 0) - PRINTED_PER_RULE
        if more > 0:
            kept = (
                "" if len(rows) >= (failure.unexpected_count or 0) else f" (the first {len(rows)})"
            )
            lines.append(f"    and {_count(more, 'more row')}: see the bad-rows file{kept}")
    return lines


def refusal_lines(refusal: IntakeRefusal) -> list[str]:
    lines = [f"refused at intake: rule '{refusal.rule}': {refusal.message}"]
    lines += [f"  {name}" for name in refusal.files]
    return lines
