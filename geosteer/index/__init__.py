"""Turning images and captions into what the head reads, in memory and on disk.

`Indexer` (`geosteer.index.indexer`) encodes a list of images and captions
in memory into a `GallerySide` / `QuerySide`. `Index` (`geosteer.index.store`)
is the on-disk index: `Index.build(folder, out, encoder)` writes safetensors
shards and a JSON manifest (resumable), `Index.open(out)` memory-maps them,
`index.search(captions)` runs the head over them.
"""

from geosteer.index.indexer import ANCHORS, Indexer, RegionFamily, assemble_regions, encoder_fingerprint, query_inputs
from geosteer.index.store import (
    FORMAT_VERSION,
    IMAGE_EXTENSIONS,
    Index,
    Ranking,
    SearchResult,
    StoreError,
    index_state,
    write_index,
)
from geosteer.encoders.images import load_image, to_rgb  # the index's decoder, kept under geosteer.index too

__all__ = [
    "ANCHORS",
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "Index",
    "Indexer",
    "Ranking",
    "RegionFamily",
    "SearchResult",
    "StoreError",
    "assemble_regions",
    "encoder_fingerprint",
    "index_state",
    "load_image",
    "query_inputs",
    "to_rgb",
    "write_index",
]
