"""Reading the KPI tables: every question is answered by DynamoDB Query, never Scan.

| question | request |
|---|---|
| one category over a date range | category table: ``category = :c AND order_date BETWEEN :from AND :to`` |
| all categories on one date, ranked by revenue | category table, index ``by-date``: ``order_date = :d``, ``daily_revenue`` descending |
| order KPIs over a date range | order table, index ``by-month``: one Query per month, ``order_month = :m AND order_date BETWEEN`` |
| the latest date with orders | order table, index ``by-month``: ``order_month = :m AND order_date <= :until``, descending, ``Limit`` 1, month by month backwards |

The request builders and the renderers are pure functions; :class:`KpiReader` is the thin I/O
around them: it sends the requests with ``query`` only and follows ``LastEvaluatedKey`` until
every page is read. Index names, key attributes and the month attribute come from the contract.
"""  # noqa: E501

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
    ReadTimeoutError,
)

from ecom_pipeline.adapters.aws import DEFAULT_REGION, AwsSettings, make_client, session
from ecom_pipeline.core.aws_errors import error_code, error_message
from ecom_pipeline.core.contract import (
    CATEGORY_BY_DATE_INDEX,
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_TABLE,
    CATEGORY_TABLE_KEY,
    DATE_FORMAT,
    MONTH_FORMAT,
    ORDER_BY_MONTH_INDEX,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_TABLE,
    WINDOW_DAYS,
    ExitCode,
)
from ecom_pipeline.read.report import format_table

log = logging.getLogger(__name__)

FORMATS = ("table", "json", "csv")
LOOKBACK_MONTHS = 36  # how far back from --to (or today) the latest day with orders is looked for
# A question with a valid form but no KPIs to show (e.g. a range before the first batch): like
# rejected data, retrying will not help.
EMPTY_RESULT = ExitCode.DATA_REJECTED
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DESERIALIZER = TypeDeserializer()
# Error codes meaning "these credentials or this identity will not do": fix the setup, not retry.
_IDENTITY_ERRORS = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "AccessDeniedException",
    "MissingAuthenticationTokenException",
}


class QueryError(Exception):
    """A question that cannot be answered, with the exit code the command returns for it."""

    def __init__(self, message: str, exit_code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)


# --- Dates -------------------------------------------------------------------------------------


def parse_date(text: str, *, name: str = "date") -> date:
    """A ``YYYY-MM-DD`` calendar date; anything else is a :class:`QueryError` naming ``name``."""
    value = (text or "").strip()
    if not _DATE.match(value):
        raise QueryError(f"bad {name} {text!r}: expected YYYY-MM-DD, e.g. 2025-03-25")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise QueryError(f"bad {name} {text!r}: there is no such day") from None


def day_text(day: date) -> str:
    return day.strftime(DATE_FORMAT)


def month_text(day: date) -> str:
    return day.strftime(MONTH_FORMAT)


def _first_of_month(day: date) -> date:
    return day.replace(day=1)


def _last_of_month(day: date) -> date:
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return following - timedelta(days=1)


def _previous_month(day: date) -> date:
    return _first_of_month(_first_of_month(day) - timedelta(days=1))


@dataclass(frozen=True)
class DateRange:
    """Calendar days from ``start`` to ``end``, both included."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise QueryError(f"--from {self.start} is after --to {self.end}")

    @classmethod
    def of_month(cls, month: str) -> DateRange:
        """Every day of a ``YYYY-MM`` month."""
        first = datetime.strptime(month, MONTH_FORMAT).date()
        return cls(first, _last_of_month(first))

    @classmethod
    def last_days(cls, end: date, days: int) -> DateRange:
        if days < 1:
            raise QueryError(f"--last must be at least 1, got {days}")
        return cls(end - timedelta(days=days - 1), end)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def months(self) -> list[tuple[str, DateRange]]:
        """Each month the range touches, with the part of the range inside that month."""
        parts = []
        first = self.start
        while first <= self.end:
            last = min(_last_of_month(first), self.end)
            parts.append((month_text(first), DateRange(first, last)))
            first = last + timedelta(days=1)
        return parts

    def __str__(self) -> str:
        return f"{day_text(self.start)} to {day_text(self.end)}"


def months_back(until: date, count: int) -> list[str]:
    """``count`` months ending with the month of ``until``, newest first."""
    months, current = [], _first_of_month(until)
    for _ in range(count):
        months.append(month_text(current))
        current = _previous_month(current)
    return months


# --- Query requests (pure) ---------------------------------------------------------------------


def category_range_request(table: str, category: str, dates: DateRange) -> dict[str, Any]:
    """One category over a date range: the category table's own key."""
    partition, sort = CATEGORY_TABLE_KEY
    return {
        "TableName": table,
        "KeyConditionExpression": "#p = :p AND #s BETWEEN :from AND :to",
        "ExpressionAttributeNames": {"#p": partition, "#s": sort},
        "ExpressionAttributeValues": {
            ":p": {"S": category},
            ":from": {"S": day_text(dates.start)},
            ":to": {"S": day_text(dates.end)},
        },
    }


def category_edge_request(table: str, category: str, *, newest: bool) -> dict[str, Any]:
    """The first (or last) date a category has KPIs: one item, for error messages."""
    return {
        "TableName": table,
        "KeyConditionExpression": "#p = :p",
        "ExpressionAttributeNames": {"#p": CATEGORY_TABLE_KEY[0]},
        "ExpressionAttributeValues": {":p": {"S": category}},
        "ScanIndexForward": not newest,
        "Limit": 1,
    }


def category_day_request(table: str, day: date, *, limit: int | None = None) -> dict[str, Any]:
    """Every category on one date, highest revenue first: the ``by-date`` index."""
    partition, _ = CATEGORY_BY_DATE_INDEX.key
    request: dict[str, Any] = {
        "TableName": table,
        "IndexName": CATEGORY_BY_DATE_INDEX.name,
        "KeyConditionExpression": "#p = :p",
        "ExpressionAttributeNames": {"#p": partition},
        "ExpressionAttributeValues": {":p": {"S": day_text(day)}},
        "ScanIndexForward": False,
    }
    if limit is not None:
        request["Limit"] = limit
    return request


def order_month_request(table: str, month: str, dates: DateRange) -> dict[str, Any]:
    """Order KPIs of the part of ``dates`` inside ``month``: the ``by-month`` index."""
    partition, sort = ORDER_BY_MONTH_INDEX.key
    return {
        "TableName": table,
        "IndexName": ORDER_BY_MONTH_INDEX.name,
        "KeyConditionExpression": "#p = :p AND #s BETWEEN :from AND :to",
        "ExpressionAttributeNames": {"#p": partition, "#s": sort},
        "ExpressionAttributeValues": {
            ":p": {"S": month},
            ":from": {"S": day_text(dates.start)},
            ":to": {"S": day_text(dates.end)},
        },
    }


def order_range_requests(table: str, dates: DateRange) -> list[dict[str, Any]]:
    """Order KPIs over any range: one request per month it touches, in date order."""
    return [order_month_request(table, month, part) for month, part in dates.months()]


def latest_order_request(table: str, month: str, until: date) -> dict[str, Any]:
    """The latest date of ``month`` up to ``until`` that has an order item (Limit 1)."""
    partition, sort = ORDER_BY_MONTH_INDEX.key
    return {
        "TableName": table,
        "IndexName": ORDER_BY_MONTH_INDEX.name,
        "KeyConditionExpression": "#p = :p AND #s <= :until",
        "ExpressionAttributeNames": {"#p": partition, "#s": sort},
        "ExpressionAttributeValues": {":p": {"S": month}, ":until": {"S": day_text(until)}},
        "ScanIndexForward": False,
        "Limit": 1,
    }


# --- Rows (pure) -------------------------------------------------------------------------------


def to_rows(items: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Low-level items as rows of ``columns`` (the contract's attributes; index-only attributes
    are dropped). Numbers stay exact ``Decimal``; a missing attribute is None."""
    rows = []
    for item in items:
        plain = {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}
        rows.append({name: plain.get(name) for name in columns})
    return rows


def rank_by_revenue(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest ``daily_revenue`` first; ties by category name, so the order is stable."""
    return sorted(rows, key=lambda r: (-(r.get("daily_revenue") or Decimal(0)), r["category"]))


def _number_text(value: Decimal | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def _json_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return _number_text(value)
    return json.dumps(value, ensure_ascii=False)


def render_json(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A JSON array, one object a line, attributes in ``columns`` order, numbers exact."""
    lines = [
        "{" + ", ".join(f'"{name}": {_json_value(row.get(name))}' for name in columns) + "}"
        for row in rows
    ]
    if not lines:
        return "[]"
    return "[\n" + ",\n".join(f"  {line}" for line in lines) + "\n]"


def render_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header row; numbers exact, missing values empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            [
                ""
                if row.get(name) is None
                else _number_text(row[name])
                if isinstance(row.get(name), int | Decimal)
                else row[name]
                for name in columns
            ]
        )
    return out.getvalue().rstrip("\n")


def render(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """The rows as an aligned text table, JSON or CSV."""
    if fmt == "table":
        return format_table(rows, columns)
    if fmt == "json":
        return render_json(rows, columns)
    if fmt == "csv":
        return render_csv(rows, columns)
    raise QueryError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


@dataclass
class Answer:
    """What a question printed: a one-line title, the rows, their columns."""

    title: str
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    queries: int = 0


# --- I/O: sending the requests ------------------------------------------------------------------


def _where(client: Any) -> str:
    endpoint = getattr(client.meta, "endpoint_url", None)
    return f"region {client.meta.region_name}" + (f", endpoint {endpoint}" if endpoint else "")


@contextlib.contextmanager
def aws_errors(client: Any, request: Mapping[str, Any]) -> Iterator[None]:
    """Turn botocore's failures of one request into a :class:`QueryError` saying what to do."""
    table = request.get("TableName")
    index = request.get("IndexName")
    try:
        yield
    except ClientError as error:
        code = error_code(error)
        message = error_message(error)
        if index and (
            (code == "ResourceNotFoundException" and "index" in message.lower())
            or (code == "ValidationException" and "specified index" in message.lower())
        ):
            raise QueryError(
                f"table {table!r} has no index {index!r} ({_where(client)}): it was created "
                "before the index existed; redeploy the stack (infra/deploy.sh)"
            ) from error
        if code == "ResourceNotFoundException":
            raise QueryError(
                f"table {table!r} not found ({_where(client)}): pass --category-table/"
                "--order-table (the stack outputs CategoryKpiTableName/OrderKpiTableName) and "
                "the stack's --region"
            ) from error
        if code in _IDENTITY_ERRORS:
            raise QueryError(
                f"AWS refused the request to {table!r} ({code}: {message}); check --profile/"
                "the credentials, and that the identity may dynamodb:Query the tables and their "
                "indexes (the stack's KpiReaderPolicy grants exactly that)"
            ) from error
        raise QueryError(
            f"AWS call failed for table {table!r} ({_where(client)}): {code}: {message}",
            ExitCode.DEPENDENCY,
        ) from error
    except NoCredentialsError as error:
        raise QueryError(_no_credentials_message()) from error
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as error:
        raise QueryError(
            f"cannot reach DynamoDB ({_where(client)}): {error}", ExitCode.DEPENDENCY
        ) from error
    except BotoCoreError as error:
        raise QueryError(f"AWS call failed: {error}", ExitCode.DEPENDENCY) from error


class KpiReader:
    """The access patterns, sent to DynamoDB with ``query`` only (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        *,
        category_table: str = CATEGORY_TABLE,
        order_table: str = ORDER_TABLE,
        page_size: int | None = None,
    ) -> None:
        self.client = client
        self.category_table = category_table
        self.order_table = order_table
        self.page_size = page_size  # items per Query page (DynamoDB's 1 MB pages otherwise)
        self.queries = 0  # Query calls sent (every page counts)

    def query(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item ``request`` matches, following ``LastEvaluatedKey`` page by page; a request
        with its own ``Limit`` (top N) gets its first page only."""
        items: list[dict[str, Any]] = []
        call = dict(request)
        if self.page_size and "Limit" not in request:
            call["Limit"] = self.page_size
        with aws_errors(self.client, request):
            while True:
                response = self.client.query(**call)
                self.queries += 1
                items.extend(response.get("Items", []))
                last = response.get("LastEvaluatedKey")
                if not last or "Limit" in request:
                    return items
                call["ExclusiveStartKey"] = last

    def category(self, name: str, dates: DateRange) -> list[dict[str, Any]]:
        items = self.query(category_range_request(self.category_table, name, dates))
        return to_rows(items, CATEGORY_ITEM_ATTRIBUTES)

    def day(self, day: date, *, top: int | None = None) -> list[dict[str, Any]]:
        items = self.query(category_day_request(self.category_table, day, limit=top))
        return rank_by_revenue(to_rows(items, CATEGORY_ITEM_ATTRIBUTES))

    def orders(self, dates: DateRange) -> list[dict[str, Any]]:
        items = [
            item
            for request in order_range_requests(self.order_table, dates)
            for item in self.query(request)
        ]
        return sorted(to_rows(items, ORDER_ITEM_ATTRIBUTES), key=lambda r: r["order_date"])

    def latest_order_date(self, until: date, *, months: int = LOOKBACK_MONTHS) -> date | None:
        """The latest date up to ``until`` with orders, looking back at most ``months`` months."""
        for month in months_back(until, months):
            items = self.query(latest_order_request(self.order_table, month, until))
            if items:
                return date.fromisoformat(items[0]["order_date"]["S"])
        return None

    def category_span(self, name: str) -> tuple[date, date] | None:
        """The first and last date ``name`` has KPIs, or None for a category never seen."""
        edges = []
        for newest in (False, True):
            items = self.query(category_edge_request(self.category_table, name, newest=newest))
            if not items:
                return None
            edges.append(date.fromisoformat(items[0]["order_date"]["S"]))
        return edges[0], edges[1]


# --- The questions, with their errors -----------------------------------------------------------


def today_utc() -> date:
    return datetime.now(UTC).date()


def resolve_range(
    reader: KpiReader,
    *,
    start: str | None,
    end: str | None,
    last: int | None,
    today: date | None = None,
) -> tuple[DateRange, str]:
    """The range a command line asks for, and how to describe it.

    ``--from``/``--to`` give it directly; ``--last N`` means the N days ending on the latest day
    with orders up to ``--to`` (default today, UTC), found by Query on the month index."""
    if last is not None:
        if start is not None:
            raise QueryError("give either --last or --from/--to, not both")
        if last < 1:
            raise QueryError(f"--last must be at least 1, got {last}")
        until = parse_date(end, name="--to") if end is not None else (today or today_utc())
        latest = reader.latest_order_date(until)
        if latest is None:
            raise QueryError(
                f"no order KPIs in the {LOOKBACK_MONTHS} months up to {day_text(until)}: "
                "has a batch been processed? (pass --to to look further back)",
                EMPTY_RESULT,
            )
        dates = DateRange.last_days(latest, last)
        return dates, f"last {last} days up to the latest day with orders, {day_text(latest)}"
    if start is None or end is None:
        raise QueryError("give --from and --to (YYYY-MM-DD), or --last N")
    dates = DateRange(parse_date(start, name="--from"), parse_date(end, name="--to"))
    return dates, str(dates)


def category_answer(reader: KpiReader, name: str, dates: DateRange, described: str) -> Answer:
    """One category over a range; an unknown name says which categories there are."""
    rows = reader.category(name, dates)
    if not rows:
        span = reader.category_span(name)
        if span is None:
            raise QueryError(_unknown_category_message(reader, name, dates.end))
        raise QueryError(
            f"no KPIs for category {name!r} from {dates} (it has KPIs from "
            f"{day_text(span[0])} to {day_text(span[1])})",
            EMPTY_RESULT,
        )
    title = f"Category {name}: {described}, {len(rows)} days with orders"
    return Answer(title, rows, CATEGORY_ITEM_ATTRIBUTES, reader.queries)


def _unknown_category_message(reader: KpiReader, name: str, near: date) -> str:
    """Name the categories of the last week with orders (a few date-index Queries) and the
    closest match, if any."""
    latest = reader.latest_order_date(max(near, today_utc()))
    message = f"unknown category {name!r}: it has no KPIs on any date"
    if latest is None:
        return message + f" (and no orders in the last {LOOKBACK_MONTHS} months)"
    week = DateRange.last_days(latest, WINDOW_DAYS)
    known = sorted(
        {
            row["category"]
            for offset in range(week.days)
            for row in reader.day(week.start + timedelta(days=offset))
        }
    )
    message += f"; categories from {week}: {', '.join(known)}"
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        message += f". Did you mean {lowered[close[0]]!r}?"
    return message


def day_answer(reader: KpiReader, day: date | None, *, top: int | None = None) -> Answer:
    """Every category on one date (default: the latest with orders), highest revenue first."""
    if top is not None and top < 1:
        raise QueryError(f"--top must be at least 1, got {top}")
    if day is None:
        day = reader.latest_order_date(today_utc())
        if day is None:
            raise QueryError(
                f"no order KPIs in the last {LOOKBACK_MONTHS} months: pass --date",
                EMPTY_RESULT,
            )
    rows = reader.day(day, top=top)
    if not rows:
        latest = reader.latest_order_date(today_utc())
        hint = f" (the latest day with orders is {day_text(latest)})" if latest else ""
        raise QueryError(f"no category KPIs on {day_text(day)}{hint}", EMPTY_RESULT)
    ranked = f"top {len(rows)}" if top else f"{len(rows)} categories"
    title = f"{day_text(day)}: {ranked}, ranked by revenue"
    return Answer(title, rows, CATEGORY_ITEM_ATTRIBUTES, reader.queries)


def orders_answer(reader: KpiReader, dates: DateRange, described: str) -> Answer:
    rows = reader.orders(dates)
    if not rows:
        latest = reader.latest_order_date(max(dates.end, today_utc()))
        hint = f" (the latest day with orders is {day_text(latest)})" if latest else ""
        raise QueryError(f"no order KPIs from {dates}{hint}", EMPTY_RESULT)
    title = f"Order KPIs: {described}, {len(rows)} days with orders"
    return Answer(title, rows, ORDER_ITEM_ATTRIBUTES, reader.queries)


def timed(answer_of: Any, *args: Any, pattern: str, **kwargs: Any) -> Answer:
    """Run one question and log it as one JSON line (pattern, queries, rows, duration)."""
    started = time.perf_counter()
    answer: Answer = answer_of(*args, **kwargs)
    log.info(
        "kpis query answered",
        extra={
            "event": "kpis_query",
            "pattern": pattern,
            "queries": answer.queries,
            "rows": len(answer.rows),
            "duration_s": round(time.perf_counter() - started, 3),
        },
    )
    return answer


# --- Where the tables are -----------------------------------------------------------------------


def _no_credentials_message() -> str:
    return (
        "no AWS credentials found: pass --profile NAME (or set AWS_PROFILE), set "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or read a run-local export with --from-export OUT"
    )


def is_local_endpoint(endpoint_url: str) -> bool:
    """True for an emulator on this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlparse(endpoint_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect(aws: AwsSettings, *, region_given: bool = True) -> Any:
    """A DynamoDB client resolved the way the AWS CLI resolves one.

    Region: ``aws.region`` when ``region_given`` (a flag or ``AWS_REGION``/
    ``AWS_DEFAULT_REGION``), else the profile's region, else us-east-1. Credentials come from
    the standard chain (``aws.profile`` first); an emulator on this machine without any gets
    dummy ones, anything else without any is a :class:`QueryError`.
    """
    try:
        boto_session = session(aws)
    except ProfileNotFound:
        raise QueryError(
            f"AWS profile {aws.profile!r} not found "
            "(see ~/.aws/config, or `aws configure list-profiles`)"
        ) from None
    if not region_given:
        aws = replace(aws, region=boto_session.region_name or DEFAULT_REGION)
    try:
        credentials = boto_session.get_credentials()
    except BotoCoreError as error:  # a broken profile (e.g. a role it cannot assume)
        raise QueryError(f"AWS credentials could not be loaded: {error}") from error
    if credentials is None and not (aws.endpoint_url and is_local_endpoint(aws.endpoint_url)):
        raise QueryError(_no_credentials_message())
    try:
        return make_client(
            aws,
            "dynamodb",
            max_attempts=3,
            retry_mode="standard",
            boto_session=boto_session,
            connect_timeout=5,
            read_timeout=30,
        )
    except (NoRegionError, ValueError) as error:
        raise QueryError(f"cannot build a DynamoDB client: {error}") from error
