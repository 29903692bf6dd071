"""Reading the KPIs: the Query builders (pure), each access pattern against moto (Query with the
right index, never Scan, complete across months and pages), the errors, and `ecom-pipeline kpis`.

The tables hold the independent reference KPIs of the seed sample, loaded the way
``--from-export`` loads a run-local export. Which requests reached DynamoDB is read from moto's
request recorder, so a Scan anywhere in the query path fails these tests.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
from datetime import date
from decimal import Decimal
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

from ecom_pipeline.adapters.dynamo import to_dynamo_item
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import (
    CATEGORY_BY_DATE_INDEX,
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_TABLE,
    ORDER_BY_MONTH_INDEX,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_MONTH_ATTRIBUTE,
    ORDER_TABLE,
    ExitCode,
)
from ecom_pipeline.local.emulator import EXPORT_FILES, LocalAws, item_json
from ecom_pipeline.read.query import (
    EMPTY_RESULT,
    DateRange,
    KpiReader,
    QueryError,
    category_answer,
    category_day_request,
    category_edge_request,
    category_range_request,
    is_local_endpoint,
    latest_order_request,
    months_back,
    order_month_request,
    order_range_requests,
    orders_answer,
    parse_date,
    rank_by_revenue,
    render,
    render_csv,
    render_json,
    to_rows,
)
from moto_recording import record
from reference_kpis import kpis_from_batches

SEED_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "seed-sample"
MAR25, APR7 = date(2025, 3, 25), date(2025, 4, 7)
SPANNING = DateRange(MAR25, APR7)  # two months


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """(category items by (category, date), order items by date): Decimals and ints."""
    if not SEED_SAMPLE.is_dir():
        pytest.fail(f"the seed sample is missing: {SEED_SAMPLE}")
    return kpis_from_batches([SEED_SAMPLE])


@pytest.fixture(scope="module")
def export_dir(reference, tmp_path_factory):
    """The reference as a run-local export: OUT/category_kpis.jsonl, OUT/order_kpis.jsonl."""
    out = tmp_path_factory.mktemp("export")
    categories, orders = reference
    for table, rows in ((CATEGORY_TABLE, categories), (ORDER_TABLE, orders)):
        lines = [item_json(to_dynamo_item(rows[key])) for key in sorted(rows)]
        (out / EXPORT_FILES[table]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture
def recording(tmp_path, monkeypatch):
    yield from record(tmp_path, monkeypatch)


def _reference_categories(reference, dates=None, category=None):
    rows = [
        {name: item[name] for name in CATEGORY_ITEM_ATTRIBUTES}
        for item in reference[0].values()
        if (category is None or item["category"] == category)
        and (
            dates is None or dates.start.isoformat() <= item["order_date"] <= dates.end.isoformat()
        )
    ]
    return sorted(rows, key=lambda r: (r["category"], r["order_date"]))


def _reference_orders(reference, dates):
    return [
        {name: reference[1][key][name] for name in ORDER_ITEM_ATTRIBUTES}
        for key in sorted(reference[1])
        if dates.start.isoformat() <= key <= dates.end.isoformat()
    ]


def _same(rows, expected):
    """Rows read back equal the reference, numbers compared as exact Decimals."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row == {k: (Decimal(v) if isinstance(v, int) else v) for k, v in want.items()}


# --- dates (pure) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2025-02-30", "no such day"),
        ("2025-13-01", "no such day"),
        ("2025-3-25", "expected YYYY-MM-DD"),
        ("20250325", "expected YYYY-MM-DD"),
        ("25/03/2025", "expected YYYY-MM-DD"),
        ("", "expected YYYY-MM-DD"),
        ("yesterday", "expected YYYY-MM-DD"),
    ],
)
def test_bad_dates_are_usage_errors_naming_the_flag(text, problem):
    with pytest.raises(QueryError, match=problem) as caught:
        parse_date(text, name="--from")
    assert caught.value.exit_code == ExitCode.USAGE
    assert "--from" in str(caught.value)


def test_good_dates_parse():
    assert parse_date("2025-03-25") == MAR25
    assert parse_date(" 2024-02-29 ") == date(2024, 2, 29)


def test_a_range_is_split_at_month_boundaries():
    assert SPANNING.days == 14
    assert [(m, str(r)) for m, r in SPANNING.months()] == [
        ("2025-03", "2025-03-25 to 2025-03-31"),
        ("2025-04", "2025-04-01 to 2025-04-07"),
    ]
    leap = DateRange(date(2023, 12, 30), date(2024, 3, 1))
    assert [(m, str(r)) for m, r in leap.months()] == [
        ("2023-12", "2023-12-30 to 2023-12-31"),
        ("2024-01", "2024-01-01 to 2024-01-31"),
        ("2024-02", "2024-02-01 to 2024-02-29"),
        ("2024-03", "2024-03-01 to 2024-03-01"),
    ]
    assert str(DateRange.of_month("2024-02")) == "2024-02-01 to 2024-02-29"
    one_day = DateRange(MAR25, MAR25)
    assert [m for m, _ in one_day.months()] == ["2025-03"]


def test_reversed_range_and_empty_window_are_refused():
    with pytest.raises(QueryError, match="after --to") as caught:
        DateRange(APR7, MAR25)
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(DateRange.last_days(APR7, 30)) == "2025-03-09 to 2025-04-07"
    with pytest.raises(QueryError, match="at least 1"):
        DateRange.last_days(APR7, 0)


def test_months_back_crosses_the_year():
    assert months_back(date(2025, 2, 10), 4) == ["2025-02", "2025-01", "2024-12", "2024-11"]


# --- requests (pure) -----------------------------------------------------------------------------


def test_one_category_over_dates_uses_the_table_key():
    assert category_range_request("t", "Electronics", SPANNING) == {
        "TableName": "t",
        "KeyConditionExpression": "#p = :p AND #s BETWEEN :from AND :to",
        "ExpressionAttributeNames": {"#p": "category", "#s": "order_date"},
        "ExpressionAttributeValues": {
            ":p": {"S": "Electronics"},
            ":from": {"S": "2025-03-25"},
            ":to": {"S": "2025-04-07"},
        },
    }


def test_all_categories_of_a_date_use_the_date_index_highest_revenue_first():
    request = category_day_request("t", MAR25)
    assert request["IndexName"] == CATEGORY_BY_DATE_INDEX.name == "by-date"
    assert request["ExpressionAttributeNames"] == {"#p": "order_date"}
    assert request["ExpressionAttributeValues"] == {":p": {"S": "2025-03-25"}}
    assert request["ScanIndexForward"] is False
    assert "Limit" not in request
    assert category_day_request("t", MAR25, limit=3)["Limit"] == 3


def test_an_order_range_is_one_month_index_query_per_month():
    requests = order_range_requests("t", SPANNING)
    assert [r["IndexName"] for r in requests] == [ORDER_BY_MONTH_INDEX.name] * 2
    assert [r["ExpressionAttributeNames"] for r in requests] == [
        {"#p": ORDER_MONTH_ATTRIBUTE, "#s": "order_date"}
    ] * 2
    assert [r["ExpressionAttributeValues"] for r in requests] == [
        {":p": {"S": "2025-03"}, ":from": {"S": "2025-03-25"}, ":to": {"S": "2025-03-31"}},
        {":p": {"S": "2025-04"}, ":from": {"S": "2025-04-01"}, ":to": {"S": "2025-04-07"}},
    ]
    assert all(
        r["KeyConditionExpression"] == "#p = :p AND #s BETWEEN :from AND :to" for r in requests
    )


def test_latest_day_is_one_item_of_a_month_newest_first():
    request = latest_order_request("t", "2025-04", APR7)
    assert request["KeyConditionExpression"] == "#p = :p AND #s <= :until"
    assert (request["ScanIndexForward"], request["Limit"]) == (False, 1)
    assert request["IndexName"] == ORDER_BY_MONTH_INDEX.name


def test_every_request_is_a_valid_dynamodb_query():
    shape = (
        botocore.session.get_session()
        .get_service_model("dynamodb")
        .operation_model("Query")
        .input_shape
    )
    requests = [
        category_range_request("t", "Electronics", SPANNING),
        category_edge_request("t", "Electronics", newest=True),
        category_day_request("t", MAR25, limit=5),
        order_month_request("t", "2025-03", SPANNING),
        latest_order_request("t", "2025-04", APR7),
        *order_range_requests("t", SPANNING),
    ]
    for request in requests:
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), report.generate_report()
    assert ParamValidator().validate({"TableName": "t", "Scan": True}, shape).has_errors()


# --- rows and rendering (pure) -------------------------------------------------------------------

ORDER_ITEM = {
    "order_date": {"S": "2025-03-25"},
    ORDER_MONTH_ATTRIBUTE: {"S": "2025-03"},
    "total_orders": {"N": "342"},
    "total_revenue": {"N": "79153.56"},
    "return_rate": {"N": "0.1842"},
}


def test_rows_keep_the_contract_attributes_and_drop_index_only_ones():
    (row,) = to_rows([ORDER_ITEM], ORDER_ITEM_ATTRIBUTES)
    assert list(row) == list(ORDER_ITEM_ATTRIBUTES)
    assert ORDER_MONTH_ATTRIBUTE not in row
    assert row["total_revenue"] == Decimal("79153.56")
    assert row["revenue_7d"] is None  # absent attribute


def test_ranking_is_by_revenue_then_name():
    rows = [
        {"category": "b", "daily_revenue": Decimal("5")},
        {"category": "a", "daily_revenue": Decimal("5")},
        {"category": "c", "daily_revenue": Decimal("10.5")},
    ]
    assert [r["category"] for r in rank_by_revenue(rows)] == ["c", "a", "b"]


def test_renderings_keep_numbers_exact():
    (row,) = to_rows([ORDER_ITEM], ORDER_ITEM_ATTRIBUTES)
    columns = ("order_date", "total_orders", "total_revenue", "return_rate", "revenue_7d")
    assert render_json([row], columns) == (
        '[\n  {"order_date": "2025-03-25", "total_orders": 342, "total_revenue": 79153.56, '
        '"return_rate": 0.1842, "revenue_7d": null}\n]'
    )
    assert json.loads(render_json([row], columns), parse_float=Decimal)[0]["total_revenue"] == (
        Decimal("79153.56")
    )
    assert render_json([], columns) == "[]"
    assert render_csv([row], columns) == (
        "order_date,total_orders,total_revenue,return_rate,revenue_7d\n"
        "2025-03-25,342,79153.56,0.1842,"
    )
    table = render([row, {**row, "total_revenue": Decimal("5.5")}], columns, "table").splitlines()
    assert table[0].split() == list(columns)
    assert table[2].split()[:4] == ["2025-03-25", "342", "79153.56", "0.1842"]
    assert table[3].split()[2] == "5.50"  # money with 2 decimals
    assert table[2].index("79153.56") + len("79153.56") == table[3].index("5.50") + len("5.50")
    with pytest.raises(QueryError, match="unknown format"):
        render([row], columns, "xml")


def test_local_endpoints_are_recognised():
    assert is_local_endpoint("http://127.0.0.1:5000")
    assert is_local_endpoint("http://localhost:4566")
    assert is_local_endpoint("http://[::1]:8000")
    assert not is_local_endpoint("https://dynamodb.eu-west-1.amazonaws.com")
    assert not is_local_endpoint("http://10.0.0.5:8000")


def test_order_month_is_added_by_the_job_and_is_deterministic(spark):
    from ecom_pipeline.transforms.kpis import with_order_month

    rows = spark.createDataFrame(
        [("2025-03-31", 1), ("2025-04-01", 2), ("2024-12-31", 3)], "order_date string, n long"
    )
    once = with_order_month(rows)
    assert {r.order_date: r[ORDER_MONTH_ATTRIBUTE] for r in once.collect()} == {
        "2025-03-31": "2025-03",
        "2025-04-01": "2025-04",
        "2024-12-31": "2024-12",
    }
    assert sorted(with_order_month(once.drop(ORDER_MONTH_ATTRIBUTE)).collect()) == sorted(
        once.collect()
    )


# --- each access pattern against moto: Query, the right index, complete -------------------------


class TestOnAnEndpoint:
    """The reference KPIs in moto's tables (created by dynamo.table_definitions, GSIs included)."""

    @pytest.fixture(scope="class")
    def aws(self, export_dir):
        with LocalAws() as local:
            counts = local.import_tables(export_dir)
            assert counts[ORDER_TABLE] == 31
            yield local

    @pytest.fixture
    def reader(self, aws):
        return KpiReader(aws.client("dynamodb"))

    def test_the_recording_sees_a_scan(self, aws, recording):
        # the detector itself: a Scan sent by anyone is caught
        aws.client("dynamodb").scan(TableName=ORDER_TABLE, Limit=1)
        assert recording.operations() == ["Scan"]
        with pytest.raises(AssertionError, match="Scan"):
            recording.queries()

    def test_one_category_over_two_months(self, reader, reference, recording):
        rows = reader.category("Electronics", SPANNING)

        _same(rows, _reference_categories(reference, SPANNING, "Electronics"))
        assert [r["order_date"] for r in rows][0::13] == ["2025-03-25", "2025-04-07"]
        (request,) = recording.queries()
        assert request["TableName"] == CATEGORY_TABLE
        assert "IndexName" not in request  # the table's own key answers it

    def test_all_categories_of_a_date_ranked_by_revenue(self, reader, reference, recording):
        rows = reader.day(MAR25)

        expected = _reference_categories(reference, DateRange(MAR25, MAR25))
        _same(rows, sorted(expected, key=lambda r: -r["daily_revenue"]))
        assert len(rows) == 7
        revenues = [r["daily_revenue"] for r in rows]
        assert revenues == sorted(revenues, reverse=True)
        (request,) = recording.queries()
        assert request["IndexName"] == CATEGORY_BY_DATE_INDEX.name
        assert request["ScanIndexForward"] is False

    def test_top_categories_come_from_the_index_order(self, reader, reference, recording):
        rows = reader.day(MAR25, top=3)

        expected = _reference_categories(reference, DateRange(MAR25, MAR25))
        assert [r["category"] for r in rows] == [
            r["category"] for r in sorted(expected, key=lambda r: -r["daily_revenue"])[:3]
        ]
        (request,) = recording.queries()
        assert request["Limit"] == 3  # DynamoDB ranked them: only three items were read

    def test_order_kpis_across_months_are_complete(self, reader, reference, recording):
        rows = reader.orders(SPANNING)

        _same(rows, _reference_orders(reference, SPANNING))
        assert len(rows) == 14  # every day of both months' parts
        requests = recording.queries()
        assert [r["IndexName"] for r in requests] == [ORDER_BY_MONTH_INDEX.name] * 2
        assert [r["ExpressionAttributeValues"][":p"]["S"] for r in requests] == [
            "2025-03",
            "2025-04",
        ]

    def test_every_page_is_followed(self, aws, reference, recording):
        reader = KpiReader(aws.client("dynamodb"), page_size=2)
        whole = DateRange(date(2025, 3, 1), date(2025, 4, 30))

        rows = reader.orders(whole)

        _same(rows, _reference_orders(reference, whole))
        assert len(rows) == 31
        requests = recording.queries()
        assert len(requests) >= 16  # 24 + 7 items, two a page
        assert sum("ExclusiveStartKey" in r for r in requests) == len(requests) - 2

    def test_latest_day_with_orders_is_found_by_query(self, reader, recording):
        assert reader.latest_order_date(date(2025, 6, 15)) == APR7
        assert reader.latest_order_date(date(2025, 3, 31)) == date(2025, 3, 31)
        assert reader.latest_order_date(date(2025, 3, 7), months=3) is None
        requests = recording.queries()
        assert all(r["Limit"] == 1 and r["ScanIndexForward"] is False for r in requests)

    def test_unknown_category_lists_the_known_ones(self, reader, recording):
        with pytest.raises(QueryError) as caught:
            category_answer(reader, "Electronic", SPANNING, str(SPANNING))

        message = str(caught.value)
        assert caught.value.exit_code == ExitCode.USAGE
        assert "unknown category 'Electronic'" in message
        assert "Beauty, Books, Clothing, Electronics, Home & Kitchen, Sports, Toys" in message
        assert "Did you mean 'Electronics'?" in message
        recording.queries()  # Query only, even to list the categories

    def test_known_category_without_kpis_in_range_is_an_empty_result(self, reader, recording):
        with pytest.raises(QueryError) as caught:
            category_answer(reader, "Books", DateRange(date(2024, 1, 1), date(2024, 1, 31)), "x")
        assert caught.value.exit_code == EMPTY_RESULT == ExitCode.DATA_REJECTED
        assert "it has KPIs from 2025-03-08 to 2025-04-07" in str(caught.value)
        with pytest.raises(QueryError, match="latest day with orders is 2025-04-07"):
            orders_answer(reader, DateRange(date(2025, 5, 1), date(2025, 5, 31)), "May")
        recording.queries()

    def test_missing_table_and_missing_index_say_what_to_do(self, aws):
        client = aws.client("dynamodb")
        with pytest.raises(QueryError, match="table 'nope' not found") as caught:
            KpiReader(client, category_table="nope").category("Books", SPANNING)
        assert caught.value.exit_code == ExitCode.USAGE
        assert "--category-table" in str(caught.value)
        client.create_table(  # a table deployed before the indexes existed
            TableName="old-orders",
            KeySchema=[{"AttributeName": "order_date", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "order_date", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with pytest.raises(QueryError, match="has no index 'by-month'") as caught:
            KpiReader(client, order_table="old-orders").orders(SPANNING)
        assert caught.value.exit_code == ExitCode.USAGE

    # -- the command --

    def test_command_prints_an_aligned_table(self, aws, recording, capsys):
        argv = ["kpis", "category", "--name", "Electronics", "--from", "2025-03-25"]
        code = main([*argv, "--to", "2025-04-07", "--endpoint-url", aws.endpoint_url])

        out = capsys.readouterr().out.splitlines()
        assert code == ExitCode.OK
        assert out[0] == "Category Electronics: 2025-03-25 to 2025-04-07, 14 days with orders"
        header, rule, *rows = out[1:]
        assert header.split() == list(CATEGORY_ITEM_ATTRIBUTES)
        assert len(rows) == 14
        assert rows[0].split()[:3] == ["Electronics", "2025-03-25", "10604.46"]
        # numbers right-aligned under their header, text left-aligned
        header_ends = [m.end() for m in re.finditer(r"\S+", header)]
        header_starts = [m.start() for m in re.finditer(r"\S+", header)]
        for row in rows:
            spans = [m.span() for m in re.finditer(r"\S+", row)]
            assert [start for start, _ in spans[:2]] == header_starts[:2]
            assert [end for _, end in spans[2:]] == header_ends[2:]
        assert set(rule) == {"-", " "}
        recording.queries()

    def test_command_json_is_the_exact_kpis(self, aws, reference, capsys):
        argv = ["kpis", "day", "--date", "2025-03-25", "--format", "json"]
        code = main([*argv, "--endpoint-url", aws.endpoint_url])

        assert code == ExitCode.OK
        rows = json.loads(capsys.readouterr().out, parse_float=Decimal)
        expected = _reference_categories(reference, DateRange(MAR25, MAR25))
        assert rows == sorted(expected, key=lambda r: -r["daily_revenue"])

    def test_command_last_days_of_orders_as_csv(self, aws, reference, capsys):
        argv = ["kpis", "orders", "--last", "30", "--format", "csv"]
        code = main([*argv, "--endpoint-url", aws.endpoint_url])

        assert code == ExitCode.OK
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert len(rows) == 30
        assert (rows[0]["order_date"], rows[-1]["order_date"]) == ("2025-03-09", "2025-04-07")
        day = next(r for r in rows if r["order_date"] == "2025-03-25")
        assert (day["total_orders"], day["total_revenue"], day["return_rate"]) == (
            "342",
            "79153.56",
            "0.1842",
        )
        expected = _reference_orders(reference, DateRange(date(2025, 3, 9), APR7))
        assert [Decimal(r["revenue_7d"]) for r in rows] == [r["revenue_7d"] for r in expected]

    @pytest.mark.parametrize(
        ("argv", "code", "message"),
        [
            (["orders", "--from", "2025-02-30", "--to", "2025-03-31"], 2, "no such day"),
            (["orders", "--from", "2025-04-07", "--to", "2025-03-25"], 2, "is after --to"),
            (["orders", "--from", "2025-03-25"], 2, "give --from and --to"),
            (["day", "--date", "25.03.2025"], 2, "expected YYYY-MM-DD"),
            (["category", "--name", "Gadgets", "--last", "7"], 2, "unknown category 'Gadgets'"),
            (["day", "--date", "2024-12-25"], 3, "no category KPIs on 2024-12-25"),
            (["orders", "--from", "2025-05-01", "--to", "2025-05-31"], 3, "no order KPIs"),
            (["day", "--date", "2025-03-25", "--category-table", "missing"], 2, "'missing' not"),
        ],
    )
    def test_command_errors_are_clear(self, aws, capsys, argv, code, message):
        assert main(["kpis", *argv, "--endpoint-url", aws.endpoint_url]) == code
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("error: ")
        assert message in captured.err

    def test_command_reads_endpoint_and_table_names_from_the_environment(self, aws, capsys):
        environ = {"AWS_ENDPOINT_URL": aws.endpoint_url, "AWS_REGION": "us-east-1"}
        assert main(["kpis", "day", "--date", "2025-03-25"], environ=environ) == ExitCode.OK
        assert len(capsys.readouterr().out.splitlines()) == 3 + 7
        environ["CATEGORY_TABLE"] = "stack-category-kpis"  # as the task definition sets it
        assert main(["kpis", "day", "--date", "2025-03-25"], environ=environ) == ExitCode.USAGE
        assert "table 'stack-category-kpis' not found" in capsys.readouterr().err


# --- where the tables are: credentials, endpoints, exports ---------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        ["--region", "eu-west-1"],
        ["--endpoint-url", "https://dynamodb.eu-west-1.amazonaws.com"],
    ],
)
def test_no_credentials_for_a_real_endpoint_is_a_clear_usage_error(no_credentials, capsys, where):
    assert main(["kpis", "day", "--date", "2025-03-25", *where]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "no AWS credentials found" in err
    assert "--profile" in err
    assert "--from-export" in err


def test_unknown_profile_is_a_clear_usage_error(no_credentials, capsys):
    assert main(["kpis", "day", "--profile", "analyst"]) == ExitCode.USAGE
    assert "AWS profile 'analyst' not found" in capsys.readouterr().err


def test_unreachable_endpoint_is_a_dependency_error(capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["kpis", "day", "--date", "2025-03-25", "--endpoint-url", f"http://127.0.0.1:{port}"]
    assert main(argv) == ExitCode.DEPENDENCY
    assert "cannot reach DynamoDB" in capsys.readouterr().err


def test_export_is_queried_with_the_same_code(export_dir, reference, recording, capsys):
    argv = ["kpis", "orders", "--from", "2025-03-25", "--to", "2025-04-07", "--format", "json"]
    assert main([*argv, "--from-export", str(export_dir)]) == ExitCode.OK

    rows = json.loads(capsys.readouterr().out, parse_float=Decimal)
    assert rows == _reference_orders(reference, SPANNING)
    operations = recording.operations()
    assert "Scan" not in operations
    assert operations.count("Query") == 2  # one per month, after loading the export
    # loading the export into a fresh emulation (its tables, the lock table's TTL), then Query
    assert set(operations) == {"BatchWriteItem", "CreateTable", "UpdateTimeToLive", "Query"}


def test_export_errors(export_dir, tmp_path, capsys):
    assert main(["kpis", "day", "--from-export", str(tmp_path / "nothing")]) == ExitCode.USAGE
    assert "is not a run-local export" in capsys.readouterr().err
    for flag in (["--region", "eu-west-1"], ["--order-table", "t"]):
        assert main(["kpis", "day", "--from-export", str(export_dir), *flag]) == ExitCode.USAGE
        assert "--from-export reads a local folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / EXPORT_FILES[CATEGORY_TABLE]).write_text('{"category": "Books"}\n')
    (broken / EXPORT_FILES[ORDER_TABLE]).write_text("not json\n")
    assert main(["kpis", "day", "--from-export", str(broken)]) == ExitCode.USAGE
    assert "cannot load the export" in capsys.readouterr().err
