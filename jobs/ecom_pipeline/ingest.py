"""Reading a dataset's CSV files and turning text into typed, checkable columns.

Every column is read as text first, so a value that does not parse is kept (in a
``<column>__unparsable`` column) and counted by validation instead of silently becoming null.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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

from ecom_pipeline.contract import (
    MONEY_PRECISION,
    MONEY_SCALE,
    PARSE_PATTERNS,
    Dataset,
    Kind,
)

SOURCE_FILE = "__source_file"
MALFORMED_ROW = "__malformed_row"
UNPARSABLE_SUFFIX = "__unparsable"
_CORRUPT = "_corrupt_record"
_TYPED_PREFIX = "__typed__"  # to_checkable's intermediate typed values (never in its output)

SPARK_TYPES: dict[Kind, DataType] = {
    Kind.ID: LongType(),
    Kind.INT: IntegerType(),
    Kind.MONEY: DecimalType(MONEY_PRECISION, MONEY_SCALE),
    Kind.TIMESTAMP: TimestampType(),
    Kind.TEXT: StringType(),
    Kind.STATUS: StringType(),
}
PARSED_KINDS = (Kind.ID, Kind.INT, Kind.MONEY, Kind.TIMESTAMP)


def unparsable_column(name: str) -> str:
    return f"{name}{UNPARSABLE_SUFFIX}"


def typed_schema(dataset: Dataset, *, with_order_date: bool = False) -> StructType:
    """The Spark schema of accepted rows (as kept in staging and the curated store)."""
    fields = [StructField(c.name, SPARK_TYPES[c.kind], nullable=True) for c in dataset.columns]
    if with_order_date:
        fields.append(StructField("order_date", DateType(), nullable=True))
    return StructType(fields)


@dataclass(frozen=True)
class DataFile:
    """A file of a batch: where it is on local disk and how people know it (its S3 key)."""

    local_path: Path
    name: str


class HeaderError(ValueError):
    """A file whose first line cannot be read as a CSV header."""


def read_header(path: Path) -> list[str]:
    """The column names of a CSV file's header row ([] for an empty file).

    Reads only the first record, decoding as UTF-8 with or without a BOM.
    """
    with path.open("rb") as raw:
        head = raw.read(1 << 16)
    if not head:
        return []
    text = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    try:
        decoded = text.decode(head, final=False)
    except UnicodeDecodeError as e:
        raise HeaderError(f"{path.name}: header is not UTF-8 text ({e.reason})") from e
    first_record = next(csv.reader(decoded.splitlines()), [])
    return [name.strip() for name in first_record]


_CHUNK = 1 << 20
_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be read as a UTF-8 CSV file at all, or None when it can.

    Spark would read such files anyway (invalid bytes become U+FFFD, a gzip stream becomes
    garbage rows), so they are refused before Spark sees them, with the reason spelled out.
    """
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with path.open("rb") as raw:
        head = raw.read(4096)
    if head.startswith(b"\x1f\x8b"):
        return "not a CSV file: gzip-compressed data (upload the uncompressed .csv)"
    if head.startswith(b"PK\x03\x04"):
        return "not a CSV file: a zip archive"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "not a CSV file: it looks like JSON"
    invalid = first_invalid_utf8(path)
    if invalid is not None:
        line, byte = invalid
        return f"not UTF-8 text: invalid byte 0x{byte:02x} on line {line}"
    header = read_header(path)
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
    if path.stat().st_size > _CHUNK:
        return False
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
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
        header = tuple(read_header(data_file.local_path))
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
            *[part for f in group for part in (F.lit(str(f.local_path.resolve())), F.lit(f.name))]
        )
        # Spark reports file:/path or file:///path, percent-encoded; compare plain paths.
        local_path = F.url_decode(F.regexp_replace(F.col("_metadata.file_path"), "^file:(//)?", ""))
        frame = (
            csv_reader(spark, schema)
            .option("columnNameOfCorruptRecord", _CORRUPT)
            .csv([str(f.local_path) for f in group])
            .withColumn(
                SOURCE_FILE,
                F.coalesce(names[local_path], F.regexp_extract(local_path, r"([^/]+)$", 1)),
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
    if kind in (Kind.TEXT,):
        return F.when(text != "", raw)
    if kind is Kind.STATUS:
        return F.when(text != "", F.lower(text))
    return F.when(text.rlike(PARSE_PATTERNS[kind]), text.try_cast(SPARK_TYPES[kind]))


def to_checkable(raw: DataFrame, dataset: Dataset) -> DataFrame:
    """Typed contract columns plus the diagnostic columns the validation suite checks.

    - a contract column present in the raw frame becomes its typed value (null when empty or
      unparsable); absent contract columns stay absent, so the column-set rule names them;
    - ``<column>__unparsable`` keeps the original text of values that do not parse (always
      present for parsed kinds, null when the column is absent);
    - columns the contract does not know are kept as text, so the column-set rule names them;
    - a malformed row (wrong field count) keeps only ``__malformed_row``: its fields are not
      trusted, so it is reported once, by that rule, and not again by every column rule.
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
        elif column.kind in PARSED_KINDS:
            selected.append(F.lit(None).cast(StringType()).alias(unparsable_column(column.name)))
    known = set(dataset.column_names) | {SOURCE_FILE, MALFORMED_ROW}
    extra = [F.col(name) for name in raw.columns if name not in known]
    return parsed_once.select(*selected, *extra, F.col(SOURCE_FILE), F.col(MALFORMED_ROW))


def expected_checkable_columns(dataset: Dataset) -> list[str]:
    """The exact column set of a checkable frame built from a file with the right header."""
    names = []
    for column in dataset.columns:
        names.append(column.name)
        if column.kind in PARSED_KINDS:
            names.append(unparsable_column(column.name))
    return [*names, SOURCE_FILE, MALFORMED_ROW]


def accepted(checkable: DataFrame, dataset: Dataset) -> DataFrame:
    """The typed contract columns of a frame that passed validation."""
    return checkable.select(
        *[F.col(c.name).cast(SPARK_TYPES[c.kind]).alias(c.name) for c in dataset.columns]
    )


def with_order_date(rows: DataFrame, created_at: str = "created_at") -> DataFrame:
    """Add ``order_date``, the UTC date of the order's creation."""
    return rows.withColumn("order_date", F.to_date(F.col(created_at)))
