"""What a user installs: the package list, the built wheel, and nothing shadowed at the repository root.

- `kernels/` (the Triton kernels) has no `__init__.py`: a Python started at the
  repository root (`python -m pytest`, `python -m bench.X`, a REPL) must still
  import PyPI's `kernels` (transformers imports it), not our folder.
- setup.cfg's package list is every package of the tree, and a wheel built
  from the tree holds every module and data file of the sources, importable
  from a non-editable install (`geosteer eval --bench`, `python -m
  geosteer.distributed.search`).
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNELS_PACKAGE = Path("kernels") / "geosteer_kernels"  # installed as geosteer.kernels


def _run(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def tree_packages() -> set[str]:
    """Every package of the sources, by its installed name."""
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "geosteer").rglob("__init__.py")}
    if (REPO / KERNELS_PACKAGE / "__init__.py").is_file():
        found.add("geosteer.kernels")
    return {p for p in found if "__pycache__" not in p}


def installed_name(path: Path) -> str:
    """A source file's path inside the wheel: `kernels/geosteer_kernels/x.py` -> `geosteer/kernels/x.py`."""
    rel = path.relative_to(REPO)
    if rel.parts[:2] == KERNELS_PACKAGE.parts:
        return Path("geosteer", "kernels", *rel.parts[2:]).as_posix()
    return rel.as_posix()


def test_the_kernels_folder_is_not_a_package():
    assert not (REPO / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the folder the top-level `kernels` of any Python started at the repository "
        "root, shadowing PyPI's `kernels` (transformers imports it)")
    assert (REPO / KERNELS_PACKAGE / "__init__.py").is_file()


def test_pypi_kernels_wins_at_the_repository_root():
    """From the root, `kernels` is PyPI's (the test needs it installed: the dev extra lists it) and transformers' import of it works."""
    probe = ("import importlib.util, sys; spec = importlib.util.find_spec('kernels'); "
             "print(spec.origin if spec else None); print(list(spec.submodule_search_locations or []) if spec else [])")
    out = _run([sys.executable, "-c", probe], cwd=REPO)
    assert out.returncode == 0, out.stderr
    origin, locations = out.stdout.splitlines()[:2]
    assert str(REPO / "kernels") not in origin and str(REPO / "kernels") not in locations, out.stdout
    if importlib.util.find_spec("kernels") is None:
        pytest.fail("PyPI's `kernels` is not installed; `pip install -e '.[dev]'` brings it (the test needs it)")
    assert origin.endswith(os.path.join("kernels", "__init__.py")) and "site-packages" in origin, origin
    if importlib.util.find_spec("transformers") is not None:
        hub = _run([sys.executable, "-c", "import transformers.integrations.hub_kernels"], cwd=REPO)
        assert hub.returncode == 0, hub.stderr[-2000:]


def test_geosteer_kernels_imports_from_the_root_and_from_elsewhere(tmp_path):
    probe = "import geosteer.kernels.part_cost as k; print(k.__file__)"
    for cwd in (REPO, tmp_path):
        out = _run([sys.executable, "-c", probe], cwd=cwd)
        assert out.returncode == 0, (cwd, out.stderr)
        assert out.stdout.strip().endswith(os.path.join("geosteer_kernels", "part_cost.py")) or \
            out.stdout.strip().endswith(os.path.join("geosteer", "kernels", "part_cost.py")), out.stdout


def test_setup_cfg_lists_every_package_of_the_tree():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    assert listed == tree_packages(), {"missing": sorted(tree_packages() - listed), "extra": sorted(listed - tree_packages())}
    mapped = {k.strip(): v.strip() for k, v in (line.split("=") for line in cfg["options"]["package_dir"].splitlines()
                                                 if "=" in line)}
    assert mapped["geosteer.kernels"] == KERNELS_PACKAGE.as_posix()


def _source_files() -> set[str]:
    """What the wheel must hold: every tracked (or untracked, not ignored) file under geosteer/ and the kernels package."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "geosteer",
                             KERNELS_PACKAGE.as_posix()], cwd=REPO, capture_output=True, text=True, check=True)
    return {installed_name(REPO / line) for line in listed.stdout.splitlines() if (REPO / line).is_file()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree's files (nothing written into the checkout)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to list the sources")
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in listed:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                  str(src)], cwd=out, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list(out.glob("geosteer-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_source_file(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if not n.startswith("geosteer-") and "__pycache__" not in n}
    expected = {n for n in _source_files() if "__pycache__" not in n}
    assert expected - names == set(), f"missing from the wheel: {sorted(expected - names)}"
    assert {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")} >= {
        p.replace(".", "/") for p in tree_packages()}
    assert not any(n.startswith("kernels/") for n in names), "a top-level kernels/ would shadow PyPI's kernels"


def test_a_non_editable_install_runs_the_bench_readers_and_the_sharded_entry(wheel, tmp_path):
    site = tmp_path / "site"
    done = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                 str(wheel)], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {"PYTHONPATH": str(site)}
    where = _run([sys.executable, "-c", "import geosteer, geosteer.kernels, geosteer.distributed.search, "
                  "geosteer.public_benchmarks.runner; print(geosteer.__file__)"], cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr[-3000:]
    assert where.stdout.strip().startswith(str(site)), where.stdout
    helped = _run([sys.executable, "-m", "geosteer.distributed.search", "--help"], cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "INDEX" in helped.stdout, helped.stderr[-3000:]
    bench = _run([sys.executable, "-m", "geosteer.cli", "eval", "--bench", "sugarcrepe", "--root",
                  str(tmp_path / "nowhere")], cwd=tmp_path, env=env)
    assert bench.returncode == 2, bench.stderr[-3000:]
    assert "ModuleNotFoundError" not in bench.stderr and "--root" in bench.stderr, bench.stderr[-3000:]
