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


@dataclass
class Sampled:
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # the largest sum of RSS over the process and all its descendants
    cpu_s: float  # user + system time of the tree (children that exited included when seen)
    load_avg: tuple[float, float, float]  # 1/5/15-minute load when the command ended


class TreeSampler:
    """Samples a process and all its descendants (JVM, Python workers) every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak_rss = 0
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
        rss = 0
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)


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
    return Sampled(
        returncode=returncode,
        wall_s=time.perf_counter() - started,
        peak_rss_bytes=sampler.peak_rss,
        cpu_s=sampler.cpu_s,
        load_avg=os.getloadavg(),
    )


def run_sampled_here(call: Callable[[], None]) -> Sampled:
    """Call ``call`` in this process, sampling this process's tree meanwhile (for tests)."""
    started = time.perf_counter()
    sampler = TreeSampler(os.getpid())
    sampler.start()
    try:
        call()
    finally:
        sampler.stop()
    return Sampled(
        returncode=0,
        wall_s=time.perf_counter() - started,
        peak_rss_bytes=sampler.peak_rss,
        cpu_s=sampler.cpu_s,
        load_avg=os.getloadavg(),
    )
