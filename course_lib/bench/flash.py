"""FlashAttention against naive attention and PyTorch's SDPA: time, TFLOP/s and peak extra memory.

Candidates, side by side in one run (forward pass, no gradients):

* ``naive`` — softmax(Q Kᵀ · scale) V with the (L, S) matrix built;
* ``flash (PyTorch tiles)`` — course_lib's tiled forward (``flash._forward_torch``);
* ``flash (Triton)`` — course_lib's Triton kernel (CUDA, compute capability ≥ 8.0, Triton installed);
* ``SDPA`` — PyTorch's own, with the backend pinned on CUDA (``sdpa <FLASH_ATTENTION|EFFICIENT_ATTENTION|
  CUDNN_ATTENTION>``), its default on the CPU.

TFLOP/s counts 4·L·S·d·heads·batch for the forward, halved for causal. Peak extra memory: on the
CPU the most bytes alive at once (tracked storages, ``bench.peak_extra_bytes``), on CUDA the rise of
``max_memory_allocated``. On CUDA a second table times the kernel's sliding window (W - 1, 0) against
compiled FlexAttention with the same window; and a training step — forward and backward — of
``flash_attention`` (the Triton kernels on a capable GPU) against SDPA's backends.

Sizes from the environment (defaults in brackets, CPU | CUDA):
``FLASH_BENCH_LENGTHS`` [512,1024,2048,4096 | 512,...,16384], ``FLASH_BENCH_MEMORY_LENGTHS``
[1024,...,16384 | none], ``FLASH_BENCH_BATCH`` [1 | 4], ``FLASH_BENCH_HEADS`` [8 | 16],
``FLASH_BENCH_DIM`` [64], ``FLASH_BENCH_DTYPES`` [float32 | float16,bfloat16],
``FLASH_BENCH_WINDOW_LENGTHS`` [none | 16384,65536], ``FLASH_BENCH_WINDOWS`` [512,4096],
``FLASH_BENCH_TRAINING_LENGTHS`` [none | 4096,16384] (on the CPU too, when given).
Results: ``bench_results/flash.json`` and ``flash.png``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Callable
from typing import Any

import torch

from course_lib import bench
from course_lib.attention import flash, flash_triton

_CPU = {"lengths": "512,1024,2048,4096", "memory_lengths": "1024,2048,4096,8192,16384", "batch": "1",
        "heads": "8", "dim": "64", "dtypes": "float32", "window_lengths": "", "windows": "512,4096",
        "training_lengths": ""}
_CUDA = {"lengths": "512,1024,2048,4096,8192,16384", "memory_lengths": "", "batch": "4", "heads": "16",
         "dim": "64", "dtypes": "float16,bfloat16", "window_lengths": "16384,65536", "windows": "512,4096",
         "training_lengths": "4096,16384"}
NAIVE_MAX_BYTES = 24 << 30  # naive attention is skipped where its scores alone would pass this
TILED_MAX_LENGTH_CUDA = 4096  # the PyTorch tiles launch ~10 small kernels per tile: slow past this on a GPU


def _setting(name: str, device: torch.device) -> str:
    defaults = _CUDA if device.type == "cuda" else _CPU
    return os.environ.get(f"FLASH_BENCH_{name.upper()}", defaults[name])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    if is_causal:
        L, S = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=q.device).tril(), -math.inf)
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def _candidates(q, k, v, is_causal: bool, device: torch.device) -> dict[str, Callable[[], Any]]:  # noqa: ANN001
    B, H, L, d = q.shape
    scale = 1.0 / math.sqrt(d)
    found: dict[str, Callable[[], Any]] = {}
    if B * H * L * L * 4 <= NAIVE_MAX_BYTES:
        found["naive"] = lambda: naive_attention(q, k, v, is_causal)
    if device.type != "cuda" or L <= TILED_MAX_LENGTH_CUDA:
        found["flash (PyTorch tiles)"] = lambda: flash._forward_torch(q, k, v, is_causal, scale, flash.DEFAULT_BLOCK_SIZE)
    if flash.triton_usable(q):
        found["flash (Triton)"] = lambda: flash_triton.flash_forward(q, k, v, is_causal=is_causal, scale=scale)
    return {**found, **_sdpa_candidates(q, k, v, is_causal, device)}


def _sdpa_candidates(q, k, v, is_causal: bool, device: torch.device) -> dict[str, Callable[[], Any]]:  # noqa: ANN001
    """PyTorch's SDPA: each CUDA backend pinned, or the CPU's default."""
    if device.type != "cuda":
        return {"sdpa (default)": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    found = {}
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        def pinned(backend=getattr(SDPBackend, backend)):  # noqa: ANN001, ANN202
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

        found[f"sdpa {backend}"] = pinned
    return found


def _cuda_peak_extra(call: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        result = call()
        torch.cuda.synchronize(device)
        del result
    return torch.cuda.max_memory_allocated(device) - before


def _measure(candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
             training: bool = False) -> dict[str, dict]:
    """Per candidate: seconds, peak extra bytes, or the error that stopped it (e.g. out of memory).
    ``training``: the calls take gradients themselves (no ``no_grad``, no memory measured)."""
    results: dict[str, dict] = {}
    working = {}
    grad_mode = contextlib.nullcontext if training else torch.no_grad
    for name, call in candidates.items():
        try:
            with grad_mode():
                call()  # warm-up and compile
            extra = _cuda_peak_extra(call, device) if device.type == "cuda" and not training else None
            working[name] = call
            results[name] = {"extra_bytes": extra}
        except Exception as error:  # noqa: BLE001 - an out-of-memory or unsupported backend is a result
            results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    with grad_mode():
        times = bench.time_interleaved(working, device, repeats=repeats, warmup=1)
    for name, seconds in times.items():
        results[name]["seconds"] = seconds
    return results


def _flops(B: int, H: int, L: int, S: int, d: int, is_causal: bool) -> float:
    return 4.0 * B * H * L * S * d / (2.0 if is_causal else 1.0)


def _timing_table(device: torch.device) -> list[dict]:
    B, H, d = (int(_setting(n, device)) for n in ("batch", "heads", "dim"))
    rows = []
    for dtype_name in _setting("dtypes", device).split(","):
        dtype = getattr(torch, dtype_name.strip())
        for L in _ints(_setting("lengths", device)):
            gen = torch.Generator().manual_seed(L)
            q, k, v = (torch.randn(B, H, L, d, generator=gen).to(device, dtype) for _ in range(3))
            for is_causal in (False, True):
                repeats = 9 if L <= 2048 else 5 if L <= 8192 else 3
                measured = _measure(_candidates(q, k, v, is_causal, device), device, repeats)
                for name, result in measured.items():
                    row = {"dtype": dtype_name, "L": L, "causal": is_causal, "candidate": name, **result}
                    if "seconds" in result:
                        row["tflops"] = _flops(B, H, L, L, d, is_causal) / result["seconds"] / 1e12
                    rows.append(row)
                    _print_row(row)
            del q, k, v
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _memory_table(device: torch.device) -> list[dict]:
    """CPU: the peak extra bytes of naive and tiled attention, B = H = 1, d = 64, float32."""
    rows = []
    d = int(_setting("dim", device))
    for L in _ints(_setting("memory_lengths", device)):
        gen = torch.Generator().manual_seed(L)
        q, k, v = (torch.randn(1, 1, L, d, generator=gen).to(device) for _ in range(3))
        flash_bytes = bench.peak_extra_bytes(lambda: flash._forward_torch(q, k, v, False, 1 / math.sqrt(d), 128))
        naive_bytes = bench.peak_extra_bytes(lambda: naive_attention(q, k, v)) if L <= 8192 else None
        rows.append({"L": L, "flash_bytes": flash_bytes, "naive_bytes": naive_bytes})
        print(f"  memory L={L:6d}: flash {flash_bytes / 2**20:8.2f} MiB   naive "
              + (f"{naive_bytes / 2**20:8.1f} MiB" if naive_bytes else "   (skipped)"), flush=True)
    return rows


def _window_table(device: torch.device) -> list[dict]:
    """CUDA: the Triton kernel's window (W - 1, 0) against compiled FlexAttention, B = 1, H = 16, fp16."""
    lengths = _ints(_setting("window_lengths", device))
    if device.type != "cuda" or not lengths or not flash_triton.available():
        return []
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention)
    rows = []
    for L in lengths:
        q, k, v = (torch.randn(1, 16, L, 64, device=device, dtype=torch.float16) for _ in range(3))
        for W in _ints(_setting("windows", device)):
            def in_window(b, h, q_idx, kv_idx, W=W):  # noqa: ANN001, ANN202
                return (kv_idx <= q_idx) & (q_idx - kv_idx < W)

            try:
                block_mask = create_block_mask(in_window, B=None, H=None, Q_LEN=L, KV_LEN=L, device=device)
                candidates = {
                    "flash (Triton) window": lambda W=W: flash_triton.flash_forward(q, k, v, window=(W - 1, 0)),
                    "flex_attention (compiled)": lambda bm=block_mask: compiled(q, k, v, block_mask=bm),
                }
                measured = _measure(candidates, device, repeats=9)
            except Exception as error:  # noqa: BLE001
                measured = {"flex_attention (compiled)": {"error": f"{type(error).__name__}: {error}"[:200]}}
            for name, result in measured.items():
                row = {"L": L, "W": W, "candidate": name, **result}
                rows.append(row)
                print(f"  window L={L:6d} W={W:5d} {name:28s} "
                      + (f"{result['seconds'] * 1e3:9.3f} ms" if "seconds" in result else result.get("error", "")),
                      flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def _training_table(device: torch.device) -> list[dict]:
    """One forward and backward of flash_attention (Triton both ways on a capable GPU, else the PyTorch
    tiles) against SDPA's backends (pinned on CUDA, its default on the CPU)."""
    lengths = _ints(_setting("training_lengths", device))
    B, H, d = (int(_setting(n, device)) for n in ("batch", "heads", "dim"))
    rows = []
    for dtype_name in _setting("dtypes", device).split(",") if lengths else ():
        dtype = getattr(torch, dtype_name.strip())
        for L in lengths:
            q, k, v = (torch.randn(B, H, L, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            grad_out = torch.randn_like(q)
            for is_causal in (False, True):
                candidates = {
                    f"flash ({'Triton' if flash.triton_usable(q) else 'PyTorch tiles'}) fwd+bwd":
                        lambda c=is_causal: flash.flash_attention(q, k, v, is_causal=c),
                    **{f"{name} fwd+bwd": sdpa for name, sdpa in _sdpa_candidates(q, k, v, is_causal, device).items()},
                }
                steps = {name: lambda attend=attend: torch.autograd.grad(attend(), (q, k, v), grad_out)
                         for name, attend in candidates.items()}
                for name, result in _measure(steps, device, repeats=5, training=True).items():
                    row = {"dtype": dtype_name, "L": L, "causal": is_causal, "candidate": name, **result}
                    rows.append(row)
                    print(f"  training {dtype_name:9s} L={L:6d} causal={is_causal!s:5s} {name:30s} "
                          + (f"{result['seconds'] * 1e3:9.2f} ms" if "seconds" in result else result["error"]),
                          flush=True)
            del q, k, v, grad_out
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _print_row(row: dict) -> None:
    if "seconds" in row:
        extra = row.get("extra_bytes")
        print(f"  {row['dtype']:9s} L={row['L']:6d} causal={row['causal']!s:5s} {row['candidate']:28s} "
              f"{row['seconds'] * 1e3:10.2f} ms {row['tflops']:8.2f} TFLOP/s"
              + (f" {extra / 2**20:10.1f} MiB extra" if extra is not None else ""), flush=True)
    else:
        print(f"  {row['dtype']:9s} L={row['L']:6d} causal={row['causal']!s:5s} {row['candidate']:28s} "
              f"{row['error']}", flush=True)


def run(device: torch.device) -> dict:
    results: dict[str, Any] = {
        "device": bench.device_name(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "settings": {name: _setting(name, device) for name in _CPU},
    }
    results["timing"] = _timing_table(device)
    results["memory"] = _memory_table(device)
    results["window"] = _window_table(device)
    results["training"] = _training_table(device)
    results["summary"] = summarise(results)
    for line in results["summary"]:
        print(line)
    plot(results, bench.RESULTS / "flash.png")
    return results


def _triton_version() -> str | None:
    if not flash_triton.available():
        return None
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # noqa: BLE001
        return None


def summarise(results: dict) -> list[str]:
    """The numbers the issue's performance goals name, as sentences."""
    lines = []
    memory = [r for r in results.get("memory", []) if r["flash_bytes"]]
    if len(memory) >= 2:
        first, last = memory[0], memory[-1]
        slope = math.log(last["flash_bytes"] / first["flash_bytes"]) / math.log(last["L"] / first["L"])
        lines.append(f"flash extra memory: log-log slope {slope:.2f} over L = {first['L']} … {last['L']}")
        for row in memory:
            if row["naive_bytes"]:
                lines.append(f"  L = {row['L']}: naive / flash extra memory = {row['naive_bytes'] / row['flash_bytes']:.0f}×")
    timing = results.get("timing", [])
    keys = sorted({(r["dtype"], r["L"], r["causal"]) for r in timing})
    for dtype, L, causal in keys:
        by = {r["candidate"]: r for r in timing if (r["dtype"], r["L"], r["causal"]) == (dtype, L, causal)
              and "seconds" in r}
        base = by.get("sdpa CUDNN_ATTENTION") or by.get("sdpa (default)")
        parts = [f"{name} {r['seconds'] / base['seconds']:.2f}×" for name, r in by.items()
                 if base is not None and r is not base]
        if parts:
            lines.append(f"{dtype} L={L} causal={causal}: time / {'cuDNN' if 'sdpa CUDNN_ATTENTION' in by else 'SDPA'}: "
                         + ", ".join(parts))
    training = results.get("training", [])
    for dtype, L, causal in sorted({(r["dtype"], r["L"], r["causal"]) for r in training}):
        by = {r["candidate"]: r for r in training if (r["dtype"], r["L"], r["causal"]) == (dtype, L, causal)
              and "seconds" in r}
        base = by.get("sdpa CUDNN_ATTENTION fwd+bwd") or by.get("sdpa (default) fwd+bwd")
        parts = [f"{name} {r['seconds'] / base['seconds']:.2f}×" for name, r in by.items() if base and r is not base]
        if parts:
            lines.append(f"training {dtype} L={L} causal={causal}: time / "
                         f"{'cuDNN' if 'sdpa CUDNN_ATTENTION fwd+bwd' in by else 'SDPA'} fwd+bwd: " + ", ".join(parts))
    return lines


def plot(results: dict, path) -> None:  # noqa: ANN001
    """Time per L (and memory per L, where measured) on log-log axes, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    timing = [r for r in results.get("timing", []) if "seconds" in r and not r["causal"]]
    dtype = timing[0]["dtype"] if timing else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for name in dict.fromkeys(r["candidate"] for r in timing):
        rows = [r for r in timing if r["candidate"] == name and r["dtype"] == dtype]
        axes[0].loglog([r["L"] for r in rows], [r["seconds"] * 1e3 for r in rows], "o-", label=name)
    axes[0].set(xlabel="L = S", ylabel="ms per forward", title=f"time ({dtype}, not causal)")
    axes[0].set_xscale("log", base=2)
    axes[0].legend(fontsize=8)
    memory = results.get("memory") or []
    if memory:
        axes[1].loglog([r["L"] for r in memory], [r["flash_bytes"] / 2**20 for r in memory], "o-", label="flash (tiles)")
        naive = [r for r in memory if r["naive_bytes"]]
        axes[1].loglog([r["L"] for r in naive], [r["naive_bytes"] / 2**20 for r in naive], "s-", label="naive")
        axes[1].set(title="peak extra memory (B = H = 1, d = 64)")
    else:
        for name in dict.fromkeys(r["candidate"] for r in timing):
            rows = [r for r in timing if r["candidate"] == name and r["dtype"] == dtype and r.get("extra_bytes")]
            if rows:
                axes[1].loglog([r["L"] for r in rows], [r["extra_bytes"] / 2**20 for r in rows], "o-", label=name)
        axes[1].set(title="peak extra memory")
    axes[1].set(xlabel="L = S", ylabel="MiB")
    axes[1].set_xscale("log", base=2)
    axes[1].legend(fontsize=8)
    fig.suptitle(results["device"])
    path.parent.mkdir(exist_ok=True, parents=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
