"""Sliding-window attention against dense masked SDPA and FlexAttention (``make bench BENCH=sliding_window``).

One sequence and one head (B = H = 1), d = 64, float32, Mistral's causal window of 512 keys
(``window=(511, 0)``), L = 1k … 16k. Per L, the three run interleaved, 9 runs each after a warm-up,
and the medians are kept:

* ``dense``: ``F.scaled_dot_product_attention`` with the (L, L) boolean window mask, the mask built
  inside the measured call, as a user of SDPA must;
* ``sliding_window``: ``course_lib.attention.sliding_window_attention`` (no compilation);
* ``flex``: ``torch.compile(flex_attention)`` with a sliding-window block mask made by
  ``create_block_mask(..., B=None, H=None)`` (positions only: B and H given would materialise B·H·L²).
  Compiling (first call) and building the block mask are timed apart and not in the median: a model
  builds the block mask once per length and reuses it in every layer.

Peak extra memory: on the CPU by tracking live storages (``bench.peak_extra_bytes``) for dense and
sliding window, and for all three as the rise of the process's resident high-water mark (the
compiled kernel's buffers are invisible to storage tracking); on CUDA, ``max_memory_allocated``.

The lesson's scaling figure reads the copy shipped in ``course_lib/data/bench/`` (``shipped()``):
after a run, copy ``bench_results/sliding_window.json`` to ``course_lib/data/bench/sliding_window_<cpu|cuda>.json``.
"""

from __future__ import annotations

import ctypes
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from course_lib import bench
from course_lib.attention import dense_window_mask, sliding_window_attention

LENGTHS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIM, WINDOW_KEYS, REPEATS = 64, 512, 9
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "bench"
NAMES = {"dense": "dense masked SDPA", "sliding_window": "sliding_window_attention", "flex": "FlexAttention (compiled)"}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_peak_extra_bytes(call) -> int | None:  # noqa: ANN001
    """How far the process's resident high-water mark rises during ``call`` (Linux only; None elsewhere).
    Freed memory is first handed back to the system (glibc's ``malloc_trim``), so that pages the
    allocator already holds do not hide the call's own; counts whole pages, so it reads a little high."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: pages the allocator holds may hide part of the call's memory
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
        before = _rss_kib("VmRSS")
        with torch.no_grad():
            result = call()
            del result
        return max(0, _rss_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def _cuda_peak_extra_bytes(call, device: torch.device) -> int:  # noqa: ANN001
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        result = call()
        del result
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def _flex(q: torch.Tensor, window_keys: int):  # noqa: ANN202
    """(compiled call, seconds to build the block mask, seconds of the first call), or None without FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    import time

    L = q.shape[-2]

    def in_window(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - FlexAttention's mask_mod signature
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window_keys)

    torch._dynamo.reset()  # one compilation per length, each timed
    start = time.perf_counter()
    block_mask = create_block_mask(in_window, B=None, H=None, Q_LEN=L, KV_LEN=L, device=q.device)
    mask_s = time.perf_counter() - start
    compiled = torch.compile(flex_attention, dynamic=False)
    start = time.perf_counter()
    compiled(q, q, q, block_mask=block_mask)
    compile_s = time.perf_counter() - start
    return (lambda q, k, v: compiled(q, k, v, block_mask=block_mask)), mask_s, compile_s


def run(device: torch.device, lengths: tuple[int, ...] = LENGTHS, repeats: int = REPEATS,
        with_flex: bool = True) -> dict[str, Any]:
    window = (WINDOW_KEYS - 1, 0)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.compile's deprecation notices
        for L in lengths:
            gen = torch.Generator().manual_seed(L)
            q, k, v = (torch.randn(1, 1, L, HEAD_DIM, generator=gen).to(device) for _ in range(3))  # (B, H, L, d)
            calls = {
                "dense": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense_window_mask(L, window, device)),
                "sliding_window": lambda: sliding_window_attention(q, k, v, window),
            }
            row: dict[str, Any] = {"L": L}
            flex = _flex(q, WINDOW_KEYS) if with_flex else None
            if flex is not None:
                flex_call, row["flex_block_mask_s"], row["flex_first_call_s"] = flex
                calls["flex"] = lambda: flex_call(q, k, v)
            with torch.no_grad():
                expected = calls["dense"]()
                row["max_abs_difference"] = {
                    name: (call() - expected).abs().max().item() for name, call in calls.items() if name != "dense"
                }
                del expected
                row["median_s"] = bench.time_interleaved(calls, device, repeats=repeats)
            if device.type == "cuda":
                row["peak_extra_bytes"] = {name: _cuda_peak_extra_bytes(call, device) for name, call in calls.items()}
            else:
                row["peak_extra_bytes"] = {name: bench.peak_extra_bytes(calls[name]) for name in ("dense", "sliding_window")}
                row["rss_peak_extra_bytes"] = {name: rss_peak_extra_bytes(call) for name, call in calls.items()}
            rows.append(row)
            _print_row(row)
    results = {
        "benchmark": "sliding_window",
        "device": bench.device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "shape": f"(B, H, L, d) = (1, 1, L, {HEAD_DIM}), float32",
        "window": f"causal, {WINDOW_KEYS} keys: window=({WINDOW_KEYS - 1}, 0)",
        "repeats": repeats,
        "rows": rows,
    }
    results["goals"] = goals(results)
    for line in results["goals"]["lines"]:
        print(line)
    bench.RESULTS.mkdir(exist_ok=True)
    figure = plot(results)
    figure.savefig(bench.RESULTS / "sliding_window.png", dpi=120)
    print(f"saved {bench.RESULTS / 'sliding_window.png'}")
    return results


def _print_row(row: dict[str, Any]) -> None:
    t, m = row["median_s"], row["peak_extra_bytes"]
    parts = [f"L={row['L']:>6}"]
    for name in t:
        memory = m.get(name)
        parts.append(f"{name} {t[name] * 1e3:9.2f} ms" + (f" {memory / 2**20:8.1f} MiB" if memory is not None else ""))
    parts.append(f"dense/sliding {t['dense'] / t['sliding_window']:5.1f}x")
    if "flex" in t:
        parts.append(f"sliding/flex {t['sliding_window'] / t['flex']:4.2f}x (flex compile {row['flex_first_call_s']:.1f} s)")
    print("  ".join(parts), flush=True)


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's performance goals, at the longest length measured (16k in a full run)."""
    rows = {row["L"]: row for row in results["rows"]}
    last = rows[max(rows)]
    t, m = last["median_s"], last["peak_extra_bytes"]
    out: dict[str, Any] = {
        "L": last["L"],
        "dense_over_sliding_time": t["dense"] / t["sliding_window"],
        "sliding_over_dense_memory": m["sliding_window"] / m["dense"],
    }
    if "flex" in t:
        out["sliding_over_flex_time"] = t["sliding_window"] / t["flex"]
    if last["L"] // 2 in rows:
        out["sliding_growth_last_doubling"] = t["sliding_window"] / rows[last["L"] // 2]["median_s"]["sliding_window"]
    lines = [
        f"at L = {last['L']}: sliding_window_attention {out['dense_over_sliding_time']:.1f}x faster than dense masked "
        f"SDPA (goal >= 8x), {out['sliding_over_dense_memory']:.4f} of its peak extra memory (goal <= 1/16 = 0.0625)",
    ]
    if "sliding_over_flex_time" in out:
        lines.append(f"  {out['sliding_over_flex_time']:.2f}x compiled FlexAttention's median time (goal <= 2x, stretch 1x)")
    if "sliding_growth_last_doubling" in out:
        lines.append(f"  time from L = {last['L'] // 2} to {last['L']} grew {out['sliding_growth_last_doubling']:.2f}x "
                     "(goal 1.7-2.3x: linear)")
    out["lines"] = lines
    return out


def plot(results: dict[str, Any], axes=None):  # noqa: ANN001, ANN201
    """Time and peak extra memory against L, one line per implementation, log-log. Returns the figure."""
    if axes is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(11, 4), layout="constrained")
        axes = figure.subplots(1, 2)
    ax_time, ax_memory = axes
    rows = results["rows"]
    lengths = [row["L"] for row in rows]
    for i, name in enumerate(("dense", "sliding_window", "flex")):
        if name in rows[0]["median_s"]:
            ax_time.loglog(lengths, [row["median_s"][name] * 1e3 for row in rows], "o-", color=f"C{i}", label=NAMES[name])
        memory = [row["peak_extra_bytes"].get(name, (row.get("rss_peak_extra_bytes") or {}).get(name)) for row in rows]
        if all(m for m in memory):
            tracked = name in rows[0]["peak_extra_bytes"]
            label = NAMES[name] + ("" if tracked else " (RSS high-water)")
            ax_memory.loglog(lengths, [b / 2**20 for b in memory], "s-" if tracked else "s--", color=f"C{i}", label=label)
    for ax, unit in ((ax_time, "median time (ms)"), (ax_memory, "peak extra memory (MiB)")):
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(unit)
        ax.set_xticks(lengths, [f"{n // 1024}k" for n in lengths])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    ax_time.set_title(f"{results['window']}, d = {HEAD_DIM}\n{results['device']}", fontsize=9)
    ax_memory.set_title("extra memory of one call", fontsize=9)
    return ax_time.figure


def shipped(device_type: str = "cpu") -> dict[str, Any]:
    """The results shipped with the package for ``device_type`` ("cpu" or "cuda")."""
    path = SHIPPED / f"sliding_window_{device_type}.json"
    return json.loads(path.read_text())
