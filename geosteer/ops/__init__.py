"""geosteer's ops: plain-torch references registered as `geosteer::` custom ops.

One module per op (`geosteer/ops/<op>.py`: reference, registration,
dispatch), its Triton kernel in `geosteer.kernels.<op>`, its numba kernel in
`geosteer.cpu_kernels.<op>`; `dispatch` holds the rule that picks one.
Importing this package registers every op, so `torch.ops.geosteer.*` exist.
"""

from geosteer.ops import assign, checks, first_stage, part_cost, project  # noqa: F401
