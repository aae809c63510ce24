"""One clip's decode and face crop in a worker process of `esva featurize`.

This module imports only what the work needs (ffmpeg's wrapper, OpenCV, numpy): a spawned worker starts in
well under a second instead of importing the encoders, torch and the params models. The params come as
plain namespaces (`plain`) for the same reason. Failures come back as (reason, detail) pairs, the skips
`esva decode` and `esva crop` record, so no exception of ours has to cross the process boundary.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

class WorkerFailed(RuntimeError):
    """A worker process died or could not return its clip: not a skip of that clip (`esva featurize` stops)."""


_DETECTORS: dict[tuple[str, str], Any] = {}  # one face detector per worker process and backend


def plain(cfg) -> SimpleNamespace:
    """A params section as a namespace of its values (pickles without the params models)."""
    return SimpleNamespace(**cfg.model_dump())


def init() -> None:
    """Each worker computes on one thread: the workers share the cores with each other and with the encoders."""
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch when the face_alignment backend imports it
    import cv2

    cv2.setNumThreads(1)


def decode_and_crop(task: tuple) -> dict:
    """(video path, decode params, crop params, detector backend, whether to crop) -> {decoded, decode_skip,
    crop, crop_skip, seconds}: the decoded clip (esva.media.decode.Decoded) and its crops as `crop_clip`
    returns them, or the skip of the step that failed."""
    from esva.media.decode import decode_clip
    from esva.media.faces import NoFace, crop_clip, make_detector
    from esva.media.ffmpeg import MediaError

    path, dcfg, ccfg, backend, want_crop = task
    t0 = time.perf_counter()
    out: dict[str, Any] = {"decoded": None, "decode_skip": None, "crop": None, "crop_skip": None}
    try:
        out["decoded"] = decode_clip(path, dcfg)
    except MediaError as exc:
        out["decode_skip"] = (exc.reason, exc.detail)
    except Exception as exc:  # noqa: BLE001 - one bad clip is a skip, as in `esva decode`
        out["decode_skip"] = ("decode_error", f"{exc.__class__.__name__}: {exc}")
    if out["decoded"] is not None and want_crop:
        try:
            key = (backend, ccfg.device)
            if key not in _DETECTORS:
                _DETECTORS[key] = make_detector(backend, ccfg.device)
            res = out["decoded"]
            out["crop"] = crop_clip(_DETECTORS[key], res.frames, ccfg, res.meta.get("fps"))
        except NoFace as exc:
            out["crop_skip"] = (exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - as `esva crop`
            out["crop_skip"] = ("crop_error", f"{exc.__class__.__name__}: {exc}")
    out["seconds"] = time.perf_counter() - t0
    return out
