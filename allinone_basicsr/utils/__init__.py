"""Helpers that belong to no BasicSR registry (options, experiment lock, resume, checkpoint I/O, metric tables,
complexity, image I/O, runtime probes). Nothing here imports the registry modules above it."""
