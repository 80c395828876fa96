"""The head's stages, each a module of plain functions over tensors and ops.

- `first_stage_faiss`: an approximate first stage (FAISS) for large galleries;
  the exact one is the `geosteer::first_stage` op.
- `steer`: stage 1, steering directions and the confuser penalty.
- `rerank`: stage 2, part / neighbourhood costs, the matching, the alignment.
- `structure`: the structure term R(q, c) over matched regions' boxes.
"""
