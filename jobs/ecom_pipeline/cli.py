"""The ``ecom-pipeline`` command: the jobs' entry points and the local tools."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import DATASETS, ExitCode
from ecom_pipeline.core.layout import NOTICES_EXPORT_FILE
from ecom_pipeline.core.planning import batch_id_problem
from ecom_pipeline.core.settings import (
    AwsSettings,
    ConfigError,
    Settings,
    TriggerSettings,
    execution_id_from,
    kpi_tables,
)
from ecom_pipeline.read.query import QueryError

if TYPE_CHECKING:  # the handlers import what they run, so --help and errors stay quick
    from pyspark.sql import SparkSession

    from ecom_pipeline.local.run_local import RunSummary

log = logging.getLogger("ecom_pipeline")
STDERR_FD = 2
# Spark's own log (its JVM's stderr) of run-local and demo, in the export folder, unless -v
SPARK_LOG = "spark.log"
# ... and of check, in the system's temporary folder
CHECK_SPARK_LOG = "ecom-pipeline-check-spark.log"


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The bucket and where AWS is: what every command that touches AWS takes."""
    parser.add_argument("--bucket", help="S3 bucket (default: $PIPELINE_BUCKET)")
    parser.add_argument(
        "--endpoint-url", help="AWS endpoint, e.g. an emulator (default: $AWS_ENDPOINT_URL)"
    )
    parser.add_argument("--region", help="AWS region (default: $AWS_REGION or us-east-1)")


def _add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    _add_connection_arguments(parser)
    parser.add_argument("--category-table", help="category KPI table (default: $CATEGORY_TABLE)")
    parser.add_argument("--order-table", help="order KPI table (default: $ORDER_TABLE)")
    parser.add_argument(
        "--work-dir", type=Path, help="local scratch folder (default: $PIPELINE_WORK_DIR)"
    )
    parser.add_argument(
        "--data-root",
        help="direct I/O: Spark reads and writes the data at this Hadoop URI, s3://BUCKET "
        "(EMRFS) or file:///DIR (a shared filesystem), instead of staging it through "
        "--work-dir (default: $PIPELINE_DATA_ROOT; unset: staged)",
    )


PACKAGE = "ecom-kpi-pipeline"
# The commands people run, listed first in --help; the container entry points come after.
USER_COMMANDS = ("demo", "run-local", "check", "kpis", "generate", "replay", "runs", "rebuild")
CONTAINER_COMMANDS = ("validate", "compute-kpis", "move-batch")


def version() -> str:
    """The installed package's version (its metadata), as ``--version`` prints it."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _command(
    commands: argparse._SubParsersAction,
    name: str,
    *,
    help: str,  # as argparse names it
    examples: str,
    description: str | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with examples, printed as written."""
    return commands.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )


def _verbose_parser(what: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-v", "--verbose", action="store_true", help=what)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecom-pipeline",
        description=(
            "E-commerce KPI pipeline: Great Expectations validation and windowed KPIs in PySpark."
        ),
        epilog=(
            "examples:\n"
            "  ecom-pipeline demo\n"
            "  ecom-pipeline check incoming/2025-04-07\n"
            "  ecom-pipeline run-local batch1/ batch2/ --export out/\n"
            "  ecom-pipeline kpis orders --last 7 --from-export out/\n"
            "  ecom-pipeline COMMAND --help\n\n"
            f"{', '.join(CONTAINER_COMMANDS)} are the container entry points the state machine "
            "runs.\nExit codes: 0 ok, 1 a bug, 2 bad command line or setup, 3 the data broke a "
            "rule,\n4 AWS or storage trouble (safe to retry). See docs/commands.md."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spark_verbose = _verbose_parser("show Spark's own log on the terminal too")

    demo = _command(
        commands,
        "demo",
        help="generate a sample, run it end to end on emulated AWS, print the KPI tables",
        examples="""
  ecom-pipeline demo
  ecom-pipeline demo --out /tmp/demo --orders 500""",
        parents=[spark_verbose],
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="export folder: new, empty, or an earlier run's (default: demo-out)",
    )
    demo.add_argument("--orders", type=_positive_int, default=3000, help="default: 3000")
    demo.add_argument("--seed", type=int, default=7, help="default: 7")

    local = _command(
        commands,
        "run-local",
        help="run batch folders end to end on emulated AWS and local Spark",
        description=(
            "Run each folder as one batch, in order, through the Lambda and the state machine "
            "against emulated AWS (moto) and local Spark, then export the KPI tables, notices, "
            "Data Docs, dashboard and raw files to OUT. Every argument is checked before "
            "anything starts. Exit codes: 0 every batch succeeded, 3 a batch was rejected for "
            "its data, 1 a batch failed for another reason (see OUT/pipeline.log.jsonl), "
            "2 bad arguments."
        ),
        examples="""
  ecom-pipeline run-local tests/data/seed-sample --export out/
  ecom-pipeline run-local batch1/ batch2/ batch3/ --export out/
  ecom-pipeline run-local d1/ d2/ d1-fix/ --batch-id d1 --batch-id d2 --batch-id d1 --export out/
  ecom-pipeline kpis orders --last 7 --from-export out/""",
        parents=[spark_verbose],
    )
    local.add_argument(
        "batch_dirs", nargs="+", type=Path, metavar="BATCH_DIR", help="a folder of CSV files"
    )
    local.add_argument(
        "--export",
        type=Path,
        required=True,
        metavar="OUT",
        help="export folder: new, empty, or an earlier run-local's (it replaces what it wrote)",
    )
    local.add_argument(
        "--batch-id",
        action="append",
        metavar="ID",
        help=(
            "the batch each folder is uploaded into: once for every folder, or once per folder "
            "in order. An id given again is a producer uploading into the same S3 folder again "
            "after its run: the batch's next run (<ID>-replay-<n>) applies exactly that "
            "upload's rows. Default: each folder is its own batch, named after the folder"
        ),
    )

    check = _command(
        commands,
        "check",
        help="check a folder of CSV files against the pipeline's rules, before uploading it",
        description=(
            "Run the pipeline's validation on a folder of CSV files on this machine (local "
            "Spark, no AWS): the same file names, parse and Great Expectations suites, "
            "references between the folder's datasets checked as for a first batch. Prints "
            "each failed rule with file, line and value, and writes the bad rows to a CSV "
            "file. Exit codes: 0 every rule holds, 3 a rule failed, 2 bad arguments."
        ),
        examples="""
  ecom-pipeline check incoming/2025-04-07
  ecom-pipeline check batch/ --bad-rows /tmp/bad-rows.csv""",
        parents=[_verbose_parser("show JSON logs and Spark's own log on the terminal")],
    )
    check.add_argument("folder", type=Path, metavar="DIR", help="a folder of CSV files")
    check.add_argument(
        "--bad-rows",
        type=Path,
        metavar="FILE",
        help="where to write the bad rows as CSV, outside DIR (default: DIR.bad-rows.csv next "
        "to DIR)",
    )

    _add_kpis_parser(commands)

    generate = _command(
        commands,
        "generate",
        help="write a synthetic batch (products, orders, order_items)",
        description=(
            "Write a deterministic synthetic batch in the seed sample's layout: products.csv, "
            "orders/orders_partK.csv, order_items/order_items_partK.csv."
        ),
        examples="""
  ecom-pipeline generate --out sample --orders 3000
  ecom-pipeline generate --out big --orders 1000000 --parts 8 --start 2025-01-01 --days 90""",
        parents=[_verbose_parser("JSON logs on stderr")],
    )
    generate.add_argument("--out", type=Path, required=True, help="the batch folder to write")
    generate.add_argument("--orders", type=_positive_int, required=True, help="how many orders")
    generate.add_argument("--seed", type=int, default=7, help="default: 7")
    generate.add_argument(
        "--start", type=_iso_date, default=date(2025, 3, 8), help="first day (default: 2025-03-08)"
    )
    generate.add_argument("--days", type=_positive_int, default=31, help="default: 31")
    generate.add_argument(
        "--parts", type=_positive_int, default=1, help="files per dataset (default: 1)"
    )
    generate.add_argument(
        "--products", type=_positive_int, default=None, help="default: from --orders"
    )

    replay = _command(
        commands,
        "replay",
        help="run a failed or killed batch again (files gathered back into incoming/)",
        description=(
            "Start a new execution (<name>-replay-<n>) for a batch whose last execution failed "
            "or was killed, after moving its files from rejected/ (and archive/) back into "
            "incoming/. Refused when the batch is unknown, still RUNNING or succeeded. Exit "
            "codes: 0 started (with --wait: succeeded), 2 refused or no AWS credentials, 3 "
            "with --wait: the replay failed, 4 AWS unreachable or failing."
        ),
        examples="""
  ecom-pipeline replay 2025-04-07 --state-machine-arn arn:aws:states:...:ecom-pipeline \\
      --bucket my-data-bucket --wait""",
        parents=[_verbose_parser("JSON logs on stderr")],
    )
    replay.add_argument("batch_id", metavar="BATCH_ID")
    replay.add_argument(
        "--state-machine-arn", help="the pipeline's state machine (default: $STATE_MACHINE_ARN)"
    )
    _add_connection_arguments(replay)
    replay.add_argument("--wait", action="store_true", help="wait for the execution to end")
    replay.add_argument("--timeout", type=float, default=3 * 3600, help="seconds, with --wait")

    runs = _command(
        commands,
        "runs",
        help="the batches' runs, newest first: status, stage, duration, rows, next step",
        description=(
            "List the pipeline's runs, newest first, each from the notice it published: when the "
            "batch arrived, its run (the batch id, or <batch>-replay-<n>), SUCCEEDED, FAILED or "
            "RUNNING, where a failed run stopped (a running one: the state it is in), seconds, "
            "rows accepted, and the next step or where the files are. From AWS (the state "
            "machine's executions) or a run-local/demo export. Exit codes: 0 runs printed, 2 bad "
            "arguments or no AWS credentials, 3 no runs, 4 AWS unreachable or failing."
        ),
        examples="""
  ecom-pipeline runs --from-export demo-out
  ecom-pipeline runs --state-machine-arn arn:aws:states:...:ecom-pipeline --last 50
  ecom-pipeline runs --batch 2025-04-07 --format json""",
        parents=[_verbose_parser("JSON logs on stderr")],
    )
    runs.add_argument(
        "--last", type=_positive_int, default=20, metavar="N", help="the N newest (default: 20)"
    )
    runs.add_argument("--batch", metavar="BATCH_ID", help="only this batch's runs")
    runs.add_argument("--format", choices=("table", "json", "csv"), default="table")
    runs.add_argument(
        "--from-export",
        type=Path,
        metavar="OUT",
        help="read a run-local/demo export folder instead of AWS",
    )
    runs.add_argument(
        "--state-machine-arn", help="the pipeline's state machine (default: $STATE_MACHINE_ARN)"
    )
    runs.add_argument(
        "--endpoint-url", help="AWS endpoint, e.g. an emulator (default: $AWS_ENDPOINT_URL)"
    )
    runs.add_argument("--region", help="AWS region (default: $AWS_REGION or us-east-1)")

    rebuild = _command(
        commands,
        "rebuild",
        help="recompute the KPI tables from the curated store (after a KPI definition changed)",
        description=(
            "Recompute the KPI items of every date from --from to --to (default: the curated "
            "store's first to last order date) from the curated rows alone, write them and delete "
            "the items of those dates the rows no longer give. Holds the curated store's lock "
            "throughout, as a batch's KPI run does: batches arriving meanwhile wait. Runs here "
            "against AWS or an endpoint, or as an ECS task of the job image under the KPI task "
            "role (docs/reading-kpis.md). Exit codes: 0 rebuilt, 2 bad arguments, 3 the curated "
            "store holds no order, 4 AWS unreachable or the lock stayed taken."
        ),
        examples="""
  ecom-pipeline rebuild --bucket my-data-bucket
  ecom-pipeline rebuild --from 2025-03-01 --to 2025-03-31 --bucket my-data-bucket""",
        parents=[_verbose_parser("JSON logs on stderr")],
    )
    rebuild.add_argument(
        "--from", dest="start", type=_iso_date, help="first date to recompute (YYYY-MM-DD)"
    )
    rebuild.add_argument(
        "--to", dest="end", type=_iso_date, help="last date to recompute (YYYY-MM-DD)"
    )
    _add_aws_arguments(rebuild)

    validate = _command(
        commands,
        "validate",
        help="(container entry point) validation job: one dataset of one batch",
        examples="""
  ecom-pipeline validate --batch-id 2025-04-07 --dataset orders --bucket my-data-bucket""",
    )
    validate.add_argument("--batch-id", required=True)
    validate.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    _add_aws_arguments(validate)

    kpis = _command(
        commands,
        "compute-kpis",
        help="(container entry point) KPI job: merge a validated batch and write KPIs",
        examples="""
  ecom-pipeline compute-kpis --batch-id 2025-04-07 --bucket my-data-bucket""",
    )
    kpis.add_argument("--batch-id", required=True)
    kpis.add_argument(
        "--received-at", default=None, help="ISO time the batch arrived (for the notice's duration)"
    )
    _add_aws_arguments(kpis)

    move = _command(
        commands,
        "move-batch",
        help="(container entry point) move a settled batch's files from incoming/ to "
        "archive/ or rejected/",
        examples="""
  ecom-pipeline move-batch --batch-id 2025-04-07 --to archive --bucket my-data-bucket
  ecom-pipeline move-batch --batch-id 2025-04-07 --to rejected --stage validation""",
    )
    move.add_argument("--batch-id", required=True)
    move.add_argument("--to", required=True, choices=("archive", "rejected"), dest="destination")
    move.add_argument(
        "--stage",
        choices=("intake", "validation"),
        help="with --to rejected: the stage that refused the batch (for _reason.json)",
    )
    _add_aws_arguments(move)
    return parser


def _add_kpis_parser(commands: argparse._SubParsersAction) -> None:
    kpis = _command(
        commands,
        "kpis",
        help="read the KPI tables with DynamoDB Query: a category over dates, one day, orders",
        description=(
            "Read the KPI tables with DynamoDB Query (never Scan), from AWS, any endpoint, or a "
            "run-local export. Exit codes: 0 rows printed, 2 bad input or setup (date, "
            "category, table, credentials), 3 nothing in the range, 4 AWS unreachable (retry)."
        ),
        examples="""
  ecom-pipeline kpis orders --last 7 --from-export demo-out
  ecom-pipeline kpis day --date 2025-03-25 --top 3
  ecom-pipeline kpis category --name Electronics --from 2025-03-01 --to 2025-03-31 --format csv""",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--format", choices=("table", "json", "csv"), default="table")
    source = common.add_argument_group("where the tables are (as the AWS CLI takes them)")
    source.add_argument("--endpoint-url", help="AWS endpoint (default: $AWS_ENDPOINT_URL)")
    source.add_argument(
        "--region", help="AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's)"
    )
    source.add_argument("--profile", help="named AWS profile (default: $AWS_PROFILE)")
    source.add_argument(
        "--category-table", help="category KPI table (default: $CATEGORY_TABLE or the contract's)"
    )
    source.add_argument(
        "--order-table", help="order KPI table (default: $ORDER_TABLE or the contract's)"
    )
    source.add_argument(
        "--from-export",
        type=Path,
        metavar="OUT",
        help="read a run-local/demo export folder instead of AWS (loaded into an emulator)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="JSON logs on stderr")
    patterns = kpis.add_subparsers(dest="pattern", required=True)

    category = _command(
        patterns,
        "category",
        parents=[common],
        help="one category over a date range",
        examples="""
  ecom-pipeline kpis category --name Electronics --last 30 --from-export demo-out
  ecom-pipeline kpis category --name Books --from 2025-03-01 --to 2025-03-31 --format json""",
    )
    category.add_argument("--name", required=True, help="the category, e.g. Electronics")
    _add_range_arguments(category)

    day = _command(
        patterns,
        "day",
        parents=[common],
        help="every category on one date, ranked by revenue",
        examples="""
  ecom-pipeline kpis day --from-export demo-out
  ecom-pipeline kpis day --date 2025-03-25 --top 3 --profile analytics""",
    )
    day.add_argument("--date", help="YYYY-MM-DD (default: the latest day with orders)")
    day.add_argument("--top", type=int, help="only the N categories with the most revenue")

    orders = _command(
        patterns,
        "orders",
        parents=[common],
        help="order KPIs over a date range",
        examples="""
  ecom-pipeline kpis orders --last 7 --from-export demo-out
  ecom-pipeline kpis orders --from 2025-03-01 --to 2025-03-31 --format csv""",
    )
    _add_range_arguments(orders)


def _add_range_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day")
    parser.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day")
    parser.add_argument(
        "--last",
        type=int,
        metavar="N",
        help="the N days ending on the latest day with orders (up to --to, default today)",
    )


def _aws_settings(args: argparse.Namespace) -> AwsSettings:
    """Where AWS is: the flags win over the environment."""
    return AwsSettings.from_env(
        args.environ,
        region=args.region,
        endpoint_url=args.endpoint_url,
        profile=getattr(args, "profile", None),
    )


def _settings(args: argparse.Namespace) -> Settings:
    """The job's settings, read once: the environment, then the command line's flags."""
    return Settings.from_env(
        args.environ,
        bucket=args.bucket,
        aws=_aws_settings(args),
        category_table=args.category_table,
        order_table=args.order_table,
        work_dir=args.work_dir,
        data_root=args.data_root,
    )


def _validate(args: argparse.Namespace) -> int:
    from ecom_pipeline.adapters.spark import get_spark
    from ecom_pipeline.tasks.validation import validate_dataset

    settings = _settings(args)
    report = validate_dataset(
        get_spark(f"validate-{args.dataset}", settings.spark),
        settings,
        args.batch_id,
        args.dataset,
        execution_id=settings.execution_id,
    )
    print(json.dumps(report.as_dict(), default=str))
    for message in report.messages():
        print(message, file=sys.stderr)
    return ExitCode.OK if report.success else ExitCode.DATA_REJECTED


def _compute_kpis(args: argparse.Namespace) -> int:
    from ecom_pipeline.adapters.spark import get_spark
    from ecom_pipeline.tasks.kpi_job import compute_kpis

    settings = _settings(args)
    report = compute_kpis(
        lambda: get_spark("compute-kpis", settings.spark),
        settings,
        args.batch_id,
        received_at=args.received_at or None,
    )
    print(json.dumps(report.__dict__, default=str))
    return ExitCode.OK


def _rebuild(args: argparse.Namespace) -> int:
    from ecom_pipeline.adapters.spark import get_spark
    from ecom_pipeline.tasks.rebuild import rebuild

    if args.start and args.end and args.start > args.end:
        return _usage([f"rebuild: --from {args.start} is after --to {args.end}"])
    settings = _settings(args)
    report = rebuild(
        lambda: get_spark("rebuild", settings.spark), settings, start=args.start, end=args.end
    )
    print(
        f"rebuilt the KPIs of {report.start} to {report.end}: "
        f"{report.category_items_written} category and {report.order_items_written} order "
        f"items written, {report.items_deleted} deleted ({report.duration_s:.1f} s)"
    )
    return ExitCode.OK


def _move_batch(args: argparse.Namespace) -> int:
    from ecom_pipeline.tasks.custody import move_batch

    settings = _settings(args)
    result = move_batch(
        settings,
        args.batch_id,
        args.destination,
        stage=args.stage,
        execution_id=settings.execution_id,
    )
    print(json.dumps(result))
    return ExitCode.OK


def _replay(args: argparse.Namespace) -> int:
    from ecom_pipeline.adapters.aws import make_client
    from ecom_pipeline.adapters.storage import BucketStore
    from ecom_pipeline.ops.replay import ReplayRefusedError, replay_batch, wait_for

    try:
        settings = Settings.from_env(args.environ, bucket=args.bucket, aws=_aws_settings(args))
        trigger = TriggerSettings.from_env(args.environ, state_machine_arn=args.state_machine_arn)
    except ConfigError as e:
        raise ConfigError(
            f"replay: {e} (--state-machine-arn and --bucket: the stack outputs StateMachineArn "
            "and DataBucketName)"
        ) from e
    aws = settings.aws
    _require_credentials(aws, "replay")
    sfn = make_client(aws, "stepfunctions")
    try:
        result = replay_batch(
            sfn,
            BucketStore(settings.bucket, aws),
            trigger.state_machine_arn,
            args.batch_id,
            kpi_retry_wait_s=trigger.kpi_retry_wait_s,
        )
    except ReplayRefusedError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    for name, status in result.previous:
        print(f"earlier execution {name}: {status}")
    if result.restored:
        print(f"moved {len(result.restored)} files back to incoming/{args.batch_id}/")
    for key in result.kept:
        print(f"kept {key} where it is: incoming/{args.batch_id}/ has a file of that name")
    print(f"started {result.execution_name} ({result.execution_arn})")
    if not args.wait:
        return ExitCode.OK
    described = wait_for(sfn, result.execution_arn, timeout_s=args.timeout)
    detail = f" ({described['error']})" if described.get("error") else ""
    print(f"execution {result.execution_name}: {described['status']}{detail}")
    return ExitCode.OK if described["status"] == "SUCCEEDED" else ExitCode.DATA_REJECTED


def _runs(args: argparse.Namespace) -> int:
    from ecom_pipeline.read import runs as history
    from ecom_pipeline.read.query import render

    if args.from_export is not None:
        if args.state_machine_arn or args.endpoint_url or args.region:
            raise ConfigError(
                "runs: --from-export reads a local folder: drop --state-machine-arn, "
                "--endpoint-url and --region"
            )
        try:
            found = history.runs_from_export(args.from_export)
        except history.RunsError as e:
            raise ConfigError(f"runs: {e}") from None
        records = history.select(found, batch=args.batch, last=args.last)
    else:
        from ecom_pipeline.adapters.aws import make_client

        try:
            trigger = TriggerSettings.from_env(
                args.environ, state_machine_arn=args.state_machine_arn
            )
        except ConfigError as e:
            raise ConfigError(
                f"runs: {e} (--state-machine-arn: the stack output StateMachineArn; or "
                "--from-export OUT for a local run)"
            ) from None
        aws = _aws_settings(args)
        _require_credentials(aws, "runs")
        records = history.runs_from_executions(
            make_client(aws, "stepfunctions"),
            trigger.state_machine_arn,
            last=args.last,
            batch=args.batch,
        )
    if not records:
        which = f" of batch {args.batch}" if args.batch else ""
        print(f"no runs{which} found", file=sys.stderr)
        return ExitCode.DATA_REJECTED
    print(render([r.as_dict() for r in records], history.COLUMNS, args.format))
    return ExitCode.OK


def _generate(args: argparse.Namespace) -> int:
    from ecom_pipeline.local.generator import generate

    summary = generate(
        args.out,
        args.orders,
        seed=args.seed,
        start=args.start,
        days=args.days,
        parts=args.parts,
        products=args.products,
    )
    print(
        f"wrote {summary.products} products, {summary.orders} orders, "
        f"{summary.order_items} order items in {len(summary.files)} files to {summary.out_dir}"
    )
    return ExitCode.OK


NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (a profile of `aws configure`), or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


def _require_credentials(aws: AwsSettings, command: str) -> None:
    """Refuse, before any call, to talk to AWS without credentials (an emulator given by
    --endpoint-url needs none: the client factory gives it dummy ones)."""
    if aws.endpoint_url:
        return
    from botocore.exceptions import ProfileNotFound

    from ecom_pipeline.adapters.aws import session

    try:
        credentials = session(aws).get_credentials()
    except ProfileNotFound as e:
        raise ConfigError(f"{command}: {e} (see `aws configure list-profiles`)") from None
    except BotoCoreError as e:  # a broken profile, e.g. a role it cannot assume
        raise ConfigError(f"{command}: AWS credentials could not be loaded: {e}") from None
    if credentials is None:
        raise ConfigError(f"{command}: {NO_CREDENTIALS}")


def _usage(problems: Sequence[str]) -> int:
    """Every problem with the command line, one line each: exit 2, nothing started."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return ExitCode.USAGE


def _is_stderr_descriptor(stream: TextIO) -> bool:
    try:
        return stream.fileno() == STDERR_FD
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor (a capture)
        return False


@contextlib.contextmanager
def _spark_output_to(path: Path | None) -> Iterator[TextIO]:
    """While the block runs, point this process's stderr descriptor at ``path``, so the Spark
    JVM started in it (it keeps the descriptor it inherits, as do its Python workers) writes
    its own log there and not over the progress lines; yields the stream progress goes to, the
    terminal. ``path`` None (--verbose): both stay on the terminal."""
    if path is None:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(STDERR_FD)
    terminal: TextIO = sys.stderr
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as log_file:  # this run's: a new run replaces it
            os.dup2(log_file.fileno(), STDERR_FD)
        if _is_stderr_descriptor(sys.stderr):  # sys.stderr now writes to the log: not it
            terminal = os.fdopen(os.dup(saved), "w", encoding="utf-8", buffering=1)
        yield terminal
    finally:
        if terminal is not sys.stderr:
            terminal.close()
        sys.stderr.flush()
        os.dup2(saved, STDERR_FD)
        os.close(saved)


def _printer(stream: TextIO) -> Callable[[str], None]:
    def progress(message: str) -> None:
        print(message, file=stream, flush=True)

    return progress


def _run_local(args: argparse.Namespace) -> int:
    from ecom_pipeline.local.ecs_stand_in import InProcessRunner
    from ecom_pipeline.local.run_local import argument_problems, prepare_export, run_local

    problems = argument_problems(args.batch_dirs, args.export, batch_id=args.batch_id)
    if problems:
        return _usage(problems)
    prepare_export(args.export)
    spark_log = None if args.verbose else args.export / SPARK_LOG
    with _spark_output_to(spark_log) as terminal:
        summary = run_local(
            args.batch_dirs,
            args.export,
            runner=InProcessRunner(main),
            progress=_printer(terminal),
            batch_id=args.batch_id,
        )
    _print_summary(summary, spark_log)
    return _run_exit_code(summary)


def _run_exit_code(summary: RunSummary) -> int:
    """0 every batch succeeded; 1 one failed for a reason that is not its data (a crash: the
    log says more); else 3 one was rejected for its data."""
    if summary.count("failed"):
        return ExitCode.UNEXPECTED
    if summary.count("rejected"):
        return ExitCode.DATA_REJECTED
    return ExitCode.OK


def _print_summary(summary: RunSummary, spark_log: Path | None) -> None:
    out = summary.out_dir or Path()
    counts = [
        f"{summary.count(verdict)} {verdict}"
        for verdict in ("succeeded", "rejected", "failed")
        if summary.count(verdict) or verdict == "succeeded"
    ]
    total = len(summary.outcomes)
    print(f"\n{total} batch{'es' * (total != 1)} in {summary.seconds:.1f} s: {', '.join(counts)}")
    log_file = out / "pipeline.log.jsonl"
    for outcome in summary.outcomes:
        files = summary.local_files(outcome)
        stage = f" at {outcome.stage}" if outcome.verdict != "succeeded" and outcome.stage else ""
        where = f"raw files in {files}/"
        if (files / "_reason.json").is_file():
            where = f"raw files and _reason.json in {files}/"
        if outcome.verdict == "failed":
            where += f"; see {log_file}"
        print(f"  {outcome.batch_id}: {outcome.verdict.upper()}{stage}, {where}")
    tables = summary.export_files()
    print(
        "KPI tables: "
        + ", ".join(
            f"{tables[table]} ({count} item{'s' * (count != 1)})"
            for table, count in summary.exported.items()
        )
    )
    print(
        f"Notices: {out / NOTICES_EXPORT_FILE} (the runs: ecom-pipeline runs --from-export {out})"
    )
    docs = out / "data_docs" / "index.html"
    if docs.is_file():
        print(f"Data Docs: open {docs}")
    dashboard = out / "dashboard" / "index.html"
    if dashboard.is_file():
        print(f"KPI dashboard: open {dashboard}")
    print(f"Logs: {log_file}" + (f"; Spark's own: {spark_log}" if spark_log else ""))
    if any(summary.exported.values()):
        print(f"Query the tables: ecom-pipeline kpis orders --last 7 --from-export {out}")


def _demo(args: argparse.Namespace) -> int:
    from ecom_pipeline.local.ecs_stand_in import InProcessRunner
    from ecom_pipeline.local.generator import generate
    from ecom_pipeline.local.run_local import export_problem, prepare_export, run_local
    from ecom_pipeline.read.report import print_tables

    problem = export_problem(args.out)
    if problem:
        return _usage([problem.replace("--export", "--out", 1)])
    prepare_export(args.out)
    sample = args.out / "sample"
    summary = generate(sample, args.orders, seed=args.seed, parts=2)
    print(
        f"generated {summary.products} products, {summary.orders} orders and "
        f"{summary.order_items} order items in {sample}"
    )
    spark_log = None if args.verbose else args.out / SPARK_LOG
    with _spark_output_to(spark_log) as terminal:
        result = run_local(
            [sample], args.out, runner=InProcessRunner(main), progress=_printer(terminal)
        )
    print_tables(args.out)
    _print_summary(result, spark_log)
    return _run_exit_code(result)


def _check(args: argparse.Namespace) -> int:
    from ecom_pipeline.tasks import check

    folder: Path = args.folder
    bad_rows: Path = args.bad_rows or check.default_bad_rows_path(folder)
    problems = [problem for problem in [check.folder_problem(folder)] if problem]
    if bad_rows.is_dir():
        problems.append(f"--bad-rows {bad_rows}: a folder; name a file")
    elif folder.is_dir() and folder.resolve() in bad_rows.resolve().parents:
        problems.append(
            f"--bad-rows {bad_rows}: inside {folder}, where it would be part of the batch"
        )
    if problems:
        return _usage(problems)

    def report(checked: check.DatasetCheck) -> None:
        for line in check.dataset_lines(checked):
            print(line, flush=True)

    spark_log = None if args.verbose else Path(tempfile.gettempdir()) / CHECK_SPARK_LOG
    print(f"checking {folder} (references within it, as for a first batch)", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="ecom-pipeline-check-") as work,
        _spark_output_to(spark_log),
    ):
        result = check.check_folder(
            lambda: _check_spark(args), folder, work=Path(work), on_dataset=report
        )
    if result.refusal is not None:
        for line in check.refusal_lines(result.refusal):
            print(line)
    if result.success:
        print(f"PASSED: every rule holds ({result.seconds:.1f} s)")
        return ExitCode.OK
    rows = result.bad_rows
    check.write_bad_rows(rows, bad_rows)
    rules = result.rules_failed
    print(
        f"FAILED: {rules} rule{'s' * (rules != 1)} broken ({result.seconds:.1f} s); "
        f"bad rows in {bad_rows}"
    )
    return ExitCode.DATA_REJECTED


def _check_spark(args: argparse.Namespace) -> SparkSession:
    from ecom_pipeline.adapters.spark import get_spark
    from ecom_pipeline.core.settings import SparkSettings

    return get_spark("check", SparkSettings.from_env(args.environ))


def _kpis(args: argparse.Namespace) -> int:
    from ecom_pipeline.read import query

    def ask(reader: query.KpiReader) -> query.Answer:
        if args.pattern == "category":
            dates, described = query.resolve_range(
                reader, start=args.start, end=args.end, last=args.last
            )
            return query.timed(
                query.category_answer, reader, args.name, dates, described, pattern="category"
            )
        if args.pattern == "day":
            day = query.parse_date(args.date, name="--date") if args.date else None
            return query.timed(query.day_answer, reader, day, top=args.top, pattern="day")
        dates, described = query.resolve_range(
            reader, start=args.start, end=args.end, last=args.last
        )
        return query.timed(query.orders_answer, reader, dates, described, pattern="orders")

    if args.from_export is not None:
        from ecom_pipeline.local.export_reader import ExportReader  # moto: only when needed

        aws_flags = (args.endpoint_url, args.region, args.profile)
        if any(aws_flags) or args.category_table or args.order_table:
            raise query.QueryError(
                "--from-export reads a local folder: drop --endpoint-url, --region, --profile "
                "and the table names"
            )
        with ExportReader(args.from_export) as reader:
            answer = ask(reader)
    else:
        aws = _aws_settings(args)
        client = query.connect(
            aws, region_given=bool(args.region) or aws.region_given(args.environ)
        )
        category_table, order_table = kpi_tables(args.environ)
        answer = ask(
            query.KpiReader(
                client,
                category_table=args.category_table or category_table,
                order_table=args.order_table or order_table,
            )
        )
    if args.format == "table":
        print(answer.title)
    print(query.render(answer.rows, answer.columns, args.format))
    return ExitCode.OK


# Trouble that clears by itself, so the orchestrator retries (exit 4): DynamoDB throttling
# that outlasted every retry, the curated-store lock held by another run for too long or lost.
RETRYABLE_ERRORS = {
    "ecom_pipeline.adapters.dynamo": ("DynamoWriteError",),
    "ecom_pipeline.adapters.lock": ("LockTimeoutError", "LockLostError"),
    # S3 refused some keys of a batch delete; the journal keeps the run recoverable
    "ecom_pipeline.adapters.storage": ("StoreError",),
    # the curated store kept changing while validation listed it (a KPI run was committing)
    "ecom_pipeline.adapters.curated_store": ("CuratedBusyError",),
}


def _is_retryable(error: BaseException) -> bool:
    """Without importing the modules (a module never imported raised nothing)."""
    for module_name, names in RETRYABLE_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, tuple(getattr(module, n) for n in names)):
            return True
    return False


# The container entry points: their --batch-id names folders Spark reads.
JOB_COMMANDS = ("validate", "compute-kpis", "move-batch")


def _check_batch_id(batch_id: str) -> None:
    problem = batch_id_problem(batch_id)
    if problem is not None:
        raise ConfigError(problem)


HANDLERS = {
    "demo": _demo,
    "run-local": _run_local,
    "check": _check,
    "kpis": _kpis,
    "runs": _runs,
    "generate": _generate,
    "replay": _replay,
    "rebuild": _rebuild,
    "validate": _validate,
    "compute-kpis": _compute_kpis,
    "move-batch": _move_batch,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    configure_logs: bool = True,
) -> int:
    """Run a command; ``environ`` stands in for the process environment (default: os.environ),
    as a container's environment does for an ECS task run in this process. A task run inside
    another command (run-local) passes ``configure_logs=False`` to keep that command's log."""
    args = build_parser().parse_args(argv)
    args.environ = environ
    people = args.command in USER_COMMANDS
    if configure_logs:
        # People at a terminal read these commands' own lines: their JSON logs (tracebacks
        # included) only with --verbose. run-local and demo log to their export folder anyway.
        # The container entry points log JSON to stderr, for CloudWatch.
        quiet = people and not getattr(args, "verbose", False)
        logs.configure("CRITICAL" if quiet else "INFO")
    # every line of a job names its batch and the Step Functions execution that started it
    logs.unbind("batch_id", "dataset", "job", "execution_id")
    logs.bind(
        command=args.command,
        batch_id=getattr(args, "batch_id", None),
        execution_id=execution_id_from(environ),
    )
    try:
        if args.command in JOB_COMMANDS:
            _check_batch_id(args.batch_id)
        return int(HANDLERS[args.command](args))
    except QueryError as e:
        log.info("query not answered: %s", e, extra={"event": "query_error"})
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except ConfigError as e:
        return _usage(getattr(e, "problems", None) or [str(e)])
    except (ClientError, BotoCoreError) as e:
        if people and isinstance(e, NoCredentialsError):
            # a person's setup, not a passing outage (a container's role credentials can be)
            return _usage([f"{args.command}: {NO_CREDENTIALS}"])
        log.exception("AWS call failed", extra={"event": "dependency_error"})
        print(f"error: AWS call failed: {e}", file=sys.stderr)
        return ExitCode.DEPENDENCY
    except (ValueError, FileNotFoundError) as e:
        log.exception("rejected", extra={"event": "rejected"})
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.DATA_REJECTED
    except Exception as e:
        if _is_retryable(e):
            log.exception("failed; safe to retry", extra={"event": "dependency_error"})
            print(f"error: {e}", file=sys.stderr)
            return ExitCode.DEPENDENCY
        log.exception("unexpected failure", extra={"event": "unexpected_error"})
        hint = ""
        if people and args.command in ("run-local", "demo"):
            hint = " (the traceback is in the export folder's pipeline.log.jsonl)"
        elif people and not getattr(args, "verbose", False):
            hint = " (run it again with --verbose for the traceback)"
        print(f"error: unexpected {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return ExitCode.UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
