"""How a batch's cost grows with its size, on both routes, derived from the tier table.

An estimate, not a bill: list prices times the resources of the batch's tier times an
estimated duration. The assumptions are constants here and stated in the README next to the
table this module renders (a test keeps the README in step).

Duration model. A batch is read twice: the three validations read its datasets (together, the
whole batch once) and the KPI job reads the batch again (the curated store it also reads is
left out, so large histories cost more than shown). Each pass processes ``MIB_PER_VCPU_S`` of
CSV per vCPU and second, and every job pays a fixed start-up (task or job-run start, JVM,
imports). On Fargate each job is a task of the tier's size, billed for its own run. On EMR
Serverless each job run is billed for its driver and, as an upper bound, the tier's maximum
executors for the whole run (dynamic allocation releases idle ones earlier).
"""

from __future__ import annotations

from dataclasses import dataclass

from ecom_pipeline.core.tiers import EMR_TIERS, GIB, MIB, TIERS, EmrTier, Tier

REGION = "us-east-1"
# On-demand list prices, Linux/x86, USD (AWS pricing pages of Fargate and EMR Serverless).
FARGATE_VCPU_HOUR = 0.04048
FARGATE_GB_HOUR = 0.004445
FARGATE_STORAGE_GB_HOUR = 0.000111  # ephemeral storage above the 20 GB included
EMR_VCPU_HOUR = 0.052624
EMR_GB_HOUR = 0.0057785
EMR_STORAGE_GB_HOUR = 0.000111  # worker disk above the 20 GB included per worker
INCLUDED_STORAGE_GB = 20

# Throughput of one pass, from the reference point in the stack facts: a plain PySpark job
# computing the KPIs of 10M order items (1.4 GB of CSV) in ~78 s on 2 vCPU is ~8.6 MiB/s per
# vCPU; rounded down. Replace with the benchmark's measurement when it is known.
MIB_PER_VCPU_S = 8.0
PASSES = 2  # validation (all datasets, once) + the KPI job
JOBS = 4  # three validations and the KPI job, each starting its own task or job run
FARGATE_START_S = 60.0  # task placement, image pull, JVM and imports
EMR_START_S = 120.0  # job run start (no pre-initialised capacity), driver and executors


@dataclass(frozen=True)
class Estimate:
    route: str
    tier: str
    vcpu: int  # of one job at full size
    wall_s: float  # marker to KPIs, the validations running at once (upper bound)
    cost_usd: float

    def per_gib(self, input_bytes: int) -> float:
        return self.cost_usd / (input_bytes / GIB)


def _pass_seconds(input_bytes: int, vcpu: int) -> float:
    return input_bytes / MIB / (MIB_PER_VCPU_S * vcpu)


def fargate_estimate(input_bytes: int, tier: Tier) -> Estimate:
    vcpu = tier.spark_cores
    task_hour = (
        vcpu * FARGATE_VCPU_HOUR
        + tier.memory_mib / 1024 * FARGATE_GB_HOUR
        + max(0, tier.ephemeral_storage_gib - INCLUDED_STORAGE_GB) * FARGATE_STORAGE_GB_HOUR
    )
    one_pass = _pass_seconds(input_bytes, vcpu)
    billed_s = PASSES * one_pass + JOBS * FARGATE_START_S
    # worst case for latency: one dataset holds nearly all the bytes
    wall_s = PASSES * (one_pass + FARGATE_START_S)
    return Estimate("Fargate", tier.name, vcpu, wall_s, billed_s / 3600 * task_hour)


def emr_estimate(input_bytes: int, tier: EmrTier) -> Estimate:
    workers = 1 + tier.max_executors
    worker_hour = (
        tier.cores * EMR_VCPU_HOUR
        + tier.memory_gib * EMR_GB_HOUR
        + max(0, tier.disk_gib - INCLUDED_STORAGE_GB) * EMR_STORAGE_GB_HOUR
    )
    one_pass = _pass_seconds(input_bytes, tier.cores * tier.max_executors)
    billed_s = PASSES * one_pass + JOBS * EMR_START_S
    wall_s = PASSES * (one_pass + EMR_START_S)
    return Estimate(
        "EMR Serverless", tier.name, tier.max_vcpu, wall_s, billed_s / 3600 * worker_hour * workers
    )


def batch_sizes() -> list[int]:
    """The sizes the README compares: each tier's upper limit, both routes."""
    return [t.max_input_bytes for t in TIERS] + [t.max_input_bytes for t in EMR_TIERS]
