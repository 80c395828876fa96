"""Shared benchmark utilities: workloads, seeded data, timing, memory, JSON lines.

Every bench script in this folder uses these so that all providers of one
sweep see the same seeded inputs, are timed the same way (a synchronised wall
clock on the CPU, CUDA events on the GPU), and write rows with the same
environment fields (`geosteer.environment.environment`: device name,
versions, git commit, date), the record `geosteer eval` writes too.

    from bench import common
    from bench.common import WORKLOADS, make_data
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# Workloads (DESIGN §4) and seeded data


@dataclass(frozen=True)
class Workload:
    """One row of DESIGN §4's table (plus the bench-only extras below)."""

    name: str
    Q: int  # queries
    N: int  # gallery items
    K: int  # candidates re-ranked per query
    m: int  # query parts
    n: int  # regions per gallery item
    D: int  # embedding dim
    dtype: str  # "fp32" | "fp16" | "bf16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]

    def replace(self, **changes) -> "Workload":
        return dataclasses.replace(self, **changes)

    def shape_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("Q", "N", "K", "m", "n", "D", "dtype")}


WORKLOADS: dict[str, Workload] = {
    # The three standard workloads of DESIGN §4.
    "tiny": Workload("tiny", 64, 2_000, 20, 3, 9, 128, "fp32"),
    "cpu": Workload("cpu", 1_024, 100_000, 50, 4, 16, 512, "fp32"),
    "gpu": Workload("gpu", 8_192, 1_000_000, 100, 4, 16, 512, "fp16"),
    # Bench-only: the FAISS first stage at a million items on the CPU. Its
    # region sets are windows over one shared table (see `make_data`), since
    # 1M x 16 x 512 fp32 distinct regions would need 33 GB.
    "faiss": Workload("faiss", 1_024, 1_000_000, 50, 4, 16, 512, "fp32"),
    # Bench-only: the reduced base of the throughput-vs-Q / vs-K sweep (plot).
    "sweep": Workload("sweep", 256, 20_000, 50, 4, 16, 512, "fp32"),
}


@dataclass
class BenchData:
    """Seeded embeddings for one workload, all on one device and dtype."""

    query: Tensor  # [Q, D] unit norm
    query_parts: Tensor  # [Q, m, D] unit norm
    gallery: Tensor  # [N, D] unit norm
    gallery_parts: Tensor  # [N, n, D] unit norm (possibly a strided view, see make_data)
    negatives: Tensor  # [Q, m, D] confusers of the query parts (for steering)
    targets: Tensor  # [Q] int64: the gallery item each query was planted from

    def subset(self, rows: int) -> "BenchData":
        """The first `rows` queries (gallery shared)."""
        return BenchData(
            self.query[:rows], self.query_parts[:rows], self.gallery, self.gallery_parts,
            self.negatives[:rows], self.targets[:rows],
        )


def _unit_(x: Tensor) -> Tensor:
    """In-place L2 normalisation along the last dim (no second copy)."""
    return x.div_(x.norm(dim=-1, keepdim=True).clamp_min_(1e-12))


def make_data(
    work: Workload,
    device: str | torch.device = "cpu",
    seed: int = 0,
    *,
    windowed_parts: bool | None = None,
    chunk_items: int = 8_192,
) -> BenchData:
    """Clustered, planted embeddings for `work`, generated chunk by chunk.

    The gallery is made of `N / 100` clusters (items of one cluster are
    stored next to each other); an item's regions are
    `normalise(centre + noise)` (cosine ~0.5 between regions of one cluster),
    and its pooled embedding the normalised mean of its regions plus noise.
    Each query is planted from a random target item: its parts are `m` of
    the target's regions plus noise and the query is their normalised mean,
    so the target is a true near neighbour and the part matching has
    something to find. Negatives (for steering) are the query parts pushed
    towards another cluster's centre.

    Memory: the `[N, n, D]` region tensor is allocated once and filled in
    place in chunks of `chunk_items` items (no temporary of the same size).
    With `windowed_parts` (default: when `N * n * D` exceeds 2^31 elements,
    the `faiss` workload) item `i`'s regions are the rows `i .. i+n-1` of one
    `[N + n - 1, D]` table whose first `N` rows are the gallery itself
    (an `as_strided` view, `n` times smaller); access per candidate is the
    same `n * D` contiguous floats as with distinct regions.

    Args:
        work: the workload (shapes and dtype).
        device: where the tensors are made (generated there, in float32,
            then cast to the workload dtype chunk by chunk).
        seed: fixes every tensor.
        windowed_parts: see above.
        chunk_items: gallery items generated per step.

    Returns:
        `BenchData` on `device` in the workload dtype.
    """
    device = torch.device(device)
    dtype = work.torch_dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    if windowed_parts is None:
        windowed_parts = work.N * work.n * work.D > (1 << 31)

    num_clusters = max(1, work.N // 100)
    centres = _unit_(torch.randn(num_clusters, work.D, generator=gen, device=device))
    # Items are stored cluster by cluster (ids i*N/C .. (i+1)*N/C - 1).
    cluster_of = torch.arange(work.N, device=device) * num_clusters // work.N

    def regions(first: int, last: int, count: int) -> Tensor:
        """`[last-first, count, D]` float32 regions of items first..last-1."""
        c = centres[cluster_of[first:last]][:, None, :]
        noise = _unit_(torch.randn(last - first, count, work.D, generator=gen, device=device))
        return _unit_(noise.add_(c))

    if windowed_parts:
        table = torch.empty(work.N + work.n - 1, work.D, dtype=dtype, device=device)
        for start in range(0, work.N, chunk_items):
            stop = min(start + chunk_items, work.N)
            table[start:stop] = regions(start, stop, 1)[:, 0].to(dtype)
        if work.n > 1:
            table[work.N :] = regions(work.N - work.n + 1, work.N, 1)[:, 0].to(dtype)
        gallery = table[: work.N]
        gallery_parts = table.as_strided((work.N, work.n, work.D), (work.D, work.D, 1))
    else:
        gallery = torch.empty(work.N, work.D, dtype=dtype, device=device)
        gallery_parts = torch.empty(work.N, work.n, work.D, dtype=dtype, device=device)
        for start in range(0, work.N, chunk_items):
            stop = min(start + chunk_items, work.N)
            block = regions(start, stop, work.n)
            pooled = block.mean(dim=1)
            pooled.add_(0.5 * _unit_(torch.randn(pooled.shape, generator=gen, device=device)) * pooled.norm(dim=-1, keepdim=True))
            gallery[start:stop] = _unit_(pooled).to(dtype)
            gallery_parts[start:stop] = block.to(dtype)
            del block, pooled

    targets = torch.randint(0, work.N, (work.Q,), generator=gen, device=device)
    if work.m <= work.n:  # m distinct regions of the target per query
        pick = torch.rand(work.Q, work.n, generator=gen, device=device).argsort(dim=1)[:, : work.m]
    else:
        pick = torch.randint(0, work.n, (work.Q, work.m), generator=gen, device=device)
    base = gallery_parts[targets].float().gather(1, pick[..., None].expand(-1, -1, work.D))  # [Q, m, D]
    query_parts = _unit_(base + 0.5 * _unit_(torch.randn(base.shape, generator=gen, device=device)))
    query = _unit_(query_parts.mean(dim=1) + 0.1 * _unit_(torch.randn(work.Q, work.D, generator=gen, device=device)))
    other = centres[torch.randint(0, num_clusters, (work.Q, work.m), generator=gen, device=device)]
    negatives = _unit_(query_parts + other)
    return BenchData(
        query.to(dtype), query_parts.to(dtype), gallery, gallery_parts, negatives.to(dtype), targets
    )


# --------------------------------------------------------------------------
# Timing


def sync(device: torch.device | str) -> None:
    """Wait for queued work on `device` (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Cold (first call) and warm (repeats) wall times in seconds.

    On the CPU, `warm_cpu_s` also holds the process CPU time of each warm
    call (all threads): it leaves out time spent waiting for a core on a
    shared machine (though not OpenMP spin-waits), so for single-threaded
    runs it is the steadier comparison.
    """

    cold_s: float
    warm_s: list[float]
    warm_cpu_s: list[float] = field(default_factory=list)

    def stats(self) -> dict:
        return summarise(self.warm_s)


def time_call(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds for one call: CUDA events on the GPU, a synchronised wall clock on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        # Host syncs inside fn (solver, value checks) are inside the events' span.
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(
    fn: Callable[[], object],
    device: torch.device | str,
    repeats: int,
    *,
    budget_s: float | None = None,
    warmup: int = 0,
    on_repeat: Callable[[], None] | None = None,
) -> Timing:
    """Time the first call (cold) then up to `repeats` warm calls.

    With `budget_s`, the number of warm repeats shrinks (to at least 1) so
    that they fit in about that many seconds, estimated from the cold call
    and the first warm one.
    """
    cold = time_call(fn, device)
    for _ in range(warmup):
        fn()
    warm: list[float] = []
    warm_cpu: list[float] = []
    on_cpu = torch.device(device).type == "cpu"
    for i in range(repeats):
        cpu0 = time.process_time()
        warm.append(time_call(fn, device))
        if on_cpu:
            warm_cpu.append(time.process_time() - cpu0)
        if on_repeat is not None:
            on_repeat()
        if budget_s is not None and i == 0:
            repeats = max(1, min(repeats, int(budget_s / max(warm[0], 1e-9))))
        if len(warm) >= repeats:
            break
    return Timing(cold, warm, warm_cpu)


def summarise(times: Iterable[float]) -> dict:
    """Median and spread of a list of seconds."""
    t = sorted(times)
    if not t:
        return {"median_s": math.nan, "min_s": math.nan, "max_s": math.nan, "p25_s": math.nan, "p75_s": math.nan}
    q = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else [t[0]] * 3
    return {"median_s": statistics.median(t), "min_s": t[0], "max_s": t[-1], "p25_s": q[0], "p75_s": q[2]}


# --------------------------------------------------------------------------
# Peak memory


def proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, RssAnon, RssFile, ...), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory a block of code adds above what was in use when it started.

    CUDA: `torch.cuda.max_memory_allocated` minus the allocated bytes at entry
    (the caching allocator's own view; exact). CPU: the kernel's peak resident
    set (VmHWM, reset at entry through /proc/self/clear_refs) minus the
    resident set at entry; tracemalloc cannot see torch's allocations. The
    CPU figure is a lower bound when freed memory from earlier calls is
    still held by the C allocator and reused. Falls back to getrusage's
    ru_maxrss delta (0 unless the block sets a new process peak).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda.max_memory_allocated"
        elif _reset_peak_rss() and proc_status_kb("VmRSS") is not None:
            self._base = proc_status_kb("VmRSS") * 1024
            self.method = "VmHWM-VmRSS"
        else:
            import resource

            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss delta"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "VmHWM-VmRSS":
            peak = (proc_status_kb("VmHWM") or 0) * 1024
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(0, peak - self._base)


# --------------------------------------------------------------------------
# Output


def write_rows(path: str | Path | None, rows: Iterable[dict]) -> None:
    """Append rows as JSON lines to `path` (stdout when None)."""
    lines = [json.dumps(r, default=_json_default) for r in rows]
    if path is None:
        print("\n".join(lines))
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for line in lines:
            f.write(line + "\n")


def read_rows(paths: Iterable[str | Path]) -> list[dict]:
    """Every JSON row of the given .jsonl files (blank lines skipped)."""
    rows = []
    for p in paths:
        with open(p) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def _json_default(x):
    if isinstance(x, (torch.dtype, torch.device, Path)):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def progress(total: int, desc: str) -> "_Progress":
    """A tqdm bar on stderr when tqdm is installed, else a silent counter."""
    return _Progress(total, desc)


class _Progress:
    def __init__(self, total: int, desc: str) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)

    def update(self, label: str | None = None) -> None:
        if self._bar is not None:
            if label:
                self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def threads(num: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    if num is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def unit(x: Tensor) -> Tensor:
    """Out-of-place L2 normalisation along the last dim."""
    return F.normalize(x, dim=-1)
