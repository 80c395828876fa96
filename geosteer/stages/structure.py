"""The structure term R(q, c) (DESIGN §1, stage 2): do the matched regions' boxes keep the query's relations?"""

from __future__ import annotations

import torch
from torch import Tensor

from geosteer.relations import GEOMETRY, RELATIONS

# Per relation type id: the axis compared and the sign of (centre_j - centre_i) that holds.
_AXIS = tuple(GEOMETRY[r][0] for r in RELATIONS)
_SIGN = tuple(float(GEOMETRY[r][1]) for r in RELATIONS)


def relation_score(cols: Tensor, ids: Tensor, boxes: Tensor, relations: Tensor) -> Tensor:
    """R(q, c): fraction of the query's relations that hold between matched regions.

    Args:
        cols: `[Q, K, m]` matched region per query part, -1 = unmatched.
        ids: `[Q, K]` candidate ids.
        boxes: `[N, n, 4]` region boxes (x0, y0, x1, y1), image coordinates.
        relations: `[Q, r, 3]` int64 rows (i, j, type), type indexing
            `geosteer.relations.RELATIONS`; rows with i < 0 are padding.

    Returns:
        `[Q, K]` float32 in [0, 1]; 0 for queries without relations.
    """
    num_queries, num_cands, _ = cols.shape
    num_rel = relations.shape[1]
    centres = ((boxes[..., :2] + boxes[..., 2:]) * 0.5).float()[ids]  # [Q, K, n, 2]
    matched = centres.gather(2, cols.clamp_min(0)[..., None].expand(-1, -1, -1, 2))  # [Q, K, m, 2]
    ok = cols >= 0
    valid = relations[..., 0] >= 0  # [Q, r]
    part_i = relations[..., 0].clamp_min(0)[:, None, :].expand(num_queries, num_cands, num_rel)
    part_j = relations[..., 1].clamp_min(0)[:, None, :].expand(num_queries, num_cands, num_rel)
    ci = matched.gather(2, part_i[..., None].expand(-1, -1, -1, 2))  # [Q, K, r, 2]
    cj = matched.gather(2, part_j[..., None].expand(-1, -1, -1, 2))
    kind = relations[..., 2].clamp(0, len(RELATIONS) - 1)[:, None, :].expand(num_queries, num_cands, num_rel)
    axis = torch.tensor(_AXIS, device=kind.device)[kind]  # [Q, K, r]
    sign = torch.tensor(_SIGN, device=kind.device)[kind]
    offset = (cj - ci).gather(-1, axis[..., None]).squeeze(-1)  # centre_j - centre_i along the axis
    holds = sign * offset > 0
    holds = holds & ok.gather(2, part_i) & ok.gather(2, part_j) & valid[:, None, :]
    count = valid.sum(dim=1).clamp_min(1).float()[:, None]
    return holds.float().sum(dim=-1) / count
