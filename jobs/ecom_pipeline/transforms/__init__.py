"""Pure Spark transforms (``DataFrame -> DataFrame``): parsing, KPIs, merging a batch into the
curated store.
"""
