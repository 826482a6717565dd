"""How much memory a computation keeps alive at its peak, on any device, measured by tracking live
tensor storages (DESIGN.md §4): every storage an operation creates inside the block is counted from
its creation until it is freed, so a list of tiles counts as much as one tensor of their size.

Process memory (RSS) only rises and the CPU allocator keeps freed pages; counting storages gives
the same number on every run and every device. What existed before the block (the inputs) is not
counted; views and in-place results share their input's storage and add nothing.

    with track_live_memory() as memory:
        out = flash_attention(q, k, v)
    memory.peak_bytes   # the most bytes alive at once inside the block
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveMemory", "track_live_memory"]


@dataclass
class LiveMemory:
    live_bytes: int = 0  # alive now, among the storages created inside the block
    peak_bytes: int = 0  # the most alive at once
    _sizes: dict[int, int] = field(default_factory=dict)  # storage id -> bytes, while alive

    def _created(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata  # the C++ storage: one per allocation, however many views
        if key in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)


class _TrackStorages(TorchDispatchMode):
    def __init__(self, memory: LiveMemory):
        super().__init__()
        self.memory = memory

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        result = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if _has_storage(t)}
        for tensor in tree_flatten(result)[0]:
            if _has_storage(tensor) and tensor.untyped_storage()._cdata not in inputs:
                self.memory._created(tensor.untyped_storage())
        return result


def _has_storage(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type != "meta" and not value.is_sparse


@contextlib.contextmanager
def track_live_memory() -> Iterator[LiveMemory]:
    """Count the bytes of the storages that operations inside the block create, while they live."""
    memory = LiveMemory()
    with _TrackStorages(memory):
        yield memory
