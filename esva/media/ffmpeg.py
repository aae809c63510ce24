"""Decoding and probing through ffmpeg-python, never through a shell.

The binary is the system `ffmpeg` when one is on PATH, else the static build that ships inside the
imageio-ffmpeg wheel (`ESVA_FFMPEG` overrides both). ffprobe is not needed: streams are read off
`ffmpeg -i`'s banner, which every ffmpeg build prints.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import ffmpeg
import numpy as np


class MediaError(RuntimeError):
    """A file ffmpeg cannot use. `reason` is a short machine-readable skip reason."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail.strip()
        super().__init__(f"{self.path}: {reason}" + (f" ({self.detail})" if self.detail else ""))


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    env = os.environ.get("ESVA_FFMPEG")
    if env:
        return env
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=1)
def ffmpeg_identity() -> str:
    """Which ffmpeg decodes, by the sha256 of its binary (not its path, which differs between clones):
    part of a decoded clip's provenance."""
    from esva.provenance import file_digest

    exe = ffmpeg_binary()
    path = shutil.which(exe) or exe
    try:
        return file_digest(path, "full")
    except OSError:
        return path


@dataclass
class VideoStream:
    width: int
    height: int
    fps: float | None
    rotation: float = 0.0

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after the rotation that ffmpeg's autorotate applies."""
        if int(round(abs(self.rotation))) % 180 == 90:
            return self.height, self.width
        return self.width, self.height


@dataclass
class AudioStream:
    sample_rate: int
    channels: str


@dataclass
class Probe:
    path: str
    duration: float | None
    video: VideoStream | None
    audio: AudioStream | None
    streams: list[str] = field(default_factory=list)


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio): (.*)$")
_SIZE = re.compile(r"(?<![\dx])(\d{2,5})x(\d{2,5})(?![\dx])")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_ROT = re.compile(r"rotation of (-?[\d.]+) degrees")
_RATE = re.compile(r"(\d+) Hz, ([^,]+)")


def _tail(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def local_input(path: str | Path) -> str:
    """How a file is named to ffmpeg: `file:` and its absolute path, so that no file name is ever read as
    an option (a leading `-`) or as another protocol (`concat:`, `http:`, `subfile,`...)."""
    return "file:" + os.path.abspath(str(path))


def probe(path: str | Path, timeout: float = 60.0) -> Probe:
    """Read duration and the first video/audio streams. Raises MediaError(reason='unreadable')."""
    path = str(path)
    if not os.path.exists(path):
        raise MediaError(path, "missing_file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty_file", "0 bytes")
    try:
        proc = subprocess.run([ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", local_input(path)],
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError(path, "timeout", f"probe took longer than {timeout}s") from None
    text = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        raise MediaError(path, "unreadable", _tail(text))
    dur = None
    m = _DURATION.search(text)
    if m:
        dur = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    video = audio = None
    streams: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Output #") or line.startswith("At least one output"):
            break
        sm = _STREAM.match(line)
        if not sm:
            continue
        kind, desc = sm.groups()
        streams.append(kind.lower())
        if kind == "Video" and video is None:
            if "attached pic" in line:  # cover art in audio files is not a video
                continue
            size = _SIZE.search(desc)
            if not size:
                continue
            fps = None
            fm = _FPS.search(desc)
            if fm:
                fps = float(fm.group(1)) * (1000 if fm.group(2) else 1)
            rot = 0.0
            for follow in lines[i + 1: i + 12]:
                if _STREAM.match(follow):
                    break
                rm = _ROT.search(follow)
                if rm:
                    rot = float(rm.group(1))
            video = VideoStream(int(size.group(1)), int(size.group(2)), fps, rot)
        elif kind == "Audio" and audio is None:
            am = _RATE.search(desc)
            if am:
                audio = AudioStream(int(am.group(1)), am.group(2).strip())
    return Probe(path, dur, video, audio, streams)


def _run(stream, path: str, timeout: float) -> bytes:
    args = stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error").compile(cmd=ffmpeg_binary())
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError(path, "timeout", f"decoding took longer than {timeout}s") from None
    if proc.returncode != 0:
        raise MediaError(path, "decode_error", _tail(proc.stderr.decode("utf-8", "replace")))
    return proc.stdout


def decode_audio(path: str | Path, sample_rate: int = 16000, max_seconds: float | None = None,
                 timeout: float = 600.0) -> np.ndarray:
    """Mono float32 audio at `sample_rate` (all channels averaged by ffmpeg's downmix)."""
    path = str(path)
    kw = {"t": max_seconds} if max_seconds else {}
    stream = ffmpeg.input(local_input(path), **kw).output("pipe:", format="f32le", acodec="pcm_f32le", ac=1,
                                             ar=sample_rate, vn=None, map="0:a:0")
    raw = _run(stream, path, timeout)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=True)


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Scale (width, height) so the longer side is at most max_side; both even (yuv-safe)."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def decode_video(path: str | Path, fps: float, max_side: int, info: VideoStream,
                 max_seconds: float | None = None, timeout: float = 600.0) -> np.ndarray:
    """RGB uint8 frames (N, H, W, 3) resampled to a constant `fps` (variable frame rate is fine),
    upright (rotation metadata applied), longer side at most `max_side`."""
    path = str(path)
    w, h = target_size(*info.display_size, max_side)
    kw = {"t": max_seconds} if max_seconds else {}
    stream = (
        ffmpeg.input(local_input(path), **kw)
        .video.filter("fps", fps=fps)
        .filter("scale", w, h, flags="area")
        .filter("setsar", 1)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
    )
    raw = _run(stream, path, timeout)
    frame_bytes = w * h * 3
    if len(raw) % frame_bytes:
        raise MediaError(path, "decode_error", f"{len(raw)} bytes is not a whole number of {w}x{h} frames")
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3).copy()
