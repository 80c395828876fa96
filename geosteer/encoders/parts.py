"""Split a caption into one phrase per object, and the relations between them.

"a red pentagon and a blue hexagon"
    -> (["a red pentagon", "a blue hexagon"], [])
"a red pentagon to the left of a blue hexagon"
    -> (["a red pentagon", "a blue hexagon"], [(0, 1, "left_of")])
"two red pentagons and a star"
    -> (["a red pentagon", "a red pentagon", "a star"], [])
"a rocket with a cat on its left"
    -> (["a rocket", "a cat"], [(1, 0, "left_of")])

The head needs a phrase per object (DESIGN §1, stage 2) and the geometric
relations between them (names of `geosteer.RELATIONS`). Two parsers give
them, chosen by `parser` (or the `GEOSTEER_PARSER` environment variable when
`parser` is None; docs/parsing.md):

- "spacy": `geosteer.encoders.scene_parse`, spaCy's dependency parse, made
  for real captions (nesting, counts, collectives, pronouns, absolute
  positions). Needs the `parse` extra.
- "regex": `split_parts_regex`, the regular-expression splitter written for
  GeoShapes' templated captions (lists of noun phrases joined by "and", ","
  or a spatial preposition). No dependency.
- "auto" (the default): "spacy" when spaCy and an English model load, else
  "regex" with one `RuntimeWarning` per process saying what the extra adds.

Both give the same parts and relations on every GeoShapes caption. Parses
are cached per (parser, caption), so a caption split for the head and again
for its contrast texts is parsed once. Callers with their own parts skip
this (`query_parts(caption, parts)` passes them through).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

from geosteer.encoders import scene_parse
from geosteer.encoders.scene_parse import Parse, SceneObject
from geosteer.relations import RELATIONS

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


__all__ = [
    "CONJUNCTIONS",
    "PARSERS",
    "PARSER_ENV",
    "PREFIXES",
    "RELATION_PHRASES",
    "Split",
    "query_parts",
    "read_captions",
    "resolve_parser",
    "split_captions",
    "split_parts",
    "split_parts_regex",
    "with_article",
]

#: The parser choices: "auto" (spaCy when installed, else the regex splitter with one warning), "spacy", "regex".
PARSERS: tuple[str, ...] = ("auto", "spacy", "regex")
#: The environment variable that sets the parser when a call passes `parser=None` (unset: "auto").
PARSER_ENV = "GEOSTEER_PARSER"
#: One caption's split: its object phrases and its (i, j, relation name) triples.
Split = tuple[list[str], list[tuple[int, int, str]]]


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


def split_parts_regex(caption: str) -> Split:
    """The regular-expression splitter: one phrase per object, and (i, j, relation) triples between phrases.

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


def query_parts(caption: str, parts: list[str] | None = None, parser: str | None = None) -> list[str]:
    """The caller's own parts when given (checked), else `split_parts(caption, parser)[0]`."""
    if parts is None:
        return split_parts(caption, parser)[0]
    if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"parts must be a non-empty list of non-empty str, got {parts!r}")
    return list(parts)


# ----------------------------------------------------------------------------- choosing the parser

_STATE_LOCK = threading.Lock()
_SPACY_MISSING: str | None = None  # why "auto" fell back (spaCy or the model missing), once known
_WARNED = False  # the fallback's one warning per process has been given
_CACHE: OrderedDict[tuple[str, str], Parse] = OrderedDict()  # (parser run, caption) -> its parse
_CACHE_SIZE = 8192


def _choice(parser: str | None) -> str:
    """`parser`, else `$GEOSTEER_PARSER`, else "auto"; checked against `PARSERS`."""
    if parser is None:
        env = os.environ.get(PARSER_ENV, "").strip().lower()
        if env and env not in PARSERS:
            raise ValueError(f"{PARSER_ENV} must be one of {PARSERS}, got {env!r}")
        return env or "auto"
    if not isinstance(parser, str) or parser not in PARSERS:
        raise ValueError(f"parser must be one of {PARSERS} or None, got {parser!r}")
    return parser


def _outside_geosteer() -> int:
    """The `stacklevel` of the first caller outside the geosteer package (the warning points at the user's call)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2  # 1: the warn call's own frame (resolve_parser)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def resolve_parser(parser: str | None = None) -> str:
    """The parser a call with `parser` runs: "spacy" or "regex".

    "auto" loads spaCy's English model on first use; when spaCy or the model
    is not installed it gives "regex" and warns once per process
    (`RuntimeWarning`) what the `parse` extra adds.

    Args:
        parser: one of `PARSERS`, or None for `$GEOSTEER_PARSER` (unset: "auto").

    Returns:
        "spacy" or "regex".

    Raises:
        ValueError: an unknown `parser` or `$GEOSTEER_PARSER`.
        ImportError: "spacy" asked for and not installed (the message names
            the extra); an installed but broken spaCy or model package, for
            "auto" too (never hidden behind the fallback).
    """
    global _SPACY_MISSING, _WARNED
    choice = _choice(parser)
    if choice == "regex":
        return "regex"
    if choice == "spacy":
        scene_parse.load_pipeline()
        return "spacy"
    if _SPACY_MISSING is None:
        try:
            scene_parse.load_pipeline()
            return "spacy"
        except scene_parse.ModelUnavailable as exc:
            _SPACY_MISSING = str(exc).split(";")[0]  # what is missing; the warning says what to install
    with _STATE_LOCK:
        if not _WARNED:
            _WARNED = True
            warnings.warn(
                f"geosteer splits captions with its regular-expression splitter ({_SPACY_MISSING}). It was written "
                "for GeoShapes' templated captions: on real captions it finds 41% of the objects and 6% of the "
                "relations, the spaCy parser 99% and 94% (docs/parsing.md). pip install 'geosteer[parse]' adds "
                f"spaCy and its English model; {PARSER_ENV}=regex chooses this splitter without this warning.",
                RuntimeWarning, stacklevel=_outside_geosteer())
    return "regex"


# ----------------------------------------------------------------------------- parsing

def _regex_parse(caption: str) -> Parse:
    """`split_parts_regex` as a `Parse`: each part's last word is its head, the words before it its attributes."""
    try:
        parts, relations = split_parts_regex(caption)
    except ValueError:  # no words, or no object
        return Parse(caption=caption, objects=(), relations=())
    objects = []
    for part in parts:
        words = part.split()[1:]  # split_parts_regex writes "a"/"an" first
        objects.append(SceneObject(phrase=part, head=words[-1], attributes=tuple(words[:-1])))
    return Parse(caption=caption, objects=tuple(objects), relations=tuple(relations))


def read_captions(captions: Sequence[str], parser: str | None = None) -> list[Parse]:
    """Each caption's parse: its objects (phrase, head noun, attribute words) and relations.

    Captions not parsed before by the same parser go through it in one batch
    (one `nlp.pipe` for spaCy); parses are cached per (parser, caption).

    Args:
        captions: a list of str (an empty one, or one naming no object, gives
            a `Parse` without objects).
        parser: one of `PARSERS`, or None for `$GEOSTEER_PARSER` (unset: "auto").

    Returns:
        One `geosteer.encoders.scene_parse.Parse` per caption, in order:
        `objects`, geometric `relations` (i, j, name) with names in
        `geosteer.RELATIONS`, and `other_relations` (i, j, word: "holding",
        "riding", "wearing", "with", ...; the regex splitter finds none).

    Raises:
        TypeError: `captions` is a bare str or holds a non-str (`captions[i]`).
        ValueError / ImportError: as `resolve_parser`.
    """
    texts = scene_parse.check_captions(captions)
    name = resolve_parser(parser)
    with _STATE_LOCK:
        found = {c: _CACHE[(name, c)] for c in texts if (name, c) in _CACHE}
    todo = list(dict.fromkeys(c for c in texts if c not in found))
    if todo:
        new = scene_parse.parse_captions(todo) if name == "spacy" else [_regex_parse(c) for c in todo]
        found.update(zip(todo, new))
        with _STATE_LOCK:
            for c, p in zip(todo, new):
                _CACHE[(name, c)] = p
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return [found[c] for c in texts]


def _split(parse: Parse) -> Split:
    # Geometric relations only, in one order (the regex splitter's: by subject, then object).
    relations = sorted((i, j, r) for i, j, r in parse.relations if r in RELATIONS)
    return parse.phrases, relations


def split_captions(captions: Sequence[str], parser: str | None = None) -> list[Split]:
    """`split_parts` of many captions, parsed in one batch.

    Args:
        captions: a list of str.
        parser: one of `PARSERS`, or None for `$GEOSTEER_PARSER` (unset: "auto").

    Returns:
        One (parts, relations) per caption, as `split_parts` gives them;
        ([], []) for a caption naming no object (or no words), where
        `split_parts` raises.

    Raises:
        TypeError: `captions` is a bare str or holds a non-str (`captions[i]`).
        ValueError / ImportError: as `resolve_parser`.
    """
    return [_split(p) for p in read_captions(captions, parser)]


def split_parts(caption: str, parser: str | None = None) -> Split:
    """One phrase per object, and (i, j, relation) triples between phrases.

    "i <relation> j": "a rocket with a cat on its left" gives (["a rocket",
    "a cat"], [(1, 0, "left_of")]). Relations are the geometric ones, named as
    in `geosteer.RELATIONS`; the spaCy parser's other relations (holding,
    riding, wearing, ...) are not in them (`read_captions` has them).

    Args:
        caption: the query text.
        parser: one of `PARSERS` ("auto": spaCy when installed, else the
            regex splitter with one warning), or None for `$GEOSTEER_PARSER`
            (unset: "auto").

    Returns:
        (parts, relations): parts are lower-case phrases, "a"/"an" first for
        one thing ("a red pentagon"; a counted "three men" gives three
        parts); relations sorted by subject, then object.

    Raises:
        TypeError: caption is not a str. ValueError: it holds no words, or
        names no object; an unknown `parser`. ImportError: as `resolve_parser`.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    if not caption.strip():
        raise ValueError(f"caption must hold at least one word, got {caption!r}")
    parts, relations = split_captions([caption], parser)[0]
    if not parts:
        raise ValueError(f"caption names no object: {caption!r}")
    return parts, relations
