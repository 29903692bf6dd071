"""The cross-batch Data Docs index (``data-docs/index.html``): pure rendering, publishing to the
bucket, and what a real browser shows after real validations run through the command.

The browser tests open the downloaded ``data-docs/`` folder in headless Chromium
(``--dump-dom`` gives the DOM after load) with every host name unresolvable, so the GX pages'
CDN assets never leave the machine and cannot stall the test.
"""

from __future__ import annotations

import os
import shutil

import pytest

from browser_pages import chromium, dump_dom, parse, png_pixels_bytes, png_size, run_chromium
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


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory):
    """Two batches validated through the command; ``data-docs/`` downloaded from the bucket."""
    chromium()  # skip (or fail on CI) before spending a minute on validations
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
    index = dump_dom(dest / "index.html")
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

    gx = dump_dom(validation_page)
    rows = [tr for tr in gx.find_all("tr") if "values must belong to this set" in tr.text().lower()]
    assert rows, "the status value set expectation is not on the page"
    failed = [tr for tr in rows if "lost-in-space" in tr.text()]
    assert failed, "the unexpected value is not shown next to the status rule"
    text = failed[-1].text()  # the innermost such row is the expectation's own
    assert "1 unexpected values found" in text
    assert any(i.has_class("text-danger") for i in failed[-1].find_all("i"))  # the failed mark

    screenshot = tmp_path / "validation.png"
    run_chromium(
        f"--screenshot={screenshot}", "--window-size=1280,2000", validation_page.resolve().as_uri()
    )
    data = screenshot.read_bytes()
    assert png_size(data) == (1280, 2000)
    pixels = png_pixels_bytes(data)
    assert len(set(pixels)) > 16, "the screenshot is blank"
    assert len(data) > 20_000
    keep = os.environ.get("DATA_DOCS_SCREENSHOT")
    if keep:  # to look at it: DATA_DOCS_SCREENSHOT=/tmp/shot.png pytest ...
        shutil.copyfile(screenshot, keep)
