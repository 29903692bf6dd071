"""The KPI dashboard: pure rendering (numbers, geometry, links, no external resources), reading
the tables for it with Query only, and publishing it to the bucket. The page built by a real
run of the seed sample is opened in Chromium in tests/test_run_local.py."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest
from test_data_docs_browser import parse

from ecom_pipeline.adapters.dynamo import to_dynamo_item
from ecom_pipeline.core.contract import (
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_TABLE,
    ORDER_BY_MONTH_INDEX,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_TABLE,
)
from ecom_pipeline.local.emulator import EXPORT_FILES, LocalAws, item_json
from ecom_pipeline.read.dashboard import (
    DASHBOARD_KEY,
    DashboardData,
    category_series,
    compact,
    count,
    load,
    money,
    nice_ticks,
    percent,
    publish_dashboard,
    relink_data_docs,
    render_dashboard,
)
from ecom_pipeline.read.query import KpiReader
from moto_recording import record

NOW = datetime(2025, 4, 8, 6, 30, tzinfo=UTC)
DAYS = [date(2025, 3, 29), date(2025, 3, 30), date(2025, 4, 1), date(2025, 4, 2)]  # no Mar 31


def _order(day: date, revenue: str, orders: int, rate: str, revenue_7d: str, orders_7d: int):
    row = dict.fromkeys(ORDER_ITEM_ATTRIBUTES)
    row.update(
        order_date=day.isoformat(),
        total_orders=orders,
        total_revenue=D(revenue),
        total_items_sold=orders * 2,
        unique_customers=orders - 1,
        return_rate=D(rate),
        revenue_7d=D(revenue_7d),
        orders_7d=orders_7d,
    )
    return row


def _category(day: date, name: str, revenue: str, orders: int = 2, rate: str = "0.5"):
    return {
        "category": name,
        "order_date": day.isoformat(),
        "daily_revenue": D(revenue),
        "order_count": orders,
        "avg_order_value": (D(revenue) / orders).quantize(D("0.01")),
        "avg_return_rate": D(rate),
        "items_sold": orders + 1,
    }


ORDERS = [
    _order(DAYS[0], "100.50", 4, "0.25", "100.50", 4),
    _order(DAYS[1], "300", 6, "0.1667", "400.50", 10),
    _order(DAYS[2], "200.25", 5, "0", "600.75", 15),
    _order(DAYS[3], "79153.56", 342, "0.1842", "79754.31", 357),
]
CATEGORIES = [
    _category(DAYS[0], "Books", "100.50"),
    _category(DAYS[1], "Books", "120"),
    _category(DAYS[1], "Toys <& 'Games'>", "180"),
    _category(DAYS[2], "Toys <& 'Games'>", "200.25"),
    _category(DAYS[3], "Books", "39153.56", 170, "0.1842"),
    _category(DAYS[3], "Toys <& 'Games'>", "40000", 172, "0.0500"),
]


def _page(orders=ORDERS, categories=CATEGORIES, **kwargs):
    data = DashboardData(
        orders=orders,
        categories=categories,
        batch_id=kwargs.pop("batch_id", "b-7"),
        generated_at=NOW,
        datasets=("orders", "order_items"),
        **kwargs,
    )
    return render_dashboard(data)


def _attr(node, name):
    return node.attrs.get(name)


def _floats(node, *names):
    return [float(node.attrs[name]) for name in names]


# --- numbers -------------------------------------------------------------------------------------


def test_numbers_are_formatted_for_people():
    assert money(D("79153.56")) == "79,153.56"
    assert money(D("79153.5")) == "79,153.50"
    assert money(7) == "7.00"
    assert percent(D("0.1842")) == "18.42%"
    assert percent(D("1")) == "100.00%"
    assert percent(D("0")) == "0.00%"
    assert count(D("9000")) == "9,000"
    assert money(None) == percent(None) == count(None) == "—"
    assert [compact(v) for v in (0, 500, 2500, 80000, 1_250_000)] == [
        "0",
        "500",
        "2.5k",
        "80k",
        "1.25M",
    ]


@pytest.mark.parametrize(
    ("maximum", "ticks"),
    [
        (79153.56, [0, 20000, 40000, 60000, 80000]),
        (342, [0, 100, 200, 300, 400]),
        (25.64, [0, 10, 20, 30]),
        (18.42, [0, 5, 10, 15, 20]),
        (100, [0, 20, 40, 60, 80, 100]),
        (0, [0, 1]),
        (0.7, [0, 0.2, 0.4, 0.6, 0.8]),
    ],
)
def test_axis_ticks_are_round_and_cover_the_maximum(maximum, ticks):
    assert nice_ticks(maximum) == ticks


# --- the page ------------------------------------------------------------------------------------


def test_page_is_self_contained():
    page = _page()
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page
    assert "url(" not in page
    assert "<img" not in page
    assert "<iframe" not in page
    # the only absolute URL is the SVG namespace (an identifier, never fetched)
    urls = set(re.findall(r"[a-z]+://[^\s'\"<>]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}
    for href in re.findall(r"href=[\"']([^\"']*)", page):
        assert not href.startswith(("//", "/")), href


def test_bars_carry_exact_values_and_heights_in_proportion():
    dom = parse(_page())
    bars = dom.find_all("rect", class_="bar", data_series="revenue")
    assert [_attr(b, "data-date") for b in bars] == [d.isoformat() for d in DAYS]
    assert [_attr(b, "data-value") for b in bars] == ["100.5", "300", "200.25", "79153.56"]
    # every bar's height is its value on one scale (coordinates have one decimal)
    scale = _floats(bars[3], "height")[0] / 79153.56
    for bar in bars:
        assert _floats(bar, "height")[0] == pytest.approx(
            float(_attr(bar, "data-value")) * scale, abs=0.12
        )
    assert _floats(bars[3], "height")[0] > 200  # the largest bar fills most of the plot
    # one band per calendar day: Mar 31 (no orders) keeps its slot
    xs = [_floats(b, "x")[0] for b in bars]
    band = xs[1] - xs[0]
    assert xs[2] - xs[1] == pytest.approx(2 * band, abs=0.2)
    assert bars[3].find_all("title")[0].text() == "2 Apr 2025 — revenue 79,153.56"
    orders = dom.find_all("rect", class_="bar", data_series="orders")
    assert [_attr(b, "data-value") for b in orders] == ["4", "6", "5", "342"]
    assert orders[3].find_all("title")[0].text() == "2 Apr 2025 — orders 342"


def test_window_and_rate_lines_break_where_a_day_is_missing():
    dom = parse(_page())
    for series in ("revenue_7d", "orders_7d", "return_rate"):
        assert len(dom.find_all("path", class_="line", data_series=series)) == 2, series
    points = dom.find_all("circle", class_="point", data_series="return_rate")
    assert [_attr(p, "data-value") for p in points] == ["0.25", "0.1667", "0", "0.1842"]
    assert points[3].find_all("title")[0].text() == "2 Apr 2025 — return rate 18.42%"
    window = dom.find_all("circle", class_="point", data_series="revenue_7d")
    assert window[3].find_all("title")[0].text() == "2 Apr 2025 — 7-day revenue 79,754.31"
    # the y axis of the rate chart is in percent
    rate_panel = dom.find_all("section", id="return_rate")[0]
    assert "20%" in [t.text() for t in rate_panel.find_all("text")]


def test_stacks_split_each_day_by_category_and_sum_to_its_revenue():
    dom = parse(_page())
    segments = dom.find_all("rect", class_="segment")
    by_day = {}
    for segment in segments:
        by_day.setdefault(_attr(segment, "data-date"), {})[_attr(segment, "data-category")] = D(
            _attr(segment, "data-value")
        )
    assert by_day["2025-03-30"] == {"Books": D("120"), "Toys <& 'Games'>": D("180")}
    assert sum(by_day["2025-04-02"].values()) == D("79153.56")
    # the largest category over the period is drawn first, at the bottom of each stack
    first = [s for s in segments if _attr(s, "data-date") == "2025-04-02"]
    assert [_attr(s, "data-category") for s in first] == ["Toys <& 'Games'>", "Books"]
    assert _floats(first[0], "y")[0] > _floats(first[1], "y")[0]
    legend = dom.find_all("section", id="category_revenue")[0].find_all("li")
    assert [li.text() for li in legend] == ["Toys <& 'Games'>", "Books"]


def test_many_categories_keep_the_largest_and_sum_the_rest_as_other():
    rows = [_category(DAYS[0], f"C{i}", str(100 - i)) for i in range(12)]
    series = category_series(rows)
    assert [name for name, _ in series] == [f"C{i}" for i in range(7)] + ["Other"]
    assert len({colour for _, colour in series}) == 8
    dom = parse(_page(orders=ORDERS[:1], categories=rows))
    other = dom.find_all("rect", class_="segment", data_category="Other")
    assert [_attr(o, "data-value") for o in other] == [str(sum(100 - i for i in range(7, 12)))]


def test_latest_day_table_ranks_categories_by_revenue():
    dom = parse(_page())
    table = dom.find_all("section", id="latest_categories")[0]
    assert _attr(table, "data-date") == "2025-04-02"
    assert "Categories on 2 Apr 2025" in table.text()
    rows = table.find_all("tr", data_category="Toys <& 'Games'>") + table.find_all(
        "tr", data_category="Books"
    )
    assert [r.find_all("td")[0].text() for r in rows] == ["1", "2"]
    toys = rows[0]
    cells = {td.attrs.get("class"): td for td in toys.find_all("td") if td.attrs.get("class")}
    assert cells["daily_revenue"].text() == "40,000.00"
    assert _attr(cells["daily_revenue"], "data-value") == "40000"
    assert cells["avg_return_rate"].text() == "5.00%"
    assert cells["order_count"].text() == "172"
    shares = [D(_attr(r.find_all("td", class_="share")[0], "data-value")) for r in rows]
    assert sum(shares) == pytest.approx(1)
    assert rows[1].find_all("td", class_="share")[0].text() == "49.47%"


def test_cards_show_the_latest_day_and_the_day_before():
    dom = parse(_page())
    revenue = dom.find_all("div", id="card_revenue")[0]
    assert _attr(revenue, "data-value") == "79153.56"
    assert "79,153.56" in revenue.text()
    assert "2 Apr · 1 Apr: 200.25" in revenue.text()
    assert dom.find_all("div", id="card_orders")[0].find_all("div", class_="value")[0].text() == (
        "342"
    )
    rate = dom.find_all("div", id="card_return_rate")[0]
    assert rate.find_all("div", class_="value")[0].text() == "18.42%"
    assert "357" in dom.find_all("div", id="card_orders_7d")[0].text()


def test_data_docs_links_are_relative_and_can_be_relinked():
    page = _page(batch_id="2025-04-07 late")
    dom = parse(page)
    (link,) = dom.find_all("a", id="data_docs")
    assert _attr(link, "href") == "../data-docs/index.html#batch-2025-04-07%20late"
    assert [_attr(a, "href") for a in dom.find_all("a", class_="dataset-docs")] == [
        "../data-docs/2025-04-07%20late/orders/index.html",
        "../data-docs/2025-04-07%20late/order_items/index.html",
    ]
    local = parse(relink_data_docs(page, "data_docs"))
    hrefs = [_attr(a, "href") for a in local.find_all("a")]
    assert hrefs
    assert all(h.startswith("../data_docs/") for h in hrefs)
    assert "data-docs/" not in "".join(hrefs)
    assert relink_data_docs(page, "data_docs").count("<svg") == page.count("<svg")


def test_text_is_escaped_and_the_empty_page_says_so():
    page = _page()
    assert "Toys <& 'Games'>" not in page
    assert "Toys &lt;&amp; &#x27;Games&#x27;&gt;" in page
    empty = parse(_page(orders=[], categories=[]))
    assert "No KPIs yet" in empty.text()
    assert empty.find_all("svg") == []


# --- reading the tables and publishing -----------------------------------------------------------


@pytest.fixture
def recording(tmp_path, monkeypatch):
    yield from record(tmp_path, monkeypatch)


def _filled(aws, tmp_path, orders, categories):
    folder = tmp_path / "export"
    folder.mkdir()
    for table, rows, columns in (
        (ORDER_TABLE, orders, ORDER_ITEM_ATTRIBUTES),
        (CATEGORY_TABLE, categories, CATEGORY_ITEM_ATTRIBUTES),
    ):
        lines = [item_json(to_dynamo_item({c: r[c] for c in columns})) for r in rows]
        (folder / EXPORT_FILES[table]).write_text("\n".join(lines) + "\n")
    aws.import_tables(folder)


def test_load_reads_the_window_newest_months_first_with_queries_only(tmp_path, recording):
    # 70 days of orders, Feb 1 to Apr 11; a 10-day window needs only the newest month
    start = date(2025, 2, 1)
    orders = [
        _order(start + timedelta(days=i), f"{i + 1}.50", i + 1, "0.1", "1", 1) for i in range(70)
    ]
    categories = [_category(date.fromisoformat(o["order_date"]), "Books", "1") for o in orders]
    with LocalAws() as aws:
        _filled(aws, tmp_path, orders, categories)
        recording.clear()
        reader = KpiReader(aws.client("dynamodb"))

        shown, shown_categories = load(
            reader, ["2025-01", "2025-02", "2025-03", "2025-04"], days=10
        )

        assert [o["order_date"] for o in shown] == [
            (date(2025, 4, 11) - timedelta(days=9 - i)).isoformat() for i in range(10)
        ]
        assert [c["order_date"] for c in shown_categories] == [o["order_date"] for o in shown]
        requests = recording.queries()
        months = [
            r["ExpressionAttributeValues"][":p"]["S"]
            for r in requests
            if r.get("IndexName") == ORDER_BY_MONTH_INDEX.name
        ]
        assert months == ["2025-04"]  # Apr 2-11: older months are not read
        assert len(requests) == 1 + 10  # and one date-index Query per day shown

        recording.clear()
        shown, _ = load(reader, ["2025-02", "2025-03", "2025-04"], days=15)
        assert shown[0]["order_date"] == "2025-03-28"
        assert len(shown) == 15
        months = [r["ExpressionAttributeValues"][":p"]["S"] for r in recording.queries()]
        assert months[:2] == ["2025-04", "2025-03"]  # the window reaches into March

        everything, _ = load(reader, ["2025-02", "2025-03", "2025-04"], days=90)
        assert len(everything) == 70
        assert load(reader, ["2024-01"]) == ([], [])


def test_publish_uploads_html_built_from_the_tables(tmp_path):
    with LocalAws() as aws:
        _filled(aws, tmp_path, ORDERS, CATEGORIES)

        uri = publish_dashboard(
            aws.settings,
            bucket=aws.bucket,
            category_table=CATEGORY_TABLE,
            order_table=ORDER_TABLE,
            batch_id="b-7",
            months=["2025-03", "2025-04"],
            datasets=["orders"],
            now=NOW,
        )

        assert (
            uri == f"s3://{aws.bucket}/{DASHBOARD_KEY}" == f"s3://{aws.bucket}/dashboard/index.html"
        )
        s3 = aws.client("s3")
        head = s3.head_object(Bucket=aws.bucket, Key=DASHBOARD_KEY)
        assert head["ContentType"] == "text/html; charset=utf-8"
        page = s3.get_object(Bucket=aws.bucket, Key=DASHBOARD_KEY)["Body"].read().decode()
    # exactly the page rendered from what was written: the numbers went through DynamoDB intact
    assert page == render_dashboard(
        DashboardData(
            orders=ORDERS,
            categories=CATEGORIES,
            batch_id="b-7",
            generated_at=NOW,
            datasets=("orders",),
            tables=(CATEGORY_TABLE, ORDER_TABLE),
        )
    )
    assert "Read from DynamoDB tables ecom-category-kpis and ecom-order-kpis" in page
