"""Size tiers: how big a container (and Spark inside it) a batch gets, by its input bytes.

One table, used by the Lambda (which tier to ask for), the state machine (ECS overrides), the
jobs (Spark configuration) and the docs. Every cpu/memory pair is one Fargate accepts.

Above the largest Fargate tier a batch takes the EMR Serverless route instead: the same jobs,
run by EMR Serverless with a driver and several executors (``EMR_TIERS``). ``choose_route``
picks the route and tier for a batch; the plan the Lambda sends carries both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB

# Of the container's memory, the JVM heap gets this share; the rest is JVM off-heap overhead,
# the Python driver and Spark's Python workers.
DRIVER_HEAP_SHARE = 0.6
# Fargate's accepted memory (MiB) for each cpu value, from the ECS task size table.
FARGATE_MEMORY: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}
FARGATE_EPHEMERAL_GIB = (21, 200)


@dataclass(frozen=True)
class Tier:
    name: str
    max_input_bytes: int  # the largest batch (sum of its CSV bytes) this tier takes
    cpu: int  # Fargate CPU units (1024 = 1 vCPU)
    memory_mib: int  # the container's memory
    ephemeral_storage_gib: int  # staged CSV, Parquet and Spark spill live here
    shuffle_partitions: int

    @property
    def driver_memory_mib(self) -> int:
        return int(self.memory_mib * DRIVER_HEAP_SHARE)

    @property
    def driver_memory(self) -> str:
        """The value for spark.driver.memory (local mode: the driver is the executor)."""
        return f"{self.driver_memory_mib}m"

    @property
    def spark_cores(self) -> int:
        return max(1, self.cpu // 1024)

    def as_input(self) -> dict[str, Any]:
        """The tier as the state machine receives it (ECS overrides take strings)."""
        return {
            "name": self.name,
            "cpu": str(self.cpu),
            "memory": str(self.memory_mib),
            "driver_memory": self.driver_memory,
            "ephemeral_storage_gib": self.ephemeral_storage_gib,
            "shuffle_partitions": str(self.shuffle_partitions),
            "spark_master": f"local[{self.spark_cores}]",
        }


TIERS: tuple[Tier, ...] = (
    Tier(
        "small",
        256 * MIB,
        cpu=1024,
        memory_mib=4096,
        ephemeral_storage_gib=21,
        shuffle_partitions=8,
    ),
    Tier(
        "medium",
        2 * GIB,
        cpu=2048,
        memory_mib=8192,
        ephemeral_storage_gib=40,
        shuffle_partitions=16,
    ),
    Tier(
        "large",
        8 * GIB,
        cpu=4096,
        memory_mib=16384,
        ephemeral_storage_gib=100,
        shuffle_partitions=32,
    ),
    Tier(
        "xlarge",
        24 * GIB,
        cpu=8192,
        memory_mib=61440,
        ephemeral_storage_gib=200,
        shuffle_partitions=64,
    ),
)


# Where a batch's jobs run: one Fargate task per job, or one EMR Serverless job run per job.
ECS_ROUTE = "ecs"
EMR_ROUTE = "emr"

# EMR Serverless worker sizes: memory (GiB) allowed per vCPU count.
EMR_WORKER_MEMORY_GIB: dict[int, tuple[int, int]] = {
    1: (2, 8),
    2: (4, 16),
    4: (8, 30),
    8: (16, 60),
    16: (32, 120),
}
EMR_WORKER_DISK_GIB = (20, 200)
# Of an EMR worker's memory, Spark's heap gets this share; the rest is spark.*.memoryOverhead
# (Python workers, off-heap), which EMR Serverless adds to the heap when it sizes the worker.
EMR_HEAP_SHARE = 0.8


@dataclass(frozen=True)
class EmrTier:
    """A size for the EMR Serverless route: each job run gets one driver and up to
    ``max_executors`` executors, all workers of ``cores`` vCPU and ``memory_gib`` GiB."""

    name: str
    max_input_bytes: int
    cores: int  # vCPU of the driver and of each executor
    memory_gib: int  # memory of each worker, overhead included
    disk_gib: int  # local disk of each worker (shuffle, spill, staged files)
    max_executors: int
    shuffle_partitions: int

    @property
    def heap_mib(self) -> int:
        return int(self.memory_gib * 1024 * EMR_HEAP_SHARE)

    @property
    def overhead_mib(self) -> int:
        return self.memory_gib * 1024 - self.heap_mib

    @property
    def max_vcpu(self) -> int:
        """vCPU of one job run at full size (driver and every executor)."""
        return self.cores * (1 + self.max_executors)

    def spark_conf(self) -> dict[str, str]:
        """The Spark settings of a job run of this tier (spark-submit --conf)."""
        return {
            "spark.driver.cores": str(self.cores),
            "spark.driver.memory": f"{self.heap_mib}m",
            "spark.driver.memoryOverhead": f"{self.overhead_mib}m",
            "spark.executor.cores": str(self.cores),
            "spark.executor.memory": f"{self.heap_mib}m",
            "spark.executor.memoryOverhead": f"{self.overhead_mib}m",
            "spark.emr-serverless.driver.disk": f"{self.disk_gib}g",
            "spark.emr-serverless.executor.disk": f"{self.disk_gib}g",
            "spark.dynamicAllocation.enabled": "true",
            "spark.dynamicAllocation.minExecutors": "1",
            "spark.dynamicAllocation.maxExecutors": str(self.max_executors),
            # get_spark sets the session's shuffle partitions from this variable (a --conf of
            # spark.sql.shuffle.partitions would be overridden by it)
            "spark.emr-serverless.driverEnv.SPARK_SHUFFLE_PARTITIONS": str(self.shuffle_partitions),
        }

    def as_input(self) -> dict[str, Any]:
        """The tier as the state machine receives it: its Spark settings as spark-submit
        arguments, which the EMR job-run configuration appends to the fixed ones."""
        return {
            "name": self.name,
            "spark_submit_parameters": " ".join(
                f"--conf {key}={value}" for key, value in self.spark_conf().items()
            ),
        }


EMR_TIERS: tuple[EmrTier, ...] = (
    EmrTier(
        "emr-large",
        256 * GIB,
        cores=4,
        memory_gib=16,
        disk_gib=200,
        max_executors=40,
        shuffle_partitions=640,
    ),
    EmrTier(
        "emr-xlarge",
        1024 * GIB,
        cores=4,
        memory_gib=16,
        disk_gib=200,
        max_executors=160,
        shuffle_partitions=2560,
    ),
)


class BatchTooLargeError(ValueError):
    """More input than the configured maximum, or than the largest tier of every route takes."""


# The largest batch the Lambda accepts (sum of its dataset files' bytes): a larger one is
# refused with a notice before any Spark starts. The Lambda reads MAX_BATCH_BYTES from its
# environment (a deployment may set it lower to cap cost); by default it is the largest tier of
# any route, the EMR Serverless route's.
MAX_BATCH_BYTES_ENV = "MAX_BATCH_BYTES"


def default_max_batch_bytes() -> int:
    return EMR_TIERS[-1].max_input_bytes


def choose_route(input_bytes: int) -> tuple[str, Tier | EmrTier]:
    """The route and tier of a batch: the smallest Fargate tier that holds it, else (above the
    largest Fargate tier) the smallest EMR Serverless tier that does."""
    if input_bytes < 0:
        raise ValueError(f"input size cannot be negative: {input_bytes}")
    if input_bytes <= TIERS[-1].max_input_bytes:
        return ECS_ROUTE, choose_tier(input_bytes)
    for tier in EMR_TIERS:
        if input_bytes <= tier.max_input_bytes:
            return EMR_ROUTE, tier
    largest = EMR_TIERS[-1]
    raise BatchTooLargeError(
        f"batch of {input_bytes / GIB:.1f} GiB exceeds the largest tier "
        f"{largest.name} ({largest.max_input_bytes / GIB:.0f} GiB, EMR Serverless); raise the "
        "limits in ecom_pipeline/core/tiers.py or split the batch"
    )


def is_valid_emr_worker(cores: int, memory_gib: int, disk_gib: int) -> bool:
    low, high = EMR_WORKER_MEMORY_GIB.get(cores, (1, 0))
    return (
        low <= memory_gib <= high and EMR_WORKER_DISK_GIB[0] <= disk_gib <= EMR_WORKER_DISK_GIB[1]
    )


def choose_tier(input_bytes: int) -> Tier:
    """The smallest Fargate tier whose limit holds the batch."""
    if input_bytes < 0:
        raise ValueError(f"input size cannot be negative: {input_bytes}")
    for tier in TIERS:
        if input_bytes <= tier.max_input_bytes:
            return tier
    largest = TIERS[-1]
    raise BatchTooLargeError(
        f"batch of {input_bytes / GIB:.1f} GiB exceeds the largest tier "
        f"{largest.name} ({largest.max_input_bytes / GIB:.0f} GiB); raise the limits in "
        "ecom_pipeline/core/tiers.py or split the batch "
        "(or route it to EMR Serverless: choose_route)"
    )


def is_valid_fargate_size(cpu: int, memory_mib: int) -> bool:
    return memory_mib in FARGATE_MEMORY.get(cpu, ())
