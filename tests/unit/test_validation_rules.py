"""Every validation rule, fed one bad row, names the file, the rule, the count and the value.

One GX run per dataset (module-scoped) on a file holding good rows plus one bad row per rule;
each parametrized test then checks its own rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ecom_pipeline.adapters.quality import load_suite_document, run_suite
from ecom_pipeline.core.contract import DATASETS
from ecom_pipeline.tasks.validation import (
    checkable_columns,
    file_failures,
    read_checkable,
    with_reference_checks,
)
from ecom_pipeline.transforms.ingest import DataFile, read_header

ORDERS_CSV = """\
order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item
1,10,delivered,2025-03-01T10:00:00,,2025-03-02T10:00:00,2025-03-03T10:00:00,1
2,11,DELIVERED,2025-03-01 11:00:00.250,,2025-03-02T10:00:00Z,,2
3,12,returned,2025-03-01T10:00:00+02:00,2025-03-09T10:00:00,2025-03-02T10:00:00,2025-03-03T10:00:00,1
101,13,delivered,2025-02-30T10:00:00,,,,1
102,,pending,2025-03-01T10:00:00,,,,1
103,14,pending,2025-03-01T10:00:00,,,,1
103,15,pending,2025-03-01T10:00:00,,,,1
104,16,shipping,2025-03-01T10:00:00,,,,1
105,17,pending,2025-03-01T10:00:00,,,,0
106,18,shipped,2025-03-05T10:00:00,,2025-03-04T10:00:00,,1
107,19,delivered,2025-03-05T10:00:00,,2025-03-06T10:00:00,2025-03-05T12:00:00,1
108,20,returned,2025-03-05T10:00:00,2025-03-06T10:00:00,2025-03-06T00:00:00,2025-03-07T10:00:00,1
109,21,pending,2025-03-01T10:00:00,,,,two
110,22,pending,2025-03-01T10:00:00,,,,1,surplus
"""

LONG_CATEGORY = "x" * 2100  # a DynamoDB partition key holds at most 2048 bytes
PRODUCTS_CSV = f"""\
id,sku,cost,category,name,brand,retail_price,department
1,eHZ-67752426,15.58,Beauty,"Soap, lavender",Globex,53.95,Personal Care
2,jlT-35226003,14.74,Books,Ünïcödé name,,53.07,Media
201,bad-sku,1.00,Books,x,y,2.00,Media
202,abc-12345678,-1.00,Books,x,y,2.00,Media
203,abd-12345678,1.00,Books,x,y,12.345,Media
204,abe-12345678,1.00,,x,y,2.00,Media
205,abf-12345678,1.00,{LONG_CATEGORY},x,y,2.00,Media
"""

ITEMS_CSV = """\
id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price
1,1,10,1,delivered,2025-03-01T10:00:00,,,,60.00
2,2,11,2,delivered,2025-03-01T10:00:00,,,,1.00
301,999,10,1,delivered,2025-03-01T10:00:00,,,,1.00
302,1,10,888,delivered,2025-03-01T10:00:00,,,,1.00
303,1,77,1,delivered,2025-03-01T10:00:00,,,,1.00
304,1,10,1,delivered,2025-03-01T10:00:00,,,,-5.00
305,1,10,1,delivered,2025-03-01T10:00:00,,,,abc
"""

# rule -> (dataset, key of the bad row, the value shown as an example)
CASES = {
    ("orders", "created_at parses"): (101, "2025-02-30T10:00:00"),
    ("orders", "user_id present"): (102, None),
    ("orders", "order_id unique"): (103, 103),
    ("orders", "status allowed"): (104, "shipping"),
    ("orders", "num_of_item at least 1"): (105, 0),
    ("orders", "shipped_at not before created_at"): (
        106,
        "shipped_at 2025-03-04 10:00:00 < created_at 2025-03-05 10:00:00",
    ),
    ("orders", "delivered_at not before shipped_at"): (
        107,
        "delivered_at 2025-03-05 12:00:00 < shipped_at 2025-03-06 10:00:00",
    ),
    ("orders", "returned_at not before delivered_at"): (
        108,
        "returned_at 2025-03-06 10:00:00 < delivered_at 2025-03-07 10:00:00",
    ),
    ("orders", "num_of_item parses"): (109, "two"),
    ("products", "sku pattern"): (201, "bad-sku"),
    ("products", "cost not negative"): (202, None),
    ("products", "retail_price parses"): (203, "12.345"),
    ("products", "category present"): (204, None),
    ("products", "category fits a key"): (205, "x" * 40 + "... (2100 bytes)"),
    ("order_items", "order_id refers to a known order"): (301, 999),
    ("order_items", "product_id refers to a known product"): (302, 888),
    ("order_items", "user_id matches the order's user_id"): (303, "item's 77, order's 10"),
    ("order_items", "sale_price not negative"): (304, None),
    ("order_items", "sale_price parses"): (305, "abc"),
}
CSV = {"orders": ORDERS_CSV, "products": PRODUCTS_CSV, "order_items": ITEMS_CSV}


def _write(folder: Path, name: str, text: str) -> DataFile:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return DataFile(path, f"incoming/test/{name}")


def _validate(spark, folder: Path, dataset_name: str, files: list[DataFile], known=None):
    dataset = DATASETS[dataset_name]
    frame = read_checkable(spark, dataset, files)
    if dataset.foreign_keys:
        frame = with_reference_checks(frame, dataset, known)
    outcome = run_suite(
        frame.cache(),
        dataset,
        checkable_columns=checkable_columns(dataset),
        run_name="test",
        project_dir=folder / "gx",
    )
    return outcome, file_failures(dataset, files)[0]


@pytest.fixture(scope="module")
def outcomes(spark, tmp_path_factory):
    results = {}
    for name in ("products", "orders"):
        folder = tmp_path_factory.mktemp(name)
        results[name] = _validate(spark, folder, name, [_write(folder, f"{name}.csv", CSV[name])])
    folder = tmp_path_factory.mktemp("order_items")
    known = {
        "orders": read_checkable(spark, DATASETS["orders"], [_write(folder, "o.csv", ORDERS_CSV)])
        .select("order_id", "user_id")
        .dropDuplicates(["order_id"]),
        "products": read_checkable(
            spark, DATASETS["products"], [_write(folder, "p.csv", PRODUCTS_CSV)]
        ).select("id"),
    }
    results["order_items"] = _validate(
        spark, folder, "order_items", [_write(folder, "order_items.csv", ITEMS_CSV)], known
    )
    return results


@pytest.mark.parametrize(("dataset", "rule"), list(CASES))
def test_rule_names_file_count_and_value(outcomes, dataset, rule):
    key, value = CASES[(dataset, rule)]
    outcome, _ = outcomes[dataset]
    failures = {f.rule: f for f in outcome.failures}
    assert rule in failures, f"{rule} not reported; got {sorted(failures)}"
    failure = failures[rule]
    expected_count = 2 if rule.endswith("unique") else 1
    assert failure.unexpected_count == expected_count
    message = failure.describe(dataset)
    assert f"rule '{rule}'" in message
    assert f"incoming/test/{dataset}.csv" in message
    assert f"={key}" in message or f"={key!r}" in message
    if value is not None:
        assert repr(value) in message or str(value) in message


@pytest.mark.parametrize("dataset", ["orders", "products", "order_items"])
def test_only_the_planted_rules_fail(outcomes, dataset):
    outcome, header = outcomes[dataset]
    planted = {rule for (d, rule) in CASES if d == dataset}
    if dataset == "orders":
        planted.add("well-formed rows")  # order 110 has a surplus field
    assert {f.rule for f in outcome.failures} == planted
    assert not header
    assert not outcome.success


def test_malformed_row_is_reported_once_with_its_text(outcomes):
    outcome, _ = outcomes["orders"]
    malformed = [f for f in outcome.failures if f.rule == "well-formed rows"]
    assert len(malformed) == 1
    assert malformed[0].unexpected_count == 1
    assert "surplus" in malformed[0].describe("orders")
    # the same row is not blamed again by the required-value rules
    assert all(
        "110" not in f.describe("orders") for f in outcome.failures if f.rule != "well-formed rows"
    )


def test_good_rows_pass(spark, tmp_path):
    good = "\n".join(ORDERS_CSV.splitlines()[:4]) + "\n"
    outcome, header = _validate(spark, tmp_path, "orders", [_write(tmp_path, "orders.csv", good)])
    assert outcome.success, [f.describe("orders") for f in outcome.failures]
    assert not header
    assert outcome.docs_dir is not None
    assert (outcome.docs_dir / "index.html").exists()


# A passing suite is GX's aggregates over the cached frame: all row rules share one pass (the
# rule columns must be null), plus the row count and the key's uniqueness. With each row rule
# as a row_condition or column-pair expectation, order_items took 51 Spark jobs.
MAX_SPARK_JOBS_OF_A_PASSING_SUITE = 10


def test_a_passing_suite_checks_all_row_rules_in_a_few_spark_jobs(spark, tmp_path):
    good_orders = "\n".join(ORDERS_CSV.splitlines()[:4]) + "\n"
    good_items = "\n".join(ITEMS_CSV.splitlines()[:3]) + "\n"
    known = {
        "orders": read_checkable(
            spark, DATASETS["orders"], [_write(tmp_path, "o.csv", good_orders)]
        ).select("order_id", "user_id"),
        "products": read_checkable(
            spark, DATASETS["products"], [_write(tmp_path, "p.csv", PRODUCTS_CSV)]
        ).select("id"),
    }
    dataset = DATASETS["order_items"]
    frame = with_reference_checks(
        read_checkable(spark, dataset, [_write(tmp_path, "order_items.csv", good_items)]),
        dataset,
        known,
    ).cache()
    assert frame.count() == 2
    tracker = spark.sparkContext.statusTracker()
    jobs_before = max(tracker.getJobIdsForGroup(None), default=-1)
    outcome = run_suite(
        frame,
        dataset,
        checkable_columns=checkable_columns(dataset),
        run_name="test",
        project_dir=tmp_path / "gx",
    )
    jobs = max(tracker.getJobIdsForGroup(None), default=-1) - jobs_before
    assert outcome.success, [f.describe("order_items") for f in outcome.failures]
    assert outcome.evaluated == len(load_suite_document("order_items")["expectations"])
    assert 0 < jobs <= MAX_SPARK_JOBS_OF_A_PASSING_SUITE


def test_header_problems_name_the_file_and_columns(spark, tmp_path):
    text = ORDERS_CSV.splitlines()
    wrong = (
        text[0].replace("num_of_item", "num_items")
        + ",coupon\n"
        + "1,10,delivered,2025-03-01T10:00:00,,,,1,X\n"
    )
    files = [
        _write(tmp_path, "orders_part1.csv", "\n".join(text[:3]) + "\n"),
        _write(tmp_path, "orders_part2.csv", wrong),
    ]
    outcome, header = _validate(spark, tmp_path, "orders", files)
    assert len(header) == 1
    message = header[0].describe("orders")
    assert "incoming/test/orders_part2.csv" in message
    assert "missing: ['num_of_item']" in message
    assert "unexpected: ['coupon', 'num_items']" in message
    assert "exact columns" in {f.rule for f in outcome.failures}


def test_header_only_file_fails_row_count(spark, tmp_path):
    header_only = ORDERS_CSV.splitlines()[0] + "\n"
    outcome, _ = _validate(spark, tmp_path, "orders", [_write(tmp_path, "orders.csv", header_only)])
    assert "at least one row" in {f.rule for f in outcome.failures}


def test_columns_in_another_order_with_bom_and_crlf_pass(spark, tmp_path):
    rows = [line.split(",") for line in ORDERS_CSV.splitlines()[:4]]
    order = [7, 0, 2, 1, 3, 4, 5, 6]
    text = "\ufeff" + "\r\n".join(",".join(r[i] for i in order) for r in rows) + "\r\n"
    path = tmp_path / "orders.csv"
    path.write_bytes(text.encode("utf-8"))
    assert read_header(path)[0] == "num_of_item"
    outcome, header = _validate(spark, tmp_path, "orders", [DataFile(path, "orders.csv")])
    assert outcome.success, [f.describe("orders") for f in outcome.failures]
    assert not header


def test_every_suite_covers_the_contract():
    """The JSON suites and the contract must not drift apart."""
    for name, dataset in DATASETS.items():
        document = load_suite_document(name)
        by_type: dict[str, set[str]] = {}
        for expectation in document["expectations"]:
            kwargs = expectation["kwargs"]
            by_type.setdefault(expectation["type"], set()).add(
                kwargs.get("column") or kwargs.get("column_A")
            )
            assert expectation["meta"]["rule"]
        must_be_null = by_type["expect_column_values_to_be_null"]
        required = {f"{c.name}__missing" for c in dataset.columns if c.required}
        assert required <= must_be_null, name
        assert dataset.key in by_type["expect_column_values_to_be_unique"]
        parsed = {
            f"{c.name}__unparsable"
            for c in dataset.columns
            if c.kind.value in ("id", "int", "money", "timestamp")
        }
        assert parsed <= must_be_null, name
        labels = {f"{c.name}__too_long" for c in dataset.columns if c.kind.value == "label"}
        assert labels <= must_be_null, name
        ordered = {f"{later}__before__{earlier}" for later, earlier in dataset.timestamp_order}
        assert ordered <= must_be_null, name
        assert {f"{fk.column}__orphan" for fk in dataset.foreign_keys} <= must_be_null
        # every rule column the suite checks is one the job adds
        assert must_be_null <= set(checkable_columns(dataset)), name


def test_a_label_is_trimmed_so_padded_names_are_one_key(spark, tmp_path):
    padded = PRODUCTS_CSV.splitlines()[:3]
    padded[1] = padded[1].replace(",Beauty,", ",  Beauty ,")
    padded[2] = padded[2].replace(",Books,", ',"Books\t",')
    files = [_write(tmp_path, "products.csv", "\n".join(padded) + "\n")]
    frame = read_checkable(spark, DATASETS["products"], files)
    assert [r.category for r in frame.orderBy("id").collect()] == ["Beauty", "Books"]
    assert frame.filter("category__too_long IS NOT NULL").count() == 0
