"""The read side: KPI queries, text tables, the dashboard and the Data Docs index."""
