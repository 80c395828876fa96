"""Head configuration: one dataclass, named presets, a factory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from geosteer.choices import check_choice
from geosteer.ops.assign import SOLVERS
from geosteer.ops.dispatch import BACKENDS
from geosteer.ops.screen import SCREENS
from geosteer.stages.steer import DESIGNS

Mode = Literal["auto", "parts", "neighbourhood"]
Matching = Literal["hungarian", "max"]
Backend = Literal["auto", "triton", "torch"]
Screen = Literal["auto", "bf16", "off"]
Solver = Literal["auto", "tla"]
SteerDesign = Literal["near", "margin", "text", "margin+text"]
MODES = ("auto", "parts", "neighbourhood")
MATCHINGS = ("hungarian", "max")


@dataclass(frozen=True)
class HeadConfig:
    """Every knob of the method in DESIGN §1.

    Field defaults are a generic starting point; the values tuned on the
    built-in benchmark are the `PRESETS` (`get_config("default")`).
    """

    # K: candidates kept from the first stage and re-ranked (the result width).
    k: int = 50
    # Size of the local neighbourhoods: N+/N- inside the candidate pool for
    # steering, and the kNN sets of neighbourhood mode (q's nearest pool
    # items, each candidate's nearest gallery items). Capped at k.
    neighbors: int = 5
    # λ: weight of the part alignment A(q, c); 0 disables re-ranking.
    lam: float = 0.5
    # α: step of the steering move q' = normalise(q + α Σ_j d_j); 0 disables it.
    alpha: float = 0.0
    # β: penalty on candidates that match a negative anchor better than the
    # query, β·relu(max_j c·u_j − c·q); 0 disables it.
    beta: float = 0.0
    # γ: weight of the structure term R(q, c) (relations between parts).
    gamma: float = 0.0
    # How each steering direction d_j is built (geosteer.stages.steer):
    # "near" (mean of the pool items nearest each anchor), "margin" (pool
    # items weighted by their contrast margin c·p_j - c·u_j), "text"
    # (p_j - u_j itself) or "margin+text". Read only when alpha > 0.
    steer_design: SteerDesign = "margin"
    # "parts" (annotation / region sets), "neighbourhood" (each candidate's k
    # nearest gallery items), or "auto": parts when they are given, else
    # neighbourhood.
    mode: Mode = "auto"
    # "hungarian": one-to-one assignment; "max": each part takes its best
    # region on its own (the ablation DESIGN §1 asks to report).
    matching: Matching = "hungarian"
    # Which implementation each op runs (geosteer.ops.dispatch): "auto" = the
    # compiled kernel of the device (Triton on CUDA, numba on the CPU) where
    # it can run, "triton" = the Triton kernel or an error, "torch" = the
    # plain-torch references.
    backend: Backend = "auto"
    # The assignment solver: "auto" = geosteer's (exact, batched); "tla" =
    # torch-linear-assignment's batch_linear_assignment (the peer the
    # benchmarks compare with; same optimum, slower on the CPU).
    solver: Solver = "auto"
    # First stage: most query×gallery scores held at once (query chunking).
    chunk_elements: int = 1 << 24
    # First stage: "bf16" screens the gallery with a bf16 matmul, re-scores a
    # 2K shortlist in float32 and proves per query that nothing outside it
    # belongs in the top-K (else scores that query the plain way): the exact
    # result, ~3.5x faster on CPUs with AVX512-BF16/AMX. "auto": bf16 on
    # such CPUs for large galleries; "off": always the plain float32 matmul.
    screen: Screen = "auto"

    def __post_init__(self) -> None:
        _check_positive_int("k", self.k)
        _check_positive_int("neighbors", self.neighbors)
        _check_positive_int("chunk_elements", self.chunk_elements)
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {self.lam}")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        check_choice("steer_design", self.steer_design, DESIGNS)
        check_choice("mode", self.mode, MODES)
        check_choice("matching", self.matching, MATCHINGS)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("solver", self.solver, SOLVERS)
        check_choice("screen", self.screen, SCREENS)

    @property
    def pool_neighbors(self) -> int:
        """The neighbourhood size actually used: `neighbors` capped at `k`."""
        return min(self.neighbors, self.k)

    def replace(self, **changes) -> "HeadConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# Tuned on the GeoShapes validation seeds with the demo model, "masked"
# region sets and per-part steering anchors (bench/tune_defaults.py; the
# table is bench/results/tune_2026-11-29.json, docs/tuning.md reads it).
PRESETS: dict[str, HeadConfig] = {
    # Plain cosine top-K: the floor every other preset is compared with.
    "cosine": HeadConfig(lam=0.0, alpha=0.0),
    # Region re-ranking with the structure term (γ acts only on queries
    # with relations), the default for images with region sets.
    "default": HeadConfig(k=100, lam=0.8, gamma=0.1),
    # The same with a larger structure weight (every γ in 0.1-1 tied on validation).
    "relations": HeadConfig(k=100, lam=0.8, gamma=0.5),
    # Steering alone: the confuser penalty measured on regions. α = 0: every
    # query move tried (4 designs x 2 anchor kinds x α 0.1-1 x k 3-10)
    # lowered R@1 on validation.
    "steer": HeadConfig(k=100, lam=0.0, alpha=0.0, beta=8.0),
    # Re-ranking plus steering. On validation no β > 0 on top of re-ranking
    # helped: β 0.1-2 cost 0.4 points (touching), β = 4 tied, β = 8 cost 1.0
    # (touching) and 0.7 (count); so β = 0 here: with region matching on, the
    # penalty adds nothing the alignment lacks.
    "rerank+steer": HeadConfig(k=100, lam=0.8, gamma=0.1, alpha=0.0, beta=0.0),
}
def get_config(name: str, **overrides) -> HeadConfig:
    """The named preset, with `overrides` applied.

    Raises:
        ValueError: unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
