"""The head's stages, each a module of plain functions over tensors and ops.

- `first_stage_faiss`: an approximate first stage (FAISS) for large galleries;
  the exact one is the `geosteer::first_stage` op.
- `steer`: stage 1, the anchor pairs, the query move's directions, the
  confuser penalty and the request contrast.
- `rerank`: stage 2, part / neighbourhood costs, the matching, the alignment.
- `structure`: the structure term R(q, c) over matched regions' boxes.
- `candidates`: `candidate_terms`, every per-candidate term of S(q, c) in one
  function (the head, `geosteer.score_pairs` and the sharded head call it),
  and the mode rule `uses_parts`.
- `fuse`: the fused score S(q, c), one formula for every scorer.
"""
