"""Triton kernels for CUDA tensors, installed as `geosteer.kernels` (setup.cfg maps kernels/ there).

One module per op (`kernels/<op>.py`), its torch reference and dispatch in `geosteer/ops/<op>.py`.
"""
