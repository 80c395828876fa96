"""A gallery sharded across processes and machines, searched with exactly the head's result.

Built on torch.distributed (gloo on CPUs, NCCL on GPUs; launch with
`torchrun`). Each rank holds a contiguous shard of the gallery side and
the global ids; a search gathers only the global top-K pool (scores and
ids), the pool's K x D embeddings where steering needs them, and the
per-candidate terms — never a shard. docs/distributed.md has the commands,
the guarantees and the costs.

    from geosteer.distributed import ShardedGallery, ShardedHead, init_distributed

    comm = init_distributed()                          # torchrun's env; gloo or NCCL
    gallery = ShardedGallery.open(comm, "index/")      # this rank's shard
    result = ShardedHead(get_config("default"))(queries, gallery, source=0)

`python -m torch.distributed.run --nproc-per-node N -m geosteer.distributed.search INDEX QUERY...`
searches from the command line.
"""

from geosteer.distributed.comm import DEFAULT_TIMEOUT_S, Comm, CommStats, init_distributed
from geosteer.distributed.faults import CollectiveError, RankFailure, RankTypeError, RankValueError, ShardMismatch
from geosteer.distributed.head import ShardedHead
from geosteer.distributed.knn import sharded_knn_graph
from geosteer.distributed.shard import ShardedGallery, shard_bounds, write_shard_list, write_sharded_index

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CollectiveError",
    "Comm",
    "CommStats",
    "RankFailure",
    "RankTypeError",
    "RankValueError",
    "ShardMismatch",
    "ShardedGallery",
    "ShardedHead",
    "init_distributed",
    "shard_bounds",
    "sharded_knn_graph",
    "write_shard_list",
    "write_sharded_index",
]
