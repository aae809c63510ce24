"""One clip from a media file to arrays: 16 kHz mono audio and RGB frames at a fixed rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esva.media.ffmpeg import MediaError, decode_audio, decode_video, probe


@dataclass
class Decoded:
    audio: np.ndarray  # (S,) float32, mono, at sample_rate
    frames: np.ndarray  # (N, H, W, 3) uint8
    meta: dict[str, Any] = field(default_factory=dict)


def decode_clip(path: str, cfg) -> Decoded:
    """Decode per `cfg` (a DecodeConfig). Raises MediaError with a short `reason` for a skip:
    empty_file, unreadable, no_audio_stream, no_video_stream, too_short, decode_error, timeout."""
    info = probe(path, timeout=min(cfg.timeout_s, 60.0))
    notes: list[str] = []
    if info.video is None and cfg.require_video:
        raise MediaError(path, "no_video_stream", f"streams: {info.streams or 'none'}")
    if info.audio is None and cfg.require_audio:
        raise MediaError(path, "no_audio_stream", f"streams: {info.streams or 'none'}")
    if info.duration is not None and info.duration < cfg.min_seconds:
        raise MediaError(path, "too_short", f"{info.duration:.3f}s < decode.min_seconds={cfg.min_seconds}")
    limit = cfg.max_seconds  # always bounded, also when the container gives no duration
    if info.duration is not None and info.duration > cfg.max_seconds:
        notes.append(f"truncated from {info.duration:.1f}s to decode.max_seconds={cfg.max_seconds}")
    audio = np.zeros(0, np.float32)
    if info.audio is not None:
        audio = decode_audio(path, cfg.sample_rate, limit, cfg.timeout_s)
        if len(audio) == 0 and cfg.require_audio:
            raise MediaError(path, "decode_error", "the audio stream decoded to 0 samples")
    else:
        notes.append("no audio stream")
    frames = np.zeros((0, 2, 2, 3), np.uint8)
    if info.video is not None:
        frames = decode_video(path, cfg.fps, cfg.max_side, info.video, limit, cfg.timeout_s)
        if len(frames) == 0 and cfg.require_video:
            raise MediaError(path, "decode_error", "the video stream decoded to 0 frames")
    else:
        notes.append("no video stream")
    seconds = max(len(audio) / cfg.sample_rate, len(frames) / cfg.fps)
    if seconds < cfg.min_seconds:
        raise MediaError(path, "too_short", f"decoded {seconds:.3f}s < decode.min_seconds={cfg.min_seconds}")
    if info.audio is not None and np.isnan(audio).any():
        raise MediaError(path, "decode_error", "audio contains NaN")
    meta = {
        "fps": cfg.fps, "sample_rate": cfg.sample_rate, "n_frames": int(len(frames)), "n_samples": int(len(audio)),
        "height": int(frames.shape[1]), "width": int(frames.shape[2]), "duration_s": round(seconds, 4),
        "src_duration_s": info.duration, "src_fps": info.video.fps if info.video else None,
        "src_size": list(info.video.display_size) if info.video else None,
        "rotation": info.video.rotation if info.video else None,
        "src_sample_rate": info.audio.sample_rate if info.audio else None,
        "src_channels": info.audio.channels if info.audio else None,
        "has_audio": info.audio is not None, "has_video": info.video is not None, "notes": notes,
    }
    return Decoded(audio, frames, meta)
