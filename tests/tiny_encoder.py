"""TinyEncoder: a stand-in encoder for pipeline tests (mean colour as a unit 3-vector), no model to load."""

from __future__ import annotations

import numpy as np
import torch


class TinyEncoder:
    """Mean colour of the preprocessed image as a unit vector: enough to run a pipeline, not to retrieve."""

    name = "tiny"
    embed_dim = 3
    image_size = (32, 32)
    device = torch.device("cpu")
    model = torch.nn.Linear(1, 1)

    @staticmethod
    def preprocess(im):
        return torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.float32) / 255).permute(2, 0, 1)

    def encode_images(self, x, batch_size=64, progress=False):
        return torch.nn.functional.normalize(x.mean(dim=(2, 3)) + 1e-3, dim=-1)

    def encode_texts(self, texts, batch_size=256, progress=False):
        return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=-1)
