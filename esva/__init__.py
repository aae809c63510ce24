"""esva: multimodal emotion recognition after the ESVA paper, as a reproducible pipeline.

The library is importable without side effects; it never reads params.yaml or argv.
"""

__version__ = "0.1.0"

LABELS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
"""MER2023's six discrete labels, in the order used for class indices."""

MERR_LABELS: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "worried", "surprise", "fear", "contempt", "doubt")
"""MERR's nine labels (Emotion-LLaMA), spelled and ordered as its [emotion] instruction lists them."""

ALL_LABELS: tuple[str, ...] = LABELS + ("fear", "contempt", "doubt")
"""Every label a supported corpus uses: class indices follow this order (MER2023's six first)."""


def vocabulary(labels) -> tuple[str, ...]:
    """The labels a run trains on: those that occur in `labels` (its training rows), in ALL_LABELS' order.
    Stage 1's classes and stage 2's instruction list follow it, so a MERR run has nine and MER2023 six."""
    seen = {str(x) for x in labels if isinstance(x, str) and x}
    unknown = sorted(seen - set(ALL_LABELS))
    if unknown:
        raise ValueError(f"labels outside every supported label set: {unknown} (known: {list(ALL_LABELS)})")
    return tuple(lab for lab in ALL_LABELS if lab in seen)


def label_set_of(gold) -> tuple[str, ...]:
    """The label set a split is scored on: MER2023's six when its gold labels are all among them (the
    official rule: any other answer is wrong), else the supported labels it uses."""
    seen = {str(x) for x in gold if isinstance(x, str) and x}
    return LABELS if seen <= set(LABELS) else vocabulary(seen)
