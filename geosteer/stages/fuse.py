"""The fused score S(q, c): one formula for every scorer of candidates (DESIGN §1).

`GeoSteerHead`, `geosteer.score_pairs` and the sharded head
(`geosteer.distributed`) each compute the terms their own way (a pool, given
pairs, terms gathered across ranks); they all fuse them here, so the three
cannot drift apart.
"""

from __future__ import annotations

from torch import Tensor

from geosteer.config import HeadConfig


def fused_score(cfg: HeadConfig, steered: Tensor, align: Tensor, structure: Tensor, contrast: Tensor) -> Tensor:
    """S = (1 - λ)·s + λ·A + γ·R + δ·C, elementwise.

    Args:
        cfg: λ, γ, δ.
        steered: `[Q, K]` s, the (steered) cosine less the β penalty.
        align: `[Q, K]` A(q, c); structure `[Q, K]` R(q, c); contrast `[Q, K]` C(q, c).

    Returns:
        `[Q, K]` float32.
    """
    return (1.0 - cfg.lam) * steered + cfg.lam * align + cfg.gamma * structure + cfg.delta * contrast
