"""bf16 screening for the exact first stage, with a per-query certificate.

On CPUs with native bf16 dot products (AVX512-BF16, AMX-BF16) a bf16 matmul
runs ~3.5x faster than float32: 0.30 s against 1.09 s for 1,024 x 100,000 x
512 on one EPYC core. The screen turns that into an *exact* top-K:

1. score every gallery item with `q_hi · g_hi`, `x_hi = bf16(x)`;
2. keep a shortlist of `K'` items per query and re-score it in float32;
3. prove, per query, that no item outside the shortlist can beat the K-th
   re-scored one (below);
4. score the queries whose proof fails the plain way.

The proof. Split `x = x_hi + x_lo` exactly (`x_lo` is computed in float32).
For any item j, `s_j = q·g_j` differs from `q_hi·g_hi_j` by at most
`‖q_lo‖·H + ‖q_hi‖·L + ‖q_lo‖·L` (Cauchy-Schwarz; H and L the largest
`‖g_hi‖` and `‖g_lo‖` over the gallery). The bf16 products are exact in the
float32 accumulator, whose rounding adds at most `γ·‖q_hi‖·H`
(`γ = n·2⁻²⁴/(1 - n·2⁻²⁴)`, taken at n = 2D for blocked sums); the result
is then rounded to bf16 (relative error ≤ 2⁻⁸; 2⁻⁷ is used, so truncation is
covered too). Every item outside the shortlist screened at most `t` (the
K'-th screened score), so its true score is at most
`bound = up(t) + E_q`. The shortlist is re-scored in float32 with error at
most `γ·‖q‖·G` (G the largest `‖g‖`); when the K-th re-scored value minus
that error exceeds `bound`, the K kept items are the true top-K. The margins
are widened by 0.1% for the rounding of the norms themselves.

The result therefore equals the plain first stage up to float32 rounding:
the same items, the same scores to ~1e-6, with items whose scores tie at that
level possibly in another order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from geosteer import cpu_kernels
from geosteer.choices import check_choice
from geosteer.ops import checks
from geosteer.ops.tensor_cache import TensorCache

SCREENS = ("auto", "bf16", "off")

_BF16_UNIT = 2.0**-7  # 2u for bf16 (u = 2^-8): covers round-to-nearest and truncation
_WIDEN = 1.001  # headroom for the float32 rounding of the norms in the bound
_TINY = 1e-30  # absolute slack: bf16 denormals a CPU may flush to zero

# `auto` screens only where it pays: a gallery large next to the shortlist,
# and a bf16 copy either cached or amortised over enough queries in one call.
AUTO_MIN_ITEMS_PER_SHORTLIST = 16
AUTO_MIN_ELEMENTS = 1 << 20
AUTO_MIN_QUERIES_UNCACHED = 128
# Even with the copy cached, each call reads the float32 gallery once to
# check the copy is current (its fingerprint, `TensorCache.get`); under this
# many queries the plain matmul, which reads the gallery once too, is as fast.
AUTO_MIN_QUERIES_CACHED = 16
# `auto` never makes a bf16 copy larger than this (a 4M x 512 gallery);
# "bf16" asked explicitly has no cap.
AUTO_MAX_COPY_BYTES = 4 << 30
# A chunk where more than this share of queries fail their proof switches
# the rest of the call to the plain path (the screen would only add work).
GIVE_UP_SHARE = 0.5


class GalleryScreen(NamedTuple):
    """What the screen needs of a gallery, computed once per gallery."""

    hi: Tensor  # [N, D] bfloat16: bf16(g)
    hi_norm: float  # H = max_j ‖g_hi_j‖
    lo_norm: float  # L = max_j ‖g_j - g_hi_j‖
    norm: float  # G = max_j ‖g_j‖


class ScreenStats(NamedTuple):
    """How one screened call went (for tests and benchmarks)."""

    queries: int
    fallback: int  # queries scored the plain way (proof failed or screen gave up)
    gave_up: bool


# The GalleryScreen of each recent gallery. `get` checks the gallery's content
# (a write through its numpy view bumps no version counter), so a stale copy
# never certifies a ranking.
_GALLERIES = TensorCache(max_entries=4)
# Galleries `auto` met with too few queries to pay for a bf16 copy (the next
# call makes it): only a hint for when to screen, so object and version suffice.
_SEEN_GALLERIES = TensorCache(max_entries=8, verify=False)


def check_screen(screen: str) -> str:
    """Validate the `screen` string; return it.

    Raises:
        ValueError: not one of `SCREENS`.
    """
    return check_choice("screen", screen, SCREENS)


def native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.6
    if get is None:
        return False
    try:
        caps = get()
    except Exception:  # noqa: BLE001 - an unknown platform is simply "no"
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def shortlist_size(k: int, num_items: int) -> int:
    """K': re-scored candidates per query, `min(N, max(2K, K + 32))`."""
    return min(num_items, max(2 * k, k + 32))


def screen_applies(query: Tensor, gallery: Tensor, k: int) -> bool:
    """Whether the screen is sound and useful here at all (any `screen` but "off").

    Sound: CPU tensors of a float type float32 holds exactly (the bf16
    matmul accumulates in float32 there; cuBLAS may reduce in bf16). Useful:
    a shortlist smaller than the gallery.
    """
    return (
        query.device.type == "cpu"
        and query.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and shortlist_size(k, gallery.shape[0]) < gallery.shape[0]
    )


def auto_eligible(gallery: Tensor, k: int) -> bool:
    """Whether "auto" screens `gallery` `[N, D]` once its bf16 copy is paid for.

    Needs a CPU with native bf16 dot products and a gallery of 1M to 2G
    elements (a bf16 copy of at most 4 GiB) at least 16 shortlists long.
    No side effects (unlike `wants_screen`).
    """
    num_items = gallery.shape[0]
    return (
        native_bf16()
        and AUTO_MIN_ELEMENTS <= gallery.numel() <= AUTO_MAX_COPY_BYTES // 2
        and num_items >= AUTO_MIN_ITEMS_PER_SHORTLIST * shortlist_size(k, num_items)
    )


def wants_screen(query: Tensor, gallery: Tensor, k: int, screen: str) -> bool:
    """Resolve `screen` ("auto" | "bf16" | "off") for one call.

    "bf16" screens wherever `screen_applies`; "auto" also needs
    `auto_eligible` and either >= 128 queries (to amortise making the bf16
    copy), or >= 16 queries and a cached copy of this gallery or a gallery
    seen before (remembered here). Under 16 queries "auto" does not screen:
    checking the cached copy is current reads the float32 gallery once, as
    the plain matmul does. Inference tensors (made under
    `torch.inference_mode`) carry no version counter, so nothing is cached
    for them. Whether a copy is cached is looked up without reading the
    gallery (`TensorCache.peek`); `gallery_screen` checks it.
    """
    if screen == "off" or not screen_applies(query, gallery, k):
        return False
    if screen == "bf16":
        return True
    if not auto_eligible(gallery, k):
        return False
    num_queries = query.shape[0]
    if num_queries >= AUTO_MIN_QUERIES_UNCACHED:
        return True
    if num_queries < AUTO_MIN_QUERIES_CACHED:
        return False
    if _GALLERIES.peek(gallery) is not None or _SEEN_GALLERIES.get(gallery) is not None:
        return True
    _SEEN_GALLERIES.put(gallery, True)
    return False


def gallery_screen(gallery: Tensor, rows: int = 8192) -> GalleryScreen:
    """The bf16 copy and norm bounds of `gallery` `[N, D]`, cached per tensor.

    A cached entry is used only if the gallery's content is the one it was
    made from (`TensorCache.get` compares a fingerprint: one pass over the
    gallery); else the copy is made again. A gallery its owner certified
    (`geosteer.ops.checks.certify`: the store's) changes only through
    versioned writes, so object and version counter decide, with no pass.
    """
    cached = _GALLERIES.peek(gallery) if checks.certified(gallery) else _GALLERIES.get(gallery)
    if cached is not None:
        return cached
    hi = torch.empty(gallery.shape, dtype=torch.bfloat16, device=gallery.device)
    hi_norm = lo_norm = norm = 0.0
    for start in range(0, gallery.shape[0], rows):  # no [N, D] float32 temporaries
        block = gallery[start : start + rows].float()
        block_hi = block.to(torch.bfloat16)
        hi[start : start + rows] = block_hi
        block_hi = block_hi.float()
        hi_norm = max(hi_norm, float(block_hi.norm(dim=1).max()))
        lo_norm = max(lo_norm, float((block - block_hi).norm(dim=1).max()))
        norm = max(norm, float(block.norm(dim=1).max()))
    entry = GalleryScreen(hi, hi_norm, lo_norm, norm)
    _GALLERIES.put(gallery, entry)
    return entry


def _gamma(n: int) -> float:
    """Higham's γ_n for float32: the relative error bound of an n-term sum."""
    nu = n * 2.0**-24
    return nu / (1.0 - nu)


def outside_bound(threshold: Tensor, query: Tensor, screen: GalleryScreen) -> Tensor:
    """Largest true score an item screened at most `threshold` can have.

    Args:
        threshold: `[R]` float32, the bf16 screened score of the K'-th item.
        query: `[R, D]` float32 queries.
        screen: the gallery's `GalleryScreen`.

    Returns:
        `[R]` float32 upper bounds on `q · g_j` for every j screened <= threshold.
    """
    q_hi = query.to(torch.bfloat16).float()
    q_hi_norm = q_hi.norm(dim=1)
    q_lo_norm = (query - q_hi).norm(dim=1)
    accumulated = torch.where(threshold >= 0, threshold / (1 - _BF16_UNIT), threshold / (1 + _BF16_UNIT))
    split = q_lo_norm * screen.hi_norm + q_hi_norm * screen.lo_norm + q_lo_norm * screen.lo_norm
    summed = _gamma(2 * query.shape[1]) * q_hi_norm * screen.hi_norm
    return accumulated + _WIDEN * (split + summed) + _TINY


def rescore_error(query: Tensor, screen: GalleryScreen) -> Tensor:
    """`[R]` bound on the float32 error of re-scoring `q · g` for any gallery item."""
    return _WIDEN * _gamma(2 * query.shape[1]) * query.norm(dim=1) * screen.norm + _TINY


def rescore(query: Tensor, gallery: Tensor, ids: Tensor, use_numba: bool = True) -> Tensor:
    """`[R, S]` float32 `query[r] · gallery[ids[r, s]]`: the shortlist's exact scores.

    With `use_numba`, a contiguous float32 gallery goes through the
    copy-free numba loop (`geosteer.cpu_kernels.first_stage`); anything else
    through a gather + bmm. Either way the error is within `rescore_error`
    (Higham's bound holds for any summation order).

    Args:
        query: `[R, D]` float32.
        gallery: `[N, D]`.
        ids: `[R, S]` int64 in `[0, N)`.
        use_numba: the dispatch rule chose the numba kernel (float32 on the CPU).
    """
    if use_numba and gallery.dtype == torch.float32 and gallery.is_contiguous():
        arrays = [t.detach().contiguous().numpy() for t in (query, gallery, ids)]
        return torch.from_numpy(cpu_kernels.load("first_stage").gather_dot(*arrays, torch.get_num_threads()))
    return torch.bmm(gallery[ids].float(), query[:, :, None]).squeeze(2)


def screened_top_k(
    query: Tensor, gallery: Tensor, k: int, chunk_elements: int, exact, use_numba: bool = True
) -> tuple[Tensor, Tensor, ScreenStats]:
    """Exact top-`k` through the bf16 screen (see the module docstring).

    Args:
        query: `[Q, D]` float32/float16/bfloat16 on the CPU.
        gallery: `[N, D]`, same dtype and device.
        k: candidates per query, `k < shortlist_size(k, N) < N`.
        chunk_elements: most screened scores held at once.
        exact: `(query_rows, gallery, k, chunk_elements) -> (scores, ids)`,
            the plain first stage, for queries whose proof fails.
        use_numba: re-score with the numba kernel (see `rescore`).

    Returns:
        scores `[Q, k]` float32 descending, ids `[Q, k]` int64, and the stats.
    """
    num_queries, num_items = query.shape[0], gallery.shape[0]
    short = shortlist_size(k, num_items)
    screen = gallery_screen(gallery)
    gallery_hi_t = screen.hi.t()
    rows = max(1, chunk_elements // max(num_items, 1))
    scores = torch.empty(num_queries, k, dtype=torch.float32, device=query.device)
    ids = torch.empty(num_queries, k, dtype=torch.long, device=query.device)
    fallback = 0
    gave_up = False
    for start in range(0, num_queries, rows):
        q = query[start : start + rows].float()
        if gave_up:
            bad = torch.arange(q.shape[0], device=q.device)
        else:
            screened = (q.to(torch.bfloat16) @ gallery_hi_t).topk(short, dim=1, sorted=True)  # [r, K'] bf16
            rescored = rescore(q, gallery, screened.indices, use_numba)  # [r, K']
            top = rescored.topk(k, dim=1, sorted=True)
            scores[start : start + rows] = top.values
            ids[start : start + rows] = screened.indices.gather(1, top.indices)
            bound = outside_bound(screened.values[:, -1].float(), q, screen)
            proven = top.values[:, -1] - rescore_error(q, screen) > bound
            bad = (~proven).nonzero().squeeze(1)
            gave_up = bad.numel() > GIVE_UP_SHARE * q.shape[0]
        if bad.numel():
            fallback += bad.numel()
            exact_scores, exact_ids = exact(query[start : start + rows][bad], gallery, k, chunk_elements)
            scores[start + bad] = exact_scores
            ids[start + bad] = exact_ids
    return scores, ids, ScreenStats(num_queries, fallback, gave_up)
