"""Bring a search's queries to every rank: replicated, from one rank (serving), or split across ranks (batch).

Every rank scores its shard against every query, so each needs all of
them; the query side is small (Q x (1 + m + u) x D), so it travels whole.
The fields of a `QuerySide` are packed into one byte buffer per row, so one
collective carries them all.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from geosteer.distributed.comm import Comm
from geosteer.inputs import QuerySide

#: The fields of a `QuerySide`, in packing order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(QuerySide))
#: Where queries come from: every rank passes the same ("all"), each its own ("split"), or one rank (an int).
SOURCES = ("all", "split")


def check_source(source, world_size: int) -> None:
    """`source` must be "all", "split" or a rank in `[0, world_size)`.

    Raises:
        ValueError / TypeError: naming `source`.
    """
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"source must be 'all', 'split' or a rank (int), got {source!r}")
        return
    if isinstance(source, bool) or not isinstance(source, int):
        raise TypeError(f"source must be 'all', 'split' or a rank (int), got {type(source).__name__} {source!r}")
    if not 0 <= source < world_size:
        raise ValueError(f"source rank must lie in [0, {world_size}), got {source}")


def as_query_side(queries) -> QuerySide:
    """`queries` as a `QuerySide` (a bare `[Q, D]` tensor is its embeddings).

    Raises:
        TypeError: neither a `QuerySide` nor a tensor.
    """
    if isinstance(queries, QuerySide):
        return queries
    if isinstance(queries, Tensor):
        return QuerySide(queries)
    raise TypeError(f"queries must be a QuerySide or a [Q, D] tensor, got {type(queries).__name__}")


def layout(q: QuerySide) -> tuple[int, tuple]:
    """(Q, per field: None or (shape after Q, dtype name)): what a rank needs to unpack `q`.

    Raises:
        TypeError / ValueError: a field that is not a tensor, or whose rows do not number Q.
    """
    if not isinstance(q.embeddings, Tensor) or q.embeddings.ndim != 2:
        got = tuple(q.embeddings.shape) if isinstance(q.embeddings, Tensor) else type(q.embeddings).__name__
        raise ValueError(f"query must be a [Q, D] tensor, got {got}")
    num = q.embeddings.shape[0]
    fields = []
    for name in FIELDS:
        t = getattr(q, name)
        if t is None:
            fields.append(None)
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"queries.{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 1 or t.shape[0] != num:
            raise ValueError(f"queries.{name} has shape {tuple(t.shape)}; its first dim must be Q={num}")
        fields.append((tuple(t.shape[1:]), str(t.dtype).removeprefix("torch.")))
    return num, tuple(fields)


def pack(q: QuerySide) -> Tensor:
    """`[Q, B]` uint8: each query's fields, byte for byte, side by side."""
    num = q.embeddings.shape[0]
    cols = [t.contiguous().reshape(num, math.prod(t.shape[1:])).view(torch.uint8)
            for t in (getattr(q, name) for name in FIELDS) if t is not None]
    return torch.cat(cols, dim=1) if cols else torch.empty(num, 0, dtype=torch.uint8)


def unpack(buf: Tensor, fields: tuple) -> QuerySide:
    """The `QuerySide` of `buf [Q, B]` (`pack`'s output) laid out as `fields` (`layout(q)[1]`)."""
    num = buf.shape[0]
    out, start = {}, 0
    for name, spec in zip(FIELDS, fields):
        if spec is None:
            out[name] = None
            continue
        shape, dtype = spec
        dt = getattr(torch, dtype)
        width = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
        # a fresh copy: a column slice's strides and offset need not suit the wider dtype
        out[name] = buf[:, start : start + width].flatten().clone().view(dt).reshape(num, *shape)
        start += width
    return QuerySide(**out)


def _describe(fields: tuple) -> str:
    return ", ".join(f"{n} {list(s[0])} {s[1]}" for n, s in zip(FIELDS, fields) if s is not None)


def distribute(comm: Comm, queries, source) -> tuple[QuerySide, int, int]:
    """Every query of the search on every rank, and which of them are this rank's.

    Args:
        comm: the group.
        queries: this rank's queries (`QuerySide` or `[Q, D]` tensor), or
            None on the ranks that pass none when `source` is a rank.
        source: "all" (every rank passes the same queries: nothing travels),
            "split" (each rank passes its own, possibly none: they are
            gathered in rank order) or a rank (serving: only that rank passes
            queries, the others None: they are broadcast).

    Returns:
        (all queries on every rank, start, stop): this rank's own queries
        are rows `start:stop` ("split"), else all rows.

    Raises:
        RankFailure (a ValueError / TypeError kind for bad queries) on every
        rank; ValueError on every rank when the ranks' queries differ in
        fields, shapes or dtypes.
    """
    check_source(source, comm.world_size)
    mine = packed = None
    with comm.step("queries"):
        if isinstance(source, int) and comm.rank != source:
            if queries is not None:
                raise ValueError(f"queries must be None on rank {comm.rank}: with source={source}, only rank {source} passes them")
        else:
            if queries is None:
                raise ValueError(f"rank {comm.rank} passed no queries (None); with source={source!r} every rank passes its own")
            q = as_query_side(queries)
            mine = layout(q)
            packed = pack(q).to(comm.device)
    if isinstance(source, int):
        num, fields = comm.broadcast_object(mine, source, "queries")
        if comm.rank == source:
            buf = packed
        else:
            buf = torch.empty(num, _row_bytes(fields), dtype=torch.uint8, device=comm.device)
        comm.broadcast_(buf, source, "queries")
        return (q if comm.rank == source else unpack(buf, fields)), 0, num
    layouts = comm.all_gather_object(mine, "queries")
    fields = layouts[0][1]
    for r, (num, f) in enumerate(layouts):
        if f != fields:
            raise ValueError(f"the ranks' queries differ: rank 0 has {_describe(fields)}; rank {r} has {_describe(f)}")
        if source == "all" and num != layouts[0][0]:
            raise ValueError(f"with source='all' every rank passes the same queries, but rank 0 has Q={layouts[0][0]} "
                             f"and rank {r} Q={num} (use source='split' for a batch split across ranks)")
    if source == "all":
        return q, 0, layouts[0][0]
    rows, counts = comm.all_gather_rows(packed, "queries")
    start = sum(counts[: comm.rank])
    return unpack(rows, fields), start, start + counts[comm.rank]


def _row_bytes(fields: tuple) -> int:
    total = 0
    for spec in fields:
        if spec is not None:
            shape, dtype = spec
            total += int(torch.Size(shape).numel()) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return total
