"""Triton kernels, installed as `geosteer.kernels`; each has a torch reference in `geosteer.ops`."""
