"""The container tasks: validate, compute-kpis and move-batch, each a thin read -> transform ->
write main.
"""
