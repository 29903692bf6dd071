"""The cross-batch Data Docs index (``data-docs/index.html``): pure rendering, publishing to the
bucket, and what a real browser shows after real validations run through the command.

The browser tests open the downloaded ``data-docs/`` folder in headless Chromium
(``--dump-dom`` gives the DOM after load) with every host name unresolvable, so the GX pages'
CDN assets never leave the machine and cannot stall the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import ExitCode
from ecom_pipeline.core.layout import incoming_prefix, result_key
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.read.docs_index import (
    INDEX_KEY,
    TITLE,
    newest_first,
    publish_index,
    render_index,
)

BUCKET = "bkt"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_TIMEOUT_S = 120


# --- A small DOM, from the standard library's parser --------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return re.sub(r"\s+", " ", " ".join(parts)).strip()

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for node in self.iter():
            if node.tag != tag:
                continue
            if all(
                (value in (node.attrs.get(name.rstrip("_")) or "").split())
                if name.rstrip("_") == "class"
                else node.attrs.get(name.replace("_", "-")) == value
                for name, value in attrs.items()
            ):
                found.append(node)
        return found

    def has_class(self, name: str) -> bool:
        return name in (self.attrs.get("class") or "").split()


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(document: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(document)
    builder.close()
    return builder.root


# --- Unit tests of the page ---------------------------------------------------------------------


def _result(batch, dataset, *, success=True, run="20250301T100000.000001Z", failed=(), rows=3):
    docs = f"s3://{BUCKET}/data-docs/{batch}/{dataset}/validations/{dataset}/{batch}/{run}/p.html"
    return {
        "batch_id": batch,
        "dataset": dataset,
        "success": success,
        "files": [f"incoming/{batch}/{dataset}.csv"],
        "rows": rows,
        "rules_evaluated": 21,
        "failed_rules": list(failed),
        "data_docs": docs,
    }


STATUS_FAILURE = {
    "rule": "status allowed",
    "expectation": "expect_column_values_to_be_in_set",
    "column": "status",
    "unexpected_count": 1,
    "element_count": 3,
    "message": "orders: rule 'status allowed' failed on 1 of 3 rows; e.g. status='lost-in-space'",
}


def test_render_index_shows_title_badges_counts_and_failed_rules():
    page = parse(
        render_index(
            [
                _result("b2", "orders", success=False, failed=[STATUS_FAILURE], rows=3),
                _result("b2", "products", rows=7),
            ],
            bucket=BUCKET,
        )
    )
    assert page.find_all("title")[0].text() == TITLE == "Data Docs — ecom-pipeline"
    assert page.find_all("h1")[0].text() == TITLE
    (section,) = page.find_all("section", data_batch="b2")
    assert "b2" in section.find_all("h2")[0].text()
    orders = section.find_all("tr", data_dataset="orders")[0]
    products = section.find_all("tr", data_dataset="products")[0]
    assert [b.text() for b in orders.find_all("span", class_="badge")] == ["FAILED"]
    assert [b.text() for b in products.find_all("span", class_="badge")] == ["PASSED"]
    assert orders.find_all("td", class_="rows")[0].text() == "3"
    assert products.find_all("td", class_="rows")[0].text() == "7"
    assert products.find_all("td", class_="rules")[0].text() == "21"
    (failure,) = orders.find_all("li")
    assert failure.find_all("span", class_="rule")[0].text() == "status allowed"
    assert failure.find_all("span", class_="count")[0].text() == "1 of 3 unexpected"
    assert "status='lost-in-space'" in failure.find_all("span", class_="message")[0].text()
    assert products.find_all("ul") == []  # a passed dataset lists no rules


def test_render_index_escapes_every_value_and_needs_no_script():
    hostile = dict(
        STATUS_FAILURE,
        rule="<b>rule</b>",
        message="e.g. status='<script>alert(1)</script>' & \"quoted\"",
    )
    html_text = render_index(
        [_result("<i>b1</i>", "orders", success=False, failed=[hostile])], bucket=BUCKET
    )
    assert "<script" not in html_text
    assert "<b>rule" not in html_text
    assert "<i>b1" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "&amp; &quot;quoted&quot;" in html_text
    page = parse(html_text)
    assert [n.tag for n in page.iter() if n.tag in ("script", "b", "i")] == []
    assert "status='<script>alert(1)</script>'" in page.find_all("span", class_="message")[0].text()
    # self-contained: inline style, nothing fetched from elsewhere
    assert len(page.find_all("style")) == 1
    assert [n.tag for n in page.iter() if n.tag in ("link", "img", "iframe")] == []


def test_render_index_links_are_relative_to_data_docs():
    run = "20250301T100000.123456Z"
    page = parse(
        render_index(
            [
                _result("b1", "orders", run=run),
                _result("b 1#?", "products"),  # odd characters are URL-quoted
                dict(_result("b3", "orders"), data_docs="s3://other-bucket/data-docs/b3/x.html"),
                dict(_result("b4", "orders"), data_docs=f"s3://{BUCKET}/data-docs/../secret.html"),
                dict(_result("b5", "orders"), data_docs=None),
            ],
            bucket=BUCKET,
        )
    )

    def links(batch):
        row = page.find_all("section", data_batch=batch)[0]
        return [(a.attrs["class"], a.attrs["href"]) for a in row.find_all("a")]

    assert links("b1") == [
        ("validation-page", f"b1/orders/validations/orders/b1/{run}/p.html"),
        ("site-index", "b1/orders/index.html"),
    ]
    page_href, site_href = (href for _, href in links("b 1#?"))
    assert page_href.startswith("b%201%23%3F/products/validations/products/b%201%23%3F/")
    assert site_href == "b%201%23%3F/products/index.html"
    assert links("b3") == []  # another bucket: shown as text, not a broken link
    assert (
        "s3://other-bucket/data-docs/b3/x.html"
        in page.find_all("section", data_batch="b3")[0].text()
    )
    assert links("b4") == []  # never a link out of data-docs/
    assert links("b5") == []
    assert "no Data Docs" in page.find_all("section", data_batch="b5")[0].text()
    assert not any(
        a.attrs["href"].startswith(("s3:", "/", "http")) or ".." in a.attrs["href"]
        for a in page.find_all("a")
    )


def test_render_index_keeps_the_given_batch_order_and_datasets_in_contract_order():
    results = [
        _result("b2", "order_items"),
        _result("b1", "products"),
        _result("b2", "products"),
        _result("b2", "orders"),
    ]
    page = parse(render_index(results, bucket=BUCKET))
    assert [s.attrs["data-batch"] for s in page.find_all("section")] == ["b2", "b1"]
    b2 = page.find_all("section", data_batch="b2")[0]
    assert [r.attrs["data-dataset"] for r in b2.find_all("tr", class_="dataset")] == [
        "products",
        "orders",
        "order_items",
    ]
    empty = parse(render_index([], bucket=BUCKET))
    assert empty.find_all("section") == []
    assert "No validation results yet." in empty.text()


def test_newest_first_orders_batches_by_their_latest_run():
    results = [
        _result("a-old", "orders", run="20250301T100000.000000Z"),
        _result("z-new", "orders", run="20250301T090000.000000Z"),
        _result("z-new", "products", run="20250302T080000.000000Z"),  # revalidated later
        dict(_result("no-docs", "orders"), data_docs=None),
        _result("a-old", "products", run="20250301T110000.000000Z"),
    ]
    ordered = [(r["batch_id"], r["dataset"]) for r in newest_first(results)]
    assert ordered == [
        ("z-new", "orders"),
        ("z-new", "products"),
        ("a-old", "orders"),
        ("a-old", "products"),
        ("no-docs", "orders"),
    ]


def test_publish_index_uploads_every_result_as_html(tmp_path):
    with LocalAws() as aws:
        store = aws.store
        older = _result("b1", "products", run="20250301T100000.000000Z")
        newer = _result("b2", "orders", run="20250302T100000.000000Z", success=False)
        for doc in (older, newer):
            doc["data_docs"] = doc["data_docs"].replace(f"s3://{BUCKET}/", f"s3://{aws.bucket}/")
            store.put_json(result_key(doc["batch_id"], doc["dataset"]), doc)
        s3 = aws.client("s3")
        s3.put_object(Bucket=aws.bucket, Key="results/b3/orders.json", Body=b"not json {")
        s3.put_object(Bucket=aws.bucket, Key="results/stray.json", Body=b"{}")

        assert publish_index(store) == INDEX_KEY == "data-docs/index.html"

        head = s3.head_object(Bucket=aws.bucket, Key=INDEX_KEY)
        assert head["ContentType"].startswith("text/html")
        body = s3.get_object(Bucket=aws.bucket, Key=INDEX_KEY)["Body"].read().decode("utf-8")
    page = parse(body)
    assert [s.attrs["data-batch"] for s in page.find_all("section")] == ["b2", "b1"]
    assert (
        page.find_all("a", class_="validation-page")[0]
        .attrs["href"]
        .startswith("b2/orders/validations/")
    )


# --- A real validation, in a real browser -------------------------------------------------------

ORDERS = """\
order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item
1,10,delivered,2025-03-01T10:00:00,,2025-03-02T10:00:00,2025-03-03T10:00:00,1
2,11,lost-in-space,2025-03-01T11:00:00,,2025-03-02T10:00:00,,1
3,12,returned,2025-03-01T12:00:00,2025-03-05T10:00:00,2025-03-02T10:00:00,2025-03-03T10:00:00,2
"""
PRODUCTS = """\
id,sku,cost,category,name,brand,retail_price,department
5,abc-12345678,1.00,Books,Novel,Acme,9.99,Media
6,xyz-87654321,2.50,Toys,Kite,Acme,19.99,Kids
"""
PASSING_BATCH = "2025-03-01-products"
FAILING_BATCH = "2025-03-02-orders"


def _chromium() -> str:
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"{CHROMIUM} not found (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run_chromium(*args: str) -> str:
    """Run headless Chromium with a fresh profile, offline; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Every host name fails at once: the GX pages' CDN assets are never fetched.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            *args,
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
            process.communicate()
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {command}")
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8")


def _dump_dom(page: Path) -> Node:
    return parse(_run_chromium("--dump-dom", page.resolve().as_uri()))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _png_pixels_bytes(data: bytes) -> bytes:
    """The PNG's decompressed image data (filter bytes included)."""
    chunks, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            chunks.append(data[position + 8 : position + 8 + length])
        position += 12 + length
    return zlib.decompress(b"".join(chunks))


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory):
    """Two batches validated through the command; ``data-docs/`` downloaded from the bucket."""
    _chromium()  # skip (or fail on CI) before spending a minute on validations
    work = tmp_path_factory.mktemp("work")
    with LocalAws() as aws:
        s3 = aws.client("s3")
        s3.put_object(
            Bucket=aws.bucket,
            Key=f"{incoming_prefix(PASSING_BATCH)}products.csv",
            Body=PRODUCTS.encode(),
        )
        s3.put_object(
            Bucket=aws.bucket,
            Key=f"{incoming_prefix(FAILING_BATCH)}orders.csv",
            Body=ORDERS.encode(),
        )
        flags = ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url]
        flags += ["--work-dir", str(work)]
        codes = {
            dataset: main(["validate", "--batch-id", batch, "--dataset", dataset, *flags])
            for batch, dataset in ((PASSING_BATCH, "products"), (FAILING_BATCH, "orders"))
        }
        head = s3.head_object(Bucket=aws.bucket, Key=INDEX_KEY)
        results = {
            dataset: aws.store.get_json(result_key(batch, dataset))
            for batch, dataset in ((PASSING_BATCH, "products"), (FAILING_BATCH, "orders"))
        }
        dest = aws.store.download_prefix("data-docs", tmp_path_factory.mktemp("docs") / "docs")
    return {"codes": codes, "head": head, "results": results, "dest": dest}


def test_validate_publishes_the_index_next_to_the_gx_sites(published):
    assert published["codes"] == {"products": ExitCode.OK, "orders": ExitCode.DATA_REJECTED}
    assert published["head"]["ContentType"].startswith("text/html")
    dest = published["dest"]
    assert (dest / "index.html").is_file()
    for batch, dataset in ((PASSING_BATCH, "products"), (FAILING_BATCH, "orders")):
        assert (dest / batch / dataset / "index.html").is_file()


def test_browser_shows_index_and_follows_link_to_the_failed_expectation(published, tmp_path):
    dest = published["dest"]
    index = _dump_dom(dest / "index.html")
    assert index.find_all("title")[0].text() == TITLE
    # both batches, the newest validation first
    sections = index.find_all("section", class_="batch")
    assert [s.attrs["data-batch"] for s in sections] == [FAILING_BATCH, PASSING_BATCH]
    assert FAILING_BATCH in sections[0].find_all("h2")[0].text()
    assert PASSING_BATCH in sections[1].find_all("h2")[0].text()
    (orders,) = sections[0].find_all("tr", data_dataset="orders")
    (products,) = sections[1].find_all("tr", data_dataset="products")
    assert [b.text() for b in orders.find_all("span", class_="badge")] == ["FAILED"]
    assert [b.text() for b in products.find_all("span", class_="badge")] == ["PASSED"]
    assert orders.find_all("td", class_="rows")[0].text() == "3"
    assert products.find_all("td", class_="rows")[0].text() == "2"
    evaluated = published["results"]["orders"]["rules_evaluated"]
    assert evaluated > 0
    assert orders.find_all("td", class_="rules")[0].text() == str(evaluated)
    (failure,) = orders.find_all("li")
    assert failure.find_all("span", class_="rule")[0].text() == "status allowed"
    assert failure.find_all("span", class_="count")[0].text() == "1 of 3 unexpected"
    assert "status='lost-in-space'" in failure.text()

    # the index's links, as the browser resolved them, lead to this run's GX pages
    site = orders.find_all("a", class_="site-index")[0].attrs["href"]
    assert site == f"{FAILING_BATCH}/orders/index.html"
    assert (dest / site).is_file()
    href = orders.find_all("a", class_="validation-page")[0].attrs["href"]
    assert href.startswith(f"{FAILING_BATCH}/orders/validations/")
    expected = published["results"]["orders"]["data_docs"].split("/data-docs/", 1)[1]
    assert href == expected
    validation_page = dest / href

    gx = _dump_dom(validation_page)
    rows = [tr for tr in gx.find_all("tr") if "values must belong to this set" in tr.text().lower()]
    assert rows, "the status value set expectation is not on the page"
    failed = [tr for tr in rows if "lost-in-space" in tr.text()]
    assert failed, "the unexpected value is not shown next to the status rule"
    text = failed[-1].text()  # the innermost such row is the expectation's own
    assert "1 unexpected values found" in text
    assert any(i.has_class("text-danger") for i in failed[-1].find_all("i"))  # the failed mark

    screenshot = tmp_path / "validation.png"
    _run_chromium(
        f"--screenshot={screenshot}", "--window-size=1280,2000", validation_page.resolve().as_uri()
    )
    data = screenshot.read_bytes()
    assert _png_size(data) == (1280, 2000)
    pixels = _png_pixels_bytes(data)
    assert len(set(pixels)) > 16, "the screenshot is blank"
    assert len(data) > 20_000
    keep = os.environ.get("DATA_DOCS_SCREENSHOT")
    if keep:  # to look at it: DATA_DOCS_SCREENSHOT=/tmp/shot.png pytest ...
        shutil.copyfile(screenshot, keep)
