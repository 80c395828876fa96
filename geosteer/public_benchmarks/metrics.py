"""Each benchmark's own metric, from the per-example score blocks.

A block is `[captions, images]`: `block[c, i]` = S(caption c, image i).
Comparisons are strict: a tie is wrong (an encoder that scores every
caption alike scores 0, not 50%).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from torch import Tensor

from geosteer.public_benchmarks.common import Example


def pair_metrics(blocks: Tensor, examples: Sequence[Example], subsets: Sequence[str]) -> dict:
    """Accuracy of S(true, image) > S(false, image) per subset, micro and macro over its groups.

    Args:
        blocks: `[E, 2, 1]` scores, caption 0 the true one.
        examples: the E examples (their `subset` and `group`).
        subsets: subset names, in report order.

    Returns:
        `{subset: {"accuracy": micro, "macro": mean of the group accuracies, "count": n,
        "groups": {group: {"accuracy", "count"}}}, "mean": mean of the subsets' accuracy,
        "mean_macro": mean of their macro}`.
    """
    _check(blocks, examples, (2, 1))
    correct = (blocks[:, 0, 0] > blocks[:, 1, 0]).tolist()
    by_group: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for ok, ex in zip(correct, examples):
        by_group[ex.subset][ex.group].append(ok)
    out: dict = {}
    for subset in subsets:
        groups = by_group.get(subset, {})
        flat = [ok for oks in groups.values() for ok in oks]
        per = {g: {"accuracy": _mean(oks), "count": len(oks)} for g, oks in sorted(groups.items())}
        out[subset] = {"accuracy": _mean(flat), "macro": _mean([v["accuracy"] for v in per.values()]),
                       "count": len(flat), "groups": per}
    out["mean"] = _mean([out[s]["accuracy"] for s in subsets if out[s]["count"]])
    out["mean_macro"] = _mean([out[s]["macro"] for s in subsets if out[s]["count"]])
    return out


def winoground_metrics(blocks: Tensor, examples: Sequence[Example]) -> dict:
    """Winoground's text, image and group scores, overall and per group (its collapsed_tag).

    Args:
        blocks: `[E, 2, 2]`, `blocks[e, c, i]` = s(caption c, image i).
        examples: the E examples.

    Returns:
        `{"text", "image", "group": fractions, "count": E, "tags": {tag: {"text", "image", "group", "count"}}}`.
    """
    _check(blocks, examples, (2, 2))
    text = (blocks[:, 0, 0] > blocks[:, 1, 0]) & (blocks[:, 1, 1] > blocks[:, 0, 1])
    image = (blocks[:, 0, 0] > blocks[:, 0, 1]) & (blocks[:, 1, 1] > blocks[:, 1, 0])
    group = text & image
    rows = list(zip(text.tolist(), image.tolist(), group.tolist()))

    def summary(sel: list[tuple[bool, bool, bool]]) -> dict:
        return {"text": _mean([r[0] for r in sel]), "image": _mean([r[1] for r in sel]),
                "group": _mean([r[2] for r in sel]), "count": len(sel)}

    tags: dict[str, list] = defaultdict(list)
    for r, ex in zip(rows, examples):
        tags[ex.group].append(r)
    return {**summary(rows), "tags": {t: summary(sel) for t, sel in sorted(tags.items())}}


def _check(blocks: Tensor, examples: Sequence[Example], shape: tuple[int, int]) -> None:
    if blocks.ndim != 3 or tuple(blocks.shape[1:]) != shape or blocks.shape[0] != len(examples):
        raise ValueError(f"blocks must have shape [E={len(examples)}, {shape[0]}, {shape[1]}], got {list(blocks.shape)}")


def _mean(values: Sequence) -> float:
    return float(sum(values) / len(values)) if len(values) else float("nan")
