"""Turning images and captions into what the head reads.

`Indexer` (`geosteer.index.indexer`) encodes a list of images and captions
in memory into a `GallerySide` / `QuerySide`.
"""

from geosteer.index.indexer import ANCHORS, Indexer, RegionFamily, assemble_regions, encoder_fingerprint, query_inputs

__all__ = ["ANCHORS", "Indexer", "RegionFamily", "assemble_regions", "encoder_fingerprint", "query_inputs"]
