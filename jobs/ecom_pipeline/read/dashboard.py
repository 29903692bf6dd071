"""The KPI dashboard: one static, self-contained HTML page, ``s3://<bucket>/dashboard/index.html``.

After each successful KPI run the job reads the tables back with the same Query code as
``ecom-pipeline kpis`` (the order table's month index over the months that have data, the
category table's date index for each day shown), renders this page and uploads it. The page
draws its charts as inline SVG with inline CSS: no script, no web font, no CDN; nothing is
fetched when it is viewed. Tooltips are SVG ``<title>`` elements. Every drawn value also sits in
a ``data-value`` attribute with its exact decimal text, so tests (and scrapers) read numbers, not
pixels.

It links to the batch's Data Docs relative to itself (``../data-docs/``), which works on S3 and,
after :func:`relink_data_docs`, in a run-local export (``OUT/data_docs/``).

:func:`render_dashboard` and its helpers are pure; :func:`publish_dashboard` is the I/O.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from ecom_pipeline.adapters.aws import AwsSettings, make_client
from ecom_pipeline.adapters.storage import BucketStore, Store
from ecom_pipeline.core.contract import WINDOW_DAYS
from ecom_pipeline.read.query import DateRange, KpiReader, QueryError, day_text

log = logging.getLogger(__name__)

DASHBOARD_PREFIX = "dashboard"
DASHBOARD_KEY = f"{DASHBOARD_PREFIX}/index.html"
DASHBOARD_DAYS = 90  # the page shows at most the last 90 days with data
DOCS_BASE = "../data-docs/"  # data-docs/ seen from dashboard/, on S3
TITLE = "E-commerce KPIs"
MAX_CATEGORY_SERIES = 8  # more categories than this: the smallest are summed as "Other"

# Tableau 10: distinct, colour-blind friendly hues; the last is for "Other".
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
OTHER_COLOUR = "#bab0ac"
REVENUE_COLOUR = "#4e79a7"
ORDERS_COLOUR = "#59a14f"
WINDOW_COLOUR = "#f28e2b"
RETURNS_COLOUR = "#e15759"

# Chart geometry (SVG user units; the SVG scales to its card's width).
WIDTH, HEIGHT = 600, 290
LEFT, RIGHT, TOP, BOTTOM = 64, 64, 14, 40

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f9;color:#1f2328;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;
font-size:14px;line-height:1.45}
main{max-width:1280px;margin:0 auto;padding:24px 28px 32px}
header{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;
margin-bottom:18px;flex-wrap:wrap}
h1{font-size:26px;margin:0 0 2px;letter-spacing:-.01em}
.sub{color:#57606a;margin:0}
a{color:#0969da;text-decoration:none}
a:hover{text-decoration:underline}
.docs{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;
font-weight:600;flex-shrink:0}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #d8dee4;border-radius:10px;padding:12px 14px}
.card .label{color:#57606a;font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:22px;font-weight:700;font-variant-numeric:tabular-nums;margin-top:2px}
.card .note{color:#57606a;font-size:12px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-bottom:16px}
section.panel{background:#fff;border:1px solid #d8dee4;border-radius:10px;padding:14px 16px 8px}
section.panel h2{font-size:16px;margin:0 0 2px}
section.panel .what{color:#57606a;font-size:12px;margin:0 0 6px}
ul.legend{list-style:none;margin:0 0 4px;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;
font-size:12px;color:#3d444d}
ul.legend li{display:flex;align-items:center;gap:6px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:3px}
.swatch.line{height:3px;border-radius:2px;width:16px}
svg.chart{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#57606a}
svg .grid-line{stroke:#e6e9ed;stroke-width:1}
svg .axis{stroke:#8c959f;stroke-width:1}
svg .axis-title{font-size:11px;fill:#3d444d;font-weight:600}
svg rect.bar:hover,svg rect.segment:hover{opacity:.75}
svg circle.point:hover{stroke-width:3}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;border-top:1px solid #e6e9ed;text-align:right;white-space:nowrap}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;border-top:0}
th:nth-child(2),td:nth-child(2){text-align:left}
td.share{width:22%}
.share-bar{display:inline-block;height:8px;border-radius:4px;background:#4e79a7;
vertical-align:middle;margin-right:8px}
footer{color:#57606a;font-size:12px;margin-top:18px}
.empty{background:#fff;border:1px dashed #d0d7de;border-radius:10px;padding:40px;
text-align:center;color:#57606a}
@media (max-width:980px){.grid{grid-template-columns:1fr}
.cards{grid-template-columns:repeat(3,1fr)}}
"""


# --- Numbers and text (pure) --------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def exact(value: Decimal | int | None) -> str:
    """The exact decimal text of a number (``data-value``): 79153.56, 342, 0.1842."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def money(value: Decimal | int | None) -> str:
    """2 decimals, thousands separated: 79,153.56."""
    return "—" if value is None else f"{Decimal(value):,.2f}"


def count(value: Decimal | int | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def percent(rate: Decimal | int | None) -> str:
    """A rate as a percentage with 2 decimals: 0.1842 -> 18.42%."""
    return "—" if rate is None else f"{Decimal(rate) * 100:.2f}%"


def long_date(day: date) -> str:
    return f"{day.day} {day:%b %Y}"


def short_date(day: date) -> str:
    return f"{day.day} {day:%b}"


def compact(value: float) -> str:
    """An axis label: 0, 500, 2.5k, 80k, 1.2M."""
    magnitude = abs(value)
    if magnitude >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if magnitude >= 1_000:
        return f"{value / 1_000:.3g}k"
    return f"{value:.3g}"


def nice_ticks(maximum: float, count: int = 5) -> list[float]:
    """Round axis ticks from 0 to at least ``maximum``: steps of 1, 2, 2.5 or 5 times 10^k."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    steps = math.ceil(maximum / step - 1e-9)
    return [round(i * step, 10) for i in range(steps + 1)]


def _f(value: float) -> str:
    """SVG coordinate text."""
    return f"{value:.1f}"


# --- Chart pieces (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """The plot area of one chart, for ``days`` calendar days from ``start``."""

    start: date
    days: int
    left: float = LEFT
    right: float = WIDTH - RIGHT
    top: float = TOP
    bottom: float = HEIGHT - BOTTOM

    @property
    def band(self) -> float:
        return (self.right - self.left) / self.days

    def x(self, day: date) -> float:
        """The centre of ``day``'s band."""
        return self.left + ((day - self.start).days + 0.5) * self.band

    def y(self, value: float, top_value: float) -> float:
        return self.bottom - (value / top_value) * (self.bottom - self.top)

    def bar_width(self) -> float:
        return max(self.band * 0.7, 1.0)


def _left_axis(frame: Frame, ticks: list[float], label: Any) -> str:
    parts = []
    for tick in ticks:
        y = frame.y(tick, ticks[-1])
        parts.append(
            f"<line class='grid-line' x1='{_f(frame.left)}' x2='{_f(frame.right)}' "
            f"y1='{_f(y)}' y2='{_f(y)}'/>"
            f"<text x='{_f(frame.left - 8)}' y='{_f(y + 4)}' text-anchor='end'>"
            f"{_esc(label(tick))}</text>"
        )
    return "".join(parts)


def _right_axis(frame: Frame, ticks: list[float], label: Any, colour: str) -> str:
    return "".join(
        f"<text x='{_f(frame.right + 8)}' y='{_f(frame.y(t, ticks[-1]) + 4)}' "
        f"style='fill:{colour}'>{_esc(label(t))}</text>"
        for t in ticks
    )


def _x_axis(frame: Frame) -> str:
    """Baseline and date labels: about eight, always the last day."""
    every = max(1, math.ceil(frame.days / 8))
    last = frame.days - 1
    indexes = [i for i in range(0, frame.days, every) if last - i >= every or i == last]
    if last not in indexes:
        indexes.append(last)
    labels = "".join(
        f"<text x='{_f(frame.x(frame.start + timedelta(days=i)))}' y='{_f(frame.bottom + 18)}' "
        f"text-anchor='middle'>{_esc(short_date(frame.start + timedelta(days=i)))}</text>"
        for i in indexes
    )
    return (
        f"<line class='axis' x1='{_f(frame.left)}' x2='{_f(frame.right)}' "
        f"y1='{_f(frame.bottom)}' y2='{_f(frame.bottom)}'/>{labels}"
    )


def _svg(body: str, label: str) -> str:
    return (
        f"<svg class='chart' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' "
        f"aria-label='{_esc(label)}' xmlns='http://www.w3.org/2000/svg'>{body}</svg>"
    )


def _bars(
    frame: Frame,
    points: Sequence[tuple[date, Decimal]],
    top_value: float,
    *,
    series: str,
    colour: str,
    describe: Any,
) -> str:
    width = frame.bar_width()
    parts = []
    for day, value in points:
        y = frame.y(float(value), top_value)
        parts.append(
            f"<rect class='bar' data-series='{series}' data-date='{day_text(day)}' "
            f"data-value='{exact(value)}' x='{_f(frame.x(day) - width / 2)}' y='{_f(y)}' "
            f"width='{_f(width)}' height='{_f(frame.bottom - y)}' rx='2' fill='{colour}'>"
            f"<title>{_esc(long_date(day))} — {_esc(describe(value))}</title></rect>"
        )
    return "".join(parts)


def _line(
    frame: Frame,
    points: Sequence[tuple[date, Decimal]],
    top_value: float,
    *,
    series: str,
    colour: str,
    describe: Any,
    area: bool = False,
) -> str:
    """A line through the points, broken where a day has no value, with a dot per point."""
    segments: list[list[tuple[float, float]]] = []
    previous: date | None = None
    for day, value in points:
        xy = (frame.x(day), frame.y(float(value), top_value))
        if previous is not None and (day - previous).days == 1:
            segments[-1].append(xy)
        else:
            segments.append([xy])
        previous = day
    parts = []
    for segment in segments:
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{_f(x)},{_f(y)}" for i, (x, y) in enumerate(segment)
        )
        if area and len(segment) > 1:
            parts.append(
                f"<path d='{path} L{_f(segment[-1][0])},{_f(frame.bottom)} "
                f"L{_f(segment[0][0])},{_f(frame.bottom)} Z' fill='{colour}' "
                "fill-opacity='0.12' stroke='none'/>"
            )
        parts.append(
            f"<path class='line' data-series='{series}' d='{path}' fill='none' "
            f"stroke='{colour}' stroke-width='2.25' stroke-linejoin='round' "
            "stroke-linecap='round'/>"
        )
    radius = 3 if frame.days <= 45 else 2
    for day, value in points:
        parts.append(
            f"<circle class='point' data-series='{series}' data-date='{day_text(day)}' "
            f"data-value='{exact(value)}' cx='{_f(frame.x(day))}' "
            f"cy='{_f(frame.y(float(value), top_value))}' r='{radius}' fill='#fff' "
            f"stroke='{colour}' stroke-width='2'>"
            f"<title>{_esc(long_date(day))} — {_esc(describe(value))}</title></circle>"
        )
    return "".join(parts)


def _legend(entries: Iterable[tuple[str, str, bool]]) -> str:
    """(colour, label, is_line) entries as an HTML legend."""
    items = "".join(
        f"<li><span class='swatch{' line' if is_line else ''}' style='background:{colour}'>"
        f"</span>{_esc(label)}</li>"
        for colour, label, is_line in entries
    )
    return f"<ul class='legend'>{items}</ul>"


def _panel(panel_id: str, title: str, what: str, legend: str, svg: str) -> str:
    return (
        f"<section class='panel' id='{panel_id}'><h2>{_esc(title)}</h2>"
        f"<p class='what'>{_esc(what)}</p>{legend}{svg}</section>"
    )


def _axis_titles(left: str, right: str | None = None, right_colour: str = "") -> str:
    parts = [
        f"<text class='axis-title' x='14' y='{_f((TOP + HEIGHT - BOTTOM) / 2)}' "
        f"transform='rotate(-90 14 {_f((TOP + HEIGHT - BOTTOM) / 2)})' text-anchor='middle'>"
        f"{_esc(left)}</text>"
    ]
    if right:
        x = WIDTH - 12
        y = (TOP + HEIGHT - BOTTOM) / 2
        parts.append(
            f"<text class='axis-title' x='{_f(x)}' y='{_f(y)}' "
            f"transform='rotate(90 {_f(x)} {_f(y)})' text-anchor='middle' "
            f"style='fill:{right_colour}'>{_esc(right)}</text>"
        )
    return "".join(parts)


def _dual_chart(
    frame: Frame,
    *,
    panel_id: str,
    title: str,
    what: str,
    daily: Sequence[tuple[date, Decimal]],
    window: Sequence[tuple[date, Decimal]],
    names: tuple[str, str],
    colour: str,
    fmt: Any,
) -> str:
    """Bars of a daily value (left axis) with its 7-day total as a line (right axis)."""
    left_ticks = nice_ticks(max((float(v) for _, v in daily), default=0.0))
    right_ticks = nice_ticks(max((float(v) for _, v in window), default=0.0))
    body = (
        _left_axis(frame, left_ticks, compact)
        + _right_axis(frame, right_ticks, compact, WINDOW_COLOUR)
        + _x_axis(frame)
        + _bars(
            frame,
            daily,
            left_ticks[-1],
            series=panel_id,
            colour=colour,
            describe=lambda v: f"{names[0]} {fmt(v)}",
        )
        + _line(
            frame,
            window,
            right_ticks[-1],
            series=f"{panel_id}_7d",
            colour=WINDOW_COLOUR,
            describe=lambda v: f"{names[1]} {fmt(v)}",
        )
        + _axis_titles(names[0], names[1], WINDOW_COLOUR)
    )
    legend = _legend(
        [
            (colour, f"{names[0].capitalize()} (left axis)", False),
            (WINDOW_COLOUR, f"{names[1].capitalize()} (right axis)", True),
        ]
    )
    return _panel(panel_id, title, what, legend, _svg(body, title))


def _returns_chart(frame: Frame, rates: Sequence[tuple[date, Decimal]]) -> str:
    ticks = nice_ticks(max((float(v) for _, v in rates), default=0.0) * 100)
    top = ticks[-1] / 100
    body = (
        _left_axis(frame, [t / 100 for t in ticks], lambda t: f"{t * 100:g}%")
        + _x_axis(frame)
        + _line(
            frame,
            rates,
            top,
            series="return_rate",
            colour=RETURNS_COLOUR,
            describe=lambda v: f"return rate {percent(v)}",
            area=True,
        )
        + _axis_titles("return rate")
    )
    title = "Return rate per day"
    legend = _legend([(RETURNS_COLOUR, "Orders returned / orders created that day", True)])
    what = "Share of the day's orders whose status is returned."
    return _panel("return_rate", title, what, legend, _svg(body, title))


def category_series(
    categories: Sequence[Mapping[str, Any]], limit: int = MAX_CATEGORY_SERIES
) -> list[tuple[str, str]]:
    """(category, colour) for the stacked chart, largest revenue over the period first. With
    more than ``limit`` categories, the smallest are summed as ``Other``."""
    totals: dict[str, Decimal] = {}
    for row in categories:
        totals[row["category"]] = totals.get(row["category"], Decimal(0)) + (
            row.get("daily_revenue") or Decimal(0)
        )
    ranked = sorted(totals, key=lambda c: (-totals[c], c))
    if len(ranked) > limit:
        ranked = [*ranked[: limit - 1], "Other"]
    return [
        (name, OTHER_COLOUR if name == "Other" else PALETTE[i % len(PALETTE)])
        for i, name in enumerate(ranked)
    ]


def _stacked_chart(frame: Frame, categories: Sequence[Mapping[str, Any]]) -> str:
    series = category_series(categories)
    named = {name for name, _ in series}
    by_day: dict[date, dict[str, Decimal]] = {}
    for row in categories:
        day = date.fromisoformat(row["order_date"])
        name = row["category"] if row["category"] in named else "Other"
        by_day.setdefault(day, {})
        by_day[day][name] = by_day[day].get(name, Decimal(0)) + (
            row.get("daily_revenue") or Decimal(0)
        )
    ticks = nice_ticks(max((float(sum(v.values())) for v in by_day.values()), default=0.0))
    width = frame.bar_width()
    parts = []
    for day in sorted(by_day):
        total = sum(by_day[day].values(), Decimal(0))
        base = 0.0
        for name, colour in series:  # the largest category sits on the axis
            value = by_day[day].get(name)
            if value is None:
                continue
            y_low, y_high = frame.y(base, ticks[-1]), frame.y(base + float(value), ticks[-1])
            share = f" ({percent(value / total)} of the day)" if total else ""
            parts.append(
                f"<rect class='segment' data-date='{day_text(day)}' "
                f"data-category='{_esc(name)}' data-value='{exact(value)}' "
                f"x='{_f(frame.x(day) - width / 2)}' y='{_f(y_high)}' width='{_f(width)}' "
                f"height='{_f(y_low - y_high)}' fill='{colour}'>"
                f"<title>{_esc(long_date(day))} — {_esc(name)} {money(value)}{share}</title>"
                "</rect>"
            )
            base += float(value)
    body = (
        _left_axis(frame, ticks, compact)
        + _x_axis(frame)
        + "".join(parts)
        + _axis_titles("revenue")
    )
    title = "Revenue by category per day"
    legend = _legend([(colour, name, False) for name, colour in series])
    what = "Each day's revenue split by product category (largest at the bottom)."
    return _panel("category_revenue", title, what, legend, _svg(body, title))


def _latest_table(day: date, rows: Sequence[Mapping[str, Any]], colours: dict[str, str]) -> str:
    ranked = sorted(rows, key=lambda r: (-(r.get("daily_revenue") or 0), r["category"]))
    total = sum((r.get("daily_revenue") or Decimal(0) for r in ranked), Decimal(0))
    best = max((r.get("daily_revenue") or Decimal(0) for r in ranked), default=Decimal(0))
    body = []
    for rank, row in enumerate(ranked, 1):
        revenue = row.get("daily_revenue") or Decimal(0)
        share = revenue / total if total else Decimal(0)
        bar = 100 * float(revenue / best) if best else 0.0
        colour = colours.get(row["category"], OTHER_COLOUR)
        body.append(
            f"<tr data-category='{_esc(row['category'])}'><td>{rank}</td>"
            f"<td><span class='swatch' style='background:{colour}'></span> "
            f"{_esc(row['category'])}</td>"
            f"<td class='daily_revenue' data-value='{exact(revenue)}'>{money(revenue)}</td>"
            f"<td class='share' data-value='{exact(share)}'><span class='share-bar' "
            f"style='width:{bar * 0.6:.1f}%;background:{colour}'></span>{percent(share)}</td>"
            f"<td class='order_count' data-value='{exact(row.get('order_count'))}'>"
            f"{count(row.get('order_count'))}</td>"
            f"<td class='avg_order_value' data-value='{exact(row.get('avg_order_value'))}'>"
            f"{money(row.get('avg_order_value'))}</td>"
            f"<td class='avg_return_rate' data-value='{exact(row.get('avg_return_rate'))}'>"
            f"{percent(row.get('avg_return_rate'))}</td>"
            f"<td class='items_sold' data-value='{exact(row.get('items_sold'))}'>"
            f"{count(row.get('items_sold'))}</td></tr>"
        )
    return (
        f"<section class='panel' id='latest_categories' data-date='{day_text(day)}'>"
        f"<h2>Categories on {_esc(long_date(day))}</h2>"
        "<p class='what'>The latest day, ranked by revenue. Return rate: orders with a returned "
        "item of the category / orders with an item of the category.</p>"
        "<table><thead><tr><th>#</th><th>category</th><th>revenue</th><th>share</th>"
        "<th>orders</th><th>avg order value</th><th>return rate</th><th>items sold</th>"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></section>"
    )


def _card(card_id: str, label: str, value: str, raw: Any, note: str) -> str:
    return (
        f"<div class='card' id='{card_id}' data-value='{exact(raw)}'>"
        f"<div class='label'>{_esc(label)}</div><div class='value'>{_esc(value)}</div>"
        f"<div class='note'>{_esc(note)}</div></div>"
    )


def _cards(orders: Sequence[Mapping[str, Any]]) -> str:
    """The latest day's figures; the day before's, when there is one, as a note."""
    latest = orders[-1]
    day = date.fromisoformat(latest["order_date"])
    before = orders[-2] if len(orders) > 1 else None
    if before is not None and date.fromisoformat(before["order_date"]) != day - timedelta(days=1):
        before = None

    def note(name: str, fmt: Any) -> str:
        if before is None or before.get(name) is None:
            return long_date(day)
        return f"{short_date(day)} · {short_date(before_day)}: {fmt(before[name])}"

    before_day = day - timedelta(days=1)
    window = f"{WINDOW_DAYS} days to {short_date(day)}"
    cards = [
        ("card_revenue", "Revenue", "total_revenue", money, note("total_revenue", money)),
        ("card_orders", "Orders", "total_orders", count, note("total_orders", count)),
        ("card_return_rate", "Return rate", "return_rate", percent, note("return_rate", percent)),
        ("card_customers", "Customers", "unique_customers", count, note("unique_customers", count)),
        ("card_revenue_7d", f"Revenue, {WINDOW_DAYS} days", "revenue_7d", money, window),
        ("card_orders_7d", f"Orders, {WINDOW_DAYS} days", "orders_7d", count, window),
    ]
    return (
        "<div class='cards'>"
        + "".join(
            _card(card_id, label, fmt(latest.get(name)), latest.get(name), text)
            for card_id, label, name, fmt, text in cards
        )
        + "</div>"
    )


@dataclass(frozen=True)
class DashboardData:
    """What the page shows: order-table rows (date order), category-table rows of those dates."""

    orders: Sequence[Mapping[str, Any]]
    categories: Sequence[Mapping[str, Any]]
    batch_id: str
    generated_at: datetime
    datasets: Sequence[str] = ()  # the batch's datasets: links to their Data Docs sites
    docs_base: str = DOCS_BASE
    tables: tuple[str, str] = ("", "")  # (category table, order table), named in the footer


def _href(path: str) -> str:
    """A double-quoted href attribute (relink_data_docs relies on the double quotes)."""
    return f'href="{_esc(path)}"'


def _docs_links(data: DashboardData) -> tuple[str, str]:
    batch = quote(data.batch_id, safe="")
    index = f"{data.docs_base}index.html"
    header = (
        f"<a class='docs' id='data_docs' {_href(f'{index}#batch-{batch}')}>"
        f"Data Docs of batch {_esc(data.batch_id)} →</a>"
    )
    sites = " · ".join(
        f"<a class='dataset-docs' {_href(data.docs_base + batch + '/' + quote(d) + '/index.html')}>"
        f"{_esc(d)}</a>"
        for d in data.datasets
    )
    footer = f"Data Docs: <a class='docs-index' {_href(index)}>every batch</a>"
    if sites:
        footer += f" · this batch's validations: {sites}"
    return header, footer


def render_dashboard(data: DashboardData) -> str:
    """The whole page (pure). Every text is HTML-escaped; numbers: money with 2 decimals, rates
    as percentages, exact values in ``data-value``."""
    header_link, footer_links = _docs_links(data)
    generated = data.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    orders = sorted(data.orders, key=lambda r: r["order_date"])
    if orders:
        first = date.fromisoformat(orders[0]["order_date"])
        last = date.fromisoformat(orders[-1]["order_date"])
        frame = Frame(first, (last - first).days + 1)
        span = (
            f"{short_date(first) if first.year == last.year else long_date(first)} – "
            f"{long_date(last)} · {len(orders)} days with orders"
        )

        def points(name: str) -> list[tuple[date, Decimal]]:
            return [
                (date.fromisoformat(r["order_date"]), r[name])
                for r in orders
                if r.get(name) is not None
            ]

        latest_rows = [r for r in data.categories if r["order_date"] == day_text(last)]
        colours = dict(category_series(data.categories))
        content = (
            _cards(orders)
            + "<div class='grid'>"
            + _dual_chart(
                frame,
                panel_id="revenue",
                title="Revenue per day",
                what="Sum of the sale price of the items of the orders created that day.",
                daily=points("total_revenue"),
                window=points("revenue_7d"),
                names=("revenue", f"{WINDOW_DAYS}-day revenue"),
                colour=REVENUE_COLOUR,
                fmt=money,
            )
            + _dual_chart(
                frame,
                panel_id="orders",
                title="Orders per day",
                what="Orders created that day.",
                daily=points("total_orders"),
                window=points("orders_7d"),
                names=("orders", f"{WINDOW_DAYS}-day orders"),
                colour=ORDERS_COLOUR,
                fmt=count,
            )
            + _returns_chart(frame, points("return_rate"))
            + _stacked_chart(frame, data.categories)
            + "</div>"
            + (_latest_table(last, latest_rows, colours) if latest_rows else "")
        )
    else:
        span = "no KPIs yet"
        content = "<div class='empty'>No KPIs yet: no batch has written any order.</div>"
    category_table, order_table = data.tables
    source = (
        f" Read from DynamoDB tables {_esc(category_table)} and {_esc(order_table)} with Query."
        if category_table
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(TITLE)}</title><style>{_CSS}</style></head><body><main>"
        f"<header><div><h1>{_esc(TITLE)}</h1><p class='sub' id='span'>{_esc(span)} · "
        f"batch <strong id='batch'>{_esc(data.batch_id)}</strong> · "
        f"generated {_esc(generated)}</p></div>{header_link}</header>"
        f"{content}"
        f"<footer>{footer_links}.{source} Money: 2 decimals; rates: % of the day's orders; "
        "hover a bar or point for its value.</footer>"
        "</main></body></html>\n"
    )


def relink_data_docs(page: str, docs_dir: str) -> str:
    """The page with its Data Docs links pointing at ``../<docs_dir>/`` instead of
    ``../data-docs/`` (a run-local export keeps the site in ``OUT/data_docs/``)."""
    return page.replace(f'href="{DOCS_BASE}', f'href="../{quote(docs_dir)}/')


# --- Reading the tables and publishing (I/O) ----------------------------------------------------


def load(
    reader: KpiReader, months: Iterable[str], *, days: int = DASHBOARD_DAYS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The last ``days`` days of order rows and the category rows of those dates.

    ``months`` are the months that may hold data (derived from the data the job wrote, never
    from a Scan); they are read newest first, one month-index Query each, until the window is
    covered; then one date-index Query per day with orders."""
    orders: list[dict[str, Any]] = []
    latest: date | None = None
    for month in sorted(set(months), reverse=True):
        period = DateRange.of_month(month)
        if latest is not None and period.end <= latest - timedelta(days=days):
            break
        rows = reader.orders(period)
        orders += rows
        if rows and latest is None:
            latest = date.fromisoformat(rows[-1]["order_date"])
    if latest is None:
        return [], []
    start = day_text(latest - timedelta(days=days - 1))
    orders = sorted((r for r in orders if r["order_date"] >= start), key=lambda r: r["order_date"])
    categories = [row for r in orders for row in reader.day(date.fromisoformat(r["order_date"]))]
    return orders, categories


def publish_dashboard_after_run(
    settings: AwsSettings, *, store: Store, **details: Any
) -> str | None:
    """:func:`publish_dashboard` after a KPI run: the KPIs are safe by then, so AWS trouble or
    unreadable tables are logged as an error and leave the run successful (the next run renders
    the page again). Returns the page's URI, or None when it was not published."""
    try:
        return publish_dashboard(settings, store=store, **details)
    except (ClientError, BotoCoreError, QueryError):
        log.exception("dashboard not published", extra={"event": "dashboard_failed"})
        return None


def publish_dashboard(
    settings: AwsSettings,
    *,
    bucket: str | None = None,
    category_table: str,
    order_table: str,
    batch_id: str,
    months: Iterable[str],
    datasets: Sequence[str] = (),
    days: int = DASHBOARD_DAYS,
    now: datetime | None = None,
    store: Store | None = None,
) -> str:
    """Read the tables, render the page, upload it to ``dashboard/index.html`` of ``store``
    (default: the bucket); returns its URI."""
    dynamodb = make_client(settings, "dynamodb")
    own = BucketStore(bucket or "", settings) if store is None else None
    target = store if own is None else own
    try:
        reader = KpiReader(dynamodb, category_table=category_table, order_table=order_table)
        orders, categories = load(reader, months, days=days)
        page = render_dashboard(
            DashboardData(
                orders=orders,
                categories=categories,
                batch_id=batch_id,
                generated_at=now or datetime.now(UTC),
                datasets=tuple(datasets),
                tables=(category_table, order_table),
            )
        )
        target.put_bytes(
            DASHBOARD_KEY,
            page.encode("utf-8"),
            content_type="text/html; charset=utf-8",
            cache_control="no-cache",
        )
    finally:
        dynamodb.close()
        if own is not None:
            own.close()
    uri = target.uri(DASHBOARD_KEY)
    log.info(
        "dashboard published",
        extra={
            "event": "dashboard",
            "uri": uri,
            "days": len(orders),
            "category_rows": len(categories),
            "queries": reader.queries,
        },
    )
    return uri
