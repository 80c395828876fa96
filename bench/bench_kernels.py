"""Memory bandwidth of the Triton kernels against the GPU's measured copy bandwidth.

Both kernels (`geosteer::part_cost`, `geosteer::project`) are memory bound:
they read each candidate's rows once and do a few FLOPs per byte. So the
figure of merit is effective bandwidth = the bytes they must move (candidate
rows, query rows, ids, masks, output) / time, next to the bandwidth of a
plain device-to-device copy measured in the same run (the floor a kernel
cannot beat).

Cases, on the seeded data of one DESIGN §4 workload (bench.common):
  part_cost        parts mode: [Q, m, D] x candidates' [n, D] -> [Q, K, m, n]
  part_cost_nbhd   neighbourhood mode as the head calls it: q's k pool items
                   against each candidate's k gallery neighbours (n = 1,
                   K*k "candidates")
  project_J{1,m}   candidates x J vectors (the steered re-score, J = 1; the
                   anchors, J = m)
Providers:
  triton           the op with backend="triton" (kernel + its id-range and
                   finite checks, each one host sync)
  triton_kernel    the bare launcher (kernel only)
  torch            the op with backend="torch" (the chunked torch reference)
  copy             a device copy of the same byte count (the floor)

Each row: cold (first call; Triton compile included) and warm (median and
spread) seconds, GB/s, fraction of the copy bandwidth, the max abs error
against torch, and the environment (device, versions, commit, date).

    python -m bench.bench_kernels                         # CUDA, gpu workload -> bench/results/kernels_cuda_<date>.{jsonl,png}
    python -m bench.bench_kernels --workload cpu --dtype fp16 --repeats 50
    python -m bench.bench_kernels --dry-run               # CPU: tiny shapes, torch path only (checks the script)

Without a CUDA device and without --dry-run it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable

import torch

import geosteer  # noqa: F401  (registers the ops)
from bench.common import REPO, WORKLOADS, Workload, bench, make_data, summarise, sync, write_rows
from geosteer.environment import environment
from geosteer.ops.part_cost import pad_cost

DRY_RUN = Workload("dry-run", 8, 300, 10, 3, 5, 64, "fp32")
NEIGHBOURS = 5  # k of neighbourhood mode (HeadConfig.neighbors default)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    """Bytes/s of `dst.copy_(src)` (read + write counted) for a buffer of `nbytes`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = bench(lambda: dst.copy_(src), device, repeats, warmup=3)
    return 2 * src.numel() * 4 / summarise(timing.warm_s)["median_s"]


def cases(work: Workload, device: torch.device, seed: int) -> list[dict]:
    """Each case: name, op args (without backend), bytes moved, and the bare launcher's name."""
    data = make_data(work, device, seed, windowed_parts=False)
    q, n_items = work.Q, work.N
    ids = torch.topk(data.query.float() @ data.gallery.float().t(), work.K, dim=1).indices if n_items * q <= 1 << 28 else None
    if ids is None:  # the gpu workload: the exact first stage would dominate setup; random ids move the same bytes
        ids = torch.randint(0, n_items, (q, work.K), generator=torch.Generator(device=device).manual_seed(seed), device=device)
    elt = data.gallery.element_size()
    qmask = torch.ones(q, work.m, dtype=torch.bool, device=device)
    gmask = torch.ones(n_items, work.n, dtype=torch.bool, device=device)
    out = []
    # Parts mode.
    out.append(dict(
        name="part_cost", op=torch.ops.geosteer.part_cost.default, kernel="part_cost",
        args=(data.query_parts, qmask, ids, data.gallery_parts, gmask, pad_cost(work.m, work.n)),
        nbytes=q * work.K * (work.n * work.D * elt + 8 + work.n + work.m * work.n * 4) + q * work.m * (work.D * elt + 1),
        shape=dict(Q=q, K=work.K, m=work.m, n=work.n, D=work.D),
    ))
    # Neighbourhood mode, as geosteer.stages.rerank.neighbourhood_cost calls it.
    k = min(NEIGHBOURS, work.K)
    nbrs = torch.randint(0, n_items, (q, work.K * k), generator=torch.Generator(device=device).manual_seed(seed + 1), device=device)
    anchors = data.gallery[ids[:, :k]]
    ones_n = torch.ones(n_items, 1, dtype=torch.bool, device=device)
    out.append(dict(
        name="part_cost_nbhd", op=torch.ops.geosteer.part_cost.default, kernel="part_cost",
        args=(anchors, torch.ones(q, k, dtype=torch.bool, device=device), nbrs, data.gallery[:, None, :], ones_n, pad_cost(1, 1)),
        nbytes=q * work.K * k * (work.D * elt + 8 + 1 + k * 4) + q * k * (work.D * elt + 1),
        shape=dict(Q=q, K=work.K * k, m=k, n=1, D=work.D),
    ))
    for num_vectors in sorted({1, work.m}):
        vectors = data.negatives[:, :num_vectors] if num_vectors <= data.negatives.shape[1] else data.query_parts
        out.append(dict(
            name=f"project_J{num_vectors}", op=torch.ops.geosteer.project.default, kernel="project",
            args=(data.gallery, ids, vectors),
            nbytes=q * work.K * (work.D * elt + 8 + num_vectors * 4) + q * num_vectors * work.D * elt,
            shape=dict(Q=q, K=work.K, J=num_vectors, D=work.D),
        ))
    return out


def launcher(kernel: str) -> Callable:
    if kernel == "part_cost":
        from geosteer.kernels.part_cost import part_cost_triton

        return part_cost_triton
    from geosteer.kernels.project import project_triton

    return project_triton


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cpu" if args.dry_run else "cuda")
    work = DRY_RUN if args.dry_run else WORKLOADS[args.workload].replace(dtype=args.dtype or WORKLOADS[args.workload].dtype)
    env = environment(device)
    copy_bps = copy_bandwidth(device, args.copy_mib << 20, args.repeats)
    print(f"{env['device_name']}: copy bandwidth {copy_bps / 1e9:.1f} GB/s ({args.copy_mib} MiB buffer)", file=sys.stderr)
    providers = ["torch"] if args.dry_run else ["triton", "triton_kernel", "torch"]
    rows = []
    for case in cases(work, device, args.seed):
        reference = case["op"](*case["args"], "torch")
        for provider in providers + ["copy"]:
            if provider == "copy":
                src = torch.empty(case["nbytes"] // 2 // 4 or 1, dtype=torch.float32, device=device).uniform_()
                dst = torch.empty_like(src)
                fn, result = (lambda: dst.copy_(src)), None
            elif provider == "triton_kernel":
                kernel = launcher(case["kernel"])
                fn = lambda: kernel(*case["args"])  # noqa: E731
                result = fn()
            else:
                fn = lambda: case["op"](*case["args"], provider)  # noqa: E731
                result = None
            timing = bench(fn, device, args.repeats, warmup=args.warmup)
            if provider != "copy" and result is None:
                result = fn()
            stats = summarise(timing.warm_s)
            gbps = case["nbytes"] / stats["median_s"] / 1e9
            row = dict(
                bench="kernels", case=case["name"], provider=provider, workload=work.name, dtype=work.dtype,
                **case["shape"], bytes=case["nbytes"], cold_s=timing.cold_s, **stats, repeats=len(timing.warm_s),
                gbps=gbps, copy_gbps=copy_bps / 1e9, fraction_of_copy=gbps / (copy_bps / 1e9),
                max_abs_err=None if result is None else float((result - reference).abs().max()) if result.numel() else 0.0,
                **env,
            )
            rows.append(row)
            print(
                f"{case['name']:>15} {provider:>13}: {stats['median_s'] * 1e3:9.3f} ms  {gbps:8.1f} GB/s "
                f"({row['fraction_of_copy']:.0%} of copy)  cold {timing.cold_s * 1e3:8.1f} ms"
                + ("" if row["max_abs_err"] is None else f"  err {row['max_abs_err']:.1e}"),
                file=sys.stderr,
            )
        sync(device)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Grouped bars of GB/s per case and provider, the copy bandwidth as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot", file=sys.stderr)
        return
    case_names = list(dict.fromkeys(r["case"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(1.8 * len(case_names) + 2, 4))
    for p_index, provider in enumerate(providers):
        values = [next((r["gbps"] for r in rows if r["case"] == c and r["provider"] == provider), 0.0) for c in case_names]
        ax.bar([c_index + p_index * width for c_index in range(len(case_names))], values, width, label=provider)
    ax.axhline(rows[0]["copy_gbps"], color="k", linestyle="--", linewidth=1, label="device copy")
    ax.set_xticks([c_index + 0.4 - width / 2 for c_index in range(len(case_names))], case_names)
    ax.set_ylabel("effective GB/s (higher is better)")
    ax.set_title(f"geosteer kernels, {rows[0]['workload']} workload ({rows[0]['dtype']}), {rows[0]['device_name']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="gpu", choices=sorted(WORKLOADS), help="DESIGN §4 workload (CUDA runs)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="override the workload's dtype")
    parser.add_argument("--repeats", type=int, default=20, help="warm repeats per provider")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the cold one")
    parser.add_argument("--copy-mib", type=int, default=1024, help="buffer size of the copy-bandwidth probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON lines file to append to (default: bench/results/kernels_<device>_<date>.jsonl; stdout on --dry-run)")
    parser.add_argument("--plot", type=Path, help="PNG path (default next to --out on CUDA runs)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU through the torch path")
    args = parser.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print("bench.bench_kernels measures GPU memory bandwidth and needs a CUDA device; none is available here. "
              "Run with --dry-run to exercise the script on tiny CPU shapes.", file=sys.stderr)
        return 0
    if args.dry_run:
        args.copy_mib = min(args.copy_mib, 16)
        args.repeats = min(args.repeats, 3)
    rows = run(args)
    out = args.out
    if out is None and not args.dry_run:
        out = REPO / "bench" / "results" / f"kernels_cuda_{datetime.date.today().isoformat()}.jsonl"
    write_rows(out, rows)
    if args.plot is not None or (out is not None and not args.dry_run):
        plot(rows, args.plot or out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
