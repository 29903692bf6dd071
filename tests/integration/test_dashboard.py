"""The KPI dashboard: pure rendering (numbers, geometry, links, no external resources), its
panels and columns derived from the contract, incomplete days and short windows marked, the
rejection banner, reading the tables for it with Query only, and publishing it to the bucket.
The pages built by real runs are opened in Chromium in tests/e2e/test_run_local.py."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest

from browser_pages import parse
from ecom_pipeline.adapters.dynamo import to_dynamo_item
from ecom_pipeline.adapters.storage import FileStore
from ecom_pipeline.core.contract import (
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_KPIS,
    CATEGORY_TABLE,
    ORDER_BY_MONTH_INDEX,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_KPIS,
    ORDER_TABLE,
    Kpi,
)
from ecom_pipeline.core.layout import REASON_FILE, rejected_prefix
from ecom_pipeline.local.emulator import EXPORT_FILES, LocalAws, item_json
from ecom_pipeline.read import dashboard
from ecom_pipeline.read.dashboard import (
    DASHBOARD_KEY,
    EXCLUDED_KPIS,
    INCOMPLETE_RULE,
    DashboardData,
    Rejection,
    add_rejection_banner,
    category_series,
    compact,
    count,
    day_statuses,
    load,
    money,
    nice_ticks,
    percent,
    publish_dashboard,
    publish_rejection_banner,
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


LONG_AGO = date(2025, 1, 1)  # data from long before the days shown: every 7-day window is full


def _page(orders=ORDERS, categories=CATEGORIES, **kwargs):
    data = DashboardData(
        orders=orders,
        categories=categories,
        batch_id=kwargs.pop("batch_id", "b-7"),
        generated_at=kwargs.pop("generated_at", NOW),
        datasets=("orders", "order_items"),
        first_day=kwargs.pop("first_day", LONG_AGO),
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
    bars = dom.find_all("rect", class_="bar", data_series="total_revenue")
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
    orders = dom.find_all("rect", class_="bar", data_series="total_orders")
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
    assert rate_panel.find_all("rect", class_="bar") == []  # a rate is a line, not bars
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
    revenue = dom.find_all("div", id="card_total_revenue")[0]
    assert _attr(revenue, "data-value") == "79153.56"
    assert "79,153.56" in revenue.text()
    assert "2 Apr · 1 Apr: 200.25" in revenue.text()
    orders = dom.find_all("div", id="card_total_orders")[0]
    assert orders.find_all("div", class_="value")[0].text() == "342"
    rate = dom.find_all("div", id="card_return_rate")[0]
    assert rate.find_all("div", class_="value")[0].text() == "18.42%"
    assert "357" in dom.find_all("div", id="card_orders_7d")[0].text()
    assert dom.find_all("p", id="headline") == []  # the latest day is complete: nothing to say


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


# --- the contract's KPIs, all of them ------------------------------------------------------------


def _drawn_series(dom):
    return {
        _attr(node, "data-series")
        for tag in ("rect", "circle")
        for node in dom.find_all(tag)
        if _attr(node, "data-series")
    }


def test_every_contract_kpi_is_on_the_page_or_excluded_with_a_reason():
    kpis = {k.name for k in CATEGORY_KPIS + ORDER_KPIS}
    assert set(EXCLUDED_KPIS) <= kpis, "an exclusion names no contract KPI"
    assert all(reason.strip() for reason in EXCLUDED_KPIS.values()), "an exclusion needs a reason"
    dom = parse(_page())
    series = _drawn_series(dom)
    cards = {_attr(c, "data-kpi") for c in dom.find_all("div", class_="card")}
    table = dom.find_all("section", id="latest_categories")[0]
    headers = [_attr(th, "data-kpi") for th in table.find_all("th") if _attr(th, "data-kpi")]
    row = table.find_all("tr", data_category="Books")[0]
    for kpi in ORDER_KPIS:
        if kpi.name in EXCLUDED_KPIS:
            continue
        assert kpi.name in cards, f"order KPI {kpi.name} has no card"
        assert kpi.name in series, f"order KPI {kpi.name} is not drawn in any chart"
        (card,) = dom.find_all("div", id=f"card_{kpi.name}")
        assert card.find_all("div", class_="label")[0].text() == kpi.label
    for kpi in CATEGORY_KPIS:
        if kpi.name in EXCLUDED_KPIS:
            continue
        assert kpi.name in headers, f"category KPI {kpi.name} has no column"
        assert row.find_all("td", class_=kpi.name), f"category KPI {kpi.name} has no cells"
    # the columns follow the contract's order, with their labels
    shown = [k for k in CATEGORY_KPIS if k.name not in EXCLUDED_KPIS]
    assert headers == [k.name for k in shown]
    labels = [th.text() for th in table.find_all("th") if _attr(th, "data-kpi")]
    assert labels == [k.label for k in shown]


def test_a_kpi_added_to_the_contract_appears_without_touching_the_page(monkeypatch):
    basket = Kpi("avg_basket", "money", "total_revenue / total_orders", "average basket")
    window = Kpi(
        "basket_7d", "money", "avg_basket over 7 days", "7-day basket", window_of="avg_basket"
    )
    share = Kpi("repeat_share", "rate", "returning customers / customers", "repeat share")
    monkeypatch.setattr(dashboard, "ORDER_KPIS", (*ORDER_KPIS, basket, window))
    monkeypatch.setattr(dashboard, "CATEGORY_KPIS", (*CATEGORY_KPIS, share))
    orders = [{**row, "avg_basket": D("12.5"), "basket_7d": D("80")} for row in ORDERS]
    categories = [{**row, "repeat_share": D("0.25")} for row in CATEGORIES]

    dom = parse(_page(orders=orders, categories=categories))

    (card,) = dom.find_all("div", id="card_avg_basket")
    assert card.find_all("div", class_="value")[0].text() == "12.50"  # money: its unit's format
    (panel,) = dom.find_all("section", id="avg_basket")
    assert panel.find_all("h2")[0].text() == "Average basket per day"
    assert "total_revenue / total_orders" in panel.text()  # its definition, from the contract
    assert len(panel.find_all("rect", class_="bar", data_series="avg_basket")) == 4
    assert len(panel.find_all("circle", data_series="basket_7d")) == 4  # its window, same panel
    table = dom.find_all("section", id="latest_categories")[0]
    assert [th.text() for th in table.find_all("th", data_kpi="repeat_share")] == ["repeat share"]
    assert [td.text() for td in table.find_all("td", class_="repeat_share")] == ["25.00%"] * 2


def test_an_excluded_kpi_is_left_out(monkeypatch):
    monkeypatch.setitem(EXCLUDED_KPIS, "unique_customers", "shown elsewhere")
    monkeypatch.setitem(EXCLUDED_KPIS, "items_sold", "shown elsewhere")
    dom = parse(_page())
    assert dom.find_all("div", id="card_unique_customers") == []
    assert dom.find_all("section", id="unique_customers") == []
    assert dom.find_all("th", data_kpi="items_sold") == []
    assert dom.find_all("div", id="card_total_orders")  # the others stay


# --- complete days, full windows, when the page was updated --------------------------------------


def _days(counts, start=date(2025, 3, 8)):
    rows = []
    for i, placed in enumerate(counts):
        day = start + timedelta(days=i)
        rows.append(_order(day, f"{placed * 230}", placed, "0.18", f"{placed * 230}", placed))
    return rows


def test_incomplete_is_a_short_day_against_the_median_of_complete_days_or_the_open_day():
    # the seed sample's shape: ~290 orders a day, then a last day with 1
    rows = _days([286, 311, 281, 285, 1, 120, 300, 144, 145, 1])
    statuses = day_statuses(rows, today=date(2026, 1, 1))
    incomplete = [d.isoformat() for d, s in statuses.items() if s.incomplete]
    # Mar 12: 1 < 50% of 285.5 (the median of Mar 8-11); Mar 13: 120 < 50% of 285.5 too (Mar 12
    # is not complete: not in the median); Mar 15: 144 >= 50% of 286; Mar 16: 145 >= 50% of
    # 285.5; Mar 17: 1 < 50% of 285, the median of the 7 complete days (which include the low
    # but complete Mar 15 and 16)
    assert incomplete == ["2025-03-12", "2025-03-13", "2025-03-17"]
    last = statuses[date(2025, 3, 17)]
    assert last.short_of == D("285")
    assert last.baseline_days == 7
    assert last.why() == (
        "incomplete: 1 order against a median of 285 over the 7 complete days before"
    )
    # too few complete days before to judge: a quiet start is not incomplete
    assert not any(
        s.incomplete for s in day_statuses(_days([300, 10, 5]), date(2026, 1, 1)).values()
    )
    # the current UTC day is still open, whatever its orders
    open_day = day_statuses(_days([300, 300, 300, 400]), today=date(2025, 3, 11))
    assert [s.incomplete for s in open_day.values()] == [False, False, False, True]
    assert open_day[date(2025, 3, 11)].why() == "incomplete: 11 Mar 2025 (UTC) is not over yet"


def test_an_incomplete_last_day_is_marked_and_the_cards_show_the_latest_complete_day():
    rows = _days([286, 311, 281, 285, 289, 292, 300, 1])
    categories = [_category(date.fromisoformat(r["order_date"]), "Books", "10") for r in rows]
    dom = parse(_page(orders=rows, categories=categories))

    assert dom.find_all("div", class_="cards")[0].attrs["data-date"] == "2025-03-14"
    (orders,) = dom.find_all("div", id="card_total_orders")
    assert _attr(orders, "data-value") == "300"
    assert "14 Mar · 13 Mar: 292" in orders.text()
    (note,) = dom.find_all("p", id="headline")
    assert note.text() == (
        "The figures are of 14 Mar 2025, the latest complete day. Not headlined: 15 Mar 2025, "
        "incomplete: 1 order against a median of 289 over the 7 complete days before."
    )
    assert dom.find_all("section", id="latest_categories")[0].attrs["data-date"] == "2025-03-14"
    # the day is still drawn, faded, in every chart, with the reason in its tooltip
    for series in ("total_orders", "total_revenue", "total_items_sold", "unique_customers"):
        bars = dom.find_all("rect", class_="bar", data_series=series)
        assert [b.has_class("incomplete") for b in bars] == [False] * 7 + [True], series
        assert (
            bars[-1]
            .find_all("title")[0]
            .text()
            .endswith(
                "(incomplete: 1 order against a median of 289 over the 7 complete days before)"
            )
        )
    rates = dom.find_all("circle", data_series="return_rate")
    assert [p.has_class("incomplete") for p in rates] == [False] * 7 + [True]
    segments = dom.find_all("rect", class_="segment", data_date="2025-03-15")
    assert segments
    assert all(s.has_class("incomplete") for s in segments)
    bands = dom.find_all("rect", class_="incomplete-band")
    assert {_attr(b, "data-date") for b in bands} == {"2025-03-15"}
    assert len(bands) == 6  # one behind the day in each of the six charts
    assert INCOMPLETE_RULE in dom.find_all("span", id="incomplete_rule")[0].text()


def test_the_definition_is_stated_even_when_every_day_is_complete():
    dom = parse(_page())
    assert dom.find_all("rect", class_="incomplete-band") == []
    assert not any(b.has_class("incomplete") for b in dom.find_all("rect", class_="bar"))
    (rule,) = dom.find_all("span", id="incomplete_rule")
    assert "fewer than 50% of the median orders of the 7 complete days" in rule.text()


def test_the_open_day_is_never_headlined():
    rows = _days([286, 311, 281, 500])
    dom = parse(
        _page(orders=rows, categories=[], generated_at=datetime(2025, 3, 11, 9, tzinfo=UTC))
    )
    assert dom.find_all("div", class_="cards")[0].attrs["data-date"] == "2025-03-10"
    assert "11 Mar 2025, incomplete: 11 Mar 2025 (UTC) is not over yet" in (
        dom.find_all("p", id="headline")[0].text()
    )
    # only the open day: it is shown, and said to be incomplete
    alone = parse(
        _page(
            orders=_days([5], start=date(2025, 3, 11)),
            categories=[],
            generated_at=datetime(2025, 3, 11, 9, tzinfo=UTC),
        )
    )
    assert alone.find_all("div", class_="cards")[0].attrs["data-date"] == "2025-03-11"
    assert alone.find_all("p", id="headline")[0].text() == (
        "No complete day yet: the figures are of 11 Mar 2025, incomplete: 11 Mar 2025 (UTC) is "
        "not over yet."
    )


def test_seven_day_totals_over_the_first_days_of_data_are_marked_short():
    rows = _days([286, 311, 281, 285, 289, 292, 300, 290, 288])
    dom = parse(_page(orders=rows, categories=[], first_day=date(2025, 3, 8)))
    for series in ("orders_7d", "revenue_7d"):
        points = dom.find_all("circle", data_series=series)
        # Mar 8-13 sum 1 to 6 days of data; Mar 14 is the first full window
        assert [p.has_class("short-window") for p in points] == [True] * 6 + [False] * 3, series
        assert (
            points[0]
            .find_all("title")[0]
            .text()
            .endswith("(over 1 of 7 days: the data starts 8 Mar)")
        )
        dashed = dom.find_all("path", class_="short-window", data_series=series)
        solid = [
            p
            for p in dom.find_all("path", class_="line", data_series=series)
            if not p.has_class("short-window")
        ]
        assert len(dashed) == len(solid) == 1
        assert "stroke-dasharray" in dashed[0].attrs
    bands = dom.find_all("rect", class_="short-window-band")
    assert {_attr(b, "data-date") for b in bands} == {f"2025-03-{d:02}" for d in range(8, 14)}
    assert "cover fewer than 7 days: the data starts 8 Mar 2025" in (
        dom.find_all("span", id="short_window_rule")[0].text()
    )
    # the daily series are not windows: never marked short
    assert not any(b.has_class("short-window") for b in dom.find_all("rect", class_="bar"))
    # the cards say so while the headline day's window is short
    early = parse(_page(orders=rows[:4], categories=[], first_day=date(2025, 3, 8)))
    assert "7 days to 11 Mar (only 4 with data)" in (
        early.find_all("div", id="card_revenue_7d")[0].text()
    )
    # when the data started long before, nothing is short
    full = parse(_page(orders=rows, categories=[], first_day=date.min))
    assert full.find_all("rect", class_="short-window-band") == []
    assert full.find_all("span", id="short_window_rule") == []


def test_the_page_says_when_and_by_which_batch_it_was_last_updated():
    dom = parse(_page(batch_id="2025-04-02"))
    (updated,) = dom.find_all("p", id="updated")
    assert updated.text() == "Last updated 2025-04-08 06:30 UTC by the KPI run of batch 2025-04-02"
    assert _attr(updated, "data-time") == "2025-04-08T06:30:00+00:00"


# --- a batch rejected after the update: the banner -----------------------------------------------


VALIDATION_REASON = {
    "batch_id": "late <batch>",
    "stage": "validation",
    "execution_id": "arn:aws:states:eu-west-1:1:execution:pipeline:late",
    "time": "2025-04-08T07:15:00+00:00",
    "files": ["rejected/late <batch>/orders.csv"],
    "datasets": {
        "products": {"status": "PASSED", "failed_rules": []},
        "orders": {
            "status": "FAILED",
            "failed_rules": [{"rule": "order_id is unique"}, {"rule": "created_at parses"}],
        },
        "order_items": {"status": "NOT_VALIDATED"},
    },
}
INTAKE_REASON = {
    "batch_id": "odd",
    "stage": "intake",
    "time": "2025-04-08T08:00:00+00:00",
    "message": "1 file(s) fit no dataset (expected ...): rejected/odd/customers.csv",
}


def test_a_rejection_banner_says_which_batch_why_and_links_to_its_reason():
    page = _page()
    assert parse(page).find_all("div", class_="banner") == []
    banned = add_rejection_banner(page, Rejection.from_reason(VALIDATION_REASON))
    (banner,) = parse(banned).find_all("div", class_="banner")
    assert banner.text() == (
        "Batch late <batch> was rejected at validation on 2025-04-08 07:15 UTC, after this page "
        "was last updated: none of its rows are in the figures below. Reason: orders: 2 rules "
        "broken (order_id is unique, created_at parses); order_items: not validated. See its Data "
        "Docs ; the reason is kept in rejected/late <batch>/_reason.json ."
    )
    (link,) = banner.find_all("a")
    assert _attr(link, "href") == "../data-docs/index.html#batch-late%20%3Cbatch%3E"
    local = parse(relink_data_docs(banned, "data_docs")).find_all("div", class_="banner")[0]
    assert _attr(local.find_all("a")[0], "href").startswith("../data_docs/index.html#batch-")
    # an intake rejection has no Data Docs: the link is its reason file
    both = add_rejection_banner(banned, Rejection.from_reason(INTAKE_REASON))
    banners = parse(both).find_all("div", class_="banner")
    assert [_attr(b, "data-batch") for b in banners] == ["odd", "late <batch>"]  # newest first
    assert _attr(banners[0].find_all("a")[0], "href") == "../rejected/odd/_reason.json"
    assert "1 file(s) fit no dataset" in banners[0].text()
    # the same batch rejected again: one banner, the latest
    again = add_rejection_banner(both, Rejection.from_reason(INTAKE_REASON))
    assert len(parse(again).find_all("div", class_="banner")) == 2
    assert "<script" not in again


def test_move_batch_publishes_the_banner_only_for_a_rejection_after_the_page(tmp_path):
    store = FileStore(tmp_path)
    batch = VALIDATION_REASON["batch_id"]
    reason_key = f"{rejected_prefix(batch)}{REASON_FILE}"
    store.put_json(reason_key, VALIDATION_REASON)
    assert publish_rejection_banner(store, batch) is None  # no page yet: nothing to correct
    store.put_bytes(DASHBOARD_KEY, _page().encode(), content_type="text/html")  # updated 06:30

    assert publish_rejection_banner(store, batch) == store.uri(DASHBOARD_KEY)

    page = store.get_bytes(DASHBOARD_KEY).decode()
    assert [_attr(b, "data-batch") for b in parse(page).find_all("div", class_="banner")] == [batch]
    # a page rendered after the rejection is newer than it: no stale banner
    newer = _page(generated_at=datetime(2025, 4, 8, 8, tzinfo=UTC))
    store.put_bytes(DASHBOARD_KEY, newer.encode(), content_type="text/html")
    assert publish_rejection_banner(store, batch) is None
    assert store.get_bytes(DASHBOARD_KEY).decode() == newer
    assert publish_rejection_banner(store, "never-rejected") is None


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

        shown, shown_categories, first_day = load(
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
        # Apr 2-11, and the 6 days before (Mar 27-Apr 1), whose orders the window of Apr 2 sums:
        # February is not read, so the data is known to start a week or more before Apr 2
        assert months == ["2025-04", "2025-03"]
        assert first_day == date.min
        assert len(requests) == 2 + 10  # and one date-index Query per day shown

        recording.clear()
        shown, _, _ = load(reader, ["2025-02", "2025-03", "2025-04"], days=15)
        assert shown[0]["order_date"] == "2025-03-28"
        assert len(shown) == 15
        months = [r["ExpressionAttributeValues"][":p"]["S"] for r in recording.queries()]
        assert months[:2] == ["2025-04", "2025-03"]  # the window reaches into March

        everything, _, first_day = load(reader, ["2025-02", "2025-03", "2025-04"], days=90)
        assert len(everything) == 70
        assert first_day == date(2025, 2, 1)  # every month was read: the data starts here
        assert load(reader, ["2024-01"]) == ([], [], None)


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
            first_day=DAYS[0],
        )
    )
    assert "Read from DynamoDB tables ecom-category-kpis and ecom-order-kpis" in page
