"""Local emulation: moto's server with the stack's resources, the ECS task stand-in, run-local and
the sample generator.
"""
