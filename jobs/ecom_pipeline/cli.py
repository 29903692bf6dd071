"""The ``ecom-pipeline`` command: the jobs' entry points and the local tools."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import DATASETS, ExitCode
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

log = logging.getLogger("ecom_pipeline")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecom-pipeline",
        description=(
            "E-commerce KPI pipeline: Great Expectations validation and windowed KPIs in PySpark."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate", help="write a synthetic batch (products, orders, order_items)"
    )
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--orders", type=int, required=True)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--start", type=date.fromisoformat, default=date(2025, 3, 8))
    generate.add_argument("--days", type=int, default=31)
    generate.add_argument("--parts", type=int, default=1)
    generate.add_argument("--products", type=int, default=None)

    validate = commands.add_parser(
        "validate", help="validation job: one dataset of one batch (container entry point)"
    )
    validate.add_argument("--batch-id", required=True)
    validate.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    _add_aws_arguments(validate)

    kpis = commands.add_parser(
        "compute-kpis",
        help="KPI job: merge a validated batch and write KPIs (container entry point)",
    )
    kpis.add_argument("--batch-id", required=True)
    kpis.add_argument(
        "--received-at", default=None, help="ISO time the batch arrived (for the notice's duration)"
    )
    _add_aws_arguments(kpis)

    move = commands.add_parser(
        "move-batch",
        help="move a settled batch's files from incoming/ to archive/ or rejected/ "
        "(container entry point)",
    )
    move.add_argument("--batch-id", required=True)
    move.add_argument("--to", required=True, choices=("archive", "rejected"), dest="destination")
    move.add_argument(
        "--stage",
        choices=("intake", "validation"),
        help="with --to rejected: the stage that refused the batch (for _reason.json)",
    )
    _add_aws_arguments(move)

    replay = commands.add_parser(
        "replay",
        help="run a failed or killed batch again (files gathered back into incoming/)",
        description=(
            "Start a new execution (<name>-replay-<n>) for a batch whose last execution failed "
            "or was killed, after moving its files from rejected/ (and archive/) back into "
            "incoming/. Refused when the batch is unknown, still RUNNING or succeeded. Exit "
            "codes: 0 started (with --wait: succeeded), 2 refused, 3 with --wait: the replay "
            "failed, 4 AWS unreachable or failing."
        ),
    )
    replay.add_argument("batch_id", metavar="BATCH_ID")
    replay.add_argument(
        "--state-machine-arn", help="the pipeline's state machine (default: $STATE_MACHINE_ARN)"
    )
    _add_connection_arguments(replay)
    replay.add_argument("--wait", action="store_true", help="wait for the execution to end")
    replay.add_argument("--timeout", type=float, default=3 * 3600, help="seconds, with --wait")

    local = commands.add_parser(
        "run-local", help="run batch folders end to end on emulated AWS and local Spark"
    )
    local.add_argument("batch_dirs", nargs="+", type=Path, metavar="BATCH_DIR")
    local.add_argument("--export", type=Path, required=True, metavar="OUT")

    demo = commands.add_parser(
        "demo", help="generate a sample, run it end to end, print the KPI tables"
    )
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    demo.add_argument("--orders", type=int, default=3000)
    demo.add_argument("--seed", type=int, default=7)

    _add_kpis_parser(commands)
    return parser


def _add_kpis_parser(commands: argparse._SubParsersAction) -> None:
    kpis = commands.add_parser(
        "kpis",
        help="read the KPI tables with DynamoDB Query: a category over dates, one day, orders",
        description=(
            "Read the KPI tables with DynamoDB Query (never Scan), from AWS, any endpoint, or a "
            "run-local export. Exit codes: 0 rows printed, 2 bad input or setup (date, "
            "category, table, credentials), 3 nothing in the range, 4 AWS unreachable (retry)."
        ),
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

    category = patterns.add_parser(
        "category", parents=[common], help="one category over a date range"
    )
    category.add_argument("--name", required=True, help="the category, e.g. Electronics")
    _add_range_arguments(category)

    day = patterns.add_parser(
        "day", parents=[common], help="every category on one date, ranked by revenue"
    )
    day.add_argument("--date", help="YYYY-MM-DD (default: the latest day with orders)")
    day.add_argument("--top", type=int, help="only the N categories with the most revenue")

    orders = patterns.add_parser("orders", parents=[common], help="order KPIs over a date range")
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


def _run_local(args: argparse.Namespace) -> int:
    from ecom_pipeline.local.ecs_stand_in import InProcessRunner
    from ecom_pipeline.local.run_local import run_local

    summary = run_local(args.batch_dirs, args.export, runner=InProcessRunner(main))
    _print_summary(summary)
    return ExitCode.OK if summary.success else ExitCode.DATA_REJECTED


def _print_summary(summary) -> None:  # noqa: ANN001
    for outcome in summary.outcomes:
        detail = f" ({outcome.error})" if outcome.error else ""
        print(f"batch {outcome.batch_id}: {outcome.status}{detail}")
    out = summary.out_dir
    print(f"exported {summary.exported} to {out}; notices in {out / 'notifications.jsonl'}")
    print(f"Data Docs: {out / 'data_docs'}")
    dashboard = out / "dashboard" / "index.html"
    if dashboard.is_file():
        print(f"KPI dashboard: open {dashboard}")


def _demo(args: argparse.Namespace) -> int:
    from ecom_pipeline.local.ecs_stand_in import InProcessRunner
    from ecom_pipeline.local.generator import generate
    from ecom_pipeline.local.run_local import run_local
    from ecom_pipeline.read.report import print_tables

    sample = args.out / "sample"
    summary = generate(sample, args.orders, seed=args.seed, parts=2)
    print(f"generated {summary.orders} orders and {summary.order_items} items in {sample}")
    result = run_local([sample], args.out, runner=InProcessRunner(main))
    print_tables(args.out)
    _print_summary(result)
    print(f"Data Docs of every batch: open {args.out / 'data_docs' / 'index.html'}")
    print(f"Query the tables: ecom-pipeline kpis orders --last 7 --from-export {args.out}")
    return ExitCode.OK if result.success else ExitCode.DATA_REJECTED


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
    "generate": _generate,
    "validate": _validate,
    "compute-kpis": _compute_kpis,
    "move-batch": _move_batch,
    "replay": _replay,
    "run-local": _run_local,
    "demo": _demo,
    "kpis": _kpis,
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
    if configure_logs:
        # `kpis` is read by people at a terminal: its JSON logs only with --verbose
        quiet = args.command == "kpis" and not args.verbose
        logs.configure("WARNING" if quiet else "INFO")
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
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except (ClientError, BotoCoreError) as e:
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
        print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return ExitCode.UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
