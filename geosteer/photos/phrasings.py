"""Natural phrasings of one collage fact: the same (A, relation, B) said six ways.

A user asks for "a cat on the left and a rocket on the right" as often as
for "a cat to the left of a rocket"; the benchmark asks for every target in
each of `PHRASINGS` so a method is measured on how people put it, not on
one template. `phrase(a, relation, b, k)` writes the fact (a, relation, b)
(a and b object phrases, relation one of `left_of`, `right_of`, `above`,
`below`: "a stands <relation> to b") in phrasing k:

| k | name | left_of | above |
|---|---|---|---|
| 0 | preposition | a cat to the left of a rocket | a cat above a rocket |
| 1 | converse | a rocket to the right of a cat | a rocket below a cat |
| 2 | positions | a cat on the left and a rocket on the right | a cat at the top and a rocket at the bottom |
| 3 | with | a rocket with a cat on its left | a rocket with a cat above it |
| 4 | apposition | a cat, and to its right a rocket | a cat, and below it a rocket |
| 5 | halves | a cat in the left half, a rocket in the right half | a cat in the upper half, a rocket in the lower half |

`right_of` and `below` are the same sentences with the sides exchanged
("a cat to the right of a rocket", "a rocket with a cat on its right",
"a cat at the bottom and a rocket at the top", ...). Phrasing 0 is
`geosteer.photos.caption`'s, the words `geosteer.relations.WORDS` gives.
"""

from __future__ import annotations

from geosteer.photos.sources import PHOTOS
from geosteer.relations import WORDS

#: The phrasings' names, in order (k = 0 .. 5).
PHRASINGS: tuple[str, ...] = ("preposition", "converse", "positions", "with", "apposition", "halves")

#: The relations a collage states, and the one each is the converse of.
_CONVERSE: dict[str, str] = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
#: Per relation: the subject's side and the object's, as positions ("on the left", "at the top").
_POSITIONS: dict[str, tuple[str, str]] = {
    "left_of": ("on the left", "on the right"), "right_of": ("on the right", "on the left"),
    "above": ("at the top", "at the bottom"), "below": ("at the bottom", "at the top"),
}
#: Per relation: where the subject is, said from the object ("on its left", "above it").
_FROM_OBJECT: dict[str, str] = {"left_of": "on its left", "right_of": "on its right", "above": "above it",
                                "below": "below it"}
#: Per relation: where the object is, said from the subject ("to its right", "below it").
_FROM_SUBJECT: dict[str, str] = {"left_of": "to its right", "right_of": "to its left", "above": "below it",
                                 "below": "above it"}
#: Per relation: the subject's half and the object's.
_HALVES: dict[str, tuple[str, str]] = {
    "left_of": ("left", "right"), "right_of": ("right", "left"), "above": ("upper", "lower"), "below": ("lower", "upper"),
}


def phrasing_index(phrasing: int | str) -> int:
    """k of a phrasing given as its index or its name.

    Raises:
        ValueError: not an index of `PHRASINGS` nor one of its names.
    """
    if isinstance(phrasing, str):
        if phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {PHRASINGS} or an index 0..{len(PHRASINGS) - 1}, got {phrasing!r}")
        return PHRASINGS.index(phrasing)
    if isinstance(phrasing, bool) or not isinstance(phrasing, int) or not 0 <= phrasing < len(PHRASINGS):
        raise ValueError(f"phrasing must be one of {PHRASINGS} or an index 0..{len(PHRASINGS) - 1}, got {phrasing!r}")
    return phrasing


def phrase(subject: str, relation: str, obj: str, phrasing: int | str = 0) -> str:
    """The fact "`subject` `relation` `obj`" in phrasing `phrasing` (an index or a name of `PHRASINGS`).

    Args:
        subject, obj: object phrases ("a cat", "a cup of coffee").
        relation: "left_of", "right_of", "above" or "below".
        phrasing: k, or its name.

    Raises:
        ValueError: another relation, an empty phrase, or an unknown phrasing.
    """
    if relation not in _CONVERSE:
        raise ValueError(f"relation must be one of {tuple(_CONVERSE)}, got {relation!r}")
    for name, value in (("subject", subject), ("obj", obj)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    a, b = subject.strip(), obj.strip()
    k = phrasing_index(phrasing)
    if k == 0:
        return f"{a} {WORDS[relation]} {b}"
    if k == 1:
        return f"{b} {WORDS[_CONVERSE[relation]]} {a}"
    if k == 2:
        mine, theirs = _POSITIONS[relation]
        return f"{a} {mine} and {b} {theirs}"
    if k == 3:
        return f"{b} with {a} {_FROM_OBJECT[relation]}"
    if k == 4:
        return f"{a}, and {_FROM_SUBJECT[relation]} {b}"
    mine, theirs = _HALVES[relation]
    return f"{a} in the {mine} half, {b} in the {theirs} half"


def reads_fact(parts: list[str], relations: list[tuple[int, int, str]], fact: tuple[str, str, str]) -> bool:
    """Whether a caption's split reads a collage fact: its two photos and one relation between them, the fact's or its converse.

    A photo's phrases are those its noun holds ("a woman in uniform" read as
    "a woman" and "uniform", what she wears: both lie on her photo, so a
    relation to either places her tile). Every phrase must belong to one of
    the two photos (compared as given: lower-case them first if need be).

    Args:
        parts: the split's phrases (`split_parts`).
        relations: its (i, j, relation name) triples.
        fact: (photo A, relation, photo B), names of `PHOTOS`.

    Raises:
        ValueError: `fact` names an unknown photo or a relation a collage does not state.
    """
    a, rel, b = fact
    if a not in PHOTOS or b not in PHOTOS or rel not in _CONVERSE:
        raise ValueError(f"fact must be (photo, one of {tuple(_CONVERSE)}, photo) with photos of PHOTOS, got {fact!r}")
    nouns = [PHOTOS[a].noun, PHOTOS[b].noun]
    owner = []
    for p in parts:
        mine = [k for k, n in enumerate(nouns) if n == p or n.startswith(p + " ") or n.endswith(" " + p)]
        if len(mine) != 1:
            return False
        owner.append(mine[0])
    if sorted(set(owner)) != [0, 1]:
        return False
    said = {(owner[i], owner[j], name) for i, j, name in relations}
    return said in ({(0, 1, rel)}, {(1, 0, _CONVERSE[rel])})
