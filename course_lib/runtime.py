"""Where the course computes, how it draws random inputs, and how close is close enough.

One place for the three decisions every reference and every check shares:

* ``device()`` — CUDA when there is a GPU, otherwise the CPU. Apple's MPS is used only when asked
  for (it has no float64, which the checks use). ``COURSE_DEVICE=cpu|cuda|cuda:1|mps`` overrides.
* ``randn(...)`` — inputs are drawn from a seeded *CPU* generator and then moved, so the same seed
  gives the same numbers on every machine and every device.
* ``tolerance(dtype, device)`` — how far two results may differ and still be "the same".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DEVICE_ENV_VAR = "COURSE_DEVICE"


def device() -> torch.device:
    """The device the course runs on: ``$COURSE_DEVICE`` if set, else CUDA if present, else CPU."""
    requested = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if requested:
        try:
            chosen = torch.device(requested)
        except RuntimeError as error:
            raise ValueError(
                f"{DEVICE_ENV_VAR}={requested!r} is not a device name; use cpu, cuda, cuda:N or mps"
            ) from error
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{DEVICE_ENV_VAR}={requested!r} but this machine has no CUDA GPU")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"{DEVICE_ENV_VAR}={requested!r} but MPS is not available here")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the same numbers on every machine."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def randn(
    *shape: int,
    gen: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal numbers drawn on the CPU from ``gen`` (in float64), then cast and moved."""
    values = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return values.to(dtype=dtype, device=device if device is not None else "cpu")


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (CPU and every GPU) for a reproducible lesson run."""
    torch.manual_seed(int(seed))


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def close(self, actual: torch.Tensor, expected: torch.Tensor) -> bool:
        return torch.allclose(actual, expected, rtol=self.rtol, atol=self.atol, equal_nan=True)


# Chosen so that a correct implementation written in any reasonable way (einsum, float64 inside,
# a different masking) passes, and every known mistake in the checks fails by a wide margin.
_TOLERANCES = {
    torch.float64: Tolerance(rtol=1e-7, atol=1e-9),
    torch.float32: Tolerance(rtol=1e-4, atol=1e-5),
    torch.float16: Tolerance(rtol=5e-3, atol=5e-3),
    torch.bfloat16: Tolerance(rtol=3e-2, atol=3e-2),
}
# GPU kernels reorder sums (and may use reduced-precision matmul paths): looser float32.
_GPU_FLOAT32 = Tolerance(rtol=1e-3, atol=1e-4)


def tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> Tolerance:
    """How far a result in ``dtype`` on ``device`` may be from the reference and still pass."""
    if dtype not in _TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype}; use one of {list(_TOLERANCES)}")
    if torch.device(device).type != "cpu" and dtype == torch.float32:
        return _GPU_FLOAT32
    return _TOLERANCES[dtype]
