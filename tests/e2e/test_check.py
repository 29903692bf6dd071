"""`ecom-pipeline check DIR`: the pipeline's validation on a local folder, with the same verdicts
as the pipeline on the hostile-input corpus, and each bad row's line, value and text."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_cases import CORPUS, EXPECTED
from ecom_pipeline.adapters.quality import load_suite_document
from ecom_pipeline.cli import CHECK_SPARK_LOG, main
from ecom_pipeline.core.contract import DATASETS, ExitCode
from ecom_pipeline.core.planning import INTAKE_RULE, MAX_LISTED_UNRECOGNISED
from ecom_pipeline.tasks import check
from ecom_pipeline.tasks.check import (
    BAD_ROWS_HEADER,
    FolderCheck,
    check_folder,
    dataset_lines,
    refusal_lines,
    write_bad_rows,
)
from ecom_pipeline.tasks.validation import reference_columns


@pytest.fixture(scope="module")
def corpus_checks(spark, tmp_path_factory) -> dict[str, FolderCheck]:
    """Every corpus case through check (its verdicts are compared with the pipeline's own, from
    the corpus run's notices)."""
    return {
        case: check_folder(lambda: spark, CORPUS / case, work=tmp_path_factory.mktemp(case))
        for case in sorted(EXPECTED)
    }


def _without_reference_rules(rules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Rules other than those checking rows against rows accepted before: in the corpus run the
    valid cases ran first, so they hold rows that check (a first batch) does not know of.
    test_references_are_checked_within_the_folder covers check's references."""
    kept = {}
    for dataset, broken in rules.items():
        helpers = set(reference_columns(DATASETS[dataset]))
        expectations = load_suite_document(dataset)["expectations"]
        by_reference = {
            e["meta"]["rule"] for e in expectations if e["kwargs"].get("column") in helpers
        }
        kept[dataset] = broken - by_reference
    return kept


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_check_gives_the_pipelines_verdict(corpus_checks, corpus_run, case):
    checked, pipeline = corpus_checks[case], corpus_run.failed_rules(case)
    want = EXPECTED[case]
    rules = {d.dataset: {f.rule for f in d.failures} for d in checked.datasets}
    if want is None:  # accepted by the pipeline
        assert checked.success, rules
        assert checked.refusal is None
        assert all(not broken for broken in pipeline.values())
        assert rules == {name: set() for name in pipeline}
        return
    assert not checked.success
    if want["stage"] == "intake":
        assert checked.refusal is not None
        assert checked.refusal.rule == want["rule"] == INTAKE_RULE
        assert checked.refusal.files == ((CORPUS / case / want["example"]).as_posix(),)
        text = "\n".join(refusal_lines(checked.refusal))
        assert "files whose names fit no dataset" in text
        return
    assert checked.refusal is None
    # the same rules broken, dataset by dataset, as in the pipeline's run of the case
    assert _without_reference_rules(rules) == _without_reference_rules(pipeline)
    assert want["rule"] in rules[want["dataset"]]
    (dataset,) = [d for d in checked.datasets if d.dataset == want["dataset"]]
    printed = "\n".join(dataset_lines(dataset))
    assert f"rule '{want['rule']}' failed" in printed
    assert want["example"].strip("'") in printed, printed
    rows = [r for r in dataset.bad_rows if r.rule == want["rule"]]
    if want["count"] is not None:  # a rule about rows: each bad row found on its line
        assert len(rows) == want["count"]
        assert all(r.line is not None and r.row for r in rows)
        assert all(f"line {r.line}: " in printed for r in rows)


# products.csv spread over two part files: a quoted value over two lines, a blank line, a row
# with a field too many; each bad row must be named by the line it starts on in its own file.
PART1 = """\
id,sku,cost,category,name,brand,retail_price,department
1,abc-12345678,1.00,Books,Novel,Acme,9.99,Media
2,abd-12345678,-1.00,Books,Atlas,Acme,9.99,Media
"""
PART2 = """\
id,sku,cost,category,name,brand,retail_price,department
3,abe-12345678,1.00,Books,"Two
lines",Acme,9.99,Media

4,bad-sku,1.00,Books,Map,Acme,9.99,Media
5,abf-12345678,1.00,Books,Pen,Acme,n/a,Media
6,abg-12345678,1.00,Books,Ink,Acme,9.99,Media,surplus
"""


def test_bad_rows_are_named_by_file_line_and_value(spark, tmp_path):
    folder = tmp_path / "batch"
    (folder / "products").mkdir(parents=True)
    (folder / "products" / "products_part1.csv").write_text(PART1, encoding="utf-8")
    (folder / "products" / "products_part2.csv").write_text(PART2, encoding="utf-8")
    checked = check_folder(lambda: spark, folder, work=tmp_path / "work")
    assert not checked.success
    part1 = (folder / "products" / "products_part1.csv").as_posix()
    part2 = (folder / "products" / "products_part2.csv").as_posix()
    found = {(r.file, r.line, r.rule, r.column, r.value) for r in checked.bad_rows}
    assert found == {
        (part1, 3, "cost not negative", "cost", "-1.00"),
        (part2, 5, "sku pattern", "sku", "bad-sku"),
        (part2, 6, "retail_price parses", "retail_price", "n/a"),
        (part2, 7, "well-formed rows", "row", repr(PART2.splitlines()[-1])),
    }
    printed = dataset_lines(checked.datasets[0])
    assert f"    {part2} line 5: sku=bad-sku" in printed
    assert f"    {part1} line 3: cost=-1.00" in printed

    bad_rows = tmp_path / "bad-rows.csv"
    write_bad_rows(checked.bad_rows, bad_rows)
    with bad_rows.open(newline="", encoding="utf-8") as handle:
        written = list(csv.reader(handle))
    assert tuple(written[0]) == BAD_ROWS_HEADER
    assert written[1] == [
        part1,
        "3",
        "products",
        "cost not negative",
        "cost",
        "-1.00",
        "2,abd-12345678,-1.00,Books,Atlas,Acme,9.99,Media",
    ]
    assert [row[1] for row in written[2:]] == ["5", "6", "7"]
    assert written[2][6] == "4,bad-sku,1.00,Books,Map,Acme,9.99,Media"


def test_references_are_checked_within_the_folder(spark, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "products.csv").write_text(PART1.splitlines()[0] + "\n" + PART1.splitlines()[1])
    (folder / "orders.csv").write_text(
        "order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item\n"
        "7,10,pending,2025-03-01T10:00:00,,,,1\n"
    )
    (folder / "order_items.csv").write_text(
        "id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,"
        "sale_price\n"
        "1,7,10,1,pending,2025-03-01T10:00:00,,,,9.99\n"
        "2,8,10,1,pending,2025-03-01T10:00:00,,,,9.99\n"
        "3,7,11,1,pending,2025-03-01T10:00:00,,,,9.99\n"
    )
    checked = check_folder(lambda: spark, folder, work=tmp_path / "work")
    items = next(d for d in checked.datasets if d.dataset == "order_items")
    assert {(r.rule, r.line, r.value) for r in items.bad_rows} == {
        ("order_id refers to a known order", 3, "8"),
        ("user_id matches the order's user_id", 4, repr("item's 11, order's 10")),
    }
    assert [d.success for d in checked.datasets] == [True, True, False]


# --- the command ------------------------------------------------------------------------------


def test_check_command_passes_a_valid_folder_and_writes_nothing(spark, tmp_path, capsys):
    folder = tmp_path / "ok"
    shutil.copytree(CORPUS / "ok_columns_reordered", folder)
    assert main(["check", str(folder)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert re.search(r"^orders: PASSED, 3 rows in 1 file, \d+ rules \(\d+\.\d s\)$", out, re.M)
    assert re.search(r"^PASSED: every rule holds \(\d+\.\d s\)$", out, re.M), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
    assert sorted(p.name for p in folder.iterdir()) == ["orders.csv"]


def test_check_command_exits_3_with_the_bad_rows_next_to_the_folder(spark, tmp_path, capsys):
    folder = tmp_path / "b1"
    shutil.copytree(CORPUS / "unknown_status", folder)
    assert main(["check", str(folder)]) == ExitCode.DATA_REJECTED
    out = capsys.readouterr().out
    assert f"    {folder.as_posix()}/orders.csv line 5: status=lost\n" in out
    bad_rows = tmp_path / "b1.bad-rows.csv"
    assert out.rstrip().endswith(f"bad rows in {bad_rows}")
    with bad_rows.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["line"], r["rule"], r["column"], r["value"]) for r in rows] == [
        ("5", "status allowed", "status", "lost")
    ]
    assert rows[0]["row"] == "4,13,lost,2025-03-02T09:30:00,,,,1"
    assert sorted(p.name for p in folder.iterdir()) == ["orders.csv"]  # nothing inside DIR


def test_check_refuses_files_that_fit_no_dataset_as_intake_does(spark, tmp_path, capsys):
    folder = tmp_path / "b2"
    shutil.copytree(CORPUS / "unexpected_file_name", folder)
    bad_rows = tmp_path / "elsewhere" / "bad.csv"
    assert main(["check", str(folder), "--bad-rows", str(bad_rows)]) == ExitCode.DATA_REJECTED
    out = capsys.readouterr().out
    assert (
        f"refused at intake: rule '{INTAKE_RULE}': files whose names fit no dataset (expected "
        f"products*.csv, orders*.csv, order_items*.csv)\n  {folder.as_posix()}/customers.csv\n"
    ) in out
    assert "customers.csv" in bad_rows.read_text(encoding="utf-8")


def test_check_keeps_sparks_own_log_off_the_terminal(tmp_path):
    """In a process of its own, where the JVM starts: its warnings go to the log file."""
    command = Path(sys.executable).parent / "ecom-pipeline"
    done = subprocess.run(
        [str(command), "check", str(CORPUS / "ok_bom_crlf")],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=600,
        check=False,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stderr == ""
    assert "PASSED: every rule holds" in done.stdout
    assert "log4j" not in done.stdout
    assert (tmp_path / CHECK_SPARK_LOG).stat().st_size > 0


def test_a_rule_broken_by_many_rows_prints_a_few_and_keeps_the_first_ones(
    spark, tmp_path, monkeypatch
):
    from ecom_pipeline.tasks import check

    monkeypatch.setattr(check, "BAD_ROWS_PER_RULE", 6)  # as if 1000: the first N rows kept
    folder = tmp_path / "batch"
    folder.mkdir()
    header = "order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item"
    rows = [f"{n},10,lost,2025-03-01T10:00:00,,,,1" for n in range(1, 9)]
    (folder / "orders.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    checked = check_folder(lambda: spark, folder, work=tmp_path / "work")
    (orders,) = checked.datasets
    assert [r.line for r in orders.bad_rows] == [2, 3, 4, 5, 6, 7]
    printed = dataset_lines(orders)
    assert printed[1] == "  rule 'status allowed' failed on 8 of 8 rows"
    assert len([line for line in printed if line.startswith("    ") and "line" in line]) == 5
    assert printed[-1] == "    and 3 more rows: see the bad-rows file (the first 6)"


def test_a_refusal_of_many_unrecognised_files_says_how_many_and_lists_the_first(tmp_path):
    relatives = {"orders.csv": 10} | {f"notes-{n:04}.txt": 1 for n in range(250)}
    refusal = check._intake_refusal(tmp_path, relatives)
    assert refusal is not None
    assert refusal.message.endswith(f"; 250, the first {MAX_LISTED_UNRECOGNISED}:")
    assert refusal.files[0] == (tmp_path / "notes-0000.txt").as_posix()
    assert len(refusal.files) == MAX_LISTED_UNRECOGNISED
