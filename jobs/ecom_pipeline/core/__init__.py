"""The pipeline's core: the data contract, size tiers, batch planning, settings and logs.

Pure Python with no AWS SDK or Spark import: the trigger Lambda ships this folder as it is.
"""
