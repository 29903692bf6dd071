"""Size tiers: bigger batches get bigger containers, and Spark stays inside the container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from docs_tables import emr_tier_table_markdown, tier_table_markdown
from ecom_pipeline.core.tiers import (
    ECS_ROUTE,
    EMR_ROUTE,
    EMR_TIERS,
    GIB,
    MIB,
    TIERS,
    BatchTooLargeError,
    choose_route,
    choose_tier,
    is_valid_emr_worker,
    is_valid_fargate_size,
)

SCALING_PAGE = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def test_larger_batches_get_larger_tiers():
    assert choose_tier(0).name == "small"
    assert choose_tier(100 * MIB).name == "small"
    assert choose_tier(1 * GIB).name == "medium"
    assert choose_tier(3 * GIB).name == "large"
    assert choose_tier(20 * GIB).name == "xlarge"
    sizes = [(t.cpu, t.memory_mib) for t in TIERS]
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == len(sizes)


def test_too_large_batch_is_refused_with_the_way_out():
    with pytest.raises(BatchTooLargeError, match=r"tiers\.py"):
        choose_tier(TIERS[-1].max_input_bytes + 1)


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t.name)
def test_every_tier_is_a_fargate_size_and_spark_fits_in_it(tier):
    assert is_valid_fargate_size(tier.cpu, tier.memory_mib)
    # heap plus JVM overhead (10%, at least 384 MiB, Spark's own rule) plus a Python driver
    overhead = max(384, tier.driver_memory_mib // 10) + 512
    assert tier.driver_memory_mib + overhead < tier.memory_mib
    assert 21 <= tier.ephemeral_storage_gib <= 200
    assert tier.as_input()["cpu"] == str(tier.cpu)


def test_the_jvm_heap_follows_the_tier(tmp_path):
    """A fresh job process with the tier's environment gets exactly the tier's heap."""
    tier = TIERS[0]
    script = (
        "import json; from ecom_pipeline.adapters.spark import get_spark; s = get_spark();"
        "rt = s.sparkContext._jvm.java.lang.Runtime.getRuntime();"
        "print(json.dumps({'conf': s.conf.get('spark.driver.memory'), 'max': rt.maxMemory(),"
        " 'partitions': s.conf.get('spark.sql.shuffle.partitions'),"
        " 'master': s.sparkContext.master}))"
    )
    env = {
        **os.environ,
        "SPARK_DRIVER_MEMORY": tier.driver_memory,
        "SPARK_SHUFFLE_PARTITIONS": str(tier.shuffle_partitions),
        "SPARK_MASTER": tier.as_input()["spark_master"],
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["conf"] == tier.driver_memory
    assert seen["partitions"] == str(tier.shuffle_partitions)
    assert seen["master"] == "local[1]"
    # the JVM reports -Xmx give or take alignment and one survivor space
    heap = tier.driver_memory_mib * MIB
    assert 0.85 * heap <= seen["max"] <= 1.01 * heap
    assert seen["max"] < tier.memory_mib * MIB


def test_scaling_page_shows_the_tier_table():
    assert tier_table_markdown() in SCALING_PAGE.read_text(encoding="utf-8")


# --- The EMR Serverless route, above the largest Fargate tier -------------------------------------


def test_batches_above_the_largest_fargate_tier_take_the_emr_route():
    largest = TIERS[-1].max_input_bytes
    assert choose_route(0) == (ECS_ROUTE, TIERS[0])
    assert choose_route(largest) == (ECS_ROUTE, TIERS[-1])
    assert choose_route(largest + 1) == (EMR_ROUTE, EMR_TIERS[0])
    assert choose_route(EMR_TIERS[0].max_input_bytes + 1) == (EMR_ROUTE, EMR_TIERS[1])
    with pytest.raises(BatchTooLargeError, match="emr-xlarge"):
        choose_route(EMR_TIERS[-1].max_input_bytes + 1)
    with pytest.raises(ValueError, match="negative"):
        choose_route(-1)
    # each EMR tier takes more than the one before, starting above Fargate
    limits = [largest] + [t.max_input_bytes for t in EMR_TIERS]
    assert limits == sorted(set(limits))
    assert [t.max_vcpu for t in EMR_TIERS] == sorted({t.max_vcpu for t in EMR_TIERS})


@pytest.mark.parametrize("tier", EMR_TIERS, ids=lambda t: t.name)
def test_every_emr_tier_is_a_valid_worker_and_spark_fills_it(tier):
    assert is_valid_emr_worker(tier.cores, tier.memory_gib, tier.disk_gib)
    conf = tier.spark_conf()
    heap = int(conf["spark.executor.memory"].removesuffix("m"))
    overhead = int(conf["spark.executor.memoryOverhead"].removesuffix("m"))
    # EMR Serverless sizes a worker as heap + overhead: exactly the worker's memory
    assert heap + overhead == tier.memory_gib * 1024
    assert overhead >= max(384, heap // 10)  # Spark's own minimum overhead
    assert conf["spark.driver.memory"] == conf["spark.executor.memory"]
    assert int(conf["spark.dynamicAllocation.maxExecutors"]) == tier.max_executors
    shuffle = conf["spark.emr-serverless.driverEnv.SPARK_SHUFFLE_PARTITIONS"]
    assert int(shuffle) == tier.shuffle_partitions
    parameters = tier.as_input()["spark_submit_parameters"]
    assert parameters.count("--conf ") == len(conf)
    assert not is_valid_emr_worker(tier.cores, tier.memory_gib * 100, tier.disk_gib)


def test_scaling_page_shows_the_emr_tier_table():
    assert emr_tier_table_markdown() in SCALING_PAGE.read_text(encoding="utf-8")
