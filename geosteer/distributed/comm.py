"""The process group and the collectives a sharded search uses: each one timed, each one bounded.

Everything goes through torch.distributed (gloo on CPUs, NCCL on GPUs,
launched by `torchrun` or `torch.multiprocessing.spawn`); there is no other
transport. `init_distributed` starts the group with a timeout, so a
collective whose peer is stuck or gone fails after that long instead of
hanging; `Comm` wraps the group and

- times every collective it runs (`Comm.stats`: seconds inside collectives
  and bytes this rank put in, per step), which is how the bench splits a
  search into communication and compute;
- turns a failing collective into a `CollectiveError` that names it, the
  step it served and the timeout;
- runs local work in `Comm.step(name)`: the step ends in one all-reduce of
  an error flag (about half a millisecond on gloo), so a rank that raised
  makes every rank raise `RankFailure` at the same point instead of leaving
  the others blocked in the next collective.

Rule for callers: no collective inside a step (a failing rank would skip it
and the others would wait for it until the timeout).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from geosteer.distributed.faults import CollectiveError, describe, error_kind, rank_failure

#: Seconds a collective may wait for its peers before it fails (`init_distributed`).
DEFAULT_TIMEOUT_S = 120.0
BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class CommStats:
    """Time spent inside collectives, per `"step/op"` key, since the last `reset`.

    The time of a collective includes waiting for the slowest rank to reach
    it (load imbalance shows up here, not in compute). `bytes` is what this
    rank put into each collective (its input), not what crossed the wire.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, seconds: float, nbytes: int) -> None:
        """Record one collective."""
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.calls[key] = self.calls.get(key, 0) + 1
        self.bytes[key] = self.bytes.get(key, 0) + nbytes

    def total_seconds(self) -> float:
        """Seconds inside collectives, all keys."""
        return sum(self.seconds.values())

    def total_bytes(self) -> int:
        """Bytes this rank put into collectives, all keys."""
        return sum(self.bytes.values())

    def reset(self) -> None:
        """Forget everything recorded."""
        self.seconds.clear()
        self.calls.clear()
        self.bytes.clear()

    def snapshot(self) -> dict[str, dict]:
        """A JSON-ready copy: {"seconds": {...}, "calls": {...}, "bytes": {...}}."""
        return {"seconds": dict(self.seconds), "calls": dict(self.calls), "bytes": dict(self.bytes)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timeout(timeout_s) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def init_distributed(
    backend: str = "auto",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Comm:
    """Start the default process group (with a collective timeout) and return its `Comm`.

    Under `torchrun` (RANK / WORLD_SIZE / MASTER_ADDR in the environment)
    nothing else is needed. Without them and without `rank`, a one-rank
    group on 127.0.0.1 (the same code then runs as a single process). If a
    group is already initialised it is used as is.

    Args:
        backend: "auto" (NCCL when CUDA is available, else gloo), "gloo" or "nccl".
        timeout_s: how long a collective waits for its peers before it fails.
        init_method: a torch.distributed init URL (default "env://" under
            torchrun); e.g. "tcp://127.0.0.1:29500" with `rank` and `world_size`.
        rank, world_size: this process's rank and the number of ranks, when
            not launched by torchrun.

    Returns:
        A `Comm` over the default group.

    Raises:
        ValueError: unknown `backend`, bad `timeout_s`, `rank` without `world_size`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    timeout = _timeout(timeout_s)
    if dist.is_initialized():
        return Comm(timeout_s=timeout)
    if (rank is None) != (world_size is None):
        raise ValueError(f"pass rank and world_size together (got rank={rank!r}, world_size={world_size!r})")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if rank is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        init_method = init_method or "env://"
    elif rank is None:
        rank, world_size = 0, 1
        init_method = init_method or f"tcp://127.0.0.1:{_free_port()}"
    elif init_method is None:
        init_method = "env://"
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    return Comm(timeout_s=timeout)


class Comm:
    """A process group with the collectives of the sharded search (timed, errors named).

    Args:
        group: a torch.distributed group (default: the default group, which
            must be initialised: `init_distributed`).
        timeout_s: the group's timeout, for messages only (the group enforces it).

    Attributes:
        rank, world_size: of this process in `group`.
        device: where collective buffers live: the current CUDA device for
            NCCL, the CPU for gloo.
        stats: `CommStats` of the collectives run through this object.
    """

    def __init__(self, group=None, *, timeout_s: float | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call geosteer.distributed.init_distributed() first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        self.timeout_s = timeout_s
        self.stats = CommStats()

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r}, device={self.device})"

    # -- the error protocol

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run local work; if any rank raised in it, every rank raises `RankFailure` when it ends.

        No collective may run inside (see the module docstring).
        """
        error: Exception | None = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every rank re-raises it below, named
            error = e
        self.check(name, error)

    def check(self, name: str, error: Exception | None) -> None:
        """Agree on whether step `name` failed anywhere; raise `RankFailure` on every rank if so.

        Raises:
            RankFailure (RankValueError / RankTypeError): some rank passed an error.
            CollectiveError: the agreement itself failed (a rank gone).
        """
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=self.device)
        self._run("all_reduce", f"{name}/flag", flag.nbytes, lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group))
        if not int(flag.item()):
            return
        mine = None if error is None else (error_kind(error), describe(error))
        gathered = self.all_gather_object(mine, f"{name}/errors")
        failures = {r: g for r, g in enumerate(gathered) if g is not None}
        raise rank_failure(name, failures, self.world_size) from error

    # -- collectives

    def _run(self, op: str, step: str, nbytes: int, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            out = fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001 - a timeout, a closed peer, a size mismatch: named below
            raise CollectiveError(op, step, self.rank, self.timeout_s, e) from e
        self.stats.add(f"{step}/{op}", time.perf_counter() - start, nbytes)
        return out

    def barrier(self, step: str = "barrier") -> None:
        """Wait for every rank."""
        self._run("barrier", step, 0, lambda: dist.barrier(group=self.group))

    def all_gather_object(self, obj, step: str) -> list:
        """Every rank's `obj` (picklable), in rank order."""
        out: list = [None] * self.world_size
        self._run("all_gather_object", step, 0, lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def broadcast_object(self, obj, src: int, step: str):
        """Rank `src`'s `obj` (picklable), on every rank."""
        box = [obj if self.rank == src else None]
        self._run("broadcast_object", step, 0, lambda: dist.broadcast_object_list(box, src=src, group=self.group))
        return box[0]

    def broadcast_(self, tensor: Tensor, src: int, step: str) -> Tensor:
        """Rank `src`'s `tensor`, into `tensor` on every rank (same shape and dtype everywhere)."""
        self._run("broadcast", step, tensor.nbytes if self.rank == src else 0,
                  lambda: dist.broadcast(tensor, src=src, group=self.group))
        return tensor

    def all_reduce_sum_(self, tensor: Tensor, step: str) -> Tensor:
        """Sum of every rank's `tensor`, in place."""
        self._run("all_reduce", step, tensor.nbytes, lambda: dist.all_reduce(tensor, group=self.group))
        return tensor

    def all_gather(self, tensor: Tensor, step: str) -> Tensor:
        """`[W, *tensor.shape]`: every rank's `tensor` (the same shape on every rank), stacked in rank order."""
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._run("all_gather", step, tensor.nbytes, lambda: dist.all_gather(out, tensor, group=self.group))
        return torch.stack(out)

    def gather(self, tensor: Tensor, dst: int, step: str) -> Tensor | None:
        """`[W, *tensor.shape]` on rank `dst` (None elsewhere): every rank's `tensor`, same shape everywhere."""
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world_size)] if self.rank == dst else None
        self._run("gather", step, tensor.nbytes, lambda: dist.gather(tensor, out, dst=dst, group=self.group))
        return torch.stack(out) if out is not None else None

    def all_gather_rows(self, tensor: Tensor, step: str) -> tuple[Tensor, list[int]]:
        """Every rank's rows `[R_r, ...]` (R_r may differ; the rest of the shape may not), concatenated in rank order.

        Returns:
            `[sum R_r, ...]` and the list of R_r.
        """
        count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=self.device)
        counts = [int(c) for c in self.all_gather(count, f"{step}/count").reshape(-1).tolist()]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        stacked = self.all_gather(padded, step)
        return torch.cat([stacked[r, :c] for r, c in enumerate(counts)]), counts

    def all_to_all(self, send: Tensor, send_counts: list[int], step: str,
                   recv_counts: list[int] | None = None) -> tuple[Tensor, list[int]]:
        """Send rows `send[a_r:b_r]` to each rank r (`send_counts[r]` rows each); receive theirs.

        Args:
            send: `[S, ...]`, rows grouped by destination rank in rank order.
            send_counts: rows for each rank (sums to S).
            recv_counts: rows coming from each rank, when already known
                (else one small all-to-all finds them).

        Returns:
            `[R, ...]` the received rows grouped by source rank, and the list of counts per source.
        """
        if recv_counts is None:
            sc = torch.tensor(send_counts, dtype=torch.long, device=self.device)
            rc = torch.empty_like(sc)
            self._run("all_to_all", f"{step}/count", sc.nbytes, lambda: dist.all_to_all_single(rc, sc, group=self.group))
            recv_counts = [int(c) for c in rc.tolist()]
        send = send.contiguous()
        recv = send.new_empty((sum(recv_counts), *send.shape[1:]))
        self._run("all_to_all", step, send.nbytes, lambda: dist.all_to_all_single(
            recv, send, output_split_sizes=recv_counts, input_split_sizes=send_counts, group=self.group))
        return recv, recv_counts

    def exchange_rows(self, table: Tensor, wanted: Tensor, offsets: Tensor, step: str) -> Tensor:
        """Rows of a sharded table by global id: each rank asks for its own `wanted` ids.

        Each id goes to the rank that owns it, which answers with its row:
        this rank's traffic is the rows it asked for plus the rows others
        asked it for, never a whole shard.

        Args:
            table: `[N_r, ...]` this rank's rows (global ids `offsets[r] ..
                offsets[r+1] - 1`).
            wanted: `[T]` int64 global ids (any order, repeats allowed).
            offsets: `[W + 1]` int64 first global id of each rank, then N.

        Returns:
            `[T, ...]` the rows, in `wanted`'s order.
        """
        owner = torch.bucketize(wanted, offsets[1:-1], right=True)
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=self.world_size).tolist()
        asked, asked_counts = self.all_to_all((wanted - offsets[owner])[order], counts, f"{step}/ids")
        rows, _ = self.all_to_all(table[asked], asked_counts, f"{step}/rows", recv_counts=counts)
        out = torch.empty_like(rows)
        out[order] = rows
        return out

    def close(self) -> None:
        """Destroy the default process group (call once, on every rank, at the end)."""
        if dist.is_initialized():
            dist.destroy_process_group()
