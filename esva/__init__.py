"""esva: multimodal emotion recognition after the ESVA paper, as a reproducible pipeline.

The library is importable without side effects; it never reads params.yaml or argv.
"""

__version__ = "0.1.0"

LABELS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
"""MER2023's six discrete labels, in the order used for class indices."""
