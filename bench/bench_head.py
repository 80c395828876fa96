"""Throughput of the geosteer head against its peers, in one sweep (DESIGN §4).

Every provider runs on the same seeded inputs of one workload:

- ``geosteer``            the head, eager, default config (parts mode, λ = 0.5)
- ``geosteer-compiled``   the same head under ``torch.compile(fullgraph=True)``
- ``geosteer-steer``      the head with steering on (α = 0.5, negatives given)
- ``geosteer-tla``        the same head with ``HeadConfig(solver="tla")``:
                          torch-linear-assignment's ``batch_linear_assignment``
                          solves inside ``geosteer::assign``
- ``naive``               what a researcher writes first: ``torch.topk`` of
                          ``q @ G.T`` for all queries, then a Python loop over
                          queries and candidates, one SciPy
                          ``linear_sum_assignment`` per pair
- ``naive-perquery``      the same loop with the top-k also done per query
- ``geosteer-fp32``       the head with the bf16 screen off (plain float32
                          first stage; differs from ``geosteer`` only on CPUs
                          with native bf16, where ``screen="auto"`` screens)
- ``first-stage``         ``geosteer::first_stage`` alone, as the head runs it
                          (screened where ``auto`` screens): the floor
- ``first-stage-fp32``    the plain float32 ``q @ G.T`` + top-k, chunked
- ``faiss-ivf``           (``faiss`` workload) the FAISS IVF search alone
- ``geosteer-faiss``      (``faiss`` workload) the head fed FAISS candidates

Rows (JSON lines): queries/s, cold (first call; compile included) and warm
(median, quartiles, min/max of repeats) seconds, peak memory, how many queries
a provider actually ran (the naive loops run a subset and are scaled; the row
says so), agreement of its ranking with the eager head, and the environment
(`geosteer.environment.environment`). `--profile` adds one row per stage of
the eager head (`geosteer.STAGES`, timed through the head's `stage_hook`).

Examples (from the repo root)::

    python -m bench.bench_head --workload cpu --out bench/results/head_cpu_$(date +%F).jsonl
    python -m bench.bench_head --workload sweep --plot bench/results/head_cpu_$(date +%F).png
    python -m bench.bench_head --workload faiss --out ...        # N = 1M, FAISS IVF
    python -m bench.bench_head --workload cpu --dry-run           # tiny shapes, seconds

The CUDA-vs-CPU correctness checks are tests: `TRITON_INTERPRET=0 pytest tests/test_cuda_device.py`
on a GPU machine (or `bench/run_gpu.sh`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

import geosteer
from bench import common
from bench.common import WORKLOADS, BenchData, PeakMemory, Workload
from geosteer import GeoSteerHead, HeadConfig
from geosteer.environment import environment

DEFAULT_PROVIDERS = {
    "tiny": "geosteer,first-stage,geosteer-fp32,first-stage-fp32,geosteer-compiled,geosteer-steer,geosteer-tla,naive,naive-perquery",
    "cpu": "geosteer,first-stage,geosteer-fp32,first-stage-fp32,geosteer-compiled,geosteer-steer,geosteer-tla,naive,naive-perquery",
    "gpu": "geosteer,first-stage,geosteer-compiled,geosteer-steer,geosteer-tla,naive",
    "faiss": "geosteer,first-stage,faiss-ivf,geosteer-faiss",
    "sweep": "geosteer,first-stage,geosteer-tla,naive",
}
SWEEP_Q = (32, 128, 512)
SWEEP_K = (10, 25, 50, 100)
DRY_SHAPES = dict(Q=16, N=600, K=10, m=3, n=5, D=32)


# --------------------------------------------------------------------------
# Providers


@dataclass
class Runner:
    """A ready-to-time call for one provider on one input."""

    fn: Callable[[], object]  # one full run on `queries` queries
    queries: int  # queries each call handles (a subset for the naive loops)
    note: str = ""
    ids_of: Callable[[object], Tensor] = lambda r: r.indices  # [q, K] ranked ids of a result
    extra: dict | None = None  # fields added to the row (FAISS build time, recall, ...)


def head_config(work: Workload, **overrides) -> HeadConfig:
    """The default config (λ = 0.5, parts mode) at the workload's K."""
    return HeadConfig(k=work.K, mode="parts", **overrides)


def head_kwargs(data: BenchData, steer: bool = False) -> dict:
    kwargs = dict(query_parts=data.query_parts, gallery_parts=data.gallery_parts)
    if steer:
        kwargs["negatives"] = data.negatives
    return kwargs


def naive_rerank(data: BenchData, k: int, lam: float, per_query: bool, deadline: float | None = None) -> Tensor:
    """The loop a researcher writes first: top-k, then SciPy per (query, candidate).

    Same scoring as the head's parts mode: S = (1 - λ)·q·c + λ·A(q, c), with
    A the mean of 1 - cost over the Hungarian-matched part pairs.

    Args:
        deadline: a `time.perf_counter()` value; stop after the query that
            passes it (used to size the timed subset).

    Returns:
        `[q, k]` int64 ranked ids (on the CPU), q = queries processed.
    """
    from scipy.optimize import linear_sum_assignment

    num_queries, num_parts = data.query_parts.shape[:2]
    out = torch.empty(num_queries, k, dtype=torch.long)
    if not per_query:
        top = (data.query @ data.gallery.T).float().topk(k, dim=1)
        all_scores, all_ids = top.values.cpu(), top.indices.cpu()
    for qi in range(num_queries):
        if per_query:
            top = (data.gallery @ data.query[qi]).float().topk(k)
            scores, ids = top.values.cpu(), top.indices.cpu()
        else:
            scores, ids = all_scores[qi], all_ids[qi]
        parts = data.query_parts[qi].float()
        fused = []
        for cand, s in zip(ids.tolist(), scores.tolist()):
            cost = (1.0 - parts @ data.gallery_parts[cand].float().T).cpu().numpy()
            rows, cols = linear_sum_assignment(cost)
            align = float((1.0 - cost[rows, cols]).sum()) / num_parts
            fused.append((1.0 - lam) * s + lam * align)
        order = sorted(range(k), key=lambda i: -fused[i])
        out[qi] = ids[order]
        if deadline is not None and time.perf_counter() > deadline:
            return out[: qi + 1]
    return out


def first_stage_note(data: BenchData, work: Workload, screen: str) -> str:
    """Say how `geosteer::first_stage` runs here with this `screen` setting."""
    from geosteer.ops.screen import AUTO_MIN_QUERIES_UNCACHED, auto_eligible, screen_applies

    screened = screen == "bf16" or (screen == "auto" and auto_eligible(data.gallery, work.K))
    if screen != "off" and screened and screen_applies(data.query, data.gallery, work.K):
        note = f"geosteer::first_stage, screen={screen}: bf16 screen + float32 re-score of a shortlist, exact"
        if screen == "auto" and data.query.shape[0] < AUTO_MIN_QUERIES_UNCACHED:
            note += " (from the second call on this gallery)"
        return note
    return f"geosteer::first_stage, screen={screen}: chunked float32 q @ G.T + topk"


def make_runner(name: str, work: Workload, data: BenchData, device: torch.device, args, state: dict) -> Runner:
    """Build provider `name` (see the module doc) on `data`."""
    cfg = head_config(work)
    if name == "geosteer":
        head = GeoSteerHead(cfg)
        return Runner(lambda: head(data.query, data.gallery, **head_kwargs(data)), work.Q)
    if name == "geosteer-compiled":
        head = torch.compile(GeoSteerHead(cfg), fullgraph=True)
        return Runner(lambda: head(data.query, data.gallery, **head_kwargs(data)), work.Q,
                      note="torch.compile(fullgraph=True); cold includes compilation")
    if name == "geosteer-steer":
        head = GeoSteerHead(cfg.replace(alpha=0.5))
        return Runner(lambda: head(data.query, data.gallery, **head_kwargs(data, steer=True)), work.Q,
                      note=f"alpha=0.5, u={data.negatives.shape[1]} negatives")
    if name == "geosteer-tla":
        head = GeoSteerHead(cfg.replace(solver="tla"))
        return Runner(lambda: head(data.query, data.gallery, **head_kwargs(data)), work.Q,
                      note="solver='tla': torch_linear_assignment.batch_linear_assignment inside geosteer::assign")
    if name in ("naive", "naive-perquery"):
        per_query = name == "naive-perquery"
        # Estimate the per-query cost (on up to 64 queries, for at most a
        # quarter of the budget), then time as many queries as fit in the
        # budget (at least 8, at most all) and scale.
        naive_rerank(data.subset(1), work.K, cfg.lam, per_query)  # imports, first-call costs
        start = time.perf_counter()
        done = naive_rerank(data.subset(min(work.Q, 64)), work.K, cfg.lam, per_query,
                            deadline=start + min(5.0, args.naive_budget / 4)).shape[0]
        per = (time.perf_counter() - start) / done
        rows = int(min(work.Q, max(min(8, work.Q), args.naive_budget / max(per, 1e-9))))
        sub = data.subset(rows)
        note = "top-k per query, " if per_query else "batched torch top-k, "
        note += "SciPy linear_sum_assignment per (query, candidate)"
        if rows < work.Q:
            note += f"; ran {rows} of {work.Q} queries, throughput scaled"
        return Runner(lambda: naive_rerank(sub, work.K, cfg.lam, per_query), rows, note=note, ids_of=lambda r: r)
    if name == "geosteer-fp32":
        head = GeoSteerHead(cfg.replace(screen="off"))
        return Runner(lambda: head(data.query, data.gallery, **head_kwargs(data)), work.Q,
                      note="screen=off: plain float32 first stage")
    if name in ("first-stage", "first-stage-fp32"):
        op = torch.ops.geosteer.first_stage
        screen = cfg.screen if name == "first-stage" else "off"
        return Runner(lambda: op(data.query, data.gallery, work.K, cfg.chunk_elements, cfg.backend, screen), work.Q,
                      note=first_stage_note(data, work, screen), ids_of=lambda r: r[1])
    if name in ("faiss-ivf", "geosteer-faiss"):
        index = faiss_index(work, data, args, state)
        if name == "faiss-ivf":
            return Runner(lambda: index.search(data.query, work.K), work.Q, ids_of=lambda r: r[1],
                          note=f"FAISS IndexIVFFlat search, nlist={args.nlist}, nprobe={args.nprobe}",
                          extra=state["faiss_extra"])
        head = GeoSteerHead(cfg)

        def run():
            return head(data.query, data.gallery, first_stage=index.search(data.query, work.K), **head_kwargs(data))

        return Runner(run, work.Q, note="FAISS IVF search + head on its candidates", extra=state["faiss_extra"])
    raise ValueError(f"unknown provider {name!r}")


def faiss_index(work: Workload, data: BenchData, args, state: dict):
    """Build (once per run) the IVF index of the `faiss` workload, with its build times."""
    if "faiss" not in state:
        from geosteer.stages.first_stage_faiss import FaissFirstStage, import_faiss

        if args.threads:  # FAISS has its own OpenMP pool; keep it at torch's count
            import_faiss().omp_set_num_threads(args.threads)

        nlist = args.nlist or max(1, min(1024, work.N // 64))
        args.nlist = nlist
        train = min(work.N, args.train_size or 64 * nlist)
        start = time.perf_counter()
        index = FaissFirstStage.build(data.gallery, "ivf", nlist=nlist, nprobe=args.nprobe or max(1, nlist // 32),
                                      train_size=train, seed=args.seed)
        build = time.perf_counter() - start
        args.nprobe = index.nprobe
        state["faiss"] = index
        state["faiss_extra"] = {
            "index": "IndexIVFFlat(IP)", "nlist": nlist, "nprobe": index.nprobe, "train_size": train,
            "build_s": build, "train_s": index.timings.get("train"), "add_s": index.timings.get("add"),
        }
    return state["faiss"]


# --------------------------------------------------------------------------
# Stage timing (where the head's time goes)

#: Row label of each stage of `geosteer.STAGES` (plus the two derived rows).
STAGE_LABELS = {
    "validate": "validate (shape + value checks)",
    "first_stage": "first stage (q @ G.T, topk)",
    "steer": "steer (query move, confuser penalty)",
    "cost": "part_cost (gather + cost)",
    "assign": "assign (Hungarian solver)",
    "alignment": "alignment (w/o solver)",
    "structure": "structure (relation score)",
    "fuse": "fuse + sort",
    "rest": "rest (normalise, glue)",
    "total": "total",
}


class StageTimer:
    """A `stage_hook` for `GeoSteerHead`: seconds per stage, summed over calls.

    The device is synchronised on entry and exit of each stage, so the
    seconds are that stage's own work (queued kernels included). `spent`
    maps a stage name to `[wall seconds, process CPU seconds]`.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.spent: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        common.sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        common.sync(self.device)
        acc = self.spent.setdefault(name, [0.0, 0.0])
        acc[0] += time.perf_counter() - t0
        acc[1] += time.process_time() - c0


def expected_stages(cfg: HeadConfig, negatives: bool = False, relations: bool = False) -> tuple[str, ...]:
    """The stages of `geosteer.STAGES` a head call with `cfg` must report, in order.

    Args:
        negatives: the call passes negatives (steering anchors).
        relations: the call passes query relations and gallery part boxes.
    """
    rerank = cfg.lam > 0 or cfg.gamma > 0
    runs = {
        "validate": True,
        "first_stage": True,
        "steer": negatives and (cfg.alpha > 0 or cfg.beta > 0),
        "cost": rerank,
        "assign": rerank,
        "alignment": rerank,
        "structure": cfg.gamma > 0 and relations,
        "fuse": True,
    }
    # A name here that the head no longer has is a renamed stage: say so
    # rather than profile without it.
    unknown = sorted(set(runs) - set(geosteer.STAGES))
    if unknown:
        raise RuntimeError(f"bench_head's stages {unknown} are not in geosteer.STAGES = {geosteer.STAGES}; "
                           "update expected_stages and STAGE_LABELS")
    return tuple(name for name in geosteer.STAGES if runs.get(name, False))


def profile_stages(work: Workload, data: BenchData, device: torch.device, repeats: int) -> list[dict]:
    """Per-stage seconds of the eager head (median of `repeats` warm calls).

    Stages are timed by the head's `stage_hook` (`StageTimer`); "rest" is the
    call's total less the sum of its stages (input packing, mode choice).

    Raises:
        RuntimeError: a stage the config must run was never reported (a
            renamed or removed stage must not vanish from the table silently).
    """
    cfg = head_config(work)
    timer = StageTimer(device)
    head = GeoSteerHead(cfg, stage_hook=timer)
    head(data.query, data.gallery, **head_kwargs(data))  # warm
    per_call: list[dict[str, list[float]]] = []
    seen: set[str] = set()
    for _ in range(repeats):
        timer.spent = {}
        common.sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        head(data.query, data.gallery, **head_kwargs(data))
        common.sync(device)
        total = [time.perf_counter() - t0, time.process_time() - c0]
        stages = {name: list(v) for name, v in timer.spent.items()}
        seen |= set(stages)
        stages["rest"] = [total[i] - sum(v[i] for v in stages.values()) for i in (0, 1)]
        stages["total"] = total
        per_call.append(stages)
    missing = [name for name in expected_stages(cfg) if name not in seen]
    if missing:
        raise RuntimeError(f"stage_hook never saw stages {missing} of {geosteer.STAGES} "
                           f"(reported: {sorted(seen)}); the head's stages changed: update bench_head")
    order = [name for name in geosteer.STAGES if name in seen] + sorted(seen - set(geosteer.STAGES)) + ["rest", "total"]
    rows = []
    on_cpu = device.type == "cpu"
    for key in order:
        values = [c.get(key, [0.0, 0.0])[0] for c in per_call]
        row = {"kind": "stage", "provider": "geosteer", "stage": STAGE_LABELS.get(key, key),
               "median_s": float(np.median(values)), "min_s": min(values), "max_s": max(values), "repeats": repeats}
        if on_cpu:
            row["cpu_median_s"] = float(np.median([c.get(key, [0.0, 0.0])[1] for c in per_call]))
        rows.append(row)
    # Shares of the sum of the stage medians (each stage's median may come
    # from a different call, so they need not add up to the total's median).
    parts = sum(r["median_s"] for r in rows if r["stage"] != "total")
    for r in rows:
        r["share"] = r["median_s"] / parts if parts > 0 else None
    return rows


# --------------------------------------------------------------------------
# The sweep


def ranked_agreement(ids: Tensor, reference: Tensor) -> dict:
    """How closely a provider's ranked ids `[q, K]` match the eager head's (first q rows)."""
    ref = reference[: ids.shape[0]].cpu()
    ids = ids.cpu()
    return {
        "agree_top1": float((ids[:, 0] == ref[:, 0]).float().mean()),
        "agree_rows": float((ids == ref).all(dim=1).float().mean()),
    }


def run_providers(
    work: Workload, data: BenchData, device: torch.device, providers: list[str], args, env: dict,
    extra_fields: dict | None = None, bar: common._Progress | None = None,
    emit: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Time every provider on `data`; one row per provider, each passed to
    `emit` as soon as it is measured (so a run cut short keeps its rows)."""
    rows, state = [], {}
    reference: Tensor | None = None
    say = bar.write if bar is not None else (lambda m: print(m, file=sys.stderr))
    for name in providers:
        if bar is not None:
            bar.update(f"{work.name} {name}")
        row = {"kind": "provider", "bench": "head", "workload": work.name, "provider": name, **work.shape_dict(),
               **(extra_fields or {}), **env}
        gc.collect()
        try:
            runner = make_runner(name, work, data, device, args, state)
            result_holder: list[object] = []

            def call():
                result_holder[:] = [runner.fn()]

            with PeakMemory(device) as mem:
                timing = common.bench(call, device, args.repeats, budget_s=args.budget)
            ids = runner.ids_of(result_holder[0])
        except Exception as error:  # noqa: BLE001  (one broken provider must not hide the others)
            row.update(error=f"{type(error).__name__}: {error}")
            say(f"[{work.name}] {name}: FAILED {row['error']}")
        else:
            stats = timing.stats()
            row.update(
                queries_run=runner.queries,
                scaled=runner.queries < work.Q,
                repeats=len(timing.warm_s),
                cold_s=timing.cold_s,
                times_s=timing.warm_s,
                **stats,
                queries_per_s=runner.queries / stats["median_s"],
                cold_queries_per_s=runner.queries / timing.cold_s,
                est_full_s=stats["median_s"] * work.Q / runner.queries,
                **cpu_time_fields(timing, work.Q / runner.queries),
                peak_mem_bytes=mem.bytes,
                peak_mem_method=mem.method,
                note=runner.note,
                target_at1=float((ids[:, 0].cpu() == data.targets[: ids.shape[0]].cpu()).float().mean()),
                **(runner.extra or {}),
            )
            if name == "geosteer":
                reference = ids
            elif reference is not None and name not in ("first-stage", "first-stage-fp32", "faiss-ivf", "geosteer-steer"):
                # (steering changes the ranking on purpose: no agreement for it)
                row.update(ranked_agreement(ids, reference))
            if name == "first-stage":
                state["exact_ids"] = ids
            if name in ("faiss-ivf", "geosteer-faiss"):
                row["recall_at_k"] = faiss_recall(work, data, state)
            floor = next((r for r in rows if r["provider"] == "first-stage" and "error" not in r), None)
            if floor is not None:
                row["vs_first_stage"] = row["est_full_s"] / floor["est_full_s"]
            elif name == "first-stage":
                row["vs_first_stage"] = 1.0
            say(f"[{work.name}] {name:18s} {row['queries_per_s']:10.1f} q/s  median {stats['median_s']:.4f}s "
                f"cold {timing.cold_s:.3f}s  peak {fmt_bytes(mem.bytes)}  {runner.note}")
        rows.append(row)
        if emit is not None:
            emit(row)
    return rows


def cpu_time_fields(timing: common.Timing, scale: float) -> dict:
    """Process CPU seconds of the warm calls (CPU runs only; see common.Timing)."""
    if not timing.warm_cpu_s:
        return {}
    cpu = sorted(timing.warm_cpu_s)
    median = float(np.median(cpu))
    return {"cpu_times_s": timing.warm_cpu_s, "cpu_median_s": median, "cpu_min_s": cpu[0],
            "est_full_cpu_s": median * scale}


def faiss_recall(work: Workload, data: BenchData, state: dict) -> float:
    """recall@K of the FAISS candidates against the exact first stage (computed once)."""
    if "recall" not in state:
        from geosteer.stages.first_stage_faiss import recall_at_k

        exact = state.get("exact_ids")
        if exact is None:
            exact = torch.ops.geosteer.first_stage(data.query, data.gallery, work.K, 1 << 24, "auto")[1]
        state["recall"] = recall_at_k(state["faiss"].search(data.query, work.K)[1], exact)
    return state["recall"]


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def resolve_workload(name: str, dry_run: bool) -> Workload:
    work = WORKLOADS[name]
    if dry_run:
        shapes = dict(DRY_SHAPES)
        if name == "faiss":
            shapes["N"] = 4_000
        work = work.replace(**shapes, dtype="fp32" if work.dtype != "fp32" and not torch.cuda.is_available() else work.dtype)
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_head", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="cpu", choices=sorted(WORKLOADS), help="DESIGN §4 workload (or faiss / sweep)")
    parser.add_argument("--providers", default=None, help="comma list (default: the workload's set, see module doc)")
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats per provider (fewer if over --budget)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of warm repeats per provider, at most")
    parser.add_argument("--naive-budget", type=float, default=20.0, help="seconds per naive call; fewer queries if over")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda for the gpu workload when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch (and FAISS) intra-op threads (default: torch's)")
    parser.add_argument("--out", default=None, help="JSON lines file to append to (default bench/results/head_<workload>_<device>_<date>.jsonl)")
    parser.add_argument("--plot", default=None, help="sweep: also write this PNG")
    parser.add_argument("--profile", default="auto", choices=("auto", "always", "never"),
                        help="per-stage timing of the head: auto = when it is over 1.5x the first stage")
    parser.add_argument("--nlist", type=int, default=None, help="faiss: IVF lists (default min(1024, N/64))")
    parser.add_argument("--nprobe", type=int, default=None, help="faiss: lists searched (default nlist/32)")
    parser.add_argument("--train-size", type=int, default=None, help="faiss: k-means sample (default 64*nlist)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, 2 repeats: a smoke test in seconds")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if args.workload == "gpu" and torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    if args.dry_run:
        args.repeats = min(args.repeats, 2)
        args.naive_budget = min(args.naive_budget, 2.0)
    date = datetime.date.today().isoformat()
    out = args.out or str(common.REPO / "bench" / "results" / f"head_{args.workload}_{device.type}_{date}.jsonl")
    env = environment(device)
    env["dry_run"] = args.dry_run

    work = resolve_workload(args.workload, args.dry_run)
    providers = (args.providers or DEFAULT_PROVIDERS[args.workload]).split(",")
    rows: list[dict] = []
    t0 = time.perf_counter()
    if args.workload == "sweep":
        rows += run_sweep(work, device, providers, args, env, out)
    else:
        print(f"workload {work}: generating data on {device} ...", file=sys.stderr)
        data = common.make_data(work, device, args.seed)
        common.sync(device)
        print(f"  data ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        bar = common.progress(len(providers), f"head {work.name}")
        rows += run_providers(work, data, device, providers, args, env, bar=bar, emit=lambda r: common.write_rows(out, [r]))
        bar.close()
        timed = {r["provider"]: r for r in rows if "est_full_s" in r}
        over = "geosteer" in timed and "first-stage" in timed and (
            timed["geosteer"]["est_full_s"] > 1.5 * timed["first-stage"]["est_full_s"])
        if args.profile == "always" or (args.profile == "auto" and over):
            stage_rows = profile_stages(work, data, device, repeats=max(1, min(3, args.repeats)))
            for r in stage_rows:
                r.update(workload=work.name, **work.shape_dict(), **env)
                print(f"  stage {r['stage']:34s} {r['median_s']:8.4f}s  {100 * (r['share'] or 0):5.1f}%", file=sys.stderr)
            common.write_rows(out, stage_rows)
            rows += stage_rows
        by = {r["provider"]: r for r in rows if r.get("kind") == "provider" and "est_full_s" in r}
        if "geosteer" in by:
            head = by["geosteer"]
            for peer in ("first-stage", "first-stage-fp32", "naive", "naive-perquery", "geosteer-tla"):
                if peer in by:
                    line = f"  geosteer time / {peer} time = {head['est_full_s'] / by[peer]['est_full_s']:.3f} (wall)"
                    if "est_full_cpu_s" in head and "est_full_cpu_s" in by[peer]:
                        line += f", {head['est_full_cpu_s'] / by[peer]['est_full_cpu_s']:.3f} (CPU time)"
                    print(line, file=sys.stderr)
        del data
    print(f"{len(rows)} rows -> {out}  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    if args.plot:
        from bench.plot_head import plot

        plot([out], args.plot)
        print(f"plot -> {args.plot}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


def run_sweep(base: Workload, device: torch.device, providers: list[str], args, env: dict, out: str) -> list[dict]:
    """Throughput vs Q (K fixed) and vs K (Q fixed) on one reduced workload."""
    if args.dry_run:
        qs, ks = (4, 8, 16), (2, 5, 10)
    else:
        qs, ks = SWEEP_Q, SWEEP_K
    data = common.make_data(base.replace(Q=max(qs + (base.Q,))), device, args.seed)
    points = [("Q", q, base.K) for q in qs] + [("K", base.Q, k) for k in ks]
    bar = common.progress(len(points) * len(providers), "sweep")
    rows = []
    for axis, q, k in points:
        work = base.replace(Q=q, K=k)
        rows += run_providers(work, data.subset(q), device, providers, args, env, extra_fields={"sweep": axis}, bar=bar,
                              emit=lambda r: common.write_rows(out, [r]))
    bar.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
