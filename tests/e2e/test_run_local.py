"""End to end through `ecom-pipeline run-local`, checked against the independent reference."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import zlib
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from browser_pages import parse, png_size, run_chromium
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import (
    CATEGORY_KPIS,
    CATEGORY_TABLE,
    DATASETS,
    ORDER_KPIS,
    ORDER_TABLE,
    ExitCode,
)
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.core.tiers import TIERS
from ecom_pipeline.local.ecs_stand_in import InProcessRunner, enable_interpreter, local_ecs
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.local.generator import generate
from ecom_pipeline.local.run_local import LocalPipeline, prepare_export, run_local, s3_event
from reference_kpis import as_json_ready, kpis_from_batches

SEED_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "seed-sample"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _exported(out: Path) -> tuple[dict, dict]:
    categories = {
        (r["category"], r["order_date"]): r for r in _read_jsonl(out / "category_kpis.jsonl")
    }
    orders = {r["order_date"]: r for r in _read_jsonl(out / "order_kpis.jsonl")}
    return categories, orders


def _expected(batch_dirs: list[Path]) -> tuple[dict, dict]:
    categories, orders = kpis_from_batches(batch_dirs)
    return (
        {k: as_json_ready(v) for k, v in categories.items()},
        {k: as_json_ready(v) for k, v in orders.items()},
    )


@pytest.fixture(scope="module")
def seed_run(spark, tmp_path_factory):
    if not SEED_SAMPLE.is_dir():
        pytest.fail(f"the seed sample is missing: {SEED_SAMPLE}")
    out = tmp_path_factory.mktemp("seed-out")
    code = main(["run-local", str(SEED_SAMPLE), "--export", str(out)])
    return code, out


def test_seed_sample_succeeds_with_the_worked_example(seed_run):
    code, out = seed_run
    assert code == ExitCode.OK
    _, orders = _exported(out)
    # worked example from the issue, derived by hand from the CSV files
    day = orders["2025-03-25"]
    assert (day["total_orders"], day["total_revenue"], day["total_items_sold"]) == (
        342,
        79153.56,
        999,
    )
    assert (day["unique_customers"], day["return_rate"]) == (335, 0.1842)


def test_seed_sample_tables_equal_the_reference_everywhere(seed_run):
    _, out = seed_run
    expected_categories, expected_orders = _expected([SEED_SAMPLE])
    categories, orders = _exported(out)
    assert len(orders) == 31
    assert orders == expected_orders
    assert categories == expected_categories


def test_seed_sample_logs_every_job_to_the_log_file(seed_run):
    _, out = seed_run
    lines = _read_jsonl(out / "pipeline.log.jsonl")
    finished = {
        (line["job"], line.get("dataset"))
        for line in lines
        if line.get("event") in ("validation_result", "kpi_result")
    }
    assert finished == {("validate", d) for d in DATASETS} | {("kpis", None)}
    assert all(line["batch_id"] == "seed-sample" for line in lines if "job" in line)
    # each job's report JSON, printed as a container prints it
    reports = Counter(line["command"] for line in lines if line.get("event") == "task_output")
    assert reports == {"validate": 3, "compute-kpis": 1, "move-batch": 1}


def test_seed_sample_exports_notice_and_data_docs(seed_run):
    _, out = seed_run
    notices = _read_jsonl(out / "notifications.jsonl")
    assert [n["message"]["status"] for n in notices] == ["SUCCEEDED"]
    notice = notices[0]["message"]
    assert notice["rows_accepted"] == {"products": 10000, "orders": 9000, "order_items": 27007}
    assert len(notice["dates_recomputed"]) == 31
    assert notice["execution_id"].endswith(":seed-sample")
    assert notice["duration_s"] > 0
    assert [v["status"] for v in notice["validations"]] == ["PASSED"] * 3
    for dataset in DATASETS:
        assert (out / "data_docs" / "seed-sample" / dataset / "index.html").is_file()


def test_runs_lists_the_exports_run(seed_run, capsys):
    _, out = seed_run
    assert main(["runs", "--from-export", str(out), "--format", "json"]) == ExitCode.OK
    (run,) = json.loads(capsys.readouterr().out)
    assert (run["batch"], run["run"], run["status"], run["stage"]) == (
        "seed-sample",
        "seed-sample",
        "SUCCEEDED",
        "",
    )
    assert run["rows"] == 10000 + 9000 + 27007
    assert run["seconds"] > 0
    assert run["next"] == "s3://ecom-pipeline-local/archive/seed-sample/"


# --- The dashboard of the seed sample, in a real browser ------------------------------------------

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
SCREENSHOT_SIZE = (1280, 1900)


@pytest.fixture(scope="module")
def dashboard(seed_run):
    """The exported dashboard's DOM after Chromium loaded it (offline: every host unresolvable)."""
    _, out = seed_run
    page = out / "dashboard" / "index.html"
    assert page.is_file(), "run-local did not export the dashboard"
    return parse(run_chromium("--dump-dom", page.resolve().as_uri()))


def _series(dom, tag, series):
    return {
        node.attrs["data-date"]: node
        for node in dom.find_all(tag, data_series=series)
        if "data-date" in node.attrs
    }


def test_dashboard_shows_the_worked_example(dashboard):
    revenue = _series(dashboard, "rect", "total_revenue")["2025-03-25"]
    assert revenue.attrs["data-value"] == "79153.56"
    assert revenue.find_all("title")[0].text() == "25 Mar 2025 — revenue 79,153.56"
    orders = _series(dashboard, "rect", "total_orders")["2025-03-25"]
    assert orders.attrs["data-value"] == "342"
    assert orders.find_all("title")[0].text() == "25 Mar 2025 — orders 342"
    rate = _series(dashboard, "circle", "return_rate")["2025-03-25"]
    assert rate.find_all("title")[0].text() == "25 Mar 2025 — return rate 18.42%"
    assert dashboard.find_all("title")[0].text() == "E-commerce KPIs"
    assert dashboard.find_all("strong", id="batch")[0].text() == "seed-sample"
    assert dashboard.find_all("p", id="updated")[0].text().startswith("Last updated ")


def test_dashboard_charts_match_the_reference_everywhere(dashboard):
    reference_categories, reference_orders = _expected([SEED_SAMPLE])
    assert len(reference_orders) == 31
    for kpi in ORDER_KPIS:  # every order KPI of the contract is drawn, every day
        tag = "circle" if kpi.unit == "rate" or kpi.window_of else "rect"
        drawn = {
            d: float(n.attrs["data-value"]) for d, n in _series(dashboard, tag, kpi.name).items()
        }
        assert drawn == {d: row[kpi.name] for d, row in reference_orders.items()}, kpi.name
    # bars stand on one scale: height = value x scale for every day (coordinates: 1 decimal)
    bars = list(_series(dashboard, "rect", "total_revenue").values())
    tallest = max(bars, key=lambda b: float(b.attrs["data-value"]))
    scale = float(tallest.attrs["height"]) / float(tallest.attrs["data-value"])
    for bar in bars:
        expected = float(bar.attrs["data-value"]) * scale
        assert float(bar.attrs["height"]) == pytest.approx(expected, abs=0.12)
    segments = dashboard.find_all("rect", class_="segment")
    stacked = {
        (s.attrs["data-category"], s.attrs["data-date"]): float(s.attrs["data-value"])
        for s in segments
    }
    assert stacked == {key: row["daily_revenue"] for key, row in reference_categories.items()}
    assert len(segments) == len(reference_categories)
    legend = dashboard.find_all("section", id="category_revenue")[0].find_all("li")
    assert len(legend) == 7


def test_dashboard_marks_the_last_day_incomplete_and_headlines_the_day_before(dashboard):
    reference_categories, reference_orders = _expected([SEED_SAMPLE])
    # the seed sample ends with a cut day: 1 order on 7 Apr against ~290 a day before
    assert reference_orders["2025-04-07"]["total_orders"] == 1
    bars = _series(dashboard, "rect", "total_orders")
    assert [d for d, bar in bars.items() if "incomplete" in bar.attrs["class"].split()] == [
        "2025-04-07"
    ]
    assert bars["2025-04-07"].find_all("title")[0].text() == (
        "7 Apr 2025 — orders 1 (incomplete: 1 order against a median of 295 over the 7 "
        "complete days before)"
    )
    headline = dashboard.find_all("p", id="headline")[0]
    assert headline.text().startswith("The figures are of 6 Apr 2025, the latest complete day.")
    assert "incomplete" in dashboard.find_all("span", id="incomplete_rule")[0].text()
    table = dashboard.find_all("section", id="latest_categories")[0]
    assert table.attrs["data-date"] == "2025-04-06"
    expected = sorted(
        (row for (_, day), row in reference_categories.items() if day == "2025-04-06"),
        key=lambda row: -row["daily_revenue"],
    )
    rows = table.find_all("tbody")[0].find_all("tr")
    assert [r.attrs["data-category"] for r in rows] == [row["category"] for row in expected]
    for row, want in zip(rows, expected, strict=True):
        cells = {td.attrs["class"]: td for td in row.find_all("td") if td.attrs.get("class")}
        assert cells["daily_revenue"].text() == f"{Decimal(str(want['daily_revenue'])):,.2f}"
        for kpi in CATEGORY_KPIS:  # a column per category KPI of the contract
            assert float(cells[kpi.name].attrs["data-value"]) == want[kpi.name], kpi.name
    cards = {
        card.attrs["data-kpi"]: card.attrs["data-value"]
        for card in dashboard.find_all("div", class_="card")
    }
    day = reference_orders["2025-04-06"]
    assert {name: float(value) for name, value in cards.items()} == {
        kpi.name: day[kpi.name] for kpi in ORDER_KPIS
    }


def test_dashboard_marks_the_7_day_totals_of_the_first_6_days_short(dashboard):
    for series in ("revenue_7d", "orders_7d"):
        points = _series(dashboard, "circle", series)
        short = [d for d, p in points.items() if "short-window" in p.attrs["class"].split()]
        assert short == [f"2025-03-{day:02}" for day in range(8, 14)], series
    assert "the data starts 8 Mar 2025" in (
        dashboard.find_all("span", id="short_window_rule")[0].text()
    )


def test_dashboard_links_to_the_batch_data_docs_and_loads_nothing_remote(seed_run, dashboard):
    _, out = seed_run
    folder = out / "dashboard"
    link = dashboard.find_all("a", id="data_docs")[0].attrs["href"]
    assert link == "../data_docs/index.html#batch-seed-sample"
    assert (folder / link.split("#")[0]).resolve().is_file()
    sites = [a.attrs["href"] for a in dashboard.find_all("a", class_="dataset-docs")]
    assert sites == [f"../data_docs/seed-sample/{d}/index.html" for d in DATASETS]
    assert all((folder / site).resolve().is_file() for site in sites)
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<(script|link|img|iframe)\b", html) is None
    assert set(re.findall(r"[a-z]+://[^\s'\"<>]+", html)) == {"http://www.w3.org/2000/svg"}
    assert sorted(p.name for p in folder.iterdir()) == ["index.html"]  # nothing else to fetch


def _png_rgb(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered RGB(A) rows of an 8-bit truecolour PNG."""
    width, height = png_size(data)
    depth, colour = data[24], data[25]
    assert depth == 8
    assert colour in (2, 6)
    channels = 3 if colour == 2 else 4
    chunks, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == b"IDAT":
            chunks.append(data[position + 8 : position + 8 + length])
        position += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r[i] for i in range(len(r)) if i % channels < 3) for r in rows]


def _colour_counts(rows: list[bytes]) -> Counter:
    return Counter(row[x : x + 3] for row in rows for x in range(0, len(row), 3))


def _pixels_near(counts: Counter, colour: str, tolerance: int = 8) -> int:
    target = bytes.fromhex(colour.lstrip("#"))
    return sum(
        n
        for pixel, n in counts.items()
        if all(abs(pixel[i] - target[i]) <= tolerance for i in range(3))
    )


def _screenshot(page: Path, shot: Path) -> bytes:
    """A SCREENSHOT_SIZE picture of ``page`` in headless Chromium (offline)."""
    width, height = SCREENSHOT_SIZE
    run_chromium(
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        page.resolve().as_uri(),
    )
    return shot.read_bytes()


def test_dashboard_screenshot_shows_the_charts(seed_run, tmp_path):
    from ecom_pipeline.read.dashboard import (
        INCOMPLETE_BAND,
        ORDERS_COLOUR,
        PALETTE,
        RETURNS_COLOUR,
        REVENUE_COLOUR,
        SHORT_WINDOW_BAND,
    )

    _, out = seed_run
    shot = tmp_path / "dashboard.png"
    data = _screenshot(out / "dashboard" / "index.html", shot)
    assert len(data) < 300_000, "keep the README's screenshot small"
    size_x, size_y, rows = _png_rgb(data)
    assert (size_x, size_y) == SCREENSHOT_SIZE
    rows = _colour_counts(rows)
    # the bars and lines were drawn: thousands of pixels in each chart's colour
    assert _pixels_near(rows, REVENUE_COLOUR) > 20_000  # revenue bars (+ a category)
    assert _pixels_near(rows, ORDERS_COLOUR) > 20_000  # order bars (+ a category)
    assert _pixels_near(rows, RETURNS_COLOUR) > 500  # the return-rate line
    assert all(_pixels_near(rows, colour) > 1_000 for colour in PALETTE[:7])  # 7 categories
    # the incomplete last day's band and the short windows' band behind the first 6 days
    assert _pixels_near(rows, INCOMPLETE_BAND, tolerance=2) > 10_000
    assert _pixels_near(rows, SHORT_WINDOW_BAND, tolerance=2) > 10_000
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:  # refresh the README's picture: DASHBOARD_SCREENSHOT=docs/dashboard.png pytest ...
        shutil.copyfile(shot, keep)
    # the picture the README shows is such a screenshot
    committed = SCREENSHOT.read_bytes()
    assert png_size(committed) == SCREENSHOT_SIZE
    assert len(committed) < 300_000


def test_export_answers_queries_like_the_tables(seed_run, capsys):
    _, out = seed_run
    argv = ["kpis", "day", "--date", "2025-03-25", "--format", "json", "--from-export", str(out)]
    assert main(argv) == ExitCode.OK
    rows = json.loads(capsys.readouterr().out)
    expected_categories, _ = _expected([SEED_SAMPLE])
    want = sorted(
        (row for (_, day), row in expected_categories.items() if day == "2025-03-25"),
        key=lambda row: -row["daily_revenue"],
    )
    assert rows == want
    assert main(["kpis", "orders", "--last", "30", "--from-export", str(out)]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "Order KPIs: last 30 days up to the latest day with orders, 2025-04-07"
    )
    assert len(lines) == 3 + 30
    assert lines[3].split()[0] == "2025-03-09"
    assert lines[19].split()[:3] == ["2025-03-25", "342", "79153.56"]


def _write_rows(path: Path, dataset: str, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=DATASETS[dataset].column_names)
        writer.writeheader()
        writer.writerows(rows)


def _read_rows(folder: Path, pattern: str) -> list[dict]:
    rows = []
    for path in sorted(folder.glob(pattern)):
        with path.open(newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def _shift(value: str, delta: timedelta) -> str:
    return (datetime.fromisoformat(value) + delta).isoformat() if value else value


def random_batches(source: Path, target: Path, seed: int, count: int = 3) -> list[Path]:
    """Split a generated dataset into batches at random, respecting references (an item arrives
    with or after its order and product), and re-send some rows later with corrections: orders
    moved to another date with another status, items with another price, products with another
    category."""
    rng = random.Random(seed)
    products = _read_rows(source, "products.csv")
    orders = _read_rows(source, "orders/*.csv")
    items = _read_rows(source, "order_items/*.csv")
    batches: list[dict[str, list[dict]]] = [
        {"products": [], "orders": [], "order_items": []} for _ in range(count)
    ]
    product_batch = {}
    for row in products:
        product_batch[row["id"]] = b = rng.randrange(count)
        batches[b]["products"].append(row)
    order_batch = {}
    for row in orders:
        order_batch[row["order_id"]] = b = rng.randrange(count)
        batches[b]["orders"].append(row)
    for row in items:
        first = max(order_batch[row["order_id"]], product_batch[row["product_id"]])
        batches[rng.randrange(first, count)]["order_items"].append(row)
    for row in rng.sample(orders, len(orders) // 10):
        later = rng.randrange(order_batch[row["order_id"]], count)
        delta = timedelta(days=rng.choice([-3, -1, 1, 2]), hours=rng.randrange(24))
        moved = {k: _shift(v, delta) if k.endswith("_at") else v for k, v in row.items()}
        moved["status"] = rng.choice(["returned", "cancelled", "Delivered"])
        batches[later]["orders"].append(moved)
    for row in rng.sample(items, len(items) // 10):
        later = rng.randrange(
            max(order_batch[row["order_id"]], product_batch[row["product_id"]]), count
        )
        batches[later]["order_items"].append(
            row | {"sale_price": f"{rng.randrange(100, 99999) / 100:.2f}"}
        )
    for row in rng.sample(products, len(products) // 10):
        later = rng.randrange(product_batch[row["id"]], count)
        batches[later]["products"].append(
            row | {"category": rng.choice(["Books", "Garden", "Toys"])}
        )
    folders = []
    for number, batch in enumerate(batches, 1):
        folder = target / f"batch-{number}"
        for dataset, rows in batch.items():
            # a row re-sent in the same batch would be a duplicate key: keep the correction
            unique = list({r[DATASETS[dataset].key]: r for r in rows}.values())
            if unique:
                _write_rows(folder / f"{dataset}.csv", dataset, unique)
        if folder.exists():
            folders.append(folder)
    return folders


# One seed: every split has corrected prices, moved and re-statused orders and re-categorised
# products (10 % of each); a second seed only varied the random draws, for 40 s of the suite.
@pytest.mark.parametrize("seed", [11])
def test_random_splits_give_the_tables_of_one_run_over_all_data(spark, tmp_path, seed):
    source = tmp_path / "source"
    generate(source, 120, seed=seed, days=12, products=30)
    folders = random_batches(source, tmp_path / "batches", seed)
    out = tmp_path / "out"
    assert main(["run-local", *map(str, folders), "--export", str(out)]) == ExitCode.OK
    expected_categories, expected_orders = _expected(folders)
    categories, orders = _exported(out)
    assert orders == expected_orders
    assert categories == expected_categories


def test_failed_batch_changes_nothing_and_later_batches_still_run(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 40, seed=3, days=5, products=20)
    good = tmp_path / "good"
    _write_rows(good / "products.csv", "products", _read_rows(source, "products.csv"))
    _write_rows(good / "orders.csv", "orders", _read_rows(source, "orders/*.csv"))
    _write_rows(good / "order_items.csv", "order_items", _read_rows(source, "order_items/*.csv"))
    bad = tmp_path / "bad"
    orders = _read_rows(source, "orders/*.csv")
    orders[0] = orders[0] | {"status": "lost-in-space"}
    _write_rows(bad / "orders.csv", "orders", orders)
    out = tmp_path / "out"
    code = main(["run-local", str(good), str(bad), str(good), "--export", str(out)])
    assert code == ExitCode.DATA_REJECTED
    notices = [n["message"] for n in _read_jsonl(out / "notifications.jsonl")]
    assert [n["status"] for n in notices] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    failure = notices[1]
    assert failure["stage"] == "validation"
    assert failure["execution_id"].endswith(":bad")
    statuses = {v["dataset"]: v["status"] for v in failure["validations"]}
    assert statuses == {"products": "SKIPPED", "orders": "FAILED", "order_items": "SKIPPED"}
    result = next(v["result"] for v in failure["validations"] if v["status"] == "FAILED")
    assert result["failed_rules"][0]["rule"] == "status allowed"
    assert result["failed_rules"][0]["unexpected_count"] == 1
    assert "lost-in-space" in result["failed_rules"][0]["message"]
    assert result["data_docs"].startswith("s3://")
    expected_categories, expected_orders = _expected([good])
    categories, orders_out = _exported(out)
    assert orders_out == expected_orders
    assert categories == expected_categories


def test_dashboard_of_a_generated_sample_shows_a_later_rejection_in_a_banner(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 600, seed=7, days=14, products=40)
    bad = tmp_path / "bad"
    orders = _read_rows(source, "orders/*.csv")
    _write_rows(bad / "orders.csv", "orders", [orders[0] | {"status": "lost-in-space"}])
    out = tmp_path / "out"
    code = main(["run-local", str(source), str(bad), "--export", str(out)])
    assert code == ExitCode.DATA_REJECTED
    page = out / "dashboard" / "index.html"
    dom = parse(run_chromium("--dump-dom", page.resolve().as_uri()))

    # the page is the good batch's KPIs, with the bad batch's rejection on top
    assert dom.find_all("strong", id="batch")[0].text() == "source"
    (banner,) = dom.find_all("div", class_="banner")
    assert banner.attrs["data-batch"] == "bad"
    assert banner.text().startswith("Batch bad was rejected at validation on ")
    assert "orders: 1 rule broken (status allowed)" in banner.text()
    assert "rejected/bad/_reason.json" in banner.text()
    link = banner.find_all("a")[0].attrs["href"]
    assert link == "../data_docs/index.html#batch-bad"  # relinked for the export, and there
    assert (page.parent / link.split("#")[0]).resolve().is_file()
    reason = json.loads((out / "bucket" / "rejected" / "bad" / "_reason.json").read_text())
    assert reason["time"][:16].replace("T", " ") in banner.text()
    # every day of the generated sample is drawn; each 7-day total of its first 6 days is short
    _, expected_orders = _expected([source])
    drawn = _series(dom, "rect", "total_orders")
    assert {d: int(n.attrs["data-value"]) for d, n in drawn.items()} == {
        d: row["total_orders"] for d, row in expected_orders.items()
    }
    short = _series(dom, "circle", "orders_7d")
    first = min(expected_orders)
    assert sum("short-window" in p.attrs["class"].split() for p in short.values()) == 6
    assert "short-window" in short[first].attrs["class"].split()
    shot = _screenshot(page, tmp_path / "generated-rejected.png")
    size_x, size_y, rows = _png_rgb(shot)
    assert (size_x, size_y) == SCREENSHOT_SIZE
    assert _pixels_near(_colour_counts(rows[:400]), "#ffebe9", tolerance=2) > 20_000  # banner


def test_duplicate_event_starts_nothing_and_a_bare_marker_is_refused(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 20, seed=5, days=3, products=10)
    with LocalAws() as aws, local_ecs(InProcessRunner(main)):
        enable_interpreter("127.0.0.1", aws.port)
        config = Settings(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=tmp_path / "w"
        )
        pipeline = LocalPipeline(aws, config)
        marker = pipeline.upload(source, "dup")
        event = s3_event(aws.bucket, marker, 0)
        first = pipeline.deliver(event)
        assert len(first["started"]) == 1
        arn = pipeline.execution_arn(first["started"][0])
        assert pipeline.wait(arn)["status"] == "SUCCEEDED"
        assert pipeline.deliver(event)["duplicates"] == first["started"]  # the same event again
        # the marker alone uploaded again (the files are in archive/): refused with a notice
        aws.client("s3").put_object(Bucket=aws.bucket, Key=marker, Body=b"")
        assert pipeline.deliver(s3_event(aws.bucket, marker, 0))["refused"] == ["dup"]
        notice = aws.notifications()[-1]["message"]
        assert (notice["status"], notice["stage"], notice["batch_id"]) == (
            "FAILED",
            "intake",
            "dup",
        )
        assert "holds no dataset file" in notice["error"]
        executions = pipeline.sfn.list_executions(stateMachineArn=pipeline.state_machine_arn)
        assert len(executions["executions"]) == 1


class FailingKpiRunner(InProcessRunner):
    """Runs validation for real, but the KPI container dies (exit 137, as when OOM-killed)."""

    def __call__(self, command, environment):
        if command[0] == "compute-kpis":
            self.calls.append((list(command), dict(environment)))
            return 137
        return super().__call__(command, environment)


def test_kpi_task_failure_is_caught_notified_and_writes_nothing(spark, tmp_path):
    source = tmp_path / "source"
    generate(source, 20, seed=6, days=3, products=10)
    runner = FailingKpiRunner(main)
    summary = run_local([source], tmp_path / "out", runner=runner, progress=lambda _: None)
    assert [o.status for o in summary.outcomes] == ["FAILED"]
    assert summary.outcomes[0].error == "Kpi.Failed"
    notice = summary.outcomes[0].notice
    assert notice["stage"] == "kpis"
    assert notice["error"]["Error"] == "States.TaskFailed"
    assert '"ExitCode":137' in notice["error"]["Cause"]
    assert summary.exported == {CATEGORY_TABLE: 0, ORDER_TABLE: 0}
    # the overrides the state machine sent reached the container: command and tier settings
    commands = [call[0][0] for call in runner.calls]
    assert sorted(commands) == ["compute-kpis", "validate", "validate", "validate"]
    kpi_env = next(env for command, env in runner.calls if command[0] == "compute-kpis")
    assert kpi_env["SPARK_DRIVER_MEMORY"] == TIERS[0].driver_memory
    assert kpi_env["PIPELINE_BUCKET"] == "ecom-pipeline-local"
    assert kpi_env["EXECUTION_ID"].endswith(":source")


CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SECONDS = r"\(\d+\.\d s\)"


def test_progress_and_summary_show_steps_durations_and_local_paths(spark, tmp_path, capsys):
    """What people see: each task as it ends with its duration, a summary of the verdicts and
    where to look on this disk; nothing of emulated S3 or Python's internals. The export folder
    is an earlier run's: run-local runs into it again, replacing what runs write."""
    source = tmp_path / "source"
    generate(source, 20, seed=5, days=3, products=10)
    bad = CORPUS / "unknown_status"
    out = tmp_path / "out"
    prepare_export(out)
    stale = out / "bucket" / "archive" / "an-earlier-batch"
    stale.mkdir(parents=True)
    code = main(["run-local", str(source), str(bad), "--export", str(out)])
    assert code == ExitCode.DATA_REJECTED
    captured = capsys.readouterr()
    progress, summary = captured.err, captured.out
    for text in (progress, summary):
        assert "s3://" not in text
        assert "Decimal(" not in text
        assert "{'" not in text
        assert "in parallel" not in text
    for dataset in DATASETS:
        assert re.search(rf"^  {dataset}: PASSED, \d+ rows {SECONDS}$", progress, re.M), progress
    assert re.search(
        rf"^  KPIs: 3 dates recomputed from 10 products, 20 orders, \d+ order items {SECONDS}$",
        progress,
        re.M,
    ), progress
    assert re.search(rf"^  orders: FAILED, 4 rows {SECONDS}$", progress, re.M), progress
    # tasks run one at a time here: each one's time is its own, not the wait for the others
    first_batch = progress.split("[2/2]")[0]
    (batch_seconds,) = re.findall(r"^  batch source: SUCCEEDED \((\d+\.\d) s\)$", first_batch, re.M)
    task_seconds = re.findall(
        r"^  (?:products|orders|order_items|KPIs|raw files).*\((\d+\.\d) s\)$", first_batch, re.M
    )
    assert len(task_seconds) == 5
    assert sum(map(float, task_seconds)) <= float(batch_seconds) + 0.2
    assert (
        f"    rule 'status allowed' failed on 1 of 4 rows, e.g. {bad.as_posix()}/orders.csv "
        "status=lost\n"
    ) in progress
    assert re.search(rf"^  batch unknown_status: REJECTED at validation {SECONDS}$", progress, re.M)
    assert re.search(r"^2 batches in \d+\.\d s: 1 succeeded, 1 rejected$", summary, re.M), summary
    archived = out / "bucket" / "archive" / "source"
    rejected = out / "bucket" / "rejected" / "unknown_status"
    assert f"  source: SUCCEEDED, raw files in {archived}/\n" in summary
    assert (
        f"  unknown_status: REJECTED at validation, raw files and _reason.json in {rejected}/\n"
    ) in summary
    assert archived.is_dir()
    assert (rejected / "_reason.json").is_file()
    assert f"Data Docs: open {out / 'data_docs' / 'index.html'}\n" in summary
    assert (out / "data_docs" / "index.html").is_file()
    assert not stale.exists()  # replaced: the folder is run-local's own
