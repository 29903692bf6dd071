"""Operating a deployment: replaying a batch."""
