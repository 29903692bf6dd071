"""The jobs' entry point for ``spark-submit``: the same command line as ``ecom-pipeline``.

spark-submit runs a Python *file*, not a console script, so this file hands its arguments to
``ecom_pipeline.cli.main`` and exits with its code (spark-submit passes a non-zero code on, so
a cluster manager, EMR Serverless included, sees a rejected batch as a failed run)::

    spark-submit --master spark://HOST:7077 jobs/spark_driver.py validate --batch-id B --dataset D
    spark-submit --master spark://HOST:7077 jobs/spark_driver.py compute-kpis --batch-id B

The master, cores and memory come from spark-submit; ``adapters.spark.get_spark`` keeps them
(it only picks a master itself outside spark-submit, or when ``SPARK_MASTER`` is set).
"""

from __future__ import annotations

import sys

from ecom_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
