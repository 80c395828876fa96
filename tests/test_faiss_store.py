"""A FAISS first stage by its factory string, stored beside an index's shards and searched through.

`FaissFirstStage.build(factory=...)`, its exact re-scoring (`refine`),
`serialize` / `load` (memory-mapped), `Index.build_first_stage` /
`Index.first_stage` (stale after the gallery changes), the `Searcher` taking
its candidates from it (filters too), and `geosteer index --faiss`. Results
are compared with numpy / torch inner products computed here, or with the
exact search of the same index.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geosteer import GallerySide, QuerySide, get_config
from geosteer.index import Index, Searcher, StoreError, write_index
from geosteer.stages.first_stage_faiss import PADDING_SCORE, FaissFirstStage, recall_at_k

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install 'geosteer[faiss]')")


def clustered(num: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(32, dim, generator=g), dim=-1)
    return F.normalize(centres[torch.randint(0, 32, (num,), generator=g)] + 0.5 * F.normalize(
        torch.randn(num, dim, generator=g), dim=-1), dim=-1)


def noisy(x: torch.Tensor, seed: int, amount: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(x + amount * F.normalize(torch.randn(x.shape, generator=g), dim=-1), dim=-1)


def exact_top(query: torch.Tensor, gallery: torch.Tensor, k: int):
    """Top-k by inner product in float64 numpy (independent of torch's matmul and of FAISS)."""
    s = query.double().numpy() @ gallery.double().numpy().T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


@pytest.fixture(scope="module")
def data():
    gallery = clustered(6000, 32)
    return gallery, noisy(gallery[:12], seed=1)


def test_a_flat_factory_is_exact(data):
    gallery, query = data
    fs = FaissFirstStage.build(gallery, factory="Flat")
    assert (fs.kind, fs.factory, fs.nprobe) == ("flat", "Flat", None)
    scores, ids = fs.search(query, 20)
    want_s, want_i = exact_top(query, gallery, 20)
    assert np.array_equal(ids.numpy(), want_i)
    assert np.allclose(scores.numpy(), want_s, atol=1e-5)


def test_ivf_pq_by_factory_and_its_exact_refinement(data):
    gallery, query = data
    plain = FaissFirstStage.build(gallery, factory="IVF16,PQ8", nprobe=4)
    refined = FaissFirstStage.build(gallery, factory="IVF16,PQ8", nprobe=4, refine=4)
    assert (plain.kind, plain.nprobe, faiss.extract_index_ivf(plain.index).nlist) == ("ivf", 4, 16)
    assert plain.timings["train"] > 0 and "add" in plain.timings
    _, want = exact_top(query, gallery, 20)
    s, i = refined.search(query, 20, gallery=gallery)
    # the returned scores are the exact inner products of the returned ids, in descending order
    exact = np.einsum("qd,qkd->qk", query.double().numpy(), gallery.double().numpy()[i.numpy()])
    assert np.allclose(s.numpy(), exact, atol=1e-5) and bool((s[:, :-1] >= s[:, 1:]).all())
    assert len({tuple(r) for r in i.tolist()[0:1]}) == 1 and all(len(set(r)) == 20 for r in i.tolist())
    r_plain = recall_at_k(plain.search(query, 20)[1], torch.from_numpy(want))
    r_refined = recall_at_k(i, torch.from_numpy(want))
    assert r_refined >= r_plain and r_refined > 0.8, (r_plain, r_refined)
    # without the gallery there is nothing to re-score: the index's own top-k
    assert torch.equal(refined.search(query, 20)[1], plain.search(query, 20)[1])


def test_refinement_keeps_a_filters_padding_last(data):
    gallery, query = data
    fs = FaissFirstStage.build(gallery, factory="IVF16,Flat", nprobe=16, refine=3)
    allowed = torch.zeros(len(gallery), dtype=torch.bool)
    allowed[::600] = True  # 10 allowed, k = 15: 5 padding ids per row
    s, i = fs.search(query, 15, allowed=allowed, gallery=gallery)
    want_s, want_i = exact_top(query, gallery[allowed], 10)
    rows = torch.nonzero(allowed).squeeze(1).numpy()
    assert np.array_equal(i[:, :10].numpy(), rows[want_i])
    assert np.allclose(s[:, :10].numpy(), want_s, atol=1e-5)
    assert not allowed[i[:, 10:]].any() and bool((s[:, 10:] == PADDING_SCORE).all())


def test_serialize_and_load_memory_mapped(data, tmp_path):
    gallery, query = data
    fs = FaissFirstStage.build(gallery, factory="IVF16,PQ8", nprobe=8, refine=2)
    path = tmp_path / "fs.faiss"
    path.write_bytes(fs.serialize().tobytes())
    info = json.loads(json.dumps(fs.info()))
    back = FaissFirstStage.load(path, info)
    assert (back.factory, back.nprobe, back.refine, back.kind) == ("IVF16,PQ8", 8, 2, "ivf")
    for a, b in zip(fs.search(query, 10, gallery=gallery), back.search(query, 10, gallery=gallery)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="holds 6000 x 32 vectors, its record says 5999 x 32"):
        FaissFirstStage.load(path, {**info, "num_items": 5999})
    (tmp_path / "junk.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(ValueError, match="junk.faiss' cannot be read"):
        FaissFirstStage.load(tmp_path / "junk.faiss", info)


def test_bad_factory_strings_are_named(data):
    gallery, _ = data
    with pytest.raises(ValueError, match="factory 'IVF16,Nonsense' is not a FAISS index"):
        FaissFirstStage.build(gallery, factory="IVF16,Nonsense")
    with pytest.raises(ValueError, match="nlist=8192 lists, more than the gallery's N=6000"):
        FaissFirstStage.build(gallery, factory="IVF8192,Flat")
    with pytest.raises(ValueError, match="refine must be a positive int"):
        FaissFirstStage.build(gallery, factory="Flat", refine=0)
    from geosteer.stages.first_stage_faiss import check_factory

    check_factory("IVF16,PQ8", 32)  # parses; nothing trained
    with pytest.raises(ValueError, match="factory 'IVF16,Nonsense' is not a FAISS index for D=32"):
        check_factory("IVF16,Nonsense", 32)
    with pytest.raises(ValueError, match="dim must be a positive int, got '32'"):
        check_factory("Flat", "32")
    with pytest.raises(TypeError, match=r"info must be the dict FaissFirstStage.info\(\) gave"):
        FaissFirstStage.load("x.faiss", {"kind": "flat"})


# ---------------------------------------------------------------- in the store


def small_gallery(num: int = 3000, n: int = 3, dim: int = 32) -> GallerySide:
    emb = clustered(num, dim, seed=5)
    g = torch.Generator().manual_seed(6)
    return GallerySide(emb, parts=noisy(emb[:, None].expand(num, n, dim), seed=7, amount=0.6),
                       parts_mask=torch.ones(num, n, dtype=torch.bool),
                       part_boxes=torch.rand(num, n, 4, generator=g) * 90)


def queries(gallery: GallerySide, count: int = 6) -> QuerySide:
    return QuerySide(noisy(gallery.embeddings[:count], seed=8), parts=noisy(gallery.parts[:count, :2], seed=9),
                     relations=torch.full((count, 1, 3), -1))


@pytest.fixture
def stored(tmp_path):
    g = small_gallery()
    paths = [f"{'a' if i % 3 else 'b'}/{i}.jpg" for i in range(len(g.embeddings))]
    return write_index(g, paths, tmp_path / "idx", encoder=("synthetic", "f" * 16)), g


def test_an_index_searches_through_its_stored_first_stage(stored):
    index, g = stored
    assert index.first_stage is None and index.first_stage_record is None
    index.build_first_stage("Flat", refine=1)
    opened = Index.open(index.path)
    assert opened.first_stage_record["factory"] == "Flat" and opened.first_stage.factory == "Flat"
    q, cfg = queries(g), get_config("default", k=30)
    via, exact = Searcher(opened, configs=cfg), Searcher(opened, configs=cfg, first_stage="exact")
    assert via.first_stage is not None and exact.first_stage is None
    # every list probed (nprobe = nlist) makes IVF exact too, so its top 3K re-scored must give the same candidates
    probed = FaissFirstStage.build(g.embeddings, factory="IVF8,Flat", nprobe=8, refine=3)
    for searcher in (via, Searcher(opened, configs=cfg, first_stage=probed)):
        for where in (None, "path:b/*", "id:5-14"):  # id:5-14: 10 allowed < K = 100, the head pads
            a, b = searcher.search(q, k=10, where=where), exact.search(q, k=10, where=where)
            assert torch.equal(a.head.indices, b.head.indices), where
            assert torch.allclose(a.head.scores, b.head.scores, atol=1e-5), where
            assert [len(r.rows()) for r in a.reranked] == [10] * len(a.reranked)


def test_the_searcher_asks_the_first_stage_for_k_with_the_filter(stored, monkeypatch):
    index, g = stored
    fs = index.build_first_stage("IVF8,Flat", nprobe=8, refine=2)
    calls = []
    real = FaissFirstStage.search
    monkeypatch.setattr(FaissFirstStage, "search", lambda self, *a, **kw: calls.append((a, kw)) or real(self, *a, **kw))
    searcher = Searcher(index, configs=get_config("default", k=30), first_stage=fs)
    searcher.search(queries(g), k=5, where="path:b/*")
    (args, kw), = calls
    assert args[1] == searcher.heads["config"].config.k == 100 and kw["gallery"] is searcher.gallery.embeddings
    assert torch.equal(kw["allowed"], searcher.where("path:b/*"))
    searcher.search(queries(g), k=5, allowed=torch.ones(6, len(index), dtype=torch.bool))  # [Q, N]: exact
    assert len(calls) == 1


def test_a_first_stage_goes_stale_when_the_gallery_changes(stored):
    index, _ = stored
    index.build_first_stage("Flat")
    index.remove(["b/0.jpg"])
    with pytest.warns(RuntimeWarning, match="was built before the index last changed and is not used"):
        assert Index.open(index.path).first_stage is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Searcher(index, first_stage="exact").first_stage is None
    with pytest.raises(ValueError, match="first_stage indexes 3000 items but the gallery has N=2999"):
        Searcher(index, first_stage=FaissFirstStage.build(small_gallery().embeddings, factory="Flat"))
    with pytest.raises(TypeError, match="first_stage must be 'auto', 'exact' or a FaissFirstStage"):
        Searcher(index, first_stage="ivf")


def test_a_corrupt_first_stage_file_is_named(stored):
    index, _ = stored
    index.build_first_stage("Flat")
    (index.path / "first_stage.faiss").write_bytes(b"\0" * 64)
    with pytest.raises(StoreError, match="first_stage.faiss' cannot be used"):
        Index.open(index.path).first_stage


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geosteer.cli", *args], capture_output=True, text=True, timeout=300)


def test_geosteer_index_faiss_builds_keeps_and_rebuilds_it(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 255 - 20 * i, 90)).save(folder / f"{i}.png")
    out = tmp_path / "idx"
    done = run_cli("index", str(folder), "--out", str(out), "--faiss", "Flat", "--refine", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "first stage: FAISS Flat" in done.stderr
    record = json.loads((out / "first_stage.json").read_text())
    assert (record["factory"], record["refine"], record["num_items"]) == ("Flat", 2, 12)
    again = run_cli("index", str(folder), "--out", str(out), "--no-progress")  # nothing changed: kept
    assert again.returncode == 0 and "first stage" not in again.stderr
    Image.new("RGB", (40, 40), (1, 2, 3)).save(folder / "new.png")
    grown = run_cli("index", str(folder), "--out", str(out), "--no-progress")  # stale: rebuilt as recorded
    assert grown.returncode == 0 and "first stage: FAISS Flat, top 2K re-scored exactly" in grown.stderr
    assert Index.open(out).first_stage.num_items == 13
    found = run_cli("search", str(out), "a green square", "-k", "2")
    assert found.returncode == 0 and "first stage FAISS Flat, top 2K re-scored exactly" in found.stdout
    exact = run_cli("search", str(out), "a green square", "-k", "2", "--exact")
    assert exact.returncode == 0 and "first stage" not in exact.stdout
    without = subprocess.run([sys.executable, "-c", "import sys; sys.modules['faiss'] = None; from geosteer.cli import "
                              "main; sys.exit(main(sys.argv[1:]))", "search", str(out), "a green square"],
                             capture_output=True, text=True, timeout=300)  # faiss hidden, as if never installed
    assert without.returncode == 2 and without.stderr.count("\n") == 1, without.stderr
    assert "pip install 'geosteer[faiss]'" in without.stderr and "or search with --exact" in without.stderr
    serve = subprocess.run([sys.executable, "-c", "import sys; sys.modules['faiss'] = None; from geosteer.cli import "
                            "main; sys.exit(main(sys.argv[1:]))", "serve", str(out), "--port", "0"],
                           capture_output=True, text=True, timeout=300)  # refused before it listens
    assert serve.returncode == 2 and serve.stderr.count("\n") == 1, serve.stderr
    assert "has a FAISS first stage (geosteer index --faiss)" in serve.stderr
    bad = run_cli("index", str(folder), "--out", str(out), "--faiss", "IVF9,Bogus", "--no-progress")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--faiss: factory 'IVF9,Bogus'" in bad.stderr
    # refused before any image is encoded: a new index with a bad factory or without faiss writes nothing
    fresh = tmp_path / "fresh"
    typo = run_cli("index", str(folder), "--out", str(fresh), "--faiss", "IVF9,Bogus", "--no-progress")
    assert typo.returncode == 2 and "--faiss: factory 'IVF9,Bogus' is not a FAISS index for D=" in typo.stderr
    nofaiss = subprocess.run([sys.executable, "-c", "import sys; sys.modules['faiss'] = None; from geosteer.cli import "
                              "main; sys.exit(main(sys.argv[1:]))", "index", str(folder), "--out", str(fresh),
                              "--faiss", "Flat", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert nofaiss.returncode == 2 and "--faiss: the FAISS first stage needs the optional `faiss` module" in nofaiss.stderr
    assert not (fresh / "manifest.json").exists() and not list(fresh.glob("shards/*"))
    lonely = run_cli("index", str(folder), "--out", str(out), "--nprobe", "4", "--no-progress")
    assert lonely.returncode == 2 and "--nprobe goes with --faiss FACTORY" in lonely.stderr
