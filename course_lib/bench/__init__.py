"""Benchmarks (``make bench``): time and peak extra memory of the course's implementations beside
PyTorch's, side by side in one run, printed as ratios and saved (JSON, and a PNG per benchmark)
under ``bench_results/``.

One module per mechanism (``course_lib/bench/<name>.py``) defines ``run(device) -> dict``; the
shared measuring lives here: candidates are timed *interleaved* (one run of each in turn, repeated),
so that a machine that slows down mid-run slows every candidate alike, and reported as medians.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from course_lib.memory import track_live_memory

RESULTS = Path("bench_results")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 9, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in turn ``repeats`` times after ``warmup``."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + repeats):
        for name, call in candidates.items():
            _synchronise(device)
            start = time.perf_counter()
            call()
            _synchronise(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_extra_bytes(call: Callable[[], Any]) -> int:
    """The most bytes that ``call`` keeps alive at once (storages it creates, tracked while live)."""
    with torch.no_grad(), track_live_memory() as memory:
        result = call()
        del result
    return memory.peak_bytes


def save(name: str, results: dict[str, Any]) -> Path:
    """Write ``bench_results/<name>.json`` and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=1))
    return path
