"""Built models kept for reuse, bounded by the memory their tensors take rather than by count.

A quantized model's size is not known when it is made: the simulated path builds its dequantized
weights at the first forward pass. So sizes are measured again whenever the cache is asked to
make room, and the least recently used models go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import nn


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensor storages of ``obj`` (a module, or a model or pipeline holding
    one as ``.pipe.transformer`` or ``.transformer``): parameters and buffers, counted once each,
    plus the weight copies integer GEMMs pack for themselves (``prepared_bytes()``)."""
    module = getattr(getattr(obj, "pipe", obj), "transformer", obj)
    if not isinstance(module, nn.Module):
        return 0
    seen, total = set(), 0
    for t in (*module.parameters(), *module.buffers()):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total + sum(m.prepared_bytes() for m in module.modules() if hasattr(m, "prepared_bytes"))


class ModelCache:
    """A least-recently-used cache of models whose tensors together stay under ``max_bytes``.

    The newest model is always kept, even alone above the bound (it is in use).
    """

    def __init__(self, max_bytes: int, size: Callable[[object], int] = tensor_bytes):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes, self._size = max_bytes, size
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.RLock()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, build: Callable[[], object]):
        """The model under ``key``, built by ``build()`` the first time; then room is made."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = build()
            self._items[key] = value
            self.shrink()
            return value

    def nbytes(self) -> int:
        """What the cached models take now."""
        return sum(self._size(v) for v in self._items.values())

    def shrink(self) -> None:
        """Drop the least recently used models until the rest fit ``max_bytes``."""
        with self._lock:
            while len(self._items) > 1 and self.nbytes() > self.max_bytes:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
