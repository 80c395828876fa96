"""A disk cache in front of an encoder's image tower: each distinct preprocessed image is encoded once, ever.

The benchmark encodes the same crops again on every run (and the bridge
encoder manages ~10-40 images/s on two CPU cores), so `CachedEncoder`
keeps `encode_images` results keyed by the encoder's fingerprint and a
hash of each input tensor, in one file per encoder under a folder. It
stands in wherever the library takes an encoder (`geosteer.index.Indexer`):
every other attribute is the wrapped encoder's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from geosteer.index import encoder_fingerprint


class CachedEncoder:
    """`encoder` with a disk cache of its image embeddings (call `save()` to write new ones).

    Args:
        encoder: a `geosteer.encoders.ClipEncoder`-like encoder.
        folder: where the cache file lives (created on save).
    """

    def __init__(self, encoder, folder: str | os.PathLike) -> None:
        self._encoder = encoder
        self.fingerprint = encoder_fingerprint(encoder)
        self.path = Path(folder) / f"images_{self.fingerprint}.pt"
        self._table: dict[bytes, Tensor] = torch.load(self.path) if self.path.is_file() else {}
        self._new = 0
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_images(self, images, batch_size: int = 64, progress: bool = False) -> Tensor:
        if not isinstance(images, Tensor):
            images = torch.stack([self._encoder.preprocess(im) for im in images])
        keys = [hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest() for x in images.float().cpu()]
        todo = [i for i, k in enumerate(keys) if k not in self._table]
        if todo:
            emb = self._encoder.encode_images(images[todo], batch_size=batch_size, progress=progress).cpu()
            for i, e in zip(todo, emb):
                self._table[keys[i]] = e.clone()
            self._new += len(todo)
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if not keys:
            return torch.empty(0, self._encoder.embed_dim)
        return torch.stack([self._table[k] for k in keys]).to(self._encoder.device)

    def save(self) -> None:
        """Write the cache file if anything new was encoded."""
        if self._new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            torch.save(self._table, tmp)
            os.replace(tmp, self.path)
            self._new = 0
