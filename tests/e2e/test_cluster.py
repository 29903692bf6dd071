"""The jobs on a Spark standalone cluster: a master and two workers started from pyspark's own
launcher on 127.0.0.1, the validation and KPI jobs sent with ``spark-submit --master spark://``
in direct I/O mode (the data under a ``file://`` data root the executors read and write
themselves; the tables, lock and topic on the moto server), and the KPI tables compared with a
local-mode run of the same batch staged through local disk from the moto bucket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest

from ecom_pipeline.adapters.storage import FileStore
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import CATEGORY_TABLE, DATASET_ORDER, ORDER_TABLE, ExitCode
from ecom_pipeline.core.layout import (
    CURATED,
    CURATED_GENERATIONS,
    curated_journal_key,
    incoming_prefix,
    kpi_result_key,
)
from ecom_pipeline.local.emulator import EXPORT_FILES, LocalAws
from ecom_pipeline.local.generator import generate
from reference_kpis import as_json_ready, kpis_from_batches

SPARK_HOME = Path(pyspark.__file__).resolve().parent
DRIVER = Path(__file__).resolve().parents[2] / "jobs" / "spark_driver.py"
WORKERS = 2
# Each job is an application with one 1-core executor on each worker; the three validations
# run at the same time, so each worker has room for three executors.
WORKER_CORES = 3
EXECUTOR_MEMORY = "512m"  # Spark's floor is 450 MiB
WORKER_MEMORY = "1536m"
JOB_TIMEOUT_S = 300
DAEMON_MEMORY = "256m"
# Short-lived JVMs on a busy machine: C1 only and the serial collector spend far less CPU on
# JIT and GC threads than the defaults (a test setting, not one the jobs need).
LEAN_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
BATCH = "cluster-b1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _job_environment() -> dict[str, str]:
    """The environment of every Spark process here: the venv's Python on every executor, no
    SPARK_MASTER (tests set one for local mode; spark-submit's --master must win)."""
    env = {k: v for k, v in os.environ.items() if k != "SPARK_MASTER"}
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
        GX_ANALYTICS_ENABLED="false",
        SPARK_SHUFFLE_PARTITIONS="2",
    )
    return env


class StandaloneCluster:
    """A Spark standalone master and workers as child processes (``spark-class``), each in its
    own process group so that stopping it also ends the executors it launched."""

    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        self.workers = workers
        self.port = _free_port()
        self.web_port = _free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.worker_dirs = [root / f"worker-{i}" for i in range(workers)]
        self._processes: list[tuple[subprocess.Popen, Path]] = []
        conf = root / "conf"  # an empty conf dir: no spark-defaults.conf from the machine
        conf.mkdir(parents=True, exist_ok=True)
        self.env = _job_environment() | {
            "SPARK_CONF_DIR": str(conf),
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
            "SPARK_DAEMON_JAVA_OPTS": LEAN_JVM,
        }

    def _spawn(self, name: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(SPARK_HOME / "bin" / "spark-class"), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self._processes.append((process, log))

    def start(self) -> None:
        self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--webui-port", str(self.web_port)),
        )
        for i, work_dir in enumerate(self.worker_dirs):
            work_dir.mkdir(parents=True, exist_ok=True)
            self._spawn(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                *("--host", "127.0.0.1", "--port", "0", "--webui-port", str(_free_port())),
                *(
                    "--cores",
                    str(WORKER_CORES),
                    "--memory",
                    WORKER_MEMORY,
                    "--work-dir",
                    str(work_dir),
                ),
                self.master_url,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_running()
            state = self.state()
            if state is not None and state.get("aliveworkers") == self.workers:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.workers} workers did not register in 60 s\n{self.logs()}")

    def state(self) -> dict | None:
        """The master's JSON status page (workers, running and completed applications)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/json/", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def _check_running(self) -> None:
        for process, log in self._processes:
            if process.poll() is not None:
                raise RuntimeError(f"{log.stem} exited with {process.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:]
            for _, log in self._processes
        )

    def stop(self) -> None:
        for process, _ in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self._processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def submit(
        self, jobs: list[list[str]], *, work_dir: Path, aws: LocalAws, data_root: str
    ) -> None:
        """Run jobs through spark-submit on the cluster, all at once (as the state machine runs
        the validations), and wait for every one to exit 0."""
        runs = []
        for i, job_args in enumerate(jobs):
            command = [
                str(SPARK_HOME / "bin" / "spark-submit"),
                *("--master", self.master_url, "--deploy-mode", "client"),
                *("--name", "-".join(job_args[:1] + job_args[4:5])),
                *("--driver-memory", "1g", "--executor-memory", EXECUTOR_MEMORY),
                *("--executor-cores", "1", "--conf", f"spark.cores.max={self.workers}"),
                *("--conf", f"spark.pyspark.python={sys.executable}"),
                *("--conf", f"spark.pyspark.driver.python={sys.executable}"),
                *("--conf", "spark.locality.wait=0s"),
                *("--conf", f"spark.executor.defaultJavaOptions={LEAN_JVM}"),
                *("--driver-java-options", f"{LEAN_JVM} -Duser.timezone=UTC"),
                str(DRIVER),
                *job_args,
                *("--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url),
                *("--region", aws.region, "--work-dir", str(work_dir)),
                *("--data-root", data_root),
            ]
            log = self.root / f"submit-{len(list(self.root.glob('submit-*')))}-{i}.log"
            out = log.open("wb")
            process = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            runs.append((job_args, process, out, log))
        failures = []
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for job_args, process, out, log in runs:
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait(timeout=10)
            finally:
                out.close()
            if code != ExitCode.OK:
                text = log.read_text(errors="replace")
                failures.append(f"{' '.join(job_args)} exited {code}\n{text[-6000:]}")
        assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[StandaloneCluster]:
    standalone = StandaloneCluster(tmp_path_factory.mktemp("spark-cluster"), WORKERS)
    try:
        standalone.start()
        yield standalone
    finally:
        standalone.stop()


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-batch") / BATCH
    generate(folder, 400, seed=23, days=12, parts=2)
    return folder


def _export(aws: LocalAws, out: Path) -> dict[str, list[dict]]:
    aws.export_tables(out)
    return {
        table: [json.loads(line) for line in (out / name).read_text().splitlines()]
        for table, name in EXPORT_FILES.items()
    }


def _jobs() -> list[list[str]]:
    validations = [["validate", "--batch-id", BATCH, "--dataset", d] for d in DATASET_ORDER]
    return [*validations, ["compute-kpis", "--batch-id", BATCH]]


def test_jobs_on_a_standalone_cluster_give_the_local_mode_tables(cluster, batch, spark, tmp_path):
    # Direct I/O on the cluster: the batch in a folder every process sees (a shared filesystem
    # across hosts), read and written there by the executors; nothing staged by the driver.
    shared = FileStore(tmp_path / "shared-root")
    shared.upload_dir(batch, incoming_prefix(BATCH))
    cluster_work = tmp_path / "cluster-work"
    with LocalAws() as aws:
        validations, kpis = _jobs()[:-1], _jobs()[-1:]
        root = shared.uri("")
        cluster.submit(validations, work_dir=cluster_work, aws=aws, data_root=root)
        cluster.submit(kpis, work_dir=cluster_work, aws=aws, data_root=root)
        on_cluster = _export(aws, tmp_path / "cluster-out")
        cluster_report = shared.get_json(kpi_result_key(BATCH))
        assert aws.store.list("") == []  # the bucket saw no data: everything went to the root
    staged_data = [p for p in cluster_work.rglob("*") if p.suffix in (".csv", ".parquet")]
    assert staged_data == []
    curated = [o.key for o in shared.list(f"{CURATED}/")]
    assert any(k.endswith(".parquet") for k in curated)
    assert not [k for k in curated if k.startswith(CURATED_GENERATIONS)]
    assert curated_journal_key() not in curated

    # The same batch, the same commands, in local mode (this process's local[2] session).
    with LocalAws() as aws:
        aws.store.upload_dir(batch, incoming_prefix(BATCH))
        flags = ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url]
        for job in _jobs():
            code = main([*job, *flags, "--work-dir", str(tmp_path / "local-work")])
            assert code == ExitCode.OK, job
        local = _export(aws, tmp_path / "local-out")
        local_report = aws.store.get_json(kpi_result_key(BATCH))

    assert all(local.values()), "the local run wrote no KPIs"
    assert on_cluster == local
    assert cluster_report["rows_accepted"] == local_report["rows_accepted"]
    assert cluster_report["dates_recomputed"] == local_report["dates_recomputed"]
    # and both equal the independent reference
    categories, orders = kpis_from_batches([batch])
    assert len(on_cluster[ORDER_TABLE]) == len(orders)
    by_date = {row["order_date"]: row for row in on_cluster[ORDER_TABLE]}
    assert by_date == {day: as_json_ready(item) for day, item in orders.items()}
    assert len(on_cluster[CATEGORY_TABLE]) == len(categories)

    # The work really ran on the cluster: every job was an application of this master, and
    # each worker ran an executor of each (its work dir holds app-<id>/<executor>/).
    state = cluster.state()
    assert state is not None
    apps = {app["id"]: app for app in state["completedapps"]}
    assert sorted(app["name"] for app in apps.values()) == sorted(
        "-".join(job[:1] + job[4:5]) for job in _jobs()
    )
    for worker_dir in cluster.worker_dirs:
        assert {p.name for p in worker_dir.glob("app-*")} == set(apps), worker_dir


def test_spark_submit_passes_the_jobs_exit_code_on(tmp_path):
    """A cluster manager (EMR Serverless too) sees the job's exit code: a bad command line
    exits 2 through spark-submit and the driver script, as the command does."""
    result = subprocess.run(
        [
            str(SPARK_HOME / "bin" / "spark-submit"),
            *("--master", "local[1]", "--conf", f"spark.pyspark.python={sys.executable}"),
            str(DRIVER),
            "compute-kpis",  # without --batch-id
        ],
        env=_job_environment() | {"SPARK_CONF_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == ExitCode.USAGE, result.stderr[-3000:]
    assert "the following arguments are required: --batch-id" in result.stdout + result.stderr
