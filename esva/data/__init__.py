"""Manifest schema, dataset adapters and the synthetic corpus generator."""
