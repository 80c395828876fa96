"""geosteer's ops: plain-torch references registered as `geosteer::` custom ops.

Importing this package registers every op, so `torch.ops.geosteer.*` exist.
"""

from geosteer.ops import assign, checks, cost, first_stage, project  # noqa: F401
