"""Writing KPI DataFrames to DynamoDB from the Spark executors.

Each partition builds its own client from a picklable :class:`AwsSettings`, sends its rows as
``batch_write_item`` requests of at most 25, and re-sends whatever DynamoDB leaves unprocessed
with exponential backoff and full jitter. Nothing but counters travels back to the driver.

Numbers are written in one canonical form (see :func:`format_number`), so writing the same row
twice gives the identical item, and the item read back from DynamoDB (which canonicalises
numbers itself) is the item that was written.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pyspark.accumulators import AccumulatorParam

from ecom_pipeline.adapters.aws import make_client
from ecom_pipeline.adapters.lock import LockLostError
from ecom_pipeline.core.aws_errors import error_code
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE,
    CATEGORY_TABLE_KEY,
    DATE_FORMAT,
    INDEXES,
    KEY_ATTRIBUTE_TYPES,
    ORDER_TABLE,
    ORDER_TABLE_KEY,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from ecom_pipeline.adapters.aws import AwsSettings

logger = logging.getLogger(__name__)

BATCH_SIZE = 25  # the most requests one BatchWriteItem call accepts
# Errors that mean "slow down": the whole call is retried like unprocessed items.
THROTTLING_ERRORS = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
MAX_NUMBER_DIGITS = 38  # DynamoDB keeps at most 38 significant digits

TABLE_KEYS: dict[str, tuple[str, ...]] = {
    CATEGORY_TABLE: CATEGORY_TABLE_KEY,
    ORDER_TABLE: ORDER_TABLE_KEY,
}


class DynamoWriteError(RuntimeError):
    """DynamoDB left items unprocessed after every attempt (throttling that did not clear)."""

    def __init__(self, table: str, unprocessed: int, attempts: int) -> None:
        self.table = table
        self.unprocessed = unprocessed
        self.attempts = attempts
        super().__init__(
            f"{unprocessed} item(s) not written to DynamoDB table {table!r}: still "
            f"unprocessed or throttled after {attempts} attempt(s) with backoff"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table, self.unprocessed, self.attempts))


class DuplicateKeyError(ValueError):
    """The DataFrame holds the same key more than once; its items would overwrite each other."""

    def __init__(self, table: str, keys: Sequence[Sequence[Any]]) -> None:
        self.table = table
        self.keys = [tuple(key) for key in keys]
        shown = ", ".join(repr(key) for key in self.keys[:5])
        super().__init__(
            f"duplicate key(s) for DynamoDB table {table!r}: {shown}; "
            "callers must pass one row per key"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table, self.keys))


# --- AttributeValues ---------------------------------------------------------------------------


def format_number(value: int | Decimal) -> str:
    """The canonical DynamoDB number text of ``value``.

    Plain positional notation (never an exponent), no trailing fractional zeros, ``0`` for any
    zero: ``Decimal("79153.50")`` -> ``"79153.5"``, ``Decimal("79153.56")`` -> ``"79153.56"``,
    ``Decimal("1E+2")`` -> ``"100"``. This is the form DynamoDB itself returns, so an item read
    back equals the item written, and equal numbers always give equal text.
    """
    if isinstance(value, bool):
        raise TypeError("a bool is not a number attribute")
    if isinstance(value, int):
        return str(value)
    if not value.is_finite():
        raise ValueError(f"DynamoDB numbers must be finite, got {value}")
    if value.is_zero():
        return "0"
    normal = value.normalize()
    if len(normal.as_tuple().digits) > MAX_NUMBER_DIGITS:
        raise ValueError(f"{value} has more than {MAX_NUMBER_DIGITS} significant digits")
    return format(normal, "f")


def to_attribute_value(value: Any) -> dict[str, Any]:
    """A low-level DynamoDB AttributeValue for one non-None Python value.

    ``str`` -> S, ``int``/``Decimal`` -> N (see :func:`format_number`), ``bool`` -> BOOL,
    ``datetime.date`` -> S in the contract's date format. ``float`` is refused: money and rates
    must be ``Decimal`` so the stored value is exactly the computed one.
    """
    if value is None:
        raise TypeError("None has no AttributeValue; leave the attribute out")
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | Decimal):
        return {"N": format_number(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, float):
        raise TypeError(f"float {value!r} refused: write money and rates as Decimal")
    if isinstance(value, dt.datetime):
        raise TypeError(f"datetime {value!r} refused: format it as a string first")
    if isinstance(value, dt.date):
        return {"S": value.strftime(DATE_FORMAT)}
    raise TypeError(f"no DynamoDB AttributeValue for {type(value).__name__} {value!r}")


def to_dynamo_item(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A low-level DynamoDB item: every attribute of ``row`` whose value is not None."""
    return {name: to_attribute_value(value) for name, value in row.items() if value is not None}


# --- Tables ------------------------------------------------------------------------------------


def table_key(table: str) -> tuple[str, ...]:
    """The key attributes (partition, then sort) of a contract table."""
    try:
        return TABLE_KEYS[table]
    except KeyError:
        raise ValueError(
            f"unknown table {table!r}: pass key=... or use one of {sorted(TABLE_KEYS)}"
        ) from None


def _key_schema(key: Sequence[str]) -> list[dict[str, str]]:
    return [
        {"AttributeName": name, "KeyType": key_type}
        for name, key_type in zip(key, ("HASH", "RANGE")[: len(key)], strict=True)
    ]


def table_definitions() -> list[dict[str, Any]]:
    """CreateTable keyword arguments for both KPI tables with their global secondary indexes,
    derived from the contract (``infra/template.yaml`` is checked against these)."""
    definitions = []
    for table, key in TABLE_KEYS.items():
        indexes = [index for index in INDEXES if index.table == table]
        names = list(key)
        for index in indexes:
            names += [name for name in index.key if name not in names]
        definition: dict[str, Any] = {
            "TableName": table,
            "KeySchema": _key_schema(key),
            "AttributeDefinitions": [
                {"AttributeName": name, "AttributeType": KEY_ATTRIBUTE_TYPES[name]}
                for name in names
            ],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if indexes:
            definition["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index.name,
                    "KeySchema": _key_schema(index.key),
                    "Projection": {"ProjectionType": "ALL"},
                }
                for index in indexes
            ]
        definitions.append(definition)
    return definitions


# --- Sending -----------------------------------------------------------------------------------


def send_batch(
    client: Any,
    table: str,
    requests: Sequence[Mapping[str, Any]],
    *,
    max_attempts: int = 8,
    base_delay: float = 0.05,
    sleep: Callable[[float], Any] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> None:
    """Send up to 25 write requests, re-sending UnprocessedItems until none are left.

    A call refused with a throttling error (``THROTTLING_ERRORS``, after the client's own
    retries) counts as an attempt that wrote nothing. When the call numbered ``attempt``
    (0, 1, ...) leaves items unprocessed, it sleeps
    ``rng() * base_delay * 2**attempt`` (exponential backoff with full jitter) and re-sends
    them. Raises :class:`DynamoWriteError` when items are still unprocessed after
    ``max_attempts`` calls; errors of the call itself (validation, missing table) propagate as
    botocore exceptions.
    """
    if len(requests) > BATCH_SIZE:
        raise ValueError(f"{len(requests)} requests in one batch; the limit is {BATCH_SIZE}")
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    pending = list(requests)
    for attempt in range(max_attempts):
        if not pending:
            return
        if attempt:
            delay = rng() * base_delay * 2 ** (attempt - 1)
            logger.debug(
                "%d request(s) unprocessed by %s, re-sending in %.3fs", len(pending), table, delay
            )
            sleep(delay)
        try:
            response = client.batch_write_item(RequestItems={table: pending})
        except ClientError as error:
            if error_code(error) not in THROTTLING_ERRORS:
                raise
            logger.debug("%s throttled %d request(s)", table, len(pending))
            continue  # nothing of this call was written: re-send all of it
        pending = list(response.get("UnprocessedItems", {}).get(table, []))
    if pending:
        raise DynamoWriteError(table, len(pending), max_attempts)


@dataclass
class PartitionResult:
    """What one partition did: items written, items left unwritten, repeated keys met."""

    written: int = 0
    unprocessed: int = 0
    duplicates: list[tuple[Any, ...]] = field(default_factory=list)
    lease_lost: str | None = None  # the guard's message, when it stopped the partition


def _request(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    if kind == "PutRequest":
        return {"PutRequest": {"Item": item}}
    return {"DeleteRequest": {"Key": item}}


def write_partition(
    rows: Iterable[Mapping[str, Any]],
    *,
    client_factory: Callable[[], Any],
    table: str,
    key: Sequence[str],
    kind: str = "PutRequest",
    max_attempts: int = 8,
    base_delay: float = 0.05,
    sleep: Callable[[float], Any] = time.sleep,
    rng: Callable[[], float] = random.random,
    guard: Callable[[Any], None] | None = None,
) -> PartitionResult:
    """Send one partition's rows as ``kind`` ("PutRequest" or "DeleteRequest") batches of 25.

    The client is only created when there is something to send. ``guard(client)``, when given,
    runs before each request and raises lock.LockLostError when the writer's lease is gone. A
    key met twice in the partition, DynamoDB leaving items unprocessed, or the guard stops the
    partition: nothing more is sent, and the rows not written are counted in ``unprocessed``.
    """
    if kind not in ("PutRequest", "DeleteRequest"):
        raise ValueError(f"unknown request kind {kind!r}")
    result = PartitionResult()
    seen: set[tuple[Any, ...]] = set()
    batch: list[dict[str, Any]] = []
    client = None
    iterator: Iterator[Mapping[str, Any]] = iter(rows)

    def flush() -> None:
        nonlocal client
        if client is None:
            client = client_factory()
        if guard is not None:
            guard(client)
        send_batch(
            client,
            table,
            batch,
            max_attempts=max_attempts,
            base_delay=base_delay,
            sleep=sleep,
            rng=rng,
        )
        result.written += len(batch)
        batch.clear()

    try:
        for row in iterator:
            item = to_dynamo_item(row)
            missing = [name for name in key if name not in item]
            if missing:
                raise ValueError(f"row for table {table!r} has no value for key {missing}: {row}")
            key_value = tuple(row[name] for name in key)
            if key_value in seen:
                result.duplicates.append(key_value)
                result.unprocessed += len(batch) + 1 + sum(1 for _ in iterator)
                batch.clear()
                break
            seen.add(key_value)
            if kind == "DeleteRequest":
                item = {name: item[name] for name in key}
            batch.append(_request(kind, item))
            if len(batch) == BATCH_SIZE:
                flush()
        if batch:
            flush()
    except DynamoWriteError as error:
        result.written += len(batch) - error.unprocessed
        result.unprocessed += error.unprocessed + sum(1 for _ in iterator)
    except LockLostError as error:
        result.lease_lost = str(error)
        result.unprocessed += len(batch) + sum(1 for _ in iterator)
    finally:
        if client is not None:
            client.close()
    return result


class _ListParam(AccumulatorParam):
    def zero(self, value: list[Any]) -> list[Any]:
        return []

    def addInPlace(self, value1: list[Any], value2: list[Any]) -> list[Any]:  # noqa: N802
        value1.extend(value2)
        return value1


def _run(
    df: DataFrame,
    table: str,
    settings: AwsSettings,
    *,
    key: Sequence[str],
    kind: str,
    max_attempts: int,
    base_delay: float,
    guard: Callable[[Any], None] | None,
) -> int:
    sc = df.sparkSession.sparkContext
    written = sc.accumulator(0)
    unprocessed = sc.accumulator(0)
    duplicates = sc.accumulator([], _ListParam())
    lease_lost = sc.accumulator([], _ListParam())
    key = tuple(key)

    def send_partition(rows: Iterable[Any]) -> None:
        result = write_partition(
            (row.asDict() for row in rows),
            client_factory=lambda: make_client(settings, "dynamodb"),
            table=table,
            key=key,
            kind=kind,
            max_attempts=max_attempts,
            base_delay=base_delay,
            guard=guard,
        )
        written.add(result.written)
        unprocessed.add(result.unprocessed)
        duplicates.add(result.duplicates)
        lease_lost.add([result.lease_lost] if result.lease_lost else [])

    df.foreachPartition(send_partition)
    if lease_lost.value:
        raise LockLostError(
            f"{lease_lost.value[0]} ({written.value} item(s) of table {table!r} written, "
            f"{unprocessed.value} not)"
        )
    if duplicates.value:
        raise DuplicateKeyError(table, duplicates.value)
    if unprocessed.value:
        raise DynamoWriteError(table, unprocessed.value, max_attempts)
    logger.info("%s: %d item(s) sent as %s", table, written.value, kind)
    return written.value


def _check_columns(df: DataFrame, table: str, key: Sequence[str]) -> None:
    missing = [name for name in key if name not in df.columns]
    if missing:
        raise ValueError(f"DataFrame for table {table!r} lacks key column(s) {missing}")


def write_items(
    df: DataFrame,
    table: str,
    settings: AwsSettings,
    *,
    key: Sequence[str] | None = None,
    max_attempts: int = 8,
    base_delay: float = 0.05,
    guard: Callable[[Any], None] | None = None,
) -> int:
    """Put every row of ``df`` as an item of ``table``; returns the number of items written.

    ``df``'s columns are the item attributes (None values are left out); ``key`` defaults to the
    contract's key of ``table``. Rows are sent from the executors, never collected. Callers pass
    one row per key: a key repeated within a partition raises :class:`DuplicateKeyError` (a
    repeat across partitions cannot be seen there and the last write wins). Raises
    :class:`DynamoWriteError` when items stay unprocessed after ``max_attempts``. Putting the
    same rows again leaves the table unchanged. With ``guard`` (lock.LeaseGuard), each request
    is sent only while the writer's lease holds; else lock.LockLostError, nothing more sent.
    """
    key = tuple(key) if key is not None else table_key(table)
    _check_columns(df, table, key)
    return _run(
        df,
        table,
        settings,
        key=key,
        kind="PutRequest",
        max_attempts=max_attempts,
        base_delay=base_delay,
        guard=guard,
    )


def delete_keys(
    df: DataFrame,
    table: str,
    settings: AwsSettings,
    *,
    key: Sequence[str] | None = None,
    max_attempts: int = 8,
    base_delay: float = 0.05,
    guard: Callable[[Any], None] | None = None,
) -> int:
    """Delete the item of every key in ``df`` (its key columns; others are ignored).

    Returns the number of delete requests sent (DynamoDB does not say which keys existed).
    Same batching, retries, guard and errors as :func:`write_items`.
    """
    key = tuple(key) if key is not None else table_key(table)
    _check_columns(df, table, key)
    return _run(
        df.select(*key),
        table,
        settings,
        key=key,
        kind="DeleteRequest",
        max_attempts=max_attempts,
        base_delay=base_delay,
        guard=guard,
    )
