"""Running a command while sampling the RSS and CPU time of its whole process tree."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.1
PSS_EVERY = 5  # PSS reads /proc/<pid>/smaps_rollup: every 5th sample, to keep the cost low


@dataclass
class Sampled:
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # the largest sum of RSS over the process and all its descendants
    peak_pss_bytes: int  # the same with shared pages counted once (PSS), sampled every 0.5 s
    peak_breakdown: dict[str, int]  # that sum by kind of process (driver, jvm, python workers)
    cpu_s: float  # user + system time of the tree (children that exited included when seen)
    load_avg: tuple[float, float, float]  # 1/5/15-minute load when the command ended

    @classmethod
    def of(cls, sampler: TreeSampler, *, returncode: int, started: float) -> Sampled:
        """What ``sampler`` saw of a command started at ``started`` (perf_counter) and ended now."""
        return cls(
            returncode=returncode,
            wall_s=time.perf_counter() - started,
            peak_rss_bytes=sampler.peak_rss,
            peak_pss_bytes=sampler.peak_pss,
            peak_breakdown=sampler.peak_breakdown,
            cpu_s=sampler.cpu_s,
            load_avg=os.getloadavg(),
        )


class TreeSampler:
    """Samples a process and all its descendants (JVM, Python workers) every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak_rss = 0
        self.peak_pss = 0
        self._samples = 0
        self.peak_breakdown: dict[str, int] = {}
        self._cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def sample(self) -> None:
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        with_pss = self._samples % PSS_EVERY == 0
        self._samples += 1
        rss = pss = 0
        breakdown: dict[str, int] = {}
        for process in processes:
            try:
                with process.oneshot():
                    if _is_unexeced_fork(process):
                        # a JVM forking to start a Python worker: until exec the child shows
                        # the JVM's whole RSS, all of it shared with the JVM
                        continue
                    resident = process.memory_info().rss
                    if with_pss:
                        pss += process.memory_full_info().pss
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
                    kind = _kind(process, self._root)
            except psutil.Error:
                continue
            rss += resident
            breakdown[kind] = breakdown.get(kind, 0) + resident
        self.peak_pss = max(self.peak_pss, pss)
        if rss > self.peak_rss:
            self.peak_rss = rss
            self.peak_breakdown = breakdown

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)


def _is_unexeced_fork(process: psutil.Process) -> bool:
    parent = process.parent()
    return (
        parent is not None
        and parent.name() == "java"
        and process.name() != "java"
        and process.cmdline() == parent.cmdline()
    )


def _kind(process: psutil.Process, root: psutil.Process) -> str:
    if process.pid == root.pid:
        return "driver"
    name = process.name()
    if name == "java":
        return "jvm"
    if name.startswith("python"):
        return "python workers"
    return "other"


def run_sampled(
    command: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Sampled:
    """Run command (output to log), sampling its process tree until it exits."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        sampler = TreeSampler(process.pid)
        sampler.start()
        try:
            returncode = process.wait()
        finally:
            sampler.stop()
    return Sampled.of(sampler, returncode=returncode, started=started)


def run_sampled_here(call: Callable[[], None]) -> Sampled:
    """Call ``call`` in this process, sampling this process's tree meanwhile (for tests)."""
    started = time.perf_counter()
    sampler = TreeSampler(os.getpid())
    sampler.start()
    try:
        call()
    finally:
        sampler.stop()
    return Sampled.of(sampler, returncode=0, started=started)
