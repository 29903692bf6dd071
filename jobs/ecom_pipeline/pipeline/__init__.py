"""The deployed pipeline's definition: the state machine, the EMR Serverless job run, costs by
batch size.
"""
