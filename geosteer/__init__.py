"""geosteer: a training-free re-ranking head for CLIP retrieval.

Part matching with a batched Hungarian solver, query steering from local
contrastive neighbourhoods, on CPU and GPU, inside one `nn.Module`.
"""

from geosteer import ops  # noqa: F401  (registers the geosteer:: ops)
from geosteer.config import PRESETS, HeadConfig, get_config
from geosteer.head import GeoSteerHead, HeadResult
from geosteer.ops.assign import batch_linear_assignment
from geosteer.rerank import RELATIONS, knn_graph

__version__ = "0.1.0"

__all__ = [
    "GeoSteerHead",
    "HeadConfig",
    "HeadResult",
    "PRESETS",
    "RELATIONS",
    "batch_linear_assignment",
    "get_config",
    "knn_graph",
]
