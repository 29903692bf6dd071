"""The `ecom-pipeline` command line as people meet it: help, version, and every mistake
refused with one clear line and exit 2 before anything starts (no Spark, no emulator here)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from ecom_pipeline.cli import CONTAINER_COMMANDS, USER_COMMANDS, build_parser, main
from ecom_pipeline.core.contract import ExitCode
from ecom_pipeline.local import run_local as run_local_module
from ecom_pipeline.local.run_local import (
    EXPORT_MARKER,
    RunArgumentsError,
    argument_problems,
    export_problem,
    prepare_export,
    run_local,
)
from ecom_pipeline.tasks import check as check_module

ORDERS = "order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item\n"


def _batch(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "orders.csv").write_text(ORDERS + "1,10,pending,2025-03-01T10:00:00,,,,1\n")
    return folder


def _exit_code(argv: list[str]) -> int:
    """argparse exits itself (SystemExit) for --help, --version and its own errors."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def nothing_starts(monkeypatch):
    """Starting the emulator or checking a folder fails the test: a refusal must come first."""

    def started(*_args, **_kwargs):
        raise AssertionError("something started before the arguments were checked")

    monkeypatch.setattr(run_local_module, "LocalAws", started)
    monkeypatch.setattr(check_module, "check_folder", started)


# --- help and version ---------------------------------------------------------------------


def test_version_is_the_installed_packages(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ecom-pipeline {version('ecom-kpi-pipeline')}"


def test_help_lists_the_commands_people_run_before_the_container_entry_points():
    listed = re.findall(r"^    ([a-z-]+)", build_parser().format_help(), re.M)
    assert listed == [*USER_COMMANDS, *CONTAINER_COMMANDS]


@pytest.mark.parametrize(
    "command",
    [
        *[[name] for name in USER_COMMANDS + CONTAINER_COMMANDS],
        ["kpis", "category"],
        ["kpis", "day"],
        ["kpis", "orders"],
    ],
    ids=" ".join,
)
def test_every_subcommand_help_ends_with_examples(command, capsys):
    assert _exit_code([*command, "--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("\nexamples:\n", 1)[1]
    # as written (RawDescriptionHelpFormatter), each a full command line
    lines = [line for line in examples.splitlines() if line.startswith("  ecom-pipeline")]
    assert lines
    assert all(line.startswith(f"  ecom-pipeline {' '.join(command)}") for line in lines[:1])


# --- mistakes: one line, exit 2, no traceback ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--orders", "-5"], "argument --orders: must be at least 1, got -5"),
        (["--orders", "ten"], "argument --orders: not a whole number: 'ten'"),
        (["--orders", "5", "--days", "0"], "argument --days: must be at least 1, got 0"),
        (["--orders", "5", "--start", "2025-02-30"], "not a date YYYY-MM-DD: '2025-02-30'"),
    ],
)
def test_generate_refuses_bad_numbers_as_usage_errors(argv, message, tmp_path, capsys):
    assert _exit_code(["generate", "--out", str(tmp_path / "g"), *argv]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not (tmp_path / "g").exists()


def test_replay_without_credentials_names_what_to_set_and_calls_nothing(
    no_credentials, monkeypatch, capsys
):
    from ecom_pipeline.ops import replay

    def called(*_args, **_kwargs):
        raise AssertionError("replay called AWS without credentials")

    monkeypatch.setattr(replay, "replay_batch", called)
    argv = ["replay", "b1", "--bucket", "data", "--state-machine-arn", "arn:aws:states:x"]
    assert main(argv) == ExitCode.USAGE
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("error: replay: no AWS credentials found")
    assert "AWS_PROFILE" in line
    assert "AWS_ACCESS_KEY_ID" in line


def test_an_unexpected_failure_of_a_user_command_is_one_line(monkeypatch, tmp_path, capsys):
    from ecom_pipeline.local import generator

    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(generator, "generate", broken)
    assert main(["generate", "--out", str(tmp_path), "--orders", "3"]) == ExitCode.UNEXPECTED
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("error: unexpected RuntimeError: disk on fire")
    assert "--verbose" in line


# --- run-local: every argument checked before anything starts ------------------------------


def test_run_local_reports_every_bad_folder_at_once_and_starts_nothing(
    nothing_starts, tmp_path, capsys
):
    good = _batch(tmp_path / "good")
    a_file = tmp_path / "orders.csv"
    a_file.write_text(ORDERS)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    no_csv = tmp_path / "notes"
    no_csv.mkdir()
    (no_csv / "README.txt").write_text("hello")
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    argv = ["run-local", str(good), str(a_file), str(empty), str(missing), str(no_csv)]
    assert main([*argv, "--export", str(out)]) == ExitCode.USAGE
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {a_file}: a file, not a folder (a batch is a folder of CSV files)",
        f"error: {empty}: the folder is empty (a batch holds products*.csv, orders*.csv, "
        "order_items*.csv)",
        f"error: {missing}: no such folder",
        f"error: {no_csv}: no CSV file in the folder (a batch holds products*.csv, orders*.csv, "
        "order_items*.csv)",
    ]
    assert not out.exists()


def test_run_local_as_a_library_refuses_the_same_arguments(nothing_starts, tmp_path):
    with pytest.raises(RunArgumentsError) as refused:
        run_local([tmp_path / "missing"], tmp_path / "out", runner=lambda *_: 0)
    assert refused.value.problems == [f"{tmp_path / 'missing'}: no such folder"]


# --- --export never deletes what it did not create -------------------------------------------


def test_export_refuses_a_folder_it_did_not_make_and_touches_nothing(
    nothing_starts, tmp_path, capsys
):
    good = _batch(tmp_path / "good")
    home = tmp_path / "home"
    for name in ("work", "bucket", "data_docs", "dashboard"):
        (home / name).mkdir(parents=True)
        (home / name / "keep.txt").write_text(name)
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    assert main(["run-local", str(good), "--export", str(home)]) == ExitCode.USAGE
    (line,) = _error_lines(capsys.readouterr().err)
    assert line == (
        f"error: --export {home}: the folder is not empty and is no run-local export (it has no "
        f"{EXPORT_MARKER}); choose a new or empty folder"
    )
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before


def test_demo_refuses_an_out_folder_it_did_not_make(nothing_starts, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert main(["demo", "--out", str(out), "--orders", "5"]) == ExitCode.USAGE
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out}: the folder is not empty")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]  # no sample generated


def test_export_takes_a_new_or_empty_folder_and_its_own_again(tmp_path):
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    assert export_problem(new) is None
    assert export_problem(empty) is None
    for folder in (new, empty):
        prepare_export(folder)
        assert (folder / EXPORT_MARKER).is_file()
        (folder / "bucket").mkdir()  # what a run leaves
        assert export_problem(folder) is None  # its own: a run may replace it
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert export_problem(a_file) == f"--export {a_file}: a file, not a folder"


def test_export_and_batch_folders_must_not_hold_each_other(tmp_path):
    batch = _batch(tmp_path / "batch")
    out = tmp_path / "out"
    prepare_export(out)
    inside_replaced = _batch(out / "bucket" / "b")
    assert argument_problems([inside_replaced], out) == [
        f"{inside_replaced}: inside {out / 'bucket'}, which each run replaces"
    ]
    assert argument_problems([_batch(out / "sample")], out) == []  # as the demo's sample
    assert argument_problems([batch], batch / "out") == [
        f"--export {batch / 'out'} is inside batch folder {batch}: the export's files would be "
        "uploaded with the batch"
    ]


# --- check: its arguments too ----------------------------------------------------------------


def test_check_refuses_bad_arguments_before_starting_spark(nothing_starts, tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == ExitCode.USAGE
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {tmp_path / 'missing'}: no such folder"
    ]
    batch = _batch(tmp_path / "batch")
    inside = batch / "bad.csv"
    assert main(["check", str(batch), "--bad-rows", str(inside)]) == ExitCode.USAGE
    assert _error_lines(capsys.readouterr().err) == [
        f"error: --bad-rows {inside}: inside {batch}, where it would be part of the batch"
    ]
    assert main(["check", str(batch), "--bad-rows", str(tmp_path)]) == ExitCode.USAGE
    assert "a folder; name a file" in capsys.readouterr().err
    assert not inside.exists()


def test_check_writes_bad_rows_next_to_the_folder_by_default(tmp_path):
    assert check_module.default_bad_rows_path(tmp_path / "b1") == tmp_path / "b1.bad-rows.csv"
