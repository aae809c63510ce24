"""Thin stages: typed config in, library calls, declared outputs out. `run(...)` is what tests call."""
