"""Turning images and captions into what the head reads, in memory and on disk, and searching them.

- `geosteer.index.indexer`: `Indexer` encodes images and captions in memory
  into a `GallerySide` / `QuerySide`.
- `geosteer.index.format`: the on-disk format, the only code that writes an
  index folder's files and the package's one reader of them (manifest,
  safetensors shards, checksums).
- `geosteer.index.builder`: `Index.build` / `index.add` / `index.sync` /
  `index.remove` / `write_index`: collect files, decode, encode shard by
  shard, resume, merge; bring an index in line with its images (`Changes`).
- `geosteer.index.store`: `Index`: open, the memory-mapped gallery, paths,
  sizes, checks, the encoder it was built with (`load_encoder`).
- `geosteer.index.search`: `Searcher`: one head per method built once,
  `SearchResult` and its one JSON form (`to_dict`).
"""

from geosteer.encoders.images import load_image, to_rgb  # the index's decoder, kept under geosteer.index too
from geosteer.index.builder import IMAGE_EXTENSIONS, Changes
from geosteer.index.format import FORMAT_VERSION, StoreError, index_state, read_index_json, recorded_model
from geosteer.index.indexer import (
    ANCHORS,
    Indexer,
    RegionFamily,
    assemble_regions,
    caption_parts,
    encoder_fingerprint,
    query_inputs,
)
from geosteer.index.search import (
    WARM_UP_QUERIES,
    Catalog,
    Ranking,
    Searcher,
    SearchResult,
    head_k,
    query_side,
    search_result,
)
from geosteer.index.store import Index, write_index

__all__ = [
    "ANCHORS",
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "WARM_UP_QUERIES",
    "Catalog",
    "Changes",
    "Index",
    "Indexer",
    "Ranking",
    "RegionFamily",
    "SearchResult",
    "Searcher",
    "StoreError",
    "assemble_regions",
    "caption_parts",
    "encoder_fingerprint",
    "head_k",
    "index_state",
    "load_image",
    "query_inputs",
    "query_side",
    "read_index_json",
    "recorded_model",
    "search_result",
    "to_rgb",
    "write_index",
]
