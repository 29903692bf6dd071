"""Adapters: each outside system (S3 or a directory, DynamoDB, the lease lock, Great Expectations,
Spark) behind one small class or function.
"""
