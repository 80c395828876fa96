"""geosteer.knn_graph: the nearest other items against brute force, and its argument checks (DESIGN §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import geosteer

N, D = 24, 8


def gallery(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1).to(dtype)


def brute_force(items: torch.Tensor, k: int) -> torch.Tensor:
    scores = items.double() @ items.double().T
    scores.fill_diagonal_(-float("inf"))
    return scores.topk(k, dim=1).indices


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_matches_brute_force(dtype, backend):
    items = gallery(dtype)
    got = geosteer.knn_graph(items, 5, backend=backend, screen="off")
    assert got.dtype == torch.long and got.shape == (N, 5) and got.device == items.device
    # Ranks agree up to near-ties at the score's precision: compare scores.
    exact = items.double() @ items.double().T
    want = brute_force(items, 5)
    tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(exact.gather(1, got), exact.gather(1, want), atol=tol, rtol=0)
    assert not (got == torch.arange(N)[:, None]).any()


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.T.contiguous().T,  # transposed storage
        lambda x: torch.stack([x, torch.zeros_like(x)], 2).reshape(N, 2 * D)[:, ::2],  # strided columns
        lambda x: x.clone().requires_grad_(),
        lambda x: torch.nn.Parameter(x.clone()),
    ],
    ids=["transposed", "strided", "requires_grad", "parameter"],
)
def test_odd_layouts_give_the_same_graph(make):
    items = gallery()
    assert torch.equal(geosteer.knn_graph(make(items), 4), geosteer.knn_graph(items, 4))


def test_expanded_gallery_of_duplicates_excludes_self():
    items = gallery()[:1].expand(6, D)  # stride 0: every item the same
    got = geosteer.knn_graph(items, 3)
    assert got.shape == (6, 3)
    for i in range(6):
        assert i not in got[i].tolist() and len(set(got[i].tolist())) == 3


@pytest.mark.parametrize("k", [np.int64(5), np.int32(5), np.uint8(5)])
def test_numpy_integer_k(k):
    items = gallery()
    assert torch.equal(geosteer.knn_graph(items, k), geosteer.knn_graph(items, 5))
    assert torch.equal(geosteer.knn_graph(items, 5, chunk_elements=np.int64(30)), geosteer.knn_graph(items, 5))


def test_k_edges():
    items = gallery()
    assert geosteer.knn_graph(items[:2], 1).tolist() == [[1], [0]]
    assert geosteer.knn_graph(items, N - 1).shape == (N, N - 1)


def _with(index, value):
    items = gallery().clone()
    items[index] = value
    return items


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (lambda: gallery().numpy(), TypeError, r"gallery must be a torch.Tensor .*call torch.from_numpy\(gallery\)"),
        (lambda: gallery().tolist(), TypeError, "gallery must be a torch.Tensor"),
        (lambda: (gallery() * 100).long(), TypeError, "gallery must be float16/bfloat16/float32/float64, got torch.int64"),
        (lambda: gallery() > 0, TypeError, "gallery must be float16.*got torch.bool"),
        (lambda: gallery().to(torch.complex64), TypeError, "gallery must be float16.*got torch.complex64"),
        (lambda: gallery().to_sparse(), TypeError, "gallery must be a dense"),
        (lambda: gallery()[0], ValueError, r"gallery must have shape \[N, D\], got \(8,\)"),
        (lambda: gallery()[None], ValueError, r"gallery must have shape \[N, D\]"),
        (lambda: gallery()[0, 0], ValueError, r"gallery must have shape \[N, D\], got \(\)"),
        (lambda: gallery()[:1], ValueError, "gallery must hold N >= 2"),
        (lambda: gallery()[:0], ValueError, "gallery must hold N >= 2"),
        (lambda: gallery()[:, :0], ValueError, "gallery has D=0"),
        (lambda: _with((3, 1), float("nan")), ValueError, "gallery contains NaN or inf"),
        (lambda: _with((0, 0), float("inf")), ValueError, "gallery contains NaN or inf"),
        (lambda: _with((5, 2), -float("inf")), ValueError, "gallery contains NaN or inf"),
    ],
    ids=["numpy", "list", "int", "bool", "complex", "sparse", "1d", "3d", "0d", "N=1", "N=0", "D=0", "nan", "inf", "-inf"],
)
def test_bad_gallery(bad, error, message):
    with pytest.raises(error, match=message):
        geosteer.knn_graph(bad(), 1)


def test_nan_written_after_a_clean_call_is_caught():
    items = gallery().clone()
    geosteer.knn_graph(items, 3)
    items[7, 0] = float("nan")
    with pytest.raises(ValueError, match="gallery contains NaN or inf"):
        geosteer.knn_graph(items, 3)


@pytest.mark.parametrize(
    "keywords, error, message",
    [
        ({"k": 0}, ValueError, r"k must be an int in \[1, N-1\] = \[1, 23\]"),
        ({"k": N}, ValueError, r"k must be an int in \[1, N-1\]"),
        ({"k": -1}, ValueError, r"k must be an int in \[1, N-1\]"),
        ({"k": True}, TypeError, "k must be an int, got True"),
        ({"k": 5.0}, TypeError, r"k must be an int, got 5.0"),
        ({"k": np.float64(5)}, TypeError, "k must be an int"),
        ({"k": "5"}, TypeError, "k must be an int"),
        ({"k": None}, TypeError, "k must be an int"),
        ({"chunk_elements": 0}, ValueError, "chunk_elements must be a positive int"),
        ({"chunk_elements": -5}, ValueError, "chunk_elements must be a positive int"),
        ({"chunk_elements": 1.5}, TypeError, "chunk_elements must be an int"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
        ({"backend": None}, (TypeError, ValueError), "backend must be"),
        ({"screen": "fast"}, ValueError, "screen must be one of"),
    ],
)
def test_bad_arguments(keywords, error, message):
    args = {"k": 3, **keywords}
    k = args.pop("k")
    with pytest.raises(error, match=message):
        geosteer.knn_graph(gallery(), k, **args)
