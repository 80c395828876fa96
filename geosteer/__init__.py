"""geosteer: a training-free re-ranking head for CLIP retrieval.

Part matching with a batched Hungarian solver, query steering from local
contrastive neighbourhoods, on CPU and GPU, inside one `nn.Module`.

This package is the library: the head and its config, the typed inputs, the
stages and ops, encoders and the indexer. The GeoShapes application (scenes,
splits, eval, demo, demo-model training) lives in `geosteer.geoshapes` and
uses only what is public here.
"""

from geosteer import ops  # noqa: F401  (registers the geosteer:: ops)
from geosteer.config import PRESETS, HeadConfig, get_config
from geosteer.head import STAGES, GeoSteerHead, HeadResult
from geosteer.inputs import GallerySide, QuerySide
from geosteer.ops.assign import batch_linear_assignment
from geosteer.pairs import PairScores, score_pairs
from geosteer.relations import RELATIONS
from geosteer.stages.rerank import knn_graph

__version__ = "0.1.0"

__all__ = [
    "GallerySide",
    "GeoSteerHead",
    "HeadConfig",
    "HeadResult",
    "PRESETS",
    "PairScores",
    "QuerySide",
    "RELATIONS",
    "STAGES",
    "batch_linear_assignment",
    "get_config",
    "knn_graph",
    "score_pairs",
]
