"""Values derived from a tensor, kept while the tensor lives and is unchanged.

Serving code passes the same gallery on every call. Work that depends only
on the gallery (its finiteness scan, its bf16 screening copy) is done once
and remembered here, keyed by the tensor object: an in-place change bumps
the tensor's version counter and invalidates the entry, and an entry is
dropped as soon as its tensor is garbage-collected (a cached bf16 copy of a
large gallery must not outlive it).
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor


class TensorCache:
    """A small map `tensor -> value` that forgets stale and dead tensors.

    Args:
        max_entries: most tensors remembered; the oldest entry goes first.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[int, tuple[weakref.ref, int, Any]] = {}

    def get(self, x: Tensor) -> Any | None:
        """The value stored for `x`, or None if absent or `x` changed since."""
        entry = self._entries.get(id(x))
        try:
            if entry is not None and entry[0]() is x and entry[1] == x._version:
                return entry[2]
        except RuntimeError:  # inference tensors keep no version counter
            pass
        return None

    def put(self, x: Tensor, value: Any) -> None:
        """Remember `value` for `x` (silently skipped for tensors without a version)."""
        key = id(x)
        try:
            version = x._version
            ref = weakref.ref(x, lambda _ref, key=key: self._drop(key, _ref))
        except (RuntimeError, TypeError):
            return
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = (ref, version, value)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def _drop(self, key: int, ref: weakref.ref) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is ref:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
