"""Trainable layers on cached features: one idea per file (MSFE, alignment, fusion)."""
