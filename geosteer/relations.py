"""Spatial relations between query parts: the one registry every module reads.

A relation row `(i, j, type)` of `query_relations` says part i stands in
relation `RELATIONS[type]` to part j. Coordinates are image coordinates
(x right, y down), as region boxes are.
"""

from __future__ import annotations

#: Relation names; a relation's type id is its position here.
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
#: Each relation's converse: "a left_of b" is "b right_of a".
OPPOSITE: dict[str, str] = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
#: The words a caption uses for each relation, subject first ("a to the left of b").
WORDS: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
}
#: (axis, sign): "i <relation> j" holds when sign * (centre_j - centre_i) > 0
#: along `axis` (0 = x, 1 = y).
GEOMETRY: dict[str, tuple[int, int]] = {"left_of": (0, 1), "right_of": (0, -1), "above": (1, 1), "below": (1, -1)}


__all__ = ["GEOMETRY", "OPPOSITE", "RELATIONS", "WORDS", "relation_id"]


def relation_id(name: str) -> int:
    """The type id of relation `name`.

    Raises:
        ValueError: `name` is not one of `RELATIONS`.
    """
    if name not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {name!r}")
    return RELATIONS.index(name)
