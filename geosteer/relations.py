"""Spatial relations between query parts: the one registry every module reads.

A relation row `(i, j, type)` of `query_relations` says part i stands in
relation `RELATIONS[type]` to part j. Coordinates are image coordinates
(x right, y down), as region boxes are.

The first four are the axis relations GeoShapes captions and collages use
(`AXIS_RELATIONS`, each an axis and a sign in `GEOMETRY`); the rest come from
real captions (`geosteer.encoders.scene_parse`). Ids never change: new names
are appended.
"""

from __future__ import annotations

#: Relation names; a relation's type id is its position here.
RELATIONS: tuple[str, ...] = (
    "left_of", "right_of", "above", "below", "on", "under", "next_to", "in", "in_front_of", "behind",
)
#: The axis relations: what GeoShapes captions and the photo collages say.
AXIS_RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
#: Each relation's converse: "a left_of b" is "b right_of a"; next_to is its own.
#: `in` has none in the vocabulary ("b holds a" is not a place).
OPPOSITE: dict[str, str] = {
    "left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above", "on": "under",
    "under": "on", "next_to": "next_to", "in_front_of": "behind", "behind": "in_front_of",
}
#: The words a caption uses for each relation, subject first ("a to the left of b").
WORDS: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
    "on": "on",
    "under": "under",
    "next_to": "next to",
    "in": "in",
    "in_front_of": "in front of",
    "behind": "behind",
}
#: (axis, sign) of the axis relations: "i <relation> j" holds when
#: sign * (centre_j - centre_i) > 0 along `axis` (0 = x, 1 = y).
GEOMETRY: dict[str, tuple[int, int]] = {"left_of": (0, 1), "right_of": (0, -1), "above": (1, 1), "below": (1, -1)}


__all__ = ["AXIS_RELATIONS", "GEOMETRY", "OPPOSITE", "RELATIONS", "WORDS", "relation_id"]


def relation_id(name: str) -> int:
    """The type id of relation `name`.

    Raises:
        ValueError: `name` is not one of `RELATIONS`.
    """
    if name not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {name!r}")
    return RELATIONS.index(name)
