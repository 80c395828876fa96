"""Triton kernels for CUDA tensors, installed as `geosteer.kernels` (setup.cfg maps this folder there).

This package sits one level inside `kernels/`, which has no `__init__.py`: a
Python started at the repository root would otherwise import our folder as
PyPI's `kernels` (which transformers imports). One module per op
(`kernels/geosteer_kernels/<op>.py`), its torch reference and dispatch in `geosteer/ops/<op>.py`.
"""
