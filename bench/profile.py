"""Where a measured job spends its time, from Spark's event log (``python -m bench --profile``).

Each Spark worker of ``bench.worker`` writes an event log (``SPARK_EVENT_LOG_DIR``, see
``ecom_pipeline.adapters.spark.get_spark``). This module reads it and, for every run the worker
timed, sums what Spark did during it: each job (its call site, wall time, tasks, rows read from
files, shuffle bytes written and read, rows written), grouped by the part of the code that started
it (the job's own modules, Great Expectations, the bench harness), and the time no Spark job was
running (Python on the driver: GX building metrics and rendering Data Docs, planning, file
checks). The JVM start is the time the worker took to get its SparkSession (before any run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_METRICS = {
    "internal.metrics.input.recordsRead": "input_rows",
    "internal.metrics.input.bytesRead": "input_bytes",
    "internal.metrics.output.recordsWritten": "output_rows",
    "internal.metrics.shuffle.write.bytesWritten": "shuffle_write_bytes",
    "internal.metrics.shuffle.write.recordsWritten": "shuffle_write_rows",
    "internal.metrics.shuffle.read.localBytesRead": "shuffle_read_bytes",
    "internal.metrics.shuffle.read.remoteBytesRead": "shuffle_read_bytes",
    "internal.metrics.executorRunTime": "task_ms",
}
_CALL_SITE = re.compile(r"^(?P<action>\S+) at (?P<file>[^:]+):(?P<line>\d+)")


@dataclass
class Job:
    job_id: int
    start_ms: int
    end_ms: int
    call_site: str
    stages: list[int]
    tasks: int = 0
    skipped_stages: int = 0
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    @property
    def origin(self) -> str:
        """Which code started the job, from its call site's file."""
        match = _CALL_SITE.match(self.call_site)
        path = match.group("file") if match else self.call_site
        if "great_expectations" in path:
            return "great_expectations"
        if "/bench/" in path or path.endswith(".java"):
            return "pipeline"  # the job's own actions (py4j reports them from Java)
        name = Path(path).stem
        return f"ecom_pipeline.{name}" if "ecom_pipeline" in path else name or "unknown"

    @property
    def where(self) -> str:
        """``action at module:line``, short."""
        match = _CALL_SITE.match(self.call_site)
        if not match:
            return self.call_site[:80]
        return f"{match.group('action')} at {Path(match.group('file')).name}:{match.group('line')}"


def event_logs(event_dir: Path) -> list[list[Path]]:
    """The event logs in a folder, oldest application first, each as its files in order: a
    plain file (``get_spark``'s setting) or a rolling ``eventlog_v2_*`` folder of parts."""
    found = []
    for entry in sorted(event_dir.iterdir(), key=lambda p: p.stat().st_mtime):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            parts = sorted(entry.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))
            if parts:
                found.append(parts)
        elif entry.is_file():
            found.append([entry])
    return found


def _lines(files: list[Path]) -> Iterator[str]:
    for path in files:
        if path.suffix == ".zstd":  # Spark 4's default codec; needs the zstd command
            if shutil.which("zstd") is None:
                raise RuntimeError(f"{path}: zstd-compressed and no zstd command to read it")
            text = subprocess.run(
                ["zstd", "-dc", str(path)], check=True, capture_output=True
            ).stdout.decode("utf-8")
            yield from text.splitlines()
        else:
            with path.open(encoding="utf-8") as handle:
                yield from handle


def read_jobs(event_log: list[Path]) -> tuple[list[Job], int | None]:
    """The jobs of one event log and the application's start time (epoch ms)."""
    jobs: dict[int, Job] = {}
    stage_metrics: dict[int, dict[str, int]] = {}
    stage_tasks: dict[int, int] = {}
    executions: dict[int, str] = {}
    app_start = None
    for line in _lines(event_log):
        if not line.strip():
            continue
        event = json.loads(line)
        kind = event.get("Event")
        if kind == "SparkListenerApplicationStart":
            app_start = event["Timestamp"]
        elif kind.endswith("SparkListenerSQLExecutionStart"):
            executions[event["executionId"]] = event.get("description", "")
        elif kind == "SparkListenerJobStart":
            properties = event.get("Properties") or {}
            stages = list(event.get("Stage IDs", []))
            infos = event.get("Stage Infos") or []
            # AQE submits query stages from its own threads: the SQL query's description
            # names the action that started them
            root = properties.get("spark.sql.execution.root.id")
            call_site = (
                (executions.get(int(root)) if root is not None else None)
                or properties.get("callSite.short")
                or (infos[-1].get("Stage Name", "") if infos else "")
            )
            job = Job(
                job_id=event["Job ID"],
                start_ms=event["Submission Time"],
                end_ms=event["Submission Time"],
                call_site=call_site,
                stages=stages,
            )
            jobs[job.job_id] = job
        elif kind == "SparkListenerJobEnd":
            job = jobs.get(event["Job ID"])
            if job is not None:
                job.end_ms = event["Completion Time"]
        elif kind == "SparkListenerStageCompleted":
            info = event["Stage Info"]
            stage = info["Stage ID"]
            stage_tasks[stage] = info.get("Number of Tasks", 0)
            totals = stage_metrics.setdefault(stage, {})
            for accumulable in info.get("Accumulables", []):
                name = _METRICS.get(accumulable.get("Name", ""))
                if name is not None:
                    totals[name] = totals.get(name, 0) + int(accumulable.get("Value") or 0)
    for job in jobs.values():
        for stage in job.stages:
            if stage not in stage_tasks:
                job.skipped_stages += 1  # its shuffle output was reused
                continue
            job.tasks += stage_tasks[stage]
            for name, value in stage_metrics[stage].items():
                job.metrics[name] = job.metrics.get(name, 0) + value
    return sorted(jobs.values(), key=lambda j: j.start_ms), app_start


def _busy_ms(jobs: list[Job]) -> int:
    """Wall time during which at least one job ran (jobs may overlap)."""
    total = 0
    end = None
    for job in sorted(jobs, key=lambda j: j.start_ms):
        if end is None or job.start_ms > end:
            total += job.end_ms - job.start_ms
            end = job.end_ms
        elif job.end_ms > end:
            total += job.end_ms - end
            end = job.end_ms
    return total


def _window(jobs: list[Job], start_s: float, end_s: float) -> dict[str, Any]:
    inside = [j for j in jobs if start_s * 1000 <= j.start_ms < end_s * 1000]
    busy = _busy_ms(inside)
    wall = end_s - start_s
    return {
        "wall_s": round(wall, 3),
        "spark_jobs": len(inside),
        "spark_busy_s": round(busy / 1000, 3),
        "no_job_running_s": round(wall - busy / 1000, 3),
        "shuffle_write_bytes": sum(j.metrics.get("shuffle_write_bytes", 0) for j in inside),
    }


def summarise_run(
    jobs: list[Job], start_s: float, end_s: float, steps: dict[str, float] | None = None
) -> dict[str, Any]:
    """What Spark did during one timed run (``start_s``..``end_s``, epoch seconds); with
    ``steps`` (name: seconds, in the order they ran from the run's start), per step too."""
    inside = [j for j in jobs if start_s * 1000 <= j.start_ms <= end_s * 1000]
    wall_ms = (end_s - start_s) * 1000
    per_step = {}
    if steps:
        clock = start_s
        for name, seconds in steps.items():
            per_step[name] = _window(jobs, clock, clock + seconds)
            clock += seconds
    by_origin: dict[str, dict[str, Any]] = {}
    for job in inside:
        group = by_origin.setdefault(job.origin, {"jobs": 0, "job_s": 0.0})
        group["jobs"] += 1
        group["job_s"] = round(group["job_s"] + job.seconds, 3)
    busy = _busy_ms(inside)
    return {
        "wall_s": round(wall_ms / 1000, 3),
        "spark_jobs": len(inside),
        "spark_busy_s": round(busy / 1000, 3),
        "no_job_running_s": round((wall_ms - busy) / 1000, 3),
        "by_origin": by_origin,
        "shuffle_write_bytes": sum(j.metrics.get("shuffle_write_bytes", 0) for j in inside),
        "input_rows": sum(j.metrics.get("input_rows", 0) for j in inside),
        "steps": per_step,
        "jobs": [
            {
                "job": j.job_id,
                "where": j.where,
                "origin": j.origin,
                "s": round(j.seconds, 3),
                "tasks": j.tasks,
                "skipped_stages": j.skipped_stages,
                **{k: v for k, v in j.metrics.items() if v and k != "task_ms"},
            }
            for j in inside
        ],
    }


def profile_task(event_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The profile of one worker: JVM start and, for its last timed run, every Spark job."""
    logs = event_logs(event_dir)
    if not logs:
        raise FileNotFoundError(f"no Spark event log in {event_dir}")
    jobs, _ = read_jobs(logs[-1])
    timings = result.get("timings") or next(
        v["timings"] for v in result.values() if isinstance(v, dict) and "timings" in v
    )
    timed = [t for t in timings if not t["warmup"]] or timings
    last = timed[-1]
    steps = result["steps"][-1] if result.get("steps") else None
    profile = summarise_run(jobs, last["start"], last["end"], steps)
    if "spark_start_s" in result:
        profile["jvm_start_s"] = result["spark_start_s"]
    return profile


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def render(task: str, profile: dict[str, Any], top: int = 12) -> str:
    """A short text summary of one task's profile (the slowest jobs first)."""
    lines = [
        f"{task}: run {profile['wall_s']:.2f} s; {profile['spark_jobs']} Spark jobs busy "
        f"{profile['spark_busy_s']:.2f} s, no job running {profile['no_job_running_s']:.2f} s; "
        f"shuffle written {_mib(profile['shuffle_write_bytes'])}"
        + (f"; JVM start {profile['jvm_start_s']:.1f} s" if "jvm_start_s" in profile else "")
    ]
    for name, step in profile.get("steps", {}).items():
        lines.append(
            f"  step {name}: {step['wall_s']:.2f} s, {step['spark_jobs']} jobs busy "
            f"{step['spark_busy_s']:.2f} s, no job running {step['no_job_running_s']:.2f} s, "
            f"shuffle written {_mib(step['shuffle_write_bytes'])}"
        )
    lines.append(
        "  by origin: "
        + ", ".join(
            f"{name} {group['jobs']} jobs {group['job_s']:.2f} s"
            for name, group in sorted(profile["by_origin"].items(), key=lambda kv: -kv[1]["job_s"])
        )
    )
    for job in sorted(profile["jobs"], key=lambda j: -j["s"])[:top]:
        extra = ", ".join(
            f"{k} {_mib(v) if k.endswith('bytes') else f'{v:,}'}"
            for k, v in job.items()
            if k in _METRICS.values() and v
        )
        lines.append(
            f"  job {job['job']:>3} {job['s']:6.2f} s {job['tasks']:>3} tasks  {job['where']}"
            + (f"  ({extra})" if extra else "")
        )
    return "\n".join(lines)
