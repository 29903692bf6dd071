"""The one place a SparkSession is created."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

DEFAULT_SHUFFLE_PARTITIONS = 8


def get_spark(
    app_name: str = "ecom-pipeline",
    *,
    driver_memory: str | None = None,
    shuffle_partitions: int | None = None,
) -> SparkSession:
    """Return the process's SparkSession, creating it on first use.

    The master comes from spark-submit when there is one (``spark.master`` already set), else
    ``SPARK_MASTER`` or local mode on every core. Timestamps are handled in UTC whatever the
    machine's zone, so naive input timestamps mean UTC and ``order_date`` is the UTC date.
    ``SPARK_EVENT_LOG_DIR`` (a local folder) turns on Spark's event log there, for profiling
    (``python -m bench --profile`` reads it).
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Python workers must run the same interpreter (and so the same packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    # spark-submit starts the driver with PYSPARK_GATEWAY_PORT set and its own --master.
    if "SPARK_MASTER" in os.environ or "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(os.environ.get("SPARK_MASTER", "local[*]"))
    memory = driver_memory or os.environ.get("SPARK_DRIVER_MEMORY")
    if memory:
        builder = builder.config("spark.driver.memory", memory)
    event_log = os.environ.get("SPARK_EVENT_LOG_DIR")
    if event_log:
        folder = Path(event_log).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        builder = (
            builder.config("spark.eventLog.enabled", "true")
            .config("spark.eventLog.dir", folder.as_uri())
            # one plain JSON-lines file per application, readable without a zstd codec
            .config("spark.eventLog.compress", "false")
            .config("spark.eventLog.rolling.enabled", "false")
        )
    partitions = shuffle_partitions or int(
        os.environ.get("SPARK_SHUFFLE_PARTITIONS", DEFAULT_SHUFFLE_PARTITIONS)
    )
    spark = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.ui.enabled", os.environ.get("SPARK_UI_ENABLED", "false"))
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "ERROR"))
    return spark
