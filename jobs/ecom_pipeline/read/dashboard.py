"""The KPI dashboard: one static, self-contained HTML page, ``s3://<bucket>/dashboard/index.html``.

After each successful KPI run the job reads the tables back with the same Query code as
``ecom-pipeline kpis`` (the order table's month index over the months that have data, the
category table's date index for each day shown), renders this page and uploads it. The page
draws its charts as inline SVG with inline CSS: no script, no web font, no CDN; nothing is
fetched when it is viewed. Tooltips are SVG ``<title>`` elements. Every drawn value also sits in
a ``data-value`` attribute with its exact decimal text, so tests (and scrapers) read numbers, not
pixels.

Its cards, charts and table columns are derived from the contract's KPIs (``CATEGORY_KPIS``,
``ORDER_KPIS``: names, labels, units): a KPI added there appears here, unless
:data:`EXCLUDED_KPIS` says why not (a test checks that every KPI is one or the other).

It is honest about what it shows: an incomplete day (:func:`day_statuses`, the one definition)
is drawn faded and never headlined, the cards show the latest complete day, 7-day totals over
fewer than 7 days of data are drawn dashed, the header says when and by which batch's KPI run it
was last updated, and a batch rejected after that update is announced in a banner
(:func:`publish_rejection_banner`, run by ``move-batch`` where the rejection is known).

It links to the batch's Data Docs relative to itself (``../data-docs/``), which works on S3 and,
after :func:`relink_data_docs`, in a run-local export (``OUT/data_docs/``).

:func:`render_dashboard` and its helpers are pure; :func:`publish_dashboard` and
:func:`publish_rejection_banner` are the I/O.
"""

from __future__ import annotations

import html
import itertools
import logging
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from ecom_pipeline.adapters.aws import AwsSettings, make_client
from ecom_pipeline.adapters.storage import BucketStore, Store
from ecom_pipeline.core.contract import (
    CATEGORY_BY_DATE_INDEX,
    CATEGORY_KPIS,
    ORDER_KPIS,
    WINDOW_DAYS,
    Kpi,
)
from ecom_pipeline.core.layout import REASON_FILE, rejected_prefix
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
# A KPI's chart colour: these three as they always were; any other KPI the next spare one.
KPI_COLOURS = {
    "total_revenue": REVENUE_COLOUR,
    "total_orders": ORDERS_COLOUR,
    "return_rate": RETURNS_COLOUR,
}
SPARE_COLOURS = ("#76b7b2", "#b07aa1", "#9c755f", "#edc948", "#ff9da7")
INCOMPLETE_BAND = "#fdf3d8"  # behind an incomplete day
SHORT_WINDOW_BAND = "#eef0f3"  # behind the days whose 7-day window is not full

# Contract KPIs the page leaves out, each with the reason. Every other KPI of CATEGORY_KPIS and
# ORDER_KPIS is drawn: a test fails when a contract KPI is neither drawn nor listed here.
EXCLUDED_KPIS: dict[str, str] = {}

# --- Complete days: the one definition (stated on the page and in docs/reading-kpis.md) ---------
# A day is INCOMPLETE when its orders are evidently not all in yet:
# - it is the current UTC day (or later) when the page is rendered: the day is still open; or
# - it has fewer orders than INCOMPLETE_SHARE of the median orders of the BASELINE_DAYS
#   complete days with orders before it (judged once MIN_BASELINE_DAYS of them are known).
# The seed sample's last day (1 order against ~290) is such a day: a batch cut mid-day.
INCOMPLETE_SHARE = Decimal("0.5")
BASELINE_DAYS = 7
MIN_BASELINE_DAYS = 3
INCOMPLETE_RULE = (
    f"A day is incomplete when it is the current UTC day (still open), or when it has fewer "
    f"than {INCOMPLETE_SHARE:.0%} of the median orders of the {BASELINE_DAYS} complete days "
    f"with orders before it (judged once {MIN_BASELINE_DAYS} such days are known)."
)

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
.cards{display:grid;grid-template-columns:repeat(7,1fr);gap:12px;margin-bottom:16px}
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
svg .incomplete{fill-opacity:.35}
svg text.band-label{font-size:10px;fill:#8a6d1c}
.marks{color:#3d444d;font-size:12px;margin:0 0 12px;display:flex;gap:6px 18px;flex-wrap:wrap}
.marks span.swatch{vertical-align:-2px;margin-right:6px;border:1px solid #d8dee4}
.headline{background:#fff;border:1px solid #d8dee4;border-left:4px solid #d4a72c;
border-radius:8px;padding:8px 14px;margin:0 0 12px}
.banner{background:#ffebe9;border:1px solid #ff8182;border-left:6px solid #cf222e;
border-radius:8px;padding:10px 14px;margin:0 0 14px;color:#82071e}
.banner strong{color:#82071e}
.banner a{font-weight:600}
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


def _mark_attributes(kinds: Mapping[str, str]) -> tuple[str, str]:
    """The class suffix and the tooltip suffix of a drawn value with these marks."""
    classes = "".join(f" {kind}" for kind in kinds)
    notes = "".join(f" ({note})" for note in kinds.values())
    return classes, notes


def _bars(
    frame: Frame,
    points: Sequence[tuple[date, Decimal]],
    top_value: float,
    *,
    series: str,
    colour: str,
    describe: Any,
    marks: Mapping[date, Mapping[str, str]],
) -> str:
    width = frame.bar_width()
    parts = []
    for day, value in points:
        y = frame.y(float(value), top_value)
        kinds = marks.get(day, {})
        classes, notes = _mark_attributes(kinds)
        outline = (
            f" stroke='{colour}' stroke-dasharray='3 2' stroke-width='1'"
            if "incomplete" in kinds
            else ""
        )
        parts.append(
            f"<rect class='bar{classes}' data-series='{series}' data-date='{day_text(day)}' "
            f"data-value='{exact(value)}' x='{_f(frame.x(day) - width / 2)}' y='{_f(y)}' "
            f"width='{_f(width)}' height='{_f(frame.bottom - y)}' rx='2' fill='{colour}'"
            f"{outline}><title>{_esc(long_date(day))} — {_esc(describe(value))}{_esc(notes)}"
            "</title></rect>"
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
    marks: Mapping[date, Mapping[str, str]],
    area: bool = False,
) -> str:
    """A line through the points, broken where a day has no value, with a dot per point; dashed
    between points of which one is a 7-day total over a short window."""
    segments: list[list[tuple[date, float, float]]] = []
    previous: date | None = None
    for day, value in points:
        xy = (day, frame.x(day), frame.y(float(value), top_value))
        if previous is not None and (day - previous).days == 1:
            segments[-1].append(xy)
        else:
            segments.append([xy])
        previous = day
    parts = []
    for segment in segments:
        if area and len(segment) > 1:
            path = " ".join(
                f"{'M' if i == 0 else 'L'}{_f(x)},{_f(y)}" for i, (_, x, y) in enumerate(segment)
            )
            parts.append(
                f"<path d='{path} L{_f(segment[-1][1])},{_f(frame.bottom)} "
                f"L{_f(segment[0][1])},{_f(frame.bottom)} Z' fill='{colour}' "
                "fill-opacity='0.12' stroke='none'/>"
            )
        for dashed, piece in _pieces(segment, marks):
            path = " ".join(
                f"{'M' if i == 0 else 'L'}{_f(x)},{_f(y)}" for i, (_, x, y) in enumerate(piece)
            )
            style = " stroke-dasharray='5 4'" if dashed else ""
            parts.append(
                f"<path class='line{' short-window' if dashed else ''}' data-series='{series}' "
                f"d='{path}' fill='none' stroke='{colour}' stroke-width='2.25' "
                f"stroke-linejoin='round' stroke-linecap='round'{style}/>"
            )
    radius = 3 if frame.days <= 45 else 2
    for day, value in points:
        classes, notes = _mark_attributes(marks.get(day, {}))
        parts.append(
            f"<circle class='point{classes}' data-series='{series}' data-date='{day_text(day)}' "
            f"data-value='{exact(value)}' cx='{_f(frame.x(day))}' "
            f"cy='{_f(frame.y(float(value), top_value))}' r='{radius}' fill='#fff' "
            f"stroke='{colour}' stroke-width='2'>"
            f"<title>{_esc(long_date(day))} — {_esc(describe(value))}{_esc(notes)}</title></circle>"
        )
    return "".join(parts)


def _pieces(
    segment: Sequence[tuple[date, float, float]], marks: Mapping[date, Mapping[str, str]]
) -> list[tuple[bool, list[tuple[date, float, float]]]]:
    """A connected run of points cut into (dashed, points) pieces: a step is dashed when either
    of its ends is a short window. A lone point is one undashed piece."""
    if len(segment) == 1:
        return [(False, list(segment))]
    pieces: list[tuple[bool, list[tuple[date, float, float]]]] = []
    for start, end in itertools.pairwise(segment):
        dashed = any("short-window" in marks.get(p[0], {}) for p in (start, end))
        if pieces and pieces[-1][0] == dashed:
            pieces[-1][1].append(end)
        else:
            pieces.append((dashed, [start, end]))
    return pieces


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


# --- The KPIs the page draws, from the contract (pure) ------------------------------------------

FORMATS: dict[str, Any] = {"money": money, "count": count, "rate": percent}
# The category KPI the table ranks by and the stacked chart splits: the one the date index sorts.
RANKING_KPI = CATEGORY_BY_DATE_INDEX.key[1]


def shown_kpis(kpis: Sequence[Kpi]) -> list[Kpi]:
    """The contract's KPIs the page draws: all but :data:`EXCLUDED_KPIS`."""
    return [kpi for kpi in kpis if kpi.name not in EXCLUDED_KPIS]


def kpi_format(kpi: Kpi) -> Any:
    """How a KPI's values read on the page, from its unit."""
    return FORMATS[kpi.unit]


def order_panels() -> list[tuple[Kpi, Kpi | None]]:
    """One chart per daily order KPI, in contract order, each with the rolling-window KPI that
    sums it (drawn as a line on the right axis), if any."""
    shown = shown_kpis(ORDER_KPIS)
    windows = {kpi.window_of: kpi for kpi in shown if kpi.window_of}
    return [(kpi, windows.get(kpi.name)) for kpi in shown if not kpi.window_of]


def _kpi_colour(kpi: Kpi, index: int) -> str:
    return KPI_COLOURS.get(kpi.name, SPARE_COLOURS[index % len(SPARE_COLOURS)])


def _axis(values: Iterable[Decimal], unit: str) -> tuple[list[float], Any]:
    """Ticks (in the values' own scale) and their label for a chart axis."""
    top = max((float(v) for v in values), default=0.0)
    if unit == "rate":  # round percentages
        return [t / 100 for t in nice_ticks(top * 100)], lambda t: f"{t * 100:g}%"
    return nice_ticks(top), compact


# --- Complete days and full windows (pure) ------------------------------------------------------


@dataclass(frozen=True)
class DayStatus:
    """One day with orders, judged by the definition above (INCOMPLETE_SHARE and the rest)."""

    day: date
    orders: int
    still_open: bool = False
    # the median orders of the complete days before, when this day fell short of its share
    short_of: Decimal | None = None
    baseline_days: int = 0

    @property
    def incomplete(self) -> bool:
        return self.still_open or self.short_of is not None

    def why(self) -> str:
        """Why it is incomplete, for people ("" when it is complete)."""
        if self.still_open:
            return f"incomplete: {long_date(self.day)} (UTC) is not over yet"
        if self.short_of is not None:
            placed = f"{count(self.orders)} order{'' if self.orders == 1 else 's'}"
            return (
                f"incomplete: {placed} against a median of {count(self.short_of)} "
                f"over the {self.baseline_days} complete days before"
            )
        return ""


def day_statuses(orders: Sequence[Mapping[str, Any]], today: date) -> dict[date, DayStatus]:
    """Every order row's day, complete or incomplete (``orders`` in date order; ``today``: the
    current UTC date when the page is rendered). Only complete days feed later days' median, so
    one short day does not lower the bar for the next."""
    statuses: dict[date, DayStatus] = {}
    complete: list[int] = []
    for row in orders:
        day = date.fromisoformat(row["order_date"])
        placed = int(row.get("total_orders") or 0)
        recent = complete[-BASELINE_DAYS:]
        median = (
            Decimal(str(statistics.median(recent))) if len(recent) >= MIN_BASELINE_DAYS else None
        )
        status = DayStatus(
            day,
            placed,
            still_open=day >= today,
            short_of=median if median is not None and placed < INCOMPLETE_SHARE * median else None,
            baseline_days=len(recent),
        )
        statuses[day] = status
        if not status.incomplete:
            complete.append(placed)
    return statuses


def window_days_covered(day: date, first_day: date) -> int:
    """How many of the WINDOW_DAYS days ending ``day`` lie on or after the first day of data: a
    7-day total over fewer days is not over a full window."""
    return max(0, min(WINDOW_DAYS, (day - first_day).days + 1))


# --- Charts (pure) ------------------------------------------------------------------------------


def _bands(frame: Frame, days: Iterable[date], colour: str, kind: str) -> str:
    """A background band over each of ``days``, the height of the plot."""
    return "".join(
        f"<rect class='{kind}-band' data-date='{day_text(day)}' "
        f"x='{_f(frame.x(day) - frame.band / 2)}' y='{_f(frame.top)}' width='{_f(frame.band)}' "
        f"height='{_f(frame.bottom - frame.top)}' fill='{colour}'/>"
        for day in days
    )


@dataclass(frozen=True)
class Marks:
    """What the charts mark, per day: incomplete days and days whose window is short."""

    incomplete: Mapping[date, str]  # day -> why
    short_window: Mapping[date, str]  # day -> over how many days

    def daily(self) -> dict[date, dict[str, str]]:
        return {day: {"incomplete": why} for day, why in self.incomplete.items()}

    def window(self) -> dict[date, dict[str, str]]:
        marks: dict[date, dict[str, str]] = {}
        for source, kind in ((self.short_window, "short-window"), (self.incomplete, "incomplete")):
            for day, note in source.items():
                marks.setdefault(day, {})[kind] = note
        return marks

    def backdrop(self, frame: Frame, *, windows: bool) -> str:
        short = (
            _bands(frame, self.short_window, SHORT_WINDOW_BAND, "short-window") if windows else ""
        )
        return short + _bands(frame, self.incomplete, INCOMPLETE_BAND, "incomplete")


def _kpi_chart(
    frame: Frame,
    kpi: Kpi,
    window: Kpi | None,
    *,
    colour: str,
    daily: Sequence[tuple[date, Decimal]],
    totals: Sequence[tuple[date, Decimal]],
    marks: Marks,
) -> str:
    """One order KPI per day (bars; a rate as a line) on the left axis, with the window KPI that
    sums it as a line on the right axis."""
    fmt = kpi_format(kpi)
    ticks, label = _axis((v for _, v in daily), kpi.unit)
    body = marks.backdrop(frame, windows=window is not None) + _left_axis(frame, ticks, label)
    body += _x_axis(frame)

    def describe(value: Decimal) -> str:
        return f"{kpi.label} {fmt(value)}"

    if kpi.unit == "rate":
        body += _line(
            frame,
            daily,
            ticks[-1],
            series=kpi.name,
            colour=colour,
            describe=describe,
            marks=marks.daily(),
            area=True,
        )
    else:
        body += _bars(
            frame,
            daily,
            ticks[-1],
            series=kpi.name,
            colour=colour,
            describe=describe,
            marks=marks.daily(),
        )
    legend = [(colour, kpi.label.capitalize(), kpi.unit == "rate")]
    if window is None:
        body += _axis_titles(kpi.label)
    else:
        window_fmt = kpi_format(window)
        window_ticks, window_label = _axis((v for _, v in totals), window.unit)
        body += _right_axis(frame, window_ticks, window_label, WINDOW_COLOUR)
        body += _line(
            frame,
            totals,
            window_ticks[-1],
            series=window.name,
            colour=WINDOW_COLOUR,
            describe=lambda v: f"{window.label} {window_fmt(v)}",
            marks=marks.window(),
        )
        body += _axis_titles(kpi.label, window.label, WINDOW_COLOUR)
        legend = [
            (colour, f"{kpi.label.capitalize()} (left axis)", kpi.unit == "rate"),
            (WINDOW_COLOUR, f"{window.label.capitalize()} (right axis)", True),
        ]
    title = f"{kpi.label.capitalize()} per day"
    what = f"{kpi.name}: {kpi.definition}."
    if window is not None:
        what += f" {window.name}: {window.definition}."
    return _panel(kpi.name, title, what, _legend(legend), _svg(body, title))


def category_series(
    categories: Sequence[Mapping[str, Any]], limit: int = MAX_CATEGORY_SERIES
) -> list[tuple[str, str]]:
    """(category, colour) for the stacked chart, largest RANKING_KPI over the period first. With
    more than ``limit`` categories, the smallest are summed as ``Other``."""
    totals: dict[str, Decimal] = {}
    for row in categories:
        totals[row["category"]] = totals.get(row["category"], Decimal(0)) + (
            row.get(RANKING_KPI) or Decimal(0)
        )
    ranked = sorted(totals, key=lambda c: (-totals[c], c))
    if len(ranked) > limit:
        ranked = [*ranked[: limit - 1], "Other"]
    return [
        (name, OTHER_COLOUR if name == "Other" else PALETTE[i % len(PALETTE)])
        for i, name in enumerate(ranked)
    ]


def _ranking_kpi() -> Kpi:
    return next(kpi for kpi in CATEGORY_KPIS if kpi.name == RANKING_KPI)


def _stacked_chart(frame: Frame, categories: Sequence[Mapping[str, Any]], marks: Marks) -> str:
    ranking = _ranking_kpi()
    fmt = kpi_format(ranking)
    series = category_series(categories)
    named = {name for name, _ in series}
    by_day: dict[date, dict[str, Decimal]] = {}
    for row in categories:
        day = date.fromisoformat(row["order_date"])
        name = row["category"] if row["category"] in named else "Other"
        by_day.setdefault(day, {})
        by_day[day][name] = by_day[day].get(name, Decimal(0)) + (row.get(RANKING_KPI) or Decimal(0))
    ticks = nice_ticks(max((float(sum(v.values())) for v in by_day.values()), default=0.0))
    width = frame.bar_width()
    parts = []
    daily_marks = marks.daily()
    for day in sorted(by_day):
        total = sum(by_day[day].values(), Decimal(0))
        classes, notes = _mark_attributes(daily_marks.get(day, {}))
        base = 0.0
        for name, colour in series:  # the largest category sits on the axis
            value = by_day[day].get(name)
            if value is None:
                continue
            y_low, y_high = frame.y(base, ticks[-1]), frame.y(base + float(value), ticks[-1])
            share = f" ({percent(value / total)} of the day)" if total else ""
            parts.append(
                f"<rect class='segment{classes}' data-date='{day_text(day)}' "
                f"data-category='{_esc(name)}' data-value='{exact(value)}' "
                f"x='{_f(frame.x(day) - width / 2)}' y='{_f(y_high)}' width='{_f(width)}' "
                f"height='{_f(y_low - y_high)}' fill='{colour}'>"
                f"<title>{_esc(long_date(day))} — {_esc(name)} {fmt(value)}{share}"
                f"{_esc(notes)}</title></rect>"
            )
            base += float(value)
    body = (
        marks.backdrop(frame, windows=False)
        + _left_axis(frame, ticks, compact)
        + _x_axis(frame)
        + "".join(parts)
        + _axis_titles(ranking.label)
    )
    title = f"{ranking.label.capitalize()} by category per day"
    legend = _legend([(colour, name, False) for name, colour in series])
    what = (
        f"Each day's {ranking.label} split by product category (largest at the bottom). "
        f"{ranking.name}: {ranking.definition}."
    )
    return _panel("category_revenue", title, what, legend, _svg(body, title))


def _latest_table(
    day: date, rows: Sequence[Mapping[str, Any]], colours: dict[str, str], *, latest: bool
) -> str:
    """The headline day per category, ranked by RANKING_KPI: one column per category KPI (its
    share of the day after the ranking one)."""
    kpis = shown_kpis(CATEGORY_KPIS)
    ranked = sorted(rows, key=lambda r: (-(r.get(RANKING_KPI) or 0), r["category"]))
    total = sum((r.get(RANKING_KPI) or Decimal(0) for r in ranked), Decimal(0))
    best = max((r.get(RANKING_KPI) or Decimal(0) for r in ranked), default=Decimal(0))
    head = "<th>#</th><th>category</th>"
    for kpi in kpis:
        head += f"<th data-kpi='{kpi.name}' title='{_esc(kpi.definition)}'>{_esc(kpi.label)}</th>"
        if kpi.name == RANKING_KPI:
            head += "<th>share</th>"
    body = []
    for rank, row in enumerate(ranked, 1):
        colour = colours.get(row["category"], OTHER_COLOUR)
        cells = ""
        for kpi in kpis:
            value = row.get(kpi.name)
            cells += (
                f"<td class='{kpi.name}' data-value='{exact(value)}'>"
                f"{_esc(kpi_format(kpi)(value))}</td>"
            )
            if kpi.name == RANKING_KPI:
                amount = value or Decimal(0)
                share = amount / total if total else Decimal(0)
                bar = 100 * float(amount / best) if best else 0.0
                cells += (
                    f"<td class='share' data-value='{exact(share)}'><span class='share-bar' "
                    f"style='width:{bar * 0.6:.1f}%;background:{colour}'></span>"
                    f"{percent(share)}</td>"
                )
        body.append(
            f"<tr data-category='{_esc(row['category'])}'><td>{rank}</td>"
            f"<td><span class='swatch' style='background:{colour}'></span> "
            f"{_esc(row['category'])}</td>{cells}</tr>"
        )
    ranking = _ranking_kpi()
    which = "The latest day" if latest else "The latest complete day"
    what = f"{which}, ranked by {ranking.label}. " + "; ".join(
        f"{kpi.label}: {kpi.definition}" for kpi in kpis
    )
    return (
        f"<section class='panel' id='latest_categories' data-date='{day_text(day)}'>"
        f"<h2>Categories on {_esc(long_date(day))}</h2><p class='what'>{_esc(what)}.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></section>"
    )


def _card(card_id: str, kpi: Kpi, value: Any, note: str) -> str:
    return (
        f"<div class='card' id='{card_id}' data-kpi='{kpi.name}' data-value='{exact(value)}'>"
        f"<div class='label'>{_esc(kpi.label)}</div>"
        f"<div class='value'>{_esc(kpi_format(kpi)(value))}</div>"
        f"<div class='note'>{_esc(note)}</div></div>"
    )


def _cards(
    orders: Sequence[Mapping[str, Any]], headline: Mapping[str, Any], first_day: date
) -> str:
    """The headline day's figures, one card per order KPI; the day before's, when there is one,
    as a note."""
    day = date.fromisoformat(headline["order_date"])
    before_day = day - timedelta(days=1)
    before = next((r for r in orders if r["order_date"] == day_text(before_day)), None)
    covered = window_days_covered(day, first_day)
    cards = []
    for kpi in shown_kpis(ORDER_KPIS):
        if kpi.window_of:
            note = f"{WINDOW_DAYS} days to {short_date(day)}"
            if covered < WINDOW_DAYS:
                note += f" (only {covered} with data)"
        elif before is None or before.get(kpi.name) is None:
            note = long_date(day)
        else:
            note = (
                f"{short_date(day)} · {short_date(before_day)}: {kpi_format(kpi)(before[kpi.name])}"
            )
        cards.append(_card(f"card_{kpi.name}", kpi, headline.get(kpi.name), note))
    return f"<div class='cards' data-date='{day_text(day)}'>{''.join(cards)}</div>"


def _marks_key(marks: Marks, first_day: date) -> str:
    """What the faded and dashed marks mean, with the definition of an incomplete day."""
    key = (
        f"<span id='incomplete_rule'><span class='swatch' style='background:{INCOMPLETE_BAND}'>"
        f"</span>Incomplete day (drawn faded, never headlined). {_esc(INCOMPLETE_RULE)}</span>"
    )
    if marks.short_window:
        last = max(marks.short_window)
        key += (
            f"<span id='short_window_rule'><span class='swatch' "
            f"style='background:{SHORT_WINDOW_BAND}'></span>{WINDOW_DAYS}-day totals up to "
            f"{_esc(short_date(last))} cover fewer than {WINDOW_DAYS} days: the data starts "
            f"{_esc(long_date(first_day))} (dashed line).</span>"
        )
    return f"<p class='marks'>{key}</p>"


def _headline_note(headline: DayStatus, statuses: Mapping[date, DayStatus]) -> str:
    """Which day the cards and the table show, and why not a later one."""
    later = [s for day, s in sorted(statuses.items()) if day > headline.day]
    if not later and not headline.incomplete:
        return ""
    if headline.incomplete:
        text = (
            f"No complete day yet: the figures are of {long_date(headline.day)}, {headline.why()}."
        )
    else:
        skipped = "; ".join(f"{long_date(s.day)}, {s.why()}" for s in later)
        text = (
            f"The figures are of {long_date(headline.day)}, the latest complete day. "
            f"Not headlined: {skipped}."
        )
    return (
        f"<p class='headline' id='headline' data-date='{day_text(headline.day)}'>{_esc(text)}</p>"
    )


# --- Banners: a batch rejected after the page was last updated (pure) ---------------------------

BANNERS_START, BANNERS_END = "<!--banners-->", "<!--/banners-->"


@dataclass(frozen=True)
class Rejection:
    """A batch rejected after the page was rendered, from its ``_reason.json``."""

    batch_id: str
    stage: str  # "intake" or "validation"
    time: datetime
    summary: str

    @classmethod
    def from_reason(cls, reason: Mapping[str, Any]) -> Rejection:
        if reason.get("stage") == "intake":
            summary = str(reason.get("message") or "its files fit no dataset")
        else:
            broken = []
            for dataset, result in (reason.get("datasets") or {}).items():
                if result.get("status") == "FAILED":
                    rules = [r.get("rule", "?") for r in result.get("failed_rules", [])]
                    listed = ", ".join(rules[:3]) + (", …" if len(rules) > 3 else "")
                    count_text = f"{len(rules)} rule{'' if len(rules) == 1 else 's'} broken"
                    broken.append(f"{dataset}: {count_text} ({listed})")
                elif result.get("status") == "NOT_VALIDATED":
                    broken.append(f"{dataset}: not validated")
            summary = "; ".join(broken) or "a validation failed"
        return cls(
            batch_id=str(reason["batch_id"]),
            stage=str(reason.get("stage")),
            time=datetime.fromisoformat(reason["time"]),
            summary=summary,
        )

    def banner(self) -> str:
        batch = quote(self.batch_id, safe="")
        reason_key = f"{rejected_prefix(self.batch_id)}{REASON_FILE}"
        if self.stage == "validation":  # its Data Docs show each broken rule with examples
            link = f"<a {_href(f'{DOCS_BASE}index.html#batch-{batch}')}>its Data Docs</a>"
        else:
            link = f"<a {_href(f'../{rejected_prefix(batch)}{REASON_FILE}')}>{REASON_FILE}</a>"
        when = self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"<div class='banner' data-batch='{_esc(self.batch_id)}' "
            f"data-stage='{_esc(self.stage)}'>"
            f"<strong>Batch {_esc(self.batch_id)} was rejected at {_esc(self.stage)}</strong> on "
            f"{_esc(when)}, after this page was last updated: none of its rows are in the figures "
            f"below. Reason: {_esc(self.summary)}. See {link}; the reason is kept in "
            f"<code>{_esc(reason_key)}</code>.</div>"
        )


def add_rejection_banner(page: str, rejection: Rejection) -> str:
    """The page with a banner for ``rejection`` on top of the others (once per batch: a later
    rejection of the same batch replaces its banner)."""
    start = page.index(BANNERS_START) + len(BANNERS_START)
    end = page.index(BANNERS_END)
    kept = [
        banner
        for banner in re.findall(r"<div class='banner'.*?</div>", page[start:end])
        if f"data-batch='{_esc(rejection.batch_id)}'" not in banner
    ]
    return page[:start] + rejection.banner() + "".join(kept) + page[end:]


def page_updated_at(page: str) -> datetime | None:
    """When the page's KPIs were rendered (its ``updated`` line), if it says."""
    found = re.search(r"id='updated' data-time='([^']+)'", page)
    return datetime.fromisoformat(found.group(1)) if found else None


# --- The page (pure) ----------------------------------------------------------------------------


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
    # the first day with orders in the tables (windows before its 7th day are short); None: the
    # first day shown. load() gives date.min when the data starts a week or more before that.
    first_day: date | None = None


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


def _content(data: DashboardData, orders: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The span line and the cards, charts and table of a page with orders."""
    first = date.fromisoformat(orders[0]["order_date"])
    last = date.fromisoformat(orders[-1]["order_date"])
    first_day = data.first_day or first
    frame = Frame(first, (last - first).days + 1)
    span = (
        f"{short_date(first) if first.year == last.year else long_date(first)} – "
        f"{long_date(last)} · {len(orders)} days with orders"
    )
    statuses = day_statuses(orders, data.generated_at.astimezone(UTC).date())
    complete = [r for r in orders if not statuses[date.fromisoformat(r["order_date"])].incomplete]
    headline = (complete or orders)[-1]
    headline_day = date.fromisoformat(headline["order_date"])
    short = {}
    for row in orders:
        day = date.fromisoformat(row["order_date"])
        covered = window_days_covered(day, first_day)
        if covered < WINDOW_DAYS:
            short[day] = (
                f"over {covered} of {WINDOW_DAYS} days: the data starts {short_date(first_day)}"
            )
    marks = Marks(
        incomplete={day: s.why() for day, s in statuses.items() if s.incomplete},
        short_window=short,
    )

    def points(name: str) -> list[tuple[date, Decimal]]:
        return [
            (date.fromisoformat(r["order_date"]), r[name])
            for r in orders
            if r.get(name) is not None
        ]

    charts = "".join(
        _kpi_chart(
            frame,
            kpi,
            window,
            colour=_kpi_colour(kpi, index),
            daily=points(kpi.name),
            totals=points(window.name) if window else [],
            marks=marks,
        )
        for index, (kpi, window) in enumerate(order_panels())
    )
    headline_rows = [r for r in data.categories if r["order_date"] == day_text(headline_day)]
    colours = dict(category_series(data.categories))
    table = (
        _latest_table(headline_day, headline_rows, colours, latest=headline is orders[-1])
        if headline_rows
        else ""
    )
    content = (
        _headline_note(statuses[headline_day], statuses)
        + _cards(orders, headline, first_day)
        + _marks_key(marks, first_day)
        + f"<div class='grid'>{charts}{_stacked_chart(frame, data.categories, marks)}</div>"
        + table
    )
    return span, content


def render_dashboard(data: DashboardData) -> str:
    """The whole page (pure). Every text is HTML-escaped; numbers: money with 2 decimals, rates
    as percentages, exact values in ``data-value``."""
    header_link, footer_links = _docs_links(data)
    updated = data.generated_at.astimezone(UTC)
    orders = sorted(data.orders, key=lambda r: r["order_date"])
    if orders:
        span, content = _content(data, orders)
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
        f"<header><div><h1>{_esc(TITLE)}</h1><p class='sub' id='span'>{_esc(span)}</p>"
        f"<p class='sub' id='updated' data-time='{updated.isoformat()}'>Last updated "
        f"{_esc(updated.strftime('%Y-%m-%d %H:%M UTC'))} by the KPI run of batch "
        f"<strong id='batch'>{_esc(data.batch_id)}</strong></p></div>{header_link}</header>"
        f"{BANNERS_START}{BANNERS_END}"
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


class Loaded(NamedTuple):
    """What :func:`load` read: the days shown and where the data starts."""

    orders: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    # the first day with orders in the tables; date.min when the data starts at least
    # WINDOW_DAYS days before the first day shown (so every window shown is full)
    first_day: date | None


def load(reader: KpiReader, months: Iterable[str], *, days: int = DASHBOARD_DAYS) -> Loaded:
    """The last ``days`` days of order rows, the category rows of those dates, and the first
    day of data when it matters (a 7-day total within its first days covers fewer days).

    ``months`` are the months that may hold data (derived from the data the job wrote, never
    from a Scan); they are read newest first, one month-index Query each, until the window and
    the 6 days before it are covered; then one date-index Query per day with orders."""
    orders: list[dict[str, Any]] = []
    latest: date | None = None
    older_data = False
    for month in sorted(set(months), reverse=True):
        period = DateRange.of_month(month)
        if latest is not None and period.end < latest - timedelta(days=days + WINDOW_DAYS - 2):
            older_data = True  # this month ends a week or more before the first day shown
            break
        rows = reader.orders(period)
        orders += rows
        if rows and latest is None:
            latest = date.fromisoformat(rows[-1]["order_date"])
    if latest is None:
        return Loaded([], [], None)
    first_day = date.min if older_data else min(date.fromisoformat(r["order_date"]) for r in orders)
    start = day_text(latest - timedelta(days=days - 1))
    orders = sorted((r for r in orders if r["order_date"] >= start), key=lambda r: r["order_date"])
    categories = [row for r in orders for row in reader.day(date.fromisoformat(r["order_date"]))]
    return Loaded(orders, categories, first_day)


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
        orders, categories, first_day = load(reader, months, days=days)
        page = render_dashboard(
            DashboardData(
                orders=orders,
                categories=categories,
                first_day=first_day,
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


def publish_rejection_banner(store: Store, batch_id: str) -> str | None:
    """Announce on the published page that ``batch_id`` was rejected, from the
    ``rejected/<batch>/_reason.json`` just written: ``move-batch --to rejected`` runs it, since
    that is where a rejection is known (a KPI run, which renders the page, never sees one).

    Nothing is changed when there is no page yet, no reason file, or the page was rendered after
    the rejection (its figures are newer: a banner would be stale). Returns the page's URI when
    a banner was added."""
    reason = store.get_json_or_none(f"{rejected_prefix(batch_id)}{REASON_FILE}")
    if reason is None or store.head(DASHBOARD_KEY) is None:
        return None
    rejection = Rejection.from_reason(reason)
    page = store.get_bytes(DASHBOARD_KEY).decode("utf-8")
    updated = page_updated_at(page)
    # the reason's time has whole seconds: a page of the same second is not newer
    if BANNERS_START not in page or (
        updated is not None and updated.replace(microsecond=0) > rejection.time
    ):
        return None
    store.put_bytes(
        DASHBOARD_KEY,
        add_rejection_banner(page, rejection).encode("utf-8"),
        content_type="text/html; charset=utf-8",
        cache_control="no-cache",
    )
    uri = store.uri(DASHBOARD_KEY)
    log.info(
        "rejection shown on the dashboard",
        extra={"event": "dashboard_banner", "uri": uri, "stage": rejection.stage},
    )
    return uri


def publish_rejection_banner_after_move(store: Store, batch_id: str) -> str | None:
    """:func:`publish_rejection_banner` once the batch's files are settled: they are safe and
    the notice still goes out, so trouble here is logged as an error and nothing more (the next
    KPI run renders the page afresh)."""
    try:
        return publish_rejection_banner(store, batch_id)
    except (ClientError, BotoCoreError, OSError, ValueError, KeyError):
        log.exception("rejection not shown on the dashboard", extra={"event": "dashboard_failed"})
        return None
