"""Reading a dataset's CSV files and turning text into typed, checkable columns.

Every column is read as text first, so a value that does not parse is kept (in a
``<column>__unparsable`` column) and counted by validation instead of silently becoming null.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from ecom_pipeline.core.contract import (
    LABEL_MAX_BYTES,
    MONEY_PRECISION,
    MONEY_SCALE,
    PARSE_PATTERNS,
    Dataset,
    Kind,
)

SOURCE_FILE = "__source_file"
MALFORMED_ROW = "__malformed_row"
UNPARSABLE_SUFFIX = "__unparsable"
MISSING_SUFFIX = "__missing"
_CORRUPT = "_corrupt_record"
# contract.LABEL_WHITESPACE at either end of a value (Java regex; \x0B is the vertical tab)
_LABEL_ENDS = r"^[ \t\n\r\f\x0B]+|[ \t\n\r\f\x0B]+$"
_TYPED_PREFIX = "__typed__"  # to_checkable's intermediate typed values (never in its output)

SPARK_TYPES: dict[Kind, DataType] = {
    Kind.ID: LongType(),
    Kind.INT: IntegerType(),
    Kind.MONEY: DecimalType(MONEY_PRECISION, MONEY_SCALE),
    Kind.TIMESTAMP: TimestampType(),
    Kind.TEXT: StringType(),
    Kind.LABEL: StringType(),
    Kind.STATUS: StringType(),
}
PARSED_KINDS = (Kind.ID, Kind.INT, Kind.MONEY, Kind.TIMESTAMP)
# Kinds whose values seldom repeat within a file: Parquet's dictionary encoding of them only
# grows the file (it falls back to plain once the dictionary is full) and, in the curated
# store's small per-day files, where it never fills, it costs a third of the write's CPU
# (10M items: 19.8 -> 12.4 s of task CPU, 428 -> 372 MiB)
UNDICTIONARIED_KINDS = (Kind.ID, Kind.MONEY, Kind.TIMESTAMP)


def unparsable_column(name: str) -> str:
    return f"{name}{UNPARSABLE_SUFFIX}"


def too_long_column(name: str) -> str:
    """The diagnostic column of a label column: the start of a value longer than
    LABEL_MAX_BYTES, with its length."""
    return f"{name}__too_long"


def missing_column(name: str) -> str:
    """The diagnostic column of a required column: its raw text ('' when absent) where a
    well-formed row has no value."""
    return f"{name}{MISSING_SUFFIX}"


def out_of_order_column(later: str, earlier: str) -> str:
    """The diagnostic column of a timestamp-order rule: both values where ``later`` is
    earlier than ``earlier`` (both present)."""
    return f"{later}__before__{earlier}"


def typed_schema(dataset: Dataset, *, with_order_date: bool = False) -> StructType:
    """The Spark schema of accepted rows (as kept in staging and the curated store)."""
    fields = [StructField(c.name, SPARK_TYPES[c.kind], nullable=True) for c in dataset.columns]
    if with_order_date:
        fields.append(StructField("order_date", DateType(), nullable=True))
    return StructType(fields)


def parquet_options(dataset: Dataset) -> dict[str, str]:
    """Writer options for a dataset's accepted rows as Parquet (staging and the curated store):
    dictionary encoding only for the columns whose values repeat (text, statuses, counts)."""
    return {
        f"parquet.enable.dictionary#{name}": "false"
        for name in dataset.columns_of_kind(*UNDICTIONARIED_KINDS)
    }


# How much of a file the checks before Spark read (the whole file when it is no bigger): the
# header, the file-level sniffing, the header-only check and, in direct I/O mode, the one ranged
# GET per file the driver makes.
HEAD_BYTES = 1 << 20
_HEADER_BYTES = 1 << 16
_CHUNK = 1 << 20
_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class DataFile:
    """A file of a batch: where Spark reads it and how people know it (its key).

    Staged mode: ``local_path`` is its downloaded copy. Direct I/O mode: ``uri`` is the Hadoop
    URI Spark reads, and ``size`` and ``head`` (its first :data:`HEAD_BYTES`) came from the
    store, so the driver never holds more of it than that.
    """

    local_path: Path | None
    name: str
    uri: str | None = None
    size: int | None = None
    head: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def location(self) -> str:
        """What Spark reads: the URI, else the local path."""
        return self.uri if self.uri is not None else str(self.local_path)

    @cached_property
    def file_size(self) -> int:
        return self.size if self.size is not None else self._local().stat().st_size

    @cached_property
    def first_bytes(self) -> bytes:
        """The file's first :data:`HEAD_BYTES` (all of it when smaller)."""
        if self.head is not None:
            return self.head
        with self._local().open("rb") as raw:
            return raw.read(HEAD_BYTES)

    @property
    def complete(self) -> bool:
        """True when :attr:`first_bytes` is the whole file."""
        return len(self.first_bytes) >= self.file_size

    @property
    def base_name(self) -> str:
        return PurePosixPath(self.name).name if self.local_path is None else self.local_path.name

    def _local(self) -> Path:
        if self.local_path is None:
            raise ValueError(f"{self.name} has no local copy (direct I/O)")
        return self.local_path


class HeaderError(ValueError):
    """A file whose first line cannot be read as a CSV header."""


def read_header(path: Path) -> list[str]:
    """The column names of a CSV file's header row ([] for an empty file).

    Reads only the first record, decoding as UTF-8 with or without a BOM.
    """
    with path.open("rb") as raw:
        return header_of(raw.read(_HEADER_BYTES), path.name)


def header_of(head: bytes, file_name: str) -> list[str]:
    """The header row's column names from a file's first bytes (see :func:`read_header`)."""
    head = head[:_HEADER_BYTES]
    if not head:
        return []
    text = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    try:
        decoded = text.decode(head, final=False)
    except UnicodeDecodeError as e:
        raise HeaderError(f"{file_name}: header is not UTF-8 text ({e.reason})") from e
    first_record = next(csv.reader(decoded.splitlines()), [])
    return [name.strip() for name in first_record]


def file_header(data_file: DataFile) -> list[str]:
    return header_of(data_file.first_bytes, data_file.base_name)


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be read as a UTF-8 CSV file at all, or None when it can.

    Spark would read such files anyway (invalid bytes become U+FFFD, a gzip stream becomes
    garbage rows), so they are refused before Spark sees them, with the reason spelled out.
    """
    return unreadable_reasons(None, [DataFile(path, path.name)])[0]


def unreadable_reasons(spark: SparkSession | None, files: Sequence[DataFile]) -> list[str | None]:
    """:func:`unreadable_reason` of each file, in order, in the same order of checks: empty,
    gzip, zip, JSON (from the first bytes), then invalid UTF-8 anywhere, then a wrong delimiter.

    Invalid UTF-8 within the first :data:`HEAD_BYTES` is found there. Past them, a local file
    is streamed on the driver (:func:`first_invalid_utf8`); a file read in place (direct I/O)
    is scanned by Spark itself (:func:`invalid_utf8_lines`), never downloaded to the driver.
    """
    early: list[str | None] = []
    invalid: dict[int, tuple[int, int | None] | None] = {}
    remote: list[int] = []
    for index, data_file in enumerate(files):
        reason = _sniffed_reason(data_file)
        early.append(reason)
        if reason is not None:
            continue
        found = first_invalid_utf8_of(data_file.first_bytes, final=data_file.complete)
        if found is None and not data_file.complete:
            if data_file.local_path is not None:
                found = first_invalid_utf8(data_file.local_path)
            else:
                remote.append(index)
        invalid[index] = found
    if remote:
        if spark is None:
            raise ValueError("checking files read in place for UTF-8 needs a SparkSession")
        scanned = invalid_utf8_lines(spark, [files[i] for i in remote])
        for position, index in enumerate(remote):
            invalid[index] = scanned.get(position)
    reasons = []
    for index, data_file in enumerate(files):
        if early[index] is not None:
            reasons.append(early[index])
            continue
        found = invalid[index]
        if found is not None:
            line, byte = found
            where = f"invalid byte 0x{byte:02x}" if byte is not None else "an invalid byte"
            reasons.append(f"not UTF-8 text: {where} on line {line}")
            continue
        reasons.append(_delimiter_reason(file_header(data_file)))
    return reasons


def _sniffed_reason(data_file: DataFile) -> str | None:
    if data_file.file_size == 0:
        return "the file is empty (0 bytes)"
    head = data_file.first_bytes[:4096]
    if head.startswith(b"\x1f\x8b"):
        return "not a CSV file: gzip-compressed data (upload the uncompressed .csv)"
    if head.startswith(b"PK\x03\x04"):
        return "not a CSV file: a zip archive"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "not a CSV file: it looks like JSON"
    return None


def _delimiter_reason(header: list[str]) -> str | None:
    if len(header) == 1:
        for delimiter, name in _DELIMITERS.items():
            if delimiter in header[0]:
                return (
                    f"wrong delimiter: the header is one column split by {name}s "
                    f"({header[0][:60]!r}); fields must be separated by commas"
                )
    return None


def has_no_data_rows(path: Path) -> bool:
    """True for a file holding a header and nothing else (blank lines aside)."""
    return file_has_no_data_rows(DataFile(path, path.name))


def file_has_no_data_rows(data_file: DataFile) -> bool:
    """:func:`has_no_data_rows` from the file's first bytes: a file bigger than
    :data:`HEAD_BYTES` is taken to have rows (its rows are counted by the suite)."""
    if not data_file.complete:
        return False
    text = data_file.first_bytes.decode("utf-8-sig", errors="replace")
    records = [r for r in csv.reader(text.splitlines()) if any(field.strip() for field in r)]
    return len(records) <= 1


def first_invalid_utf8(path: Path) -> tuple[int, int] | None:
    """(line number, byte value) of the first byte that is not UTF-8, or None. Streams."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    lines_before = 1
    with path.open("rb") as raw:
        while chunk := raw.read(_CHUNK):
            try:
                decoder.decode(chunk, final=False)
            except UnicodeDecodeError as e:
                return lines_before + chunk[: e.start].count(b"\n"), chunk[e.start]
            lines_before += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return lines_before, 0
    return None


def first_invalid_utf8_of(data: bytes, *, final: bool) -> tuple[int, int] | None:
    """:func:`first_invalid_utf8` of bytes in memory; with ``final=False`` a sequence cut
    off at the end is not an error (the rest of the file may complete it)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        decoder.decode(data, final=False)
    except UnicodeDecodeError as e:
        return 1 + data[: e.start].count(b"\n"), data[e.start]
    if final:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return 1 + data.count(b"\n"), 0
    return None


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//)?")


def _plain_path(column: Column) -> Column:
    """Spark's ``_metadata.file_path`` as a plain path: scheme stripped (file:/p, file:///p,
    s3://bucket/key), percent-decoded; :func:`_plain_location` gives the same for a file."""
    without_scheme = F.regexp_replace(column, "^[A-Za-z][A-Za-z0-9+.-]*:(//)?", "")
    # A path keeps a literal "+" (only % escapes are encoded), but url_decode is Java's form
    # decoder, which reads "+" as a space: escape it first.
    return F.url_decode(F.regexp_replace(without_scheme, "\\+", "%2B"))


def _plain_uri(file_path: str) -> str:
    """:func:`_plain_path` on the driver: % escapes decoded, a "+" kept."""
    return unquote(_SCHEME.sub("", file_path))


def _plain_location(data_file: DataFile) -> str:
    if data_file.uri is None:
        return str(data_file._local().resolve())
    return _SCHEME.sub("", data_file.uri)


def invalid_utf8_lines(
    spark: SparkSession, files: Sequence[DataFile]
) -> dict[int, tuple[int, int | None]]:
    """For files Spark reads in place: index in ``files`` -> (line, byte) of the first byte
    that is not UTF-8, for the files that have one. One Spark scan of all the files as raw
    lines (``text`` keeps a line's bytes as they are; ``is_valid_utf8`` tests them on the
    executors) finds the files with an invalid line; a second scan of those files only counts
    the lines of each split; only those counts and each bad file's first bad line (cut at
    :data:`HEAD_BYTES`) reach the driver.

    A line's number is the lines of the splits before it plus its place in its split (rows of
    a split are read in order and ``monotonically_increasing_id`` counts them). Lines end at
    LF, CRLF or a lone CR here; the streaming check counts LF only.
    """
    index_of = {_plain_location(f): i for i, f in enumerate(files)}
    valid = F.is_valid_utf8("value")
    # one pass over every file: which have an invalid line (only bad rows are aggregated)
    bad_paths = (
        spark.read.text([f.location for f in files])
        .where(~valid)
        .select(F.col("_metadata.file_path").alias("file"))
        .distinct()
        .collect()
    )
    bad = sorted({index_of[p] for p in (_plain_uri(r.file) for r in bad_paths) if p in index_of})
    if not bad:
        return {}
    # then, for those files only, where their first invalid line is
    row = F.monotonically_increasing_id()
    lines = spark.read.text([files[i].location for i in bad]).select(
        F.col("_metadata.file_path").alias("file"),  # made plain on the driver, once a split
        F.col("_metadata.file_block_start").alias("block"),
        row.alias("row"),
        valid.alias("valid"),
        F.when(~valid, F.substring(F.col("value").cast("binary"), 1, HEAD_BYTES)).alias("bytes"),
    )
    bad_row = F.when(~F.col("valid"), F.col("row"))
    splits = (
        lines.groupBy("file", "block")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.min("row").alias("first_row"),
            F.min(bad_row).alias("bad_row"),
            F.min_by(F.col("bytes"), bad_row).alias("bad_bytes"),
        )
        .collect()
    )
    found: dict[int, tuple[int, int | None]] = {}
    for file in sorted({s["file"] for s in splits}):
        before = 0
        for split in sorted((s for s in splits if s["file"] == file), key=lambda s: s["block"]):
            if split["bad_row"] is None:
                before += split["rows"]
                continue
            line = before + split["bad_row"] - split["first_row"] + 1
            data = bytes(split["bad_bytes"] or b"")
            # the LF the line ended with: a sequence cut off by it is invalid at its start
            at = first_invalid_utf8_of(data + b"\n", final=False)
            index = index_of.get(_plain_uri(file))
            if index is not None:
                found[index] = (line, at[1] if at is not None else None)
            break
    return found


def csv_reader(spark: SparkSession, schema: StructType) -> DataFrameReader:
    """Spark's CSV reader as every dataset file is read: header row, RFC 4180 quoting, records
    that may span lines inside quotes, malformed rows kept (PERMISSIVE)."""
    return (
        spark.read.schema(schema)
        .option("header", True)
        .option("multiLine", True)
        # RFC 4180: a quote inside a quoted field is doubled ("").
        .option("quote", '"')
        .option("escape", '"')
        .option("mode", "PERMISSIVE")
        .option("encoding", "UTF-8")
    )


def read_raw(spark: SparkSession, files: Sequence[DataFile]) -> DataFrame:
    """All files of one dataset as text columns, named after each file's own header.

    Files may order their columns differently; they are read per header and unioned by name.
    Rows whose field count does not match the header keep their raw text in ``__malformed_row``.
    """
    by_header: dict[tuple[str, ...], list[DataFile]] = {}
    for data_file in files:
        header = tuple(file_header(data_file))
        by_header.setdefault(header, []).append(data_file)
    frames = []
    for header, group in by_header.items():
        if not header:
            continue
        schema = StructType(
            [StructField(name, StringType()) for name in header]
            + [StructField(_CORRUPT, StringType())]
        )
        names = F.create_map(
            *[part for f in group for part in (F.lit(_plain_location(f)), F.lit(f.name))]
        )
        # Spark reports file:/path, file:///path or s3://bucket/key, percent-encoded; compare
        # plain paths.
        read_path = _plain_path(F.col("_metadata.file_path"))
        frame = (
            csv_reader(spark, schema)
            .option("columnNameOfCorruptRecord", _CORRUPT)
            .csv([f.location for f in group])
            .withColumn(
                SOURCE_FILE,
                F.coalesce(names[read_path], F.regexp_extract(read_path, r"([^/]+)$", 1)),
            )
            .withColumnRenamed(_CORRUPT, MALFORMED_ROW)
        )
        frames.append(frame)
    if not frames:
        return spark.createDataFrame(
            [],
            StructType(
                [StructField(SOURCE_FILE, StringType()), StructField(MALFORMED_ROW, StringType())]
            ),
        )
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame, allowMissingColumns=True)
    return result


def _parse(raw: Column, kind: Kind) -> Column:
    text = F.trim(raw)
    if kind is Kind.TEXT:
        return F.when(text != "", raw)
    if kind is Kind.LABEL:
        label = F.regexp_replace(raw, _LABEL_ENDS, "")
        return F.when(label != "", label)
    if kind is Kind.STATUS:
        return F.when(text != "", F.lower(text))
    return F.when(text.rlike(PARSE_PATTERNS[kind]), text.try_cast(SPARK_TYPES[kind]))


def to_checkable(raw: DataFrame, dataset: Dataset) -> DataFrame:
    """Typed contract columns plus the diagnostic columns the validation suite checks.

    - a contract column present in the raw frame becomes its typed value (null when empty or
      unparsable); absent contract columns stay absent, so the column-set rule names them;
    - ``<column>__unparsable`` keeps the original text of values that do not parse (always
      present for parsed kinds, null when the column is absent);
    - ``<column>__missing`` (required columns) holds the raw text ('' for none) of a
      well-formed row without a value; a value that does not parse is its parse rule's, not
      this one's (null when the column is absent: the column-set rule names it);
    - ``<later>__before__<earlier>`` (the dataset's timestamp order) holds both values where
      the later one is earlier, both present;
    - columns the contract does not know are kept as text, so the column-set rule names them;
    - a malformed row (wrong field count) keeps only ``__malformed_row``: its fields are not
      trusted, so it is reported once, by that rule, and not again by every column rule.

    The rule columns turn every row-level rule into "this column is null", which GX computes
    for all of them in one aggregate over the cached frame; as ``row_condition`` or column-pair
    expectations each was a pass of its own (order_items: 51 Spark jobs, now 7).
    """
    well_formed = F.col(MALFORMED_ROW).isNull()
    # Each value is parsed (pattern and cast) once, in a first projection, and the second one
    # reads the result twice (the typed value and its __unparsable test): Spark does not merge
    # the two projections, since that would repeat the parse, and does not share a parse
    # inside conditional expressions (CASE WHEN) by itself.
    present = [c for c in dataset.columns if c.name in raw.columns]
    typed = {c.name: f"{_TYPED_PREFIX}{c.name}" for c in present}
    parsed_once = raw.select(
        *[F.col(name) for name in raw.columns],
        *[F.when(well_formed, _parse(F.col(c.name), c.kind)).alias(typed[c.name]) for c in present],
    )
    selected: list[Column] = []
    for column in dataset.columns:
        if column.name in raw.columns:
            raw_value = F.col(column.name)
            parsed = F.col(typed[column.name])
            selected.append(parsed.alias(column.name))
            if column.kind in PARSED_KINDS:
                bad_text = F.when(
                    well_formed & (F.trim(raw_value) != "") & parsed.isNull(), raw_value
                )
                selected.append(bad_text.alias(unparsable_column(column.name)))
            if column.kind is Kind.LABEL:
                too_long = F.concat(
                    F.substring(parsed, 1, 40), F.lit("... ("),
                    F.octet_length(parsed).cast(StringType()), F.lit(" bytes)"),
                )  # fmt: skip
                selected.append(
                    F.when(F.octet_length(parsed) > LABEL_MAX_BYTES, too_long).alias(
                        too_long_column(column.name)
                    )
                )
            if column.required:
                blank = parsed.isNull() if column.kind is Kind.LABEL else F.trim(raw_value) == ""
                absent = well_formed & (raw_value.isNull() | blank)
                selected.append(
                    F.when(absent, F.coalesce(raw_value, F.lit(""))).alias(
                        missing_column(column.name)
                    )
                )
        else:
            if column.kind in PARSED_KINDS:
                selected.append(_null_text(unparsable_column(column.name)))
            if column.kind is Kind.LABEL:
                selected.append(_null_text(too_long_column(column.name)))
            if column.required:
                selected.append(_null_text(missing_column(column.name)))
    for later, earlier in dataset.timestamp_order:
        name = out_of_order_column(later, earlier)
        if later in typed and earlier in typed:
            late, early = F.col(typed[later]), F.col(typed[earlier])
            both = F.concat(
                F.lit(f"{later} "), late.cast(StringType()),
                F.lit(f" < {earlier} "), early.cast(StringType()),
            )  # fmt: skip
            selected.append(F.when(late < early, both).alias(name))
        else:
            selected.append(_null_text(name))
    known = set(dataset.column_names) | {SOURCE_FILE, MALFORMED_ROW}
    extra = [F.col(name) for name in raw.columns if name not in known]
    return parsed_once.select(*selected, *extra, F.col(SOURCE_FILE), F.col(MALFORMED_ROW))


def _null_text(name: str) -> Column:
    return F.lit(None).cast(StringType()).alias(name)


def expected_checkable_columns(dataset: Dataset) -> list[str]:
    """The exact column set of a checkable frame built from a file with the right header."""
    names = []
    for column in dataset.columns:
        names.append(column.name)
        if column.kind in PARSED_KINDS:
            names.append(unparsable_column(column.name))
        if column.kind is Kind.LABEL:
            names.append(too_long_column(column.name))
        if column.required:
            names.append(missing_column(column.name))
    names += [out_of_order_column(later, earlier) for later, earlier in dataset.timestamp_order]
    return [*names, SOURCE_FILE, MALFORMED_ROW]


def accepted(checkable: DataFrame, dataset: Dataset) -> DataFrame:
    """The typed contract columns of a frame that passed validation."""
    return checkable.select(
        *[F.col(c.name).cast(SPARK_TYPES[c.kind]).alias(c.name) for c in dataset.columns]
    )


def with_order_date(rows: DataFrame, created_at: str = "created_at") -> DataFrame:
    """Add ``order_date``, the UTC date of the order's creation."""
    return rows.withColumn("order_date", F.to_date(F.col(created_at)))
