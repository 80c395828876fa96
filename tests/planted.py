"""Planted retrieval problems on synthetic embeddings, shared by the tests.

Each builder returns embeddings with a known right answer and a known way in
which plain cosine fails, so a test can assert both the failure and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


@dataclass
class BindingProblem:
    """Scenes of two (colour, shape) objects; each target's swapped twin is in the gallery."""

    query: Tensor  # [Q, D] pooled caption embedding
    query_parts: Tensor  # [Q, 2, D]
    gallery: Tensor  # [N, D] pooled scene embeddings
    gallery_parts: Tensor  # [N, 2, D] per-object region embeddings
    targets: Tensor  # [Q] gallery id of each query's scene
    twins: Tensor  # [Q] gallery id of its attribute-swapped twin


def binding_problem(num_queries: int = 60, dim: int = 64, distractors: int = 200, seed: int = 0) -> BindingProblem:
    """Pooled embeddings cannot tell a scene from its twin; region sets can.

    Concepts are random unit vectors; an object is normalise(colour + shape);
    a scene's pooled embedding is normalise(sum of its attribute vectors) plus
    a little noise, so a scene and its colour-swapped twin pool to the same
    point and cosine picks between them by noise (~50%).
    """
    g = torch.Generator().manual_seed(seed)
    colours = unit(torch.randn(8, dim, generator=g))
    shapes = unit(torch.randn(8, dim, generator=g))

    def obj(c: Tensor, s: Tensor) -> Tensor:
        return unit(colours[c] + shapes[s])

    def scene(c1, s1, c2, s2, noise: float) -> tuple[Tensor, Tensor]:
        pooled = colours[c1] + shapes[s1] + colours[c2] + shapes[s2]
        pooled = unit(unit(pooled) + noise * torch.randn(dim, generator=g) / dim**0.5)
        parts = torch.stack([obj(c1, s1), obj(c2, s2)])
        parts = unit(parts + noise * torch.randn(parts.shape, generator=g) / dim**0.5)
        return pooled, parts

    query, query_parts, gallery, gallery_parts, targets, twins = [], [], [], [], [], []
    taken = set()  # query scenes, as object sets: no distractor may repeat one
    while len(query) < num_queries:
        c = torch.randperm(8, generator=g)[:2]
        s = torch.randperm(8, generator=g)[:2]
        key = frozenset([(int(c[0]), int(s[0])), (int(c[1]), int(s[1]))])
        if key in taken:  # every query scene is distinct: one right answer each
            continue
        taken.add(key)
        pooled, parts = scene(c[0], s[0], c[1], s[1], 0.0)
        query.append(pooled)
        query_parts.append(parts)
        pair = [scene(c[0], s[0], c[1], s[1], 0.05), scene(c[1], s[0], c[0], s[1], 0.05)]  # target, twin
        order = torch.randperm(2, generator=g)
        for which in order.tolist():
            (targets if which == 0 else twins).append(len(gallery))
            gallery.append(pair[which][0])
            gallery_parts.append(pair[which][1])
    while len(gallery) < 2 * num_queries + distractors:
        c = torch.randint(0, 8, (2,), generator=g)
        s = torch.randint(0, 8, (2,), generator=g)
        if frozenset([(int(c[0]), int(s[0])), (int(c[1]), int(s[1]))]) in taken:
            continue
        pooled, parts = scene(c[0], s[0], c[1], s[1], 0.05)
        gallery.append(pooled)
        gallery_parts.append(parts)
    return BindingProblem(
        torch.stack(query), torch.stack(query_parts), torch.stack(gallery), torch.stack(gallery_parts),
        torch.tensor(targets), torch.tensor(twins),
    )


@dataclass
class ClusterProblem:
    """Each query's relevant cluster is outscored by the edge of a confuser cluster."""

    query: Tensor  # [Q, D]
    gallery: Tensor  # [N, D]
    cluster_of: Tensor  # [N] query id whose relevant cluster holds the item, -1 otherwise
    edge_of: Tensor  # [N] query id whose confuser-edge item this is, -1 otherwise


def cluster_problem(num_queries: int = 30, dim: int = 64, members: int = 10, edges: int = 2, seed: int = 0) -> ClusterProblem:
    """Cosine ranks a confuser's edge items first; their neighbourhoods give them away.

    The relevant cluster sits at cos ~0.7 from q. A confuser cluster sits
    further away, but a few of its members ("edge" items) lean towards q and
    beat the relevant cluster on cosine. An edge item's own nearest gallery
    items are the confuser's members, which q's neighbourhood does not share,
    so neighbourhood matching demotes it (the hubness the paper targets).
    """
    g = torch.Generator().manual_seed(seed)

    def orth(v: Tensor, *basis: Tensor) -> Tensor:
        for b in basis:
            v = v - (v @ b) * b
        return unit(v)

    queries, gallery, cluster_of, edge_of = [], [], [], []

    def add(x: Tensor, cluster: int, edge: int) -> None:
        gallery.append(x)
        cluster_of.append(cluster)
        edge_of.append(edge)

    for qi in range(num_queries):
        q = unit(torch.randn(dim, generator=g))
        r = orth(torch.randn(dim, generator=g), q)
        d = orth(torch.randn(dim, generator=g), q, r)
        relevant = unit(q + 1.0 * r)  # cos 0.71 from q
        confuser = unit(q + 1.6 * d)  # cos 0.53 from q
        for _ in range(members):
            add(unit(relevant + 0.25 * unit(torch.randn(dim, generator=g))), qi, -1)
            add(unit(confuser + 0.25 * unit(torch.randn(dim, generator=g))), -1, -1)
        for _ in range(edges):
            add(unit(confuser + 0.7 * q + 0.15 * unit(torch.randn(dim, generator=g))), -1, qi)  # cos ~0.8 from q
        queries.append(q)
    return ClusterProblem(torch.stack(queries), torch.stack(gallery), torch.tensor(cluster_of), torch.tensor(edge_of))
