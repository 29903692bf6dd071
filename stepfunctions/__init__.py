"""The state machine definition (pipeline.asl.json), shipped in the package for run-local."""
