"""Split a caption into one phrase per object, and the relations between them.

"a red pentagon and a blue hexagon"
    -> (["a red pentagon", "a blue hexagon"], [])
"a red pentagon to the left of a blue hexagon"
    -> (["a red pentagon", "a blue hexagon"], [(0, 1, "left_of")])
"two red pentagons and a star"
    -> (["a red pentagon", "a red pentagon", "a star"], [])

Rule-based on purpose: the head needs a phrase per object (DESIGN §1,
stage 2), and captions of the built-in benchmark and of typical retrieval
queries are lists of noun phrases joined by "and", ",", "with" or a spatial
preposition. A phrase that names no count is one object. Callers with their
own parts skip this (`query_parts(caption, parts)` passes them through).
"""

from __future__ import annotations

import re

#: Spatial phrases -> relation name (as in `geosteer.RELATIONS`), longest first
#: so "to the left of" wins over "left of".
RELATION_PHRASES: tuple[tuple[str, str], ...] = (
    ("to the left of", "left_of"),
    ("on the left of", "left_of"),
    ("left of", "left_of"),
    ("to the right of", "right_of"),
    ("on the right of", "right_of"),
    ("right of", "right_of"),
    ("on top of", "above"),
    ("above", "above"),
    ("over", "above"),
    ("underneath", "below"),
    ("beneath", "below"),
    ("below", "below"),
    ("under", "below"),
)
#: Words that join objects without saying where they are.
CONJUNCTIONS: tuple[str, ...] = ("and", "with", "plus", "next to", "beside", "near", "as well as", "alongside")
#: Prefixes that say nothing about the objects ("a picture of ...").
PREFIXES: tuple[str, ...] = (
    "a picture of", "an image of", "a photo of", "a photograph of", "a drawing of", "a rendering of",
    "an illustration of", "a scene with", "a scene of", "an image with", "an image showing",
    "a picture showing", "there is", "there are", "this is",
)
#: Copulas dropped before a relation ("the circle is above the square").
_FILLERS = re.compile(r"\b(?:is|are|sits|sit|lies|lie|placed|located|positioned|standing)\b")
_NUMBERS: dict[str, int] = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6,
}
_ARTICLES = ("a", "an", "the", "some", "one")
_PRONOUNS = ("it", "them", "this", "that", "those", "these")

_REL_ALT = "|".join(re.escape(p) for p, _ in RELATION_PHRASES)
_CONJ_ALT = "|".join(re.escape(c) for c in sorted(CONJUNCTIONS, key=len, reverse=True))
# One separator: a relation phrase (captured), or a comma / conjunction.
# "and" directly before a relation ("..., and above ...") folds into it.
_SEPARATOR = re.compile(
    rf"\s*,?\s*(?:\band\s+)?\b({_REL_ALT})\b\s*"
    rf"|\s*,\s*(?:(?:{_CONJ_ALT})\s+)?"
    rf"|\s+(?:{_CONJ_ALT})\s+"
)
_REL_OF = dict(RELATION_PHRASES)


def _singular(word: str) -> str:
    """Naive singular of a plural noun (pentagons -> pentagon, boxes -> box)."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if re.search(r"(?:x|ch|sh|ss)es$", word):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


__all__ = ["CONJUNCTIONS", "PREFIXES", "RELATION_PHRASES", "query_parts", "split_parts", "with_article"]


def with_article(phrase: str) -> str:
    """Prefix "a"/"an" to a bare noun phrase."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _phrases(segment: str) -> list[str]:
    """One segment ("two red pentagons", "the blue star") -> one phrase per object."""
    words = segment.split()
    while words and words[0] in _PRONOUNS:  # "and above it a blue star"
        words = words[1:]
    if not words:
        return []
    count = 1
    if words[0] in _NUMBERS:
        count = _NUMBERS[words[0]]
        words = words[1:]
        if count > 1 and words:
            words[-1] = _singular(words[-1])
    elif words[0] in _ARTICLES:
        words = words[1:]
    if not words:
        return []
    return [with_article(" ".join(words))] * count


def _normalise(caption: str) -> str:
    text = caption.strip().lower()
    text = re.sub(r"[.!?;:]+$", "", text).strip()
    text = re.sub(r"\s+", " ", text)
    changed = True
    while changed:  # prefixes may stack: "there is a picture of ..."
        changed = False
        for prefix in PREFIXES:
            if text.startswith(prefix + " "):
                text = text[len(prefix) + 1:]
                changed = True
    return _FILLERS.sub(" ", text).strip()


def split_parts(caption: str) -> tuple[list[str], list[tuple[int, int, str]]]:
    """One phrase per object, and (i, j, relation) triples between phrases.

    A relation phrase between two segments relates the first object of the
    segment before it (subject) to the first object of the segment after.

    Args:
        caption: the query text.

    Returns:
        (parts, relations): parts are lower-case phrases with an article
        ("a red pentagon"); relation names are those of `geosteer.RELATIONS`.
        A caption without separators gives one part (itself, normalised).

    Raises:
        TypeError: caption is not a str. ValueError: it holds no words.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    text = _normalise(caption)
    if not text:
        raise ValueError(f"caption must hold at least one word, got {caption!r}")
    pieces = _SEPARATOR.split(text)
    # re.split with one group: [seg, rel|None, seg, rel|None, seg, ...]
    segments = pieces[0::2]
    joins = pieces[1::2]
    parts: list[str] = []
    starts: list[int] = []  # first part index of each non-empty segment
    seg_rel: list[str | None] = []  # relation joining this segment to the previous one
    pending: str | None = None
    for k, seg in enumerate(segments):
        if k > 0 and joins[k - 1] is not None:
            pending = _REL_OF[joins[k - 1]]
        phrases = _phrases(seg.strip())
        if not phrases:
            continue
        seg_rel.append(pending if starts else None)
        starts.append(len(parts))
        parts.extend(phrases)
        pending = None
    if not parts:
        raise ValueError(f"caption names no object: {caption!r}")
    relations = [
        (starts[s - 1], starts[s], rel) for s, rel in enumerate(seg_rel) if rel is not None and s > 0
    ]
    return parts, relations


def query_parts(caption: str, parts: list[str] | None = None) -> list[str]:
    """The caller's own parts when given (checked), else `split_parts(caption)[0]`."""
    if parts is None:
        return split_parts(caption)[0]
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"parts must be a non-empty list of non-empty str, got {parts!r}")
    return list(parts)
