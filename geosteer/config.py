"""Head configuration: one dataclass, named presets, a factory."""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
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

    # K: candidates kept from the first stage and re-ranked. A gallery of N < k
    # items gives K = min(k, N): the result has min(k, N) columns, so a preset's
    # k = 100 runs as written on a 30-image gallery. Any integral number
    # (int, numpy integer); not a bool, not 5.0.
    k: int = 50
    # Size of the local neighbourhoods: N+/N- inside the candidate pool for
    # steering, and the kNN sets of neighbourhood mode (q's nearest pool
    # items, each candidate's nearest gallery items). Capped at K = min(k, N).
    neighbors: int = 5
    # λ: weight of the part alignment A(q, c), in [0, 1]; 0 disables re-ranking.
    # Every float knob (lam, alpha, beta, gamma, delta) takes an int, float or numpy
    # real (stored as float); NaN, inf and bools are refused.
    lam: float = 0.5
    # α: step of the steering move q' = normalise(q + α Σ_j d_j); 0 disables it.
    alpha: float = 0.0
    # β: penalty on candidates that match a negative anchor better than the
    # query, β·relu(max_j c·u_j − c·q); 0 disables it.
    beta: float = 0.0
    # γ: weight of the structure term R(q, c) (relations between parts).
    # alpha, beta, gamma and delta lie in [0, MAX_WEIGHT].
    gamma: float = 0.0
    # δ: steering strength toward the positive anchors and away from the
    # negatives, per object: S gains δ·C(q, c), C = mean_j r(c, p_j) − r(c, u_j),
    # r = the candidate's best region's similarity to the anchor (the pooled
    # embedding without region sets). Re-ranks the pool of the original
    # query, so its relevance is kept; 0 disables it (docs/steering.md).
    delta: float = 0.0
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
        # Normalised in place (numpy scalars -> int / float / str), so the
        # head, its repr and torch.compile only ever see plain Python values.
        for name in ("k", "neighbors", "chunk_elements"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        object.__setattr__(self, "lam", _real("lam", self.lam, 0.0, 1.0))
        for name in ("alpha", "beta", "gamma", "delta"):
            object.__setattr__(self, name, _real(name, getattr(self, name), 0.0, MAX_WEIGHT))
        for name, choices in (("steer_design", DESIGNS), ("mode", MODES), ("matching", MATCHINGS),
                              ("backend", BACKENDS), ("solver", SOLVERS), ("screen", SCREENS)):
            object.__setattr__(self, name, check_choice(name, getattr(self, name), choices))

    def replace(self, **changes) -> "HeadConfig":
        """A copy with some fields changed (validated again).

        Raises:
            TypeError: an unknown field name, or a value of the wrong type.
            ValueError: a value out of range.
        """
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            raise TypeError(f"unknown HeadConfig field(s) {', '.join(map(repr, unknown))}; fields: {sorted(_FIELDS)}")
        return dataclasses.replace(self, **changes)


#: Largest alpha / beta / gamma / delta. Every score term lies in [-1, 1]; a weight
#: above ~2^24 leaves the others below float32 resolution in the fused score
#: and, on the steering path, overflows float32 norms long before 3.4e38.
MAX_WEIGHT = 1e6

_FIELDS = frozenset(f.name for f in dataclasses.fields(HeadConfig))


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_ without importing numpy


def _positive_int(name: str, value) -> int:
    """`value` as an int >= 1: any integral number (int, numpy integer), not a bool or a float."""
    if _is_bool(value) or isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def _real(name: str, value, low: float, high: float) -> float:
    """`value` as a float in `[low, high]`: an int, float or numpy real; not a bool, NaN or inf."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= number <= high:
        what = "must lie in [0, 1]" if (low, high) == (0.0, 1.0) else f"must be a non-negative number <= {high:g}"
        raise ValueError(f"{name} {what}, got {value!r}")
    return number


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
    # No re-ranking + steering preset: on validation no β > 0 on top of
    # re-ranking helped (β 0.1-2 cost 0.4 points on touching, β = 4 tied,
    # β = 8 cost 1.0 on touching and 0.7 on count), so it would be "default".
}


def get_config(name: str, **overrides) -> HeadConfig:
    """The named preset, with `overrides` applied.

    Raises:
        TypeError: `name` is not a str; an override of the wrong type or unknown.
        ValueError: unknown preset name; an override out of range.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a preset name (str), one of {sorted(PRESETS)}, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
