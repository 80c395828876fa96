"""Benchmark the batched assignment solver against its peers, one sweep.

Providers (each on the same seeded uniform [0, 1) float32 costs):
  ours       geosteer.batch_linear_assignment (CPU: compiled augmenting paths;
             CUDA: the Triton subset DP for min(W, T) <= 6, else
             torch-linear-assignment's Triton kernel)
  ours_1t    ours with one thread (CPU)
  torch_dp   the plain-torch subset DP (r <= 8 only): the CUDA fallback and the
             Triton kernel's reference; timed on the CPU to justify the rule
             that the CPU never uses it
  ours_torch backend="torch" on CUDA (torch DP on the GPU / CPU round trip)
  tla        torch_linear_assignment.batch_linear_assignment (CPU: SciPy loop)
  scipy      a plain loop of scipy.optimize.linear_sum_assignment
  lapx       lap.lapjvx_batch(extend_cost=True, n_threads=1), when `pip install lapx`
             worked (one thread: its thread pool was 3-6x slower on the loaded
             2-core machine)

Each case reports the cold first call and the median / spread of the warm
repeats. Slow providers can be timed on the first `--subset` problems and
scaled to the full batch; such rows carry `scaled_from`. Every provider's
matching is checked against SciPy's total cost on the first 256 problems.

    python -m bench.bench_assign                       # CPU sweep -> bench/results/assign_cpu_<date>.{jsonl,png}
    python -m bench.bench_assign --shapes 51200x4x16 4096x16x16 --repeats 11
    python -m bench.bench_assign --device cuda         # CUDA providers
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import geosteer
from bench.common import REPO, bench, progress, summarise, sync, threads, write_rows
from geosteer.environment import environment
from geosteer.ops.assign import _dp_chunked

SHAPES = [
    (1_024, 2, 8),
    (1_024, 4, 16),
    (51_200, 4, 16),  # parts mode, the `cpu` workload (Q=1,024 x K=50)
    (51_200, 5, 5),  # neighbourhood mode, k=5
    (51_200, 10, 10),  # neighbourhood mode, k=10
    (4_096, 8, 8),
    (4_096, 16, 16),
    (4_096, 16, 4),  # tall: solved transposed
    (4_096, 32, 32),
]
CPU_PROVIDERS = ["ours", "ours_1t", "torch_dp", "tla", "scipy", "lapx"]
CUDA_PROVIDERS = ["ours", "ours_torch", "tla"]
SLOW = {"tla", "scipy", "lapx", "torch_dp"}


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        batch, rows, cols = (int(x.replace(",", "").replace("_", "")) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 4096x16x16, got {text!r}") from None
    return batch, rows, cols


def scipy_loop(cost: torch.Tensor) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment

    array = cost.numpy()
    out = np.full(array.shape[:2], -1, dtype=np.int64)
    for b in range(array.shape[0]):
        rows, cols = linear_sum_assignment(array[b])
        out[b, rows] = cols
    return torch.from_numpy(out)


def lapx_batch(cost: torch.Tensor) -> torch.Tensor:
    import lap

    rows_list, cols_list = lap.lapjvx_batch(cost.numpy(), extend_cost=True, return_cost=False, n_threads=1)
    # Every problem matches min(W, T) pairs, so the lists stack (no Python loop of ours in the timing).
    out = np.full(cost.shape[:2], -1, dtype=np.int64)
    np.put_along_axis(out, np.stack(rows_list).astype(np.int64), np.stack(cols_list).astype(np.int64), axis=1)
    return torch.from_numpy(out)


def torch_dp(cost: torch.Tensor) -> torch.Tensor:
    tall = cost.shape[1] > cost.shape[2]
    work = cost.transpose(1, 2).contiguous() if tall else cost
    cols, _ = _dp_chunked(work)
    if not tall:
        return cols
    out = torch.full(cost.shape[:2], -1, dtype=torch.long, device=cost.device)
    return out.scatter_(1, cols, torch.arange(cost.shape[2], device=cost.device).expand_as(cols).contiguous())


def provider_fn(name: str, device: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The solver for `name`, or None when it is not available here."""
    if name == "ours":
        return geosteer.batch_linear_assignment
    if name == "ours_1t":
        def one_thread(cost):
            with threads(1):
                return geosteer.batch_linear_assignment(cost)
        return one_thread
    if name == "ours_torch":
        return lambda cost: geosteer.batch_linear_assignment(cost, backend="torch")
    if name == "torch_dp":
        return torch_dp
    if name == "tla":
        from torch_linear_assignment import batch_linear_assignment

        return batch_linear_assignment
    if name == "scipy":
        return scipy_loop if device == "cpu" else None
    if name == "lapx":
        try:
            import lap  # noqa: F401
        except ImportError:
            return None
        return lapx_batch if device == "cpu" else None
    raise ValueError(f"unknown provider {name!r}")


def totals(cost: torch.Tensor, cols: torch.Tensor) -> np.ndarray:
    cost, cols = cost.double().cpu(), cols.cpu()
    picked = cost.gather(2, cols.clamp_min(0)[..., None])[..., 0]
    return torch.where(cols >= 0, picked, torch.zeros_like(picked)).sum(1).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_assign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=SHAPES, help="BxWxT, e.g. 4096x16x16")
    parser.add_argument("--providers", nargs="+", default=None, help="subset of the providers")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7, help="warm repeats per case (fewer when --budget is hit)")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of warm repeats per case")
    parser.add_argument("--subset", type=int, default=0, help="time slow providers on this many problems and scale (0 = all)")
    parser.add_argument("--threads", type=int, default=None, help="torch / solver threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (default bench/results/assign_<device>_<date>.jsonl)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    date = datetime.date.today().isoformat()
    out = args.out or REPO / "bench" / "results" / f"assign_{args.device}_{date}.jsonl"
    providers = args.providers or (CPU_PROVIDERS if args.device == "cpu" else CUDA_PROVIDERS)
    env = environment(args.device)
    versions = {"torch_linear_assignment": _dist_version("torch-linear-assignment"), "numba": _dist_version("numba"), "lapx": _dist_version("lapx")}
    rows: list[dict] = []
    bar = progress(len(args.shapes) * len(providers), "assign")
    for batch, w, t in args.shapes:
        gen = torch.Generator().manual_seed(args.seed)
        cost = torch.rand(batch, w, t, generator=gen).to(args.device)
        check = slice(0, min(batch, 256))
        reference = totals(cost[check], scipy_loop(cost[check].cpu()))
        base = None
        for name in providers:
            label = f"{batch}x{w}x{t} {name}"
            fn = provider_fn(name, args.device)
            if fn is None or (name == "torch_dp" and min(w, t) > 8):
                bar.update(label + " (skipped)")
                continue
            used = batch if not (args.subset and name in SLOW) else min(batch, args.subset)
            part = cost[:used]
            ok = bool(np.allclose(totals(cost[check], fn(cost[check])), reference, rtol=1e-9, atol=1e-9))
            timing = bench(lambda: fn(part), args.device, args.repeats, budget_s=args.budget)
            scale = batch / used
            stats = {k: v * scale for k, v in summarise(timing.warm_s).items()}
            row = {
                "bench": "assign",
                "shape": f"{batch}x{w}x{t}",
                "B": batch,
                "W": w,
                "T": t,
                "provider": name,
                "cold_s": timing.cold_s * scale,
                **stats,
                "repeats": len(timing.warm_s),
                "us_per_problem": stats["median_s"] / batch * 1e6,
                "matches_scipy": ok,
                **({"scaled_from": used, "note": f"timed on the first {used} problems, scaled x{scale:.2f}"} if used < batch else {}),
                **env,
                **versions,
            }
            if name == "tla":
                base = row
            rows.append(row)
            bar.update(f"{label} {stats['median_s'] * 1e3:.1f} ms")
        for row in rows:
            if row["shape"] == f"{batch}x{w}x{t}" and base is not None:
                row["speedup_vs_tla"] = base["median_s"] / row["median_s"]
        sync(args.device)
    bar.close()
    write_rows(out, rows)
    print(f"wrote {len(rows)} rows to {out}", file=sys.stderr)
    print(table(rows))
    if not args.no_plot:
        plot(rows, out.with_suffix(".png"))


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def table(rows: list[dict]) -> str:
    """Markdown table: median ms (and speed-up over torch-linear-assignment) per shape and provider."""
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    lines = ["| B x W x T | " + " | ".join(providers) + " |", "|---|" + "---|" * len(providers)]
    for shape in shapes:
        cells = []
        for p in providers:
            r = next((r for r in rows if r["shape"] == shape and r["provider"] == p), None)
            if r is None:
                cells.append("—")
                continue
            cell = f"{r['median_s'] * 1e3:.1f} ms"
            if "speedup_vs_tla" in r and p != "tla":
                cell += f" ({r['speedup_vs_tla']:.1f}x)"
            if "scaled_from" in r:
                cell += "*"
            cells.append(cell)
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    providers = list(dict.fromkeys(r["provider"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(shapes)), 4.5))
    width = 0.8 / len(providers)
    for k, p in enumerate(providers):
        xs, ys, lo, hi = [], [], [], []
        for i, s in enumerate(shapes):
            r = next((r for r in rows if r["shape"] == s and r["provider"] == p), None)
            if r is None:
                continue
            xs.append(i + (k - (len(providers) - 1) / 2) * width)
            ys.append(r["us_per_problem"])
            lo.append((r["median_s"] - r["min_s"]) / r["B"] * 1e6)
            hi.append((r["max_s"] - r["median_s"]) / r["B"] * 1e6)
        ax.bar(xs, ys, width, yerr=[lo, hi], label=p, capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(range(len(shapes)), shapes, rotation=20)
    ax.set_ylabel("µs per problem (median, min-max)")
    device = rows[0]["device_name"] if rows else ""
    ax.set_title(f"batched linear assignment, {device}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
