"""Event-driven e-commerce KPI pipeline: validation and KPI Spark jobs and their shared code."""
