"""Values derived from a tensor, kept while the tensor lives and its content is unchanged.

Serving code passes the same gallery on every call. Work that depends only
on the gallery (its finiteness scan, its bf16 screening copy) is done once
and remembered here, keyed by the tensor object. The tensor's version
counter is not enough to tell that it is unchanged: writes through its
numpy view (`g.numpy()[i] = ...`) or through `g.data[i] = ...` do not bump
it. So every entry also keeps a *fingerprint* of the content, recomputed
and compared on every `get` (`fingerprint`: one streaming pass, as cheap as
`x.sum()`); an entry whose tensor changed in any way the fingerprint sees is
a miss, and a tensor holding NaN/inf is never a hit (its fingerprint is
non-finite). An entry is dropped as soon as its tensor is garbage-collected
(a cached bf16 copy of a large gallery must not outlive it).

The map is safe to use from several threads at once.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, NamedTuple

import torch
from torch import Tensor

#: Rows per fingerprint block: each block of `_BLOCK` rows gets its own
#: weighted column sums, so a sum adds 64 terms and a change is lost to
#: rounding only if it is below about one float32 unit of such a sum.
_BLOCK = 64
#: Most elements converted at once when the tensor's dtype is not the one summed
#: in: a chunk that stays in a CPU's L2 cache; on CUDA, few launches.
_CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}
# Small integer and bool dtypes, exact in float32.
_SMALL_EXACT = (torch.bool, torch.uint8, torch.int8, torch.int16)
# Wider integer dtypes, exact in float64 up to 2**53.
_WIDE_INTEGERS = (torch.int32, torch.int64)
_WEIGHTS: dict[tuple[torch.device, torch.dtype], Tensor] = {}
_WEIGHTS_LOCK = threading.Lock()


def _weights(device: torch.device, dtype: torch.dtype) -> Tensor:
    """`[_BLOCK]` weights `±(1 + i/_BLOCK)`: distinct magnitudes (a swap of two rows shows) and fixed
    pseudo-random signs (a block's sums stay near √_BLOCK times an element, not _BLOCK times its mean)."""
    key = (device, dtype)
    w = _WEIGHTS.get(key)
    if w is None:
        gen = torch.Generator().manual_seed(0x6E05)
        signs = torch.randint(0, 2, (_BLOCK,), generator=gen, dtype=torch.float64) * 2 - 1
        w = (signs * (1 + torch.arange(_BLOCK, dtype=torch.float64) / _BLOCK)).to(device=device, dtype=dtype)
        with _WEIGHTS_LOCK:
            w = _WEIGHTS.setdefault(key, w)
    return w


def _ieee_float32_matmul(device: torch.device) -> bool:
    """Whether float32 matmuls on `device` run in full float32 (no TF32 / bf16 internals)."""
    if device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return False  # CUDA: TF32 flags vary per process and cannot be changed thread-safely
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return getattr(mkldnn, "fp32_precision", "none") in ("none", "ieee")


def _sum_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype the fingerprint of `x` is summed in, or None for a dtype it does not cover."""
    if x.dtype == torch.float64 or x.dtype in _WIDE_INTEGERS:
        return torch.float64
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16) or x.dtype in _SMALL_EXACT:
        return torch.float32 if _ieee_float32_matmul(x.device) else torch.float64
    return None  # complex, quantized, float8, unsigned 16-64 bit: never cached


def _block_sums(rows: Tensor, w: Tensor) -> Tensor:
    """`[ceil(R / _BLOCK), C]`: each block of `_BLOCK` rows of `rows [R, C]` summed with the weights `w`."""
    num_rows, cols = rows.shape
    full, rest = divmod(num_rows, _BLOCK)
    out = []
    if full:
        blocks = rows[: full * _BLOCK].reshape(full, _BLOCK, cols)
        out.append(torch.bmm(w.view(1, 1, _BLOCK).expand(full, 1, _BLOCK), blocks).view(full, cols))
    if rest:
        out.append((w[:rest] @ rows[full * _BLOCK :]).view(1, cols))
    return out[0] if len(out) == 1 else torch.cat(out)


def fingerprint(x: Tensor) -> Tensor | None:
    """A content fingerprint of `x`: position-weighted column sums per block of rows.

    `x` is viewed as `[R, C]` (R = its first dim, C the rest); each block of
    64 rows is summed with the weights `±(1 + i/64)` into `[ceil(R/64), C]`,
    in float32 (float64 for float64 and wide integer tensors, and wherever
    float32 matmuls may run in TF32/bf16). One streaming pass, no `[R, C]`
    temporary for float32 input. Properties:

    - NaN or ±inf anywhere makes the fingerprint non-finite (IEEE products
      and sums propagate them; every weight is nonzero), and then this
      returns None: such a tensor is never cached. So is a finite tensor
      whose sums overflow (entries above ~1e36 in float32).
    - Any write changes the fingerprint unless, in every block and column
      it touches, the weighted change is lost in the float32 rounding of
      that block's sum, or cancels exactly against another write weighted
      by these weights. For unit-norm 512-d rows a block's sum is ~0.5, so
      only changes under ~3e-8 per element can be lost: a score moves by
      less than 1e-6 (the level at which the bf16 screen already equals the
      plain first stage). Row swaps, copies, sign flips, zeroing, rescaling
      and normalising a row are all seen.

    Args:
        x: any tensor.

    Returns:
        the fingerprint tensor (on `x.device`), or None where `x` cannot be
        fingerprinted (non-finite content, or a dtype not covered: complex,
        quantized, float8, unsigned above 8 bits).
    """
    dtype = _sum_dtype(x)
    if dtype is None:
        return None
    if not x.numel():
        return x.new_zeros((0,), dtype=dtype)
    rows = x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    w = _weights(x.device, dtype)
    if rows.dtype == dtype and rows.is_contiguous():
        sums = _block_sums(rows, w)
    else:  # convert (and make contiguous) a chunk of whole blocks at a time
        chunk = _CHUNK_ELEMENTS.get(x.device.type, _CHUNK_ELEMENTS["cuda"])
        step = max(_BLOCK, chunk // max(rows.shape[1], 1) // _BLOCK * _BLOCK)
        sums = torch.cat([_block_sums(rows[s : s + step].to(dtype).contiguous(), w) for s in range(0, rows.shape[0], step)])
    return sums if bool(torch.isfinite(sums).all()) else None


def _version(x: Tensor) -> int | None:
    try:
        return x._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


class _Entry(NamedTuple):
    ref: weakref.ref
    version: int
    fingerprint: Tensor | None  # None in a cache made with verify=False
    value: Any


class TensorCache:
    """A small map `tensor -> value` that forgets changed and dead tensors; thread-safe.

    `get` recomputes the tensor's `fingerprint` (one pass over it) and
    returns a value only if the content is the one the value was stored
    for. `put` stores the fingerprint that the same thread's last `get` of
    that tensor computed (so a get-compute-put sequence pays one pass, and
    the fingerprint predates the value: a write racing the computation makes
    the entry a miss, never a stale hit).

    Tensors without a version counter (made under `torch.inference_mode`)
    are never cached.

    Args:
        max_entries: most tensors remembered; the oldest entry goes first.
        verify: check the content on every `get` (the default). `False`
            keys entries by object and version counter only, for hints that
            must never decide a result (a write through numpy goes unseen).
    """

    def __init__(self, max_entries: int, verify: bool = True) -> None:
        self.max_entries = max_entries
        self.verify = verify
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.RLock()  # re-entrant: a weakref callback may run while it is held
        self._last = threading.local()  # .seen = (weakref, version, fingerprint) of this thread's last get

    def get(self, x: Tensor) -> Any | None:
        """The value stored for `x`, or None if absent or `x` changed since (any write the fingerprint sees)."""
        version = _version(x)
        if version is None:
            return None
        with self._lock:
            entry = self._entries.get(id(x))
        if not self.verify:
            return entry.value if self._matches(entry, x, version) else None
        fp = fingerprint(x)
        self._last.seen = (weakref.ref(x), version, fp)
        if fp is None or not self._matches(entry, x, version):
            return None
        same = entry.fingerprint.shape == fp.shape and entry.fingerprint.dtype == fp.dtype and torch.equal(entry.fingerprint, fp)
        return entry.value if same else None

    def peek(self, x: Tensor) -> Any | None:
        """The value stored for `x` by object and version counter, *without* checking its content.

        For decisions that only cost time when wrong (whether a cached copy
        probably exists); never use the value for a result.
        """
        version = _version(x)
        with self._lock:
            entry = self._entries.get(id(x))
        return entry.value if version is not None and self._matches(entry, x, version) else None

    def put(self, x: Tensor, value: Any) -> None:
        """Remember `value` for `x` (skipped for tensors without a version or a fingerprint)."""
        version = _version(x)
        if version is None:
            return
        fp = None
        if self.verify:
            seen, self._last.seen = getattr(self._last, "seen", None), None
            if seen is not None and seen[0]() is x and seen[1] == version:
                fp = seen[2]
            else:
                fp = fingerprint(x)
            if fp is None:
                return
        key = id(x)
        try:
            ref = weakref.ref(x, lambda _ref, key=key: self._drop(key, _ref))
        except TypeError:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)), None)
            self._entries[key] = _Entry(ref, version, fp, value)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    @staticmethod
    def _matches(entry: _Entry | None, x: Tensor, version: int) -> bool:
        return entry is not None and entry.ref() is x and entry.version == version

    def _drop(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.ref is ref:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
