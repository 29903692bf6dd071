"""The benchmark: the pipeline's Spark jobs against DuckDB and pandas on the same CSV files."""
