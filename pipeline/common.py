"""What every stage shares: stage reports, the skip-ratio rule, ordered parallel maps, progress."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from esva import __version__
from esva.provenance import atomic_write_json, atomic_write_text

log = logging.getLogger("esva")

T = TypeVar("T")
R = TypeVar("R")


class StageFailed(RuntimeError):
    """A stage lost more clips than its max_skip_ratio allows."""


@dataclass
class StageReport:
    """metrics/<stage>.json: counts, skips by reason, seconds; skips listed in metrics/skips/<stage>.csv."""

    stage: str
    corpus: str = "unknown"
    clips_in: int = 0
    done: int = 0
    resumed: int = 0
    skips: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def skip(self, clip_id: str, path: str, reason: str, detail: str = "") -> None:
        self.skips.append({"clip_id": clip_id, "path": path, "reason": reason, "detail": detail})
        log.warning("skip %s (%s): %s %s", clip_id, path, reason, detail)

    def as_dict(self) -> dict[str, Any]:
        by = Counter(s["reason"] for s in self.skips)
        return {
            "stage": self.stage, "corpus": self.corpus, "clips_in": self.clips_in, "done": self.done,
            "resumed": self.resumed, "skipped": len(self.skips), "skipped_by_reason": dict(sorted(by.items())),
            "skip_ratio": round(len(self.skips) / self.clips_in, 4) if self.clips_in else 0.0,
            "seconds": round(time.perf_counter() - self.started, 2), "code_version": __version__, **self.extra,
        }

    def write(self, metrics_dir: str | Path) -> Path:
        metrics_dir = Path(metrics_dir)
        out = metrics_dir / f"{self.stage}.json"
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["clip_id", "path", "reason", "detail"])
        w.writeheader()
        w.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in self.skips)
        atomic_write_text(metrics_dir / "skips" / f"{self.stage}.csv", buf.getvalue())
        atomic_write_json(out, self.as_dict())  # each file whole or not at all: a killed run never leaves half
        return out

    def check(self, max_skip_ratio: float) -> None:
        """Fail (after the outputs are written) when too many clips were lost, naming them."""
        if self.clips_in and len(self.skips) / self.clips_in > max_skip_ratio:
            names = ", ".join(f"{s['path']} ({s['reason']})" for s in self.skips[:20])
            more = f" and {len(self.skips) - 20} more" if len(self.skips) > 20 else ""
            raise StageFailed(
                f"{self.stage}: {len(self.skips)} of {self.clips_in} clips skipped "
                f"({len(self.skips) / self.clips_in:.1%} > {self.stage}.max_skip_ratio={max_skip_ratio}): {names}{more}. "
                f"Finished clips are kept; see metrics/skips/{self.stage}.csv")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @ or a tab gets a leading `'`
    (names and details come from the user's files, and the skip tables are opened in spreadsheets)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None,
                executor: Executor | None = None) -> Iterator[tuple[T, R | BaseException]]:
    """Like executor.map, in input order, with at most `window` items in flight, and exceptions
    returned as values so one bad clip never stops the others."""
    items = list(items)
    window = window or max(2, 2 * workers)
    own = executor is None
    ex = executor or ThreadPoolExecutor(max_workers=workers)
    try:
        pending: list[tuple[T, Future]] = []
        it = iter(items)
        for item in it:
            pending.append((item, ex.submit(fn, item)))
            if len(pending) >= window:
                break
        while pending:
            item, fut = pending.pop(0)
            try:
                res: R | BaseException = fut.result()
            except Exception as exc:  # a clip's failure is data, not a crash
                res = exc
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(fn, nxt)))
            yield item, res
    finally:
        if own:
            ex.shutdown(wait=True, cancel_futures=True)


def progress(description: str) -> Progress:
    """A rich progress bar with count, clips/s and time left, on stderr (stdout stays for results,
    e.g. `esva predict --json`)."""
    from rich.console import Console

    return Progress(
        TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} clips/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        transient=False, console=Console(stderr=True),
    )


class Rate:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.n = 0

    def tick(self) -> str:
        self.n += 1
        return f"{self.n / max(time.perf_counter() - self.t0, 1e-9):.2f}"

