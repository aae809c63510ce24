"""Metrics and tables: each metric a pure function."""
