"""``make bench``: the pipeline's Spark jobs against DuckDB and pandas, in one run.

For each size (order items): the seeded dataset (cached in ``.bench-cache/``), then, each in its
own process tree (so its peak RSS is its own): the three validation jobs, one plain scan of the
same files, the KPI job, DuckDB and pandas computing the same KPIs from the same CSV files. Every
measurement is a warm-up run (excluded) and N timed runs (median quoted). The three engines'
KPI rows must be identical, or the run fails. Then the local demo on the seed sample, the targets
of issue 5, ``bench/results.json``, ``bench/results.png`` and the table in docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.datasets import BenchDataset, cache_key, ensure_dataset, generator_version
from bench.kpi_rows import CategoryRows, OrderRows, differences
from bench.measure import run_sampled, run_sampled_here
from ecom_pipeline.core.contract import DATASET_ORDER
from ecom_pipeline.core.tiers import MIB, Tier, choose_tier

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000)
TABLE_START = "<!-- bench-table:start (written by make bench; do not edit by hand) -->"
TABLE_END = "<!-- bench-table:end -->"
SPARK_TASKS = (*(f"validate:{name}" for name in DATASET_ORDER), "scan", "kpis")
ENGINE_TASKS = ("duckdb", "pandas")

# The targets of issue 5, as numbers.
VALIDATION_PER_SCAN_MAX = 1.5
KPI_PER_DUCKDB_MAX = 3.0
DEMO_MAX_S = 60.0
TARGET_SIZE = 10_000_000
TIER_TARGET = "10M items validated and aggregated inside the smallest tier for their size"
DEMO_TARGET = f"demo on the seed sample (upload to KPIs in DynamoDB) < {DEMO_MAX_S:g} s"


class BenchError(RuntimeError):
    """A measurement that could not be taken, or engines that disagree."""


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100k, 1M, 2000)")
    factor = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


def size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1_000 and size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--sizes",
        type=lambda t: [parse_size(s) for s in t.split(",") if s.strip()],
        default=list(DEFAULT_SIZES),
        help="comma-separated order-item counts (default 100k,1M,10M)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument(
        "--warmups", type=int, default=1, help="untimed runs first (default 1; 0 for smoke tests)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every job in this process and its one JVM (tests): quicker, but peak RSS is "
        "then this process tree's, not each job's, and the tier's heap is not applied",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--parts", type=int, default=4, help="part files per dataset")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench-cache")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "results.png")
    parser.add_argument(
        "--page",
        type=Path,
        default=ROOT / "docs" / "benchmark.md",
        help="the page whose table is rewritten (default: docs/benchmark.md)",
    )
    parser.add_argument("--no-page", action="store_true", help="leave the page alone")
    parser.add_argument(
        "--seed-sample",
        type=Path,
        default=ROOT / "tests" / "data" / "seed-sample",
        help="the demo target's input (skipped when the folder does not exist)",
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo measurement")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write each Spark job's event log and add, per Spark task, where its last timed "
        "run spent its time (each Spark job: wall time, tasks, rows, shuffle bytes; GX; time "
        "with no job running; JVM start) to the results and to <cache-dir>/profile/<size>.txt",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the sizes (and demo) of the existing results file that this run does not "
        "measure again, e.g. to add 10M with fewer runs",
    )
    return parser


def spark_environment(tier: Tier, cores: int) -> dict[str, str]:
    """What the state machine gives a job of this tier, on this machine's cores."""
    return {
        "SPARK_MASTER": f"local[{cores}]",
        "SPARK_DRIVER_MEMORY": tier.driver_memory,
        "SPARK_SHUFFLE_PARTITIONS": str(tier.shuffle_partitions),
        "SPARK_UI_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }


def _summary(timings: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    timed = [t["seconds"] for t in timings if not t["warmup"]]
    median = statistics.median(timed)
    return {
        "median_s": round(median, 3),
        "runs_s": [round(s, 3) for s in timed],
        "warmup_s": [round(t["seconds"], 3) for t in timings if t["warmup"]],
        "rows": rows,
        "rows_per_s": round(rows / median) if median > 0 else None,
    }


def _worker(
    args: argparse.Namespace, task: str, data: BenchDataset, work: Path, env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one worker; returns (its result JSON, process-tree figures)."""
    print(f"  {task} ...", end="", flush=True)
    if args.in_process:
        from bench import worker

        worker.WARMUPS = args.warmups
        result: dict[str, Any] = {}

        def call() -> None:
            result.update(worker.run_task(task, data.root, work, args.runs))

        sampled = run_sampled_here(call)
    else:
        out = work / f"{task.replace(':', '-')}.json"
        log = work / f"{task.replace(':', '-')}.log"
        command = [sys.executable, "-m", "bench.worker", task, "--batch", str(data.root)]
        command += ["--work", str(work), "--runs", str(args.runs), "--out", str(out)]
        command += ["--warmups", str(args.warmups)]
        env = dict(env)
        if args.profile and task in SPARK_TASKS:
            env["SPARK_EVENT_LOG_DIR"] = str(_event_dir(work, task))
        sampled = run_sampled(command, log=log, env={**os.environ, **env}, cwd=ROOT)
        if sampled.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise BenchError(
                f"{task} on {size_label(data.size)} exited {sampled.returncode}:\n{tail}"
            )
        result = json.loads(out.read_text())
    process = {
        "peak_rss_mib": round(sampled.peak_rss_bytes / MIB, 1),
        "peak_pss_mib": round(sampled.peak_pss_bytes / MIB, 1),
        "peak_rss_by_process_mib": {
            kind: round(value / MIB, 1) for kind, value in sampled.peak_breakdown.items()
        },
        "process_wall_s": round(sampled.wall_s, 1),
        "process_cpu_s": round(sampled.cpu_s, 1),
        "load_avg_1m_at_end": round(sampled.load_avg[0], 2),
    }
    print(f" {sampled.wall_s:.0f} s, peak RSS {process['peak_rss_mib']:.0f} MiB", flush=True)
    return result, process


def _event_dir(work: Path, task: str) -> Path:
    return work / "events" / task.replace(":", "-")


def _profiles(
    args: argparse.Namespace, label: str, work: Path, results: dict[str, Any]
) -> dict[str, Any]:
    """--profile: each Spark task's profile (bench/profile.py), also written as text."""
    from bench.profile import profile_task, render

    profiles = {}
    texts = []
    for task in SPARK_TASKS:
        if args.in_process:
            break  # one JVM for every task, started without an event log
        if task == "scan":
            continue  # the yardstick: one job per dataset, nothing to break down
        profiles[task] = profile_task(_event_dir(work, task), results[task])
        texts.append(render(task, profiles[task]))
    if texts:
        path = args.cache_dir / "profile" / f"{label}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(texts) + "\n")
        print(f"  profile: {path}")
    return profiles


def _kpis_of(result: dict[str, Any]) -> tuple[CategoryRows, OrderRows]:
    from decimal import Decimal

    def value(name: str, text: str) -> str | int | Decimal:
        if name in ("category", "order_date"):
            return text
        return Decimal(text) if "." in text else int(text)

    categories = {
        (r["category"], r["order_date"]): {k: value(k, v) for k, v in r.items()}
        for r in result["kpis"]["category"]
    }
    orders = {
        r["order_date"]: {k: value(k, v) for k, v in r.items()} for r in result["kpis"]["order"]
    }
    return categories, orders


def bench_size(args: argparse.Namespace, size: int) -> dict[str, Any]:
    label = size_label(size)
    print(f"{label}: dataset ...", end="", flush=True)
    started = time.perf_counter()
    data, generated = ensure_dataset(
        args.cache_dir, size, seed=args.seed, days=args.days, parts=args.parts
    )
    print(
        f" {data.order_items} items, {data.bytes / MIB:.0f} MiB "
        f"({'generated' if generated else 'cached'}, {time.perf_counter() - started:.0f} s)"
    )
    tier = choose_tier(data.bytes)
    cores = os.cpu_count() or 1
    work = args.cache_dir / "runs" / cache_key(size, args.seed, args.days, args.parts)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = spark_environment(tier, cores)
    measurements: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for task in (*SPARK_TASKS, *ENGINE_TASKS):
        result, process = _worker(args, task, data, work, env)
        results[task] = result
        if task == "scan":
            for name in DATASET_ORDER:
                scanned = result[name]
                measurements[f"scan:{name}"] = _summary(scanned["timings"], scanned["rows"])
            measurements["scan"] = {**process}
        elif task.startswith("validate:"):
            measurements[task] = {**_summary(result["timings"], result["rows"]), **process}
            measurements[task]["steps_median_s"] = {
                step: round(statistics.median(s[step] for s in result["steps"][args.warmups :]), 3)
                for step in result["steps"][-1]
            }
        else:
            measurements[task] = {**_summary(result["timings"], data.order_items), **process}
            if result.get("steps"):
                measurements[task]["steps_median_s"] = {
                    step: round(
                        statistics.median(s[step] for s in result["steps"][args.warmups :]), 3
                    )
                    for step in result["steps"][-1]
                }

    profiles = _profiles(args, label, work, results) if args.profile else None
    spark_kpis = _kpis_of(results["kpis"])
    agreement: dict[str, Any] = {
        "category_rows": len(spark_kpis[0]),
        "order_rows": len(spark_kpis[1]),
    }
    for engine in ENGINE_TASKS:
        problems = differences("spark", spark_kpis, engine, _kpis_of(results[engine]))
        if problems:
            raise BenchError(
                f"{label}: Spark and {engine} disagree on {len(problems)} values:\n  "
                + "\n  ".join(problems[:20])
            )
        agreement[engine] = "identical"

    per_dataset = {}
    for name in DATASET_ORDER:
        validation = measurements[f"validate:{name}"]["median_s"]
        scan = measurements[f"scan:{name}"]["median_s"]
        per_dataset[name] = {
            "validation_s": validation,
            "scan_s": scan,
            "ratio": round(validation / scan, 2),
        }
    validation_total = sum(v["validation_s"] for v in per_dataset.values())
    scan_total = sum(v["scan_s"] for v in per_dataset.values())
    kpi = measurements["kpis"]["median_s"]
    duck = measurements["duckdb"]["median_s"]
    pandas = measurements["pandas"]["median_s"]
    pipeline = validation_total + kpi
    spark_peak = max(measurements[t]["peak_rss_mib"] for t in SPARK_TASKS if t != "scan")
    return {
        "label": label,
        "runs": args.runs,
        "warmup_runs": args.warmups,
        "dataset": {
            "order_items": data.order_items,
            "orders": data.orders,
            "products": data.products,
            "csv_bytes": data.bytes,
            "csv_mib": round(data.bytes / MIB, 1),
            "cache_key": cache_key(size, args.seed, args.days, args.parts),
        },
        "tier": {
            "name": tier.name,
            "memory_mib": tier.memory_mib,
            "vcpu": tier.cpu / 1024,
            "driver_memory": tier.driver_memory,
            "shuffle_partitions": tier.shuffle_partitions,
            "spark_master": env["SPARK_MASTER"],
        },
        "measurements": measurements,
        "validation": {
            "per_dataset": per_dataset,
            "total_s": round(validation_total, 3),
            "scan_total_s": round(scan_total, 3),
            "ratio": round(validation_total / scan_total, 2),
        },
        "spark_pipeline_s": round(pipeline, 3),
        "spark_peak_rss_mib": spark_peak,
        "ratios": {
            "kpi_job_per_duckdb": round(kpi / duck, 2),
            "kpi_job_per_pandas": round(kpi / pandas, 2),
            "pipeline_per_duckdb": round(pipeline / duck, 2),
            "pipeline_per_pandas": round(pipeline / pandas, 2),
        },
        "agreement": agreement,
        **({"profile": profiles} if profiles else {}),
    }


def bench_demo(seed_sample: Path) -> dict[str, Any]:
    """``ecom-pipeline run-local`` on the seed sample: upload to KPIs in DynamoDB, one cold run."""
    print("demo on the seed sample ...", end="", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        export = Path(tmp) / "out"
        command = [
            str(Path(sys.executable).with_name("ecom-pipeline")),
            "run-local",
            str(seed_sample),
            "--export",
            str(export),
        ]
        env = {**os.environ, "SPARK_MASTER": f"local[{os.cpu_count() or 1}]"}
        sampled = run_sampled(command, log=Path(tmp) / "demo.log", env=env, cwd=Path(tmp))
        if sampled.returncode != 0:
            tail = (Path(tmp) / "demo.log").read_text(errors="replace")[-3000:]
            raise BenchError(f"run-local on the seed sample exited {sampled.returncode}:\n{tail}")
        notice = _success_notice(export / "notifications.jsonl")
    print(f" {sampled.wall_s:.1f} s")
    return {
        "command": "ecom-pipeline run-local <seed-sample> --export OUT",
        "wall_s": round(sampled.wall_s, 2),
        "marker_to_kpis_s": notice.get("batch_duration_s") if notice else None,
        "peak_rss_mib": round(sampled.peak_rss_bytes / MIB, 1),
        "process_cpu_s": round(sampled.cpu_s, 1),
        "load_avg_1m_at_end": round(sampled.load_avg[0], 2),
    }


def _success_notice(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found = _find_key(record, "batch_duration_s")
        if found is not None:
            return {"batch_duration_s": found}
    return None


def _find_key(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        if key in value:
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = _find_key(item, key)
            if found is not None:
                return found
    if isinstance(value, str) and key in value and value.lstrip().startswith("{"):
        try:
            return _find_key(json.loads(value), key)
        except json.JSONDecodeError:
            return None
    return None


def targets(sizes: dict[str, dict[str, Any]], demo: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Where each target of issue 5 stands, from the measurements of this run."""
    found: list[dict[str, Any]] = []
    largest = max(sizes.values(), key=lambda s: s["dataset"]["order_items"], default=None)
    at_target = next((s for s in sizes.values() if s["label"] == size_label(TARGET_SIZE)), None)

    def status(ok: bool) -> str:
        return "met" if ok else "not met"

    ratios = {s["label"]: s["validation"]["ratio"] for s in sizes.values()}
    found.append(
        {
            "target": f"validation <= {VALIDATION_PER_SCAN_MAX}x one full scan",
            "measured": ", ".join(f"{k}: {v}x" for k, v in ratios.items()) or "no size run",
            "status": status(
                largest is not None and largest["validation"]["ratio"] <= VALIDATION_PER_SCAN_MAX
            )
            if largest
            else "not measured",
            "judged_on": largest["label"] if largest else None,
        }
    )
    if at_target:
        ratio = at_target["ratios"]["kpi_job_per_duckdb"]
        found.append(
            {
                "target": f"KPI job at 10M items <= {KPI_PER_DUCKDB_MAX}x DuckDB",
                "measured": f"{ratio}x ({at_target['measurements']['kpis']['median_s']} s vs "
                f"{at_target['measurements']['duckdb']['median_s']} s)",
                "status": status(ratio <= KPI_PER_DUCKDB_MAX),
            }
        )
        ratio = at_target["ratios"]["kpi_job_per_pandas"]
        found.append(
            {
                "target": "KPI job at 10M items faster than pandas",
                "measured": f"{ratio}x pandas "
                f"({at_target['measurements']['pandas']['median_s']} s)",
                "status": status(ratio < 1),
            }
        )
        tier = at_target["tier"]
        peak = at_target["spark_peak_rss_mib"]
        found.append(
            {
                "target": TIER_TARGET,
                "measured": f"tier {tier['name']} ({at_target['dataset']['csv_mib']} MiB of CSV): "
                f"heap {tier['driver_memory']}, peak RSS {peak} MiB of {tier['memory_mib']} MiB",
                "status": status(peak < tier["memory_mib"]),
            }
        )
    else:
        for name in (
            "KPI job at 10M items <= 3x DuckDB",
            "KPI job at 10M items faster than pandas",
            TIER_TARGET,
        ):
            found.append({"target": name, "measured": "10M not run", "status": "not measured"})
    if demo:
        found.append(
            {
                "target": DEMO_TARGET,
                "measured": f"{demo['wall_s']} s for the whole command"
                + (
                    f", {demo['marker_to_kpis_s']} s from the marker to the KPIs"
                    if demo.get("marker_to_kpis_s") is not None
                    else ""
                ),
                "status": status(demo["wall_s"] < DEMO_MAX_S),
            }
        )
    else:
        found.append(
            {
                "target": DEMO_TARGET,
                "measured": "skipped",
                "status": "not measured",
            }
        )
    return found


def _versions() -> dict[str, str]:
    names = ("pyspark", "great-expectations", "duckdb", "pandas", "psutil", "matplotlib")
    return {name: metadata.version(name) for name in names}


def markdown_table(results: dict[str, Any]) -> str:
    """The benchmark page's tables, from results.json."""
    head = (
        "| items | CSV | tier | validation (3 jobs) | one scan | validation / scan | KPI job "
        "| DuckDB | pandas | KPI job / DuckDB | KPI job / pandas | KPI job items/s "
        "| peak RSS Spark / DuckDB / pandas |"
    )
    lines = [head, "|" + "---|" * 13]
    for s in results["sizes"].values():
        m = s["measurements"]
        lines.append(
            "| "
            + " | ".join(
                (
                    f"{s['label']} ({s['dataset']['order_items']:,})",
                    f"{s['dataset']['csv_mib']:g} MiB",
                    s["tier"]["name"],
                    f"{s['validation']['total_s']:.1f} s",
                    f"{s['validation']['scan_total_s']:.1f} s",
                    f"{s['validation']['ratio']:.2f}x",
                    f"{m['kpis']['median_s']:.1f} s",
                    f"{m['duckdb']['median_s']:.2f} s",
                    f"{m['pandas']['median_s']:.2f} s",
                    f"{s['ratios']['kpi_job_per_duckdb']:.1f}x",
                    f"{s['ratios']['kpi_job_per_pandas']:.2f}x",
                    f"{m['kpis']['rows_per_s']:,}",
                    f"{s['spark_peak_rss_mib']:.0f} / {m['duckdb']['peak_rss_mib']:.0f} / "
                    f"{m['pandas']['peak_rss_mib']:.0f} MiB",
                )
            )
            + " |"
        )
    runs = ", ".join(f"{s['label']}: {s['runs']}" for s in results["sizes"].values())
    early = [
        s["label"]
        for s in results["sizes"].values()
        if "peak_pss_mib" not in s["measurements"]["kpis"]
    ]
    if early:
        lines.append("")
        lines.append(
            f"Peak RSS of {', '.join(early)}: measured before the sampler left out a JVM's "
            "forked, not yet exec'd children, so counting some JVM pages twice: upper bounds."
        )
    lines.append("")
    lines.append(
        f"Medians of N runs after a warm-up (N per size: {runs}), "
        f"{results['machine']['cpus']} cores "
        f"shared with other work (1-minute load at the start: "
        f"{results['machine']['load_avg_1m_at_start']}), {results['generated_at'][:10]}. "
        "Every KPI row of Spark, DuckDB and pandas was identical."
    )
    lines.append("")
    lines.append("| target | measured | status |")
    lines.append("|---|---|---|")
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['status']} |")
    return "\n".join(lines)


def rewrite_page(page: Path, table: str) -> None:
    """Replace the text between the page's bench markers with ``table``."""
    text = page.read_text(encoding="utf-8")
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise BenchError(f"{page}: markers {TABLE_START!r} ... {TABLE_END!r} not found")
    new = text[: start + len(TABLE_START)] + "\n" + table + "\n" + text[end:]
    page.write_text(new, encoding="utf-8")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"].values())
    labels = [s["label"] for s in sizes]
    series = {
        "validation (3 jobs)": [s["validation"]["total_s"] for s in sizes],
        "one scan": [s["validation"]["scan_total_s"] for s in sizes],
        "KPI job": [s["measurements"]["kpis"]["median_s"] for s in sizes],
        "DuckDB": [s["measurements"]["duckdb"]["median_s"] for s in sizes],
        "pandas": [s["measurements"]["pandas"]["median_s"] for s in sizes],
    }
    memory = {
        "Spark (largest job)": [s["spark_peak_rss_mib"] for s in sizes],
        "DuckDB": [s["measurements"]["duckdb"]["peak_rss_mib"] for s in sizes],
        "pandas": [s["measurements"]["pandas"]["peak_rss_mib"] for s in sizes],
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, data, unit, title in (
        (left, series, "seconds (median)", "Wall time"),
        (right, memory, "MiB", "Peak RSS of the process tree"),
    ):
        width = 0.8 / len(data)
        for index, (name, values) in enumerate(data.items()):
            positions = [i + (index - (len(data) - 1) / 2) * width for i in range(len(labels))]
            axis.bar(positions, values, width, label=name)
        axis.set_xticks(range(len(labels)), [f"{label} items" for label in labels])
        axis.set_yscale("log")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.legend(fontsize=8)
    fig.suptitle(
        f"ecom-pipeline benchmark, {results['machine']['cpus']} cores, medians after a warm-up"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["targets"] = targets(results["sizes"], results.get("demo"))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    if results["sizes"]:
        chart(results, args.chart)
        if not args.no_page:
            rewrite_page(args.page, markdown_table(results))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_mib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "versions": _versions(),
        },
        "settings": {
            "runs": args.runs,
            "warmup_runs": args.warmups,
            "in_process": args.in_process,
            "profile": args.profile,
            "seed": args.seed,
            "days": args.days,
            "parts": args.parts,
            "generator_version": generator_version(),
            "sizes": args.sizes,
        },
        "sizes": {},
        "demo": None,
    }
    if args.merge and args.results.exists():
        previous = json.loads(args.results.read_text())
        measured_now = {size_label(size) for size in args.sizes}
        results["sizes"] = {k: v for k, v in previous["sizes"].items() if k not in measured_now}
        results["demo"] = previous.get("demo")
    try:
        for size in args.sizes:
            results["sizes"][size_label(size)] = bench_size(args, size)
            results["sizes"] = dict(
                sorted(results["sizes"].items(), key=lambda kv: kv[1]["dataset"]["order_items"])
            )
            write_outputs(args, results)  # a partial run still leaves its finished sizes
        if not args.no_demo and args.seed_sample.is_dir():
            results["demo"] = bench_demo(args.seed_sample)
        write_outputs(args, results)
    except BenchError as e:
        print(f"\nbench FAILED: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.results}, {args.chart}" + ("" if args.no_page else f", {args.page}"))
    for t in results["targets"]:
        print(f"  [{t['status']}] {t['target']}: {t['measured']}")
    return 0
