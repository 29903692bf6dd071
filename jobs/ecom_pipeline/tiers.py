"""Size tiers: how big a container (and Spark inside it) a batch gets, by its input bytes.

One table, used by the Lambda (which tier to ask for), the state machine (ECS overrides), the
jobs (Spark configuration) and the docs. Every cpu/memory pair is one Fargate accepts.
"""

from __future__ import annotations

import math
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


# The largest batch the Lambda accepts (sum of its dataset files' bytes): a larger one is
# refused with a notice before any Spark starts. The Lambda reads MAX_BATCH_BYTES from its
# environment; by default it is the largest tier's limit. A route for bigger batches (another
# engine above the largest Fargate tier) raises it.
MAX_BATCH_BYTES_ENV = "MAX_BATCH_BYTES"


def default_max_batch_bytes() -> int:
    return TIERS[-1].max_input_bytes


class BatchTooLargeError(ValueError):
    """More input than the configured maximum, or than the largest container tier takes."""


def choose_tier(input_bytes: int) -> Tier:
    """The smallest tier whose limit holds the batch."""
    if input_bytes < 0:
        raise ValueError(f"input size cannot be negative: {input_bytes}")
    for tier in TIERS:
        if input_bytes <= tier.max_input_bytes:
            return tier
    largest = TIERS[-1]
    raise BatchTooLargeError(
        f"batch of {input_bytes / GIB:.1f} GiB exceeds the largest tier "
        f"{largest.name} ({largest.max_input_bytes / GIB:.0f} GiB); raise the limits in "
        "ecom_pipeline/tiers.py or split the batch"
    )


def tier_by_name(name: str) -> Tier:
    for tier in TIERS:
        if tier.name == name:
            return tier
    raise KeyError(f"no tier named {name!r}; tiers: {', '.join(t.name for t in TIERS)}")


def is_valid_fargate_size(cpu: int, memory_mib: int) -> bool:
    return memory_mib in FARGATE_MEMORY.get(cpu, ())


def tier_table_markdown() -> str:
    """The tier table as Markdown, for the README (a test keeps the README in step)."""
    header = (
        "tier",
        "input up to",
        "vCPU",
        "memory",
        "Spark driver heap",
        "ephemeral storage",
        "shuffle partitions",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in TIERS:
        cells = (
            t.name,
            _size(t.max_input_bytes),
            f"{t.cpu / 1024:g}",
            f"{t.memory_mib // 1024} GiB",
            f"{t.driver_memory_mib} MiB",
            f"{t.ephemeral_storage_gib} GiB",
            str(t.shuffle_partitions),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _size(value: int) -> str:
    if value >= GIB:
        return f"{value / GIB:g} GiB"
    return f"{math.ceil(value / MIB)} MiB"
