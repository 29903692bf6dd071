"""The one place a SparkSession is created."""

from __future__ import annotations

import os
from dataclasses import replace

from pyspark.sql import SparkSession

from ecom_pipeline.core.settings import SparkSettings


def get_spark(
    app_name: str = "ecom-pipeline",
    settings: SparkSettings | None = None,
    *,
    shuffle_partitions: int | None = None,
) -> SparkSession:
    """Return the process's SparkSession, creating it on first use.

    ``settings`` default to the process environment's (``SparkSettings.from_env``). The master
    comes from spark-submit when there is one, else ``settings.master`` or local mode on every
    core. Timestamps are handled in UTC whatever the machine's zone, so naive input timestamps
    mean UTC and ``order_date`` is the UTC date. ``settings.event_log_dir`` turns on Spark's
    event log there, for profiling (``python -m bench --profile`` reads it).
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = settings or SparkSettings.from_env()
    if shuffle_partitions:
        settings = replace(settings, shuffle_partitions=shuffle_partitions)
    # Python workers must run the same interpreter (and so the same packages) as the driver:
    # Spark reads these from the environment of the JVM it starts.
    os.environ.setdefault("PYSPARK_PYTHON", settings.python)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", settings.python)
    builder = SparkSession.builder.appName(app_name)
    if settings.master or not settings.under_spark_submit:
        builder = builder.master(settings.master or "local[*]")
    if settings.driver_memory:
        builder = builder.config("spark.driver.memory", settings.driver_memory)
    if settings.event_log_dir is not None:
        folder = settings.event_log_dir.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        builder = (
            builder.config("spark.eventLog.enabled", "true")
            .config("spark.eventLog.dir", folder.as_uri())
            # one plain JSON-lines file per application, readable without a zstd codec
            .config("spark.eventLog.compress", "false")
            .config("spark.eventLog.rolling.enabled", "false")
        )
    spark = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.ui.enabled", str(settings.ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel(settings.log_level)
    return spark
