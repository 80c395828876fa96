"""Contrast texts for steering (DESIGN §1, stage 1): a query's confusers.

From the query alone, no gallery, on its parse (`geosteer.encoders.parts`):
swap the attributes between its objects ("a red pentagon and a blue
hexagon" -> "a blue pentagon and a red hexagon"), reverse its relations
("left of" -> "right of"; "a cat in a box" -> "a box in a cat"), and
replace one concept by its nearest confuser from a vocabulary the caller
gives (`{"pentagon": "hexagon", "red": "orange", ...}`; without one, only
swaps and reversals). An object is the parse's: its head noun with its own
attribute words, so "a red fire hydrant" swaps "red" and keeps "fire
hydrant", and "a cup of coffee" becomes "a mug of coffee", not "a cup of
tea". `part_negatives` gives one negative per part, aligned with the parts,
for per-object steering directions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from geosteer.encoders.parts import read_captions, with_article
from geosteer.encoders.scene_parse import Parse, SceneObject
from geosteer.relations import OPPOSITE, RELATIONS, WORDS

__all__ = ["compose", "contrast_texts", "part_negatives"]

_ARTICLES = ("a", "an", "the")
# Words that join attribute words ("red and white flowers"): moved with them, never attributes.
_JOINERS = ("and", "or", ",")
_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "person": "people", "child": "children", "foot": "feet", "tooth": "teeth",
    "mouse": "mice", "goose": "geese", "sheep": "sheep", "deer": "deer", "fish": "fish", "ox": "oxen",
}
_IRREGULAR_SINGULARS = {v: k for k, v in _IRREGULAR_PLURALS.items()}


@dataclass(frozen=True)
class _Obj:
    """One object as a phrase is written: [a/an] prefix body.

    prefix: its attribute words as written, with the words joining them
    ("red", "and", "white"); body: the rest ("fire", "hydrant"; "cup", "of",
    "coffee"); head: the index of the head noun in body; noun: the head noun
    as the parse names it (singular: "flower" for "flowers"); one: one
    thing, written with "a" / "an".
    """

    prefix: tuple[str, ...]
    body: tuple[str, ...]
    head: int
    noun: str
    one: bool = True

    @property
    def attrs(self) -> tuple[str, ...]:
        """The attribute words (the prefix without its joining words)."""
        return tuple(w for w in self.prefix if w.strip(",") not in _JOINERS)

    def phrase(self) -> str:
        text = " ".join((*self.prefix, *self.body))
        return with_article(text) if self.one else text

    def plural(self, count: int) -> str:
        """ "two red pentagons", "three cups of coffee"."""
        body = list(self.body)
        body[self.head] = _plural(body[self.head])
        return " ".join((_COUNTS.get(count, str(count)), *self.prefix, *body))

    def definite(self, plural: bool = False) -> str:
        """ "the red pentagon", or with `plural` "the red pentagons"."""
        body = list(self.body)
        if plural:
            body[self.head] = _plural(body[self.head])
        return " ".join(("the", *self.prefix, *body))


def _plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith("y") and noun[-2:-1] not in ("", *"aeiou"):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def _is_form_of(word: str, head: str) -> bool:
    """Whether `word` is `head` or a regular / irregular plural of it."""
    return word == head or _IRREGULAR_SINGULARS.get(word) == head or word in (head + "s", head + "es") or (
        head.endswith("y") and word == head[:-1] + "ies")


def _words(phrase: str) -> tuple[list[str], bool]:
    """A phrase's words without a leading article, and whether it had one."""
    words = phrase.lower().split()
    if words and words[0] in _ARTICLES:
        return words[1:], True
    return words, False


def _last_word_object(phrase: str) -> _Obj | None:
    """The rule for a phrase without a parse: the last word is the noun, the words before it its attributes.

    None for a phrase that names no object (only an article).
    """
    words, _ = _words(phrase)
    if not words:
        return None
    return _Obj(tuple(words[:-1]), (words[-1],), 0, words[-1], True)


def _from_scene(obj: SceneObject) -> _Obj:
    """A parsed object: its leading attribute words are the prefix, the rest (compound words, head, "of X") the body."""
    words, _ = _words(obj.phrase)
    attrs = set(obj.attributes)
    k = 0
    while k < len(words) - 1 and (words[k].strip(",") in attrs or (k > 0 and words[k].strip(",") in _JOINERS)):
        k += 1
    while k > 0 and words[k - 1].strip(",") in _JOINERS:  # a joining word belongs to the attributes around it
        k -= 1
    body = words[k:]
    heads = [n for n, w in enumerate(body) if _is_form_of(w, obj.head)]
    if heads:
        head = heads[0]
    elif "of" in body[1:]:  # "a cup of coffee": the word before "of"
        head = body.index("of", 1) - 1
    else:
        head = len(body) - 1
    return _Obj(tuple(words[:k]), tuple(body), head, obj.head, obj.phrase.split()[:1] in (["a"], ["an"]))


def _phrase_objects(parts: Sequence[str], parser: str | None) -> list[_Obj | None]:
    """Each part as an object: its parse when the phrase parses as that one object, else the last-word rule."""
    lowered = [p.lower() for p in parts]
    out: list[_Obj | None] = []
    for part, parse in zip(lowered, read_captions(lowered, parser)):
        if len(parse.objects) == 1 and _words(parse.objects[0].phrase)[0] == _words(part)[0]:
            out.append(_from_scene(parse.objects[0]))
        else:  # several objects, none, or a phrase the parser rewrote: the part as written
            out.append(_last_word_object(part))
    return out


def _part_objects(parts: Sequence[str], parser: str | None, caption: str | None) -> list[_Obj | None]:
    """The caption's parsed objects when `parts` are its phrases, else `_phrase_objects(parts)`."""
    if caption is not None:
        if not isinstance(caption, str):
            raise TypeError(f"caption must be a str or None, got {type(caption).__name__}")
        parse = read_captions([caption], parser)[0]
        if parse.phrases == [p.lower() for p in parts]:
            return [_from_scene(o) for o in parse.objects]
    return _phrase_objects(parts, parser)


def _forward(i: int, j: int, r: str) -> tuple[int, int, str]:
    """(i, j, r) with the earlier part first where `r` has a converse: (1, 0, left_of) -> (0, 1, right_of)."""
    if i > j and r in OPPOSITE:
        return j, i, OPPOSITE[r]
    return i, j, r


def _compose(objs: Sequence[_Obj], phrases: Sequence[str], relations: Sequence[tuple[int, int, str]],
             others: Sequence[tuple[int, int, str]] = ()) -> str:
    """Objects (written as `phrases`) and relations back to one caption (see `compose`)."""
    items = [(a, b, WORDS[r]) for a, b, r in (_forward(*rel) for rel in relations)]
    placed = {frozenset((i, j)) for i, j, _ in items}
    # an other relation between two objects a geometric one already places ("a rocket with a cat on its
    # left") adds no words worth a clause of their own
    items += [(i, j, w) for i, j, w in others if frozenset((i, j)) not in placed]
    entering: dict[int, set[tuple[int, str]]] = {}
    for i, j, w in items:
        if i < j:
            entering.setdefault(j, set()).add((i, w))
    groups: list[list[int]] = []  # [first, last] part of each group
    for k, obj in enumerate(objs):
        # identical neighbours are counted when no relation enters the later one, or the same ones
        # enter both ("a star below two hexagons": below(0, 1), below(0, 2))
        if (groups and obj.one and phrases[k] == phrases[groups[-1][0]]
                and (k not in entering or entering[k] == entering.get(groups[-1][0]))):
            groups[-1][1] = k
        else:
            groups.append([k, k])
    group_of = {k: g for g, (a, b) in enumerate(groups) for k in range(a, b + 1)}
    inline: dict[int, str] = {}  # group -> the words relating it to the group before
    extra: list[tuple[int, int, str]] = []
    for i, j, w in items:
        g = group_of[j]
        if i < j and g > 0 and group_of[i] == g - 1 and inline.get(g, w) == w:
            inline[g] = w
        else:  # not between neighbours: its own clause after the list
            extra.append((i, j, w))
    texts = [phrases[a] if a == b else objs[a].plural(b - a + 1) for a, b in groups]
    out = texts[0]
    for g in range(1, len(groups)):
        if g in inline:
            out += f" {inline[g]} {texts[g]}"
        elif g == len(groups) - 1:
            out += f" and {texts[g]}"
        else:
            out += f", {texts[g]}"
    # one clause per pair of groups: "the dogs on the sofa" when every counted dog is on it
    for gi, gj, w in dict.fromkeys((group_of[i], group_of[j], w) for i, j, w in extra):
        pairs = {(i, j) for i, j, v in extra if v == w and group_of[i] == gi and group_of[j] == gj}
        sides = []
        for g, side in ((gi, 0), (gj, 1)):
            a, b = groups[g]
            every = {pair[side] for pair in pairs} == set(range(a, b + 1))
            sides.append(objs[a].definite(plural=a < b and every))
        out += f", {sides[0]} {w} {sides[1]}"
    return out


def compose(parts: list[str], relations: list[tuple[int, int, str]],
            other_relations: Sequence[tuple[int, int, str]] = (), parser: str | None = None) -> str:
    """Parts and relations back to one caption, in the benchmark's style.

    Adjacent identical parts that no relation enters are counted ("two red
    pentagons", "three cups of coffee"); a relation (i, j, r) between
    neighbouring groups is written between them with `geosteer.relations.WORDS`
    (one whose converse names the earlier part first is turned round:
    (1, 0, "left_of") is written "a ... to the right of ..."); any other
    relation follows the list as its own clause ("..., the apple in the
    bowl"). Other relations (i, j, word) are written with their word
    ("a man riding a horse").

    Args:
        parts: phrases with articles, as `split_parts` gives them.
        relations: (i, j, relation) triples over the parts, names of `geosteer.RELATIONS`.
        other_relations: (i, j, word) triples, as `Parse.other_relations`.
        parser: how the parts are read into head noun and attributes (for
            counting them); as `split_parts`' `parser`.

    Returns:
        The caption.
    """
    objs = _phrase_objects(parts, parser)
    objs = [o if o is not None else _Obj((), (p,), 0, p, False) for o, p in zip(objs, parts)]
    return _compose(objs, parts, relations, other_relations)


# Canonical form of each relation: (name, swap subject and object), so "a right_of b" is "b left_of a".
_CANONICAL = {
    r: ((OPPOSITE[r], True) if r in OPPOSITE and RELATIONS.index(OPPOSITE[r]) < RELATIONS.index(r) else (r, False))
    for r in RELATIONS
}


def _meaning(phrases: Sequence[str], relations, others=()) -> tuple:
    """Order-free key: captions with equal keys describe the same scenes."""
    rels = []
    for i, j, r in relations:
        a, b = phrases[i], phrases[j]
        name, swap = _CANONICAL[r]
        if swap or (OPPOSITE.get(r) == r and b < a):  # converses, and a symmetric relation in one order
            a, b = b, a
        rels.append((a, b, name))
    other = sorted((phrases[i], phrases[j], w) for i, j, w in others)
    return tuple(sorted(phrases)), tuple(sorted(rels)), tuple(other)


def _reversed(relations: list[tuple[int, int, str]], k: int, phrases: Sequence[str]) -> list[tuple[int, int, str]] | None:
    """The relations with relation k reversed (its converse, or subject and object swapped where it has none),
    and with it every relation between the same two phrases ("three men on a bench": all three). None: symmetric."""
    i, j, r = relations[k]
    if OPPOSITE.get(r) == r:  # next_to reversed says the same
        return None
    key = (phrases[i], phrases[j], r)
    out = []
    for a, b, s in relations:
        if (phrases[a], phrases[b], s) == key:
            out.append((a, b, OPPOSITE[s]) if s in OPPOSITE else (b, a, s))
        else:
            out.append((a, b, s))
    return out


def _noun_confuser(obj: _Obj, vocab: Mapping[str, str]) -> _Obj | None:
    """`obj` with its head noun replaced by its confuser (a plural stays plural), None when it has none."""
    word = obj.body[obj.head]
    if word in vocab:
        new = vocab[word]
    elif obj.noun in vocab:  # the noun as the parse names it: "flowers" -> "flower"
        new = _plural(vocab[obj.noun]) if word != obj.noun else vocab[obj.noun]
    else:
        return None
    body = list(obj.body)
    body[obj.head] = new
    return replace(obj, body=tuple(body))


def _attribute_confuser(obj: _Obj, position: int, vocab: Mapping[str, str]) -> _Obj:
    prefix = list(obj.prefix)
    slots = [n for n, w in enumerate(prefix) if w.strip(",") not in _JOINERS]
    prefix[slots[position]] = vocab[obj.attrs[position]]
    return replace(obj, prefix=tuple(prefix))


def contrast_texts(caption: str, vocabulary: Mapping[str, str] | None = None, parser: str | None = None) -> list[str]:
    """Confusers of a query: attribute swaps, relation reversals, replacements.

    All on the caption's parse (`geosteer.encoders.parts.read_captions`):
    an object keeps its head noun and compound words ("a fire hydrant"), its
    attribute words move together; relations are written back with
    `geosteer.relations.WORDS`, the parse's other relations ("riding",
    "holding") with their own word.

    Args:
        caption: the query text.
        vocabulary: concept -> nearest confuser; None = no replacements.
        parser: as `split_parts`' (None: `$GEOSTEER_PARSER`, unset "auto").

    Returns:
        Distinct captions, each different in meaning from `caption` (a text
        that only reorders the query's objects is dropped), in this order:
        attribute swaps between object pairs, relation reversals (the
        converse, "left of" -> "right of", "on" -> "under"; a relation without
        one, `in`, with subject and object swapped; `next_to` has none), then
        one confuser replacement per concept word per object (its attribute
        words, then its head noun).

    Raises:
        TypeError: caption is not a str. ValueError: it holds no words or names
        no object; an unknown `parser`. ImportError: as `split_parts`.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    if not caption.strip():
        raise ValueError(f"caption must hold at least one word, got {caption!r}")
    vocab = {} if vocabulary is None else vocabulary
    parse: Parse = read_captions([caption], parser)[0]
    if not parse.objects:
        raise ValueError(f"caption names no object: {caption!r}")
    objs = [_from_scene(o) for o in parse.objects]
    relations = sorted((i, j, r) for i, j, r in parse.relations if r in RELATIONS)
    others = list(parse.other_relations)
    candidates: list[tuple[list[_Obj], list[tuple[int, int, str]]]] = []
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            if objs[i].attrs != objs[j].attrs:
                swapped = list(objs)
                swapped[i] = replace(objs[i], prefix=objs[j].prefix)
                swapped[j] = replace(objs[j], prefix=objs[i].prefix)
                candidates.append((swapped, relations))
    phrases = parse.phrases  # an object a candidate leaves as it is keeps the parse's own words

    def written(cand: list[_Obj]) -> list[str]:
        return [phrases[k] if o == objs[k] else o.phrase() for k, o in enumerate(cand)]

    for k in range(len(relations)):
        flipped = _reversed(relations, k, phrases)
        if flipped is not None:
            candidates.append((objs, flipped))
    for i, obj in enumerate(objs):
        changed = [_attribute_confuser(obj, a, vocab) for a, w in enumerate(obj.attrs) if w in vocab]
        noun = _noun_confuser(obj, vocab)
        for new in [*changed, *([noun] if noun is not None else [])]:
            replaced = list(objs)
            replaced[i] = new
            candidates.append((replaced, relations))
    seen = {_meaning(phrases, relations, others)}
    out = []
    for cand_objs, cand_rels in candidates:
        cand_phrases = written(cand_objs)
        key = _meaning(cand_phrases, cand_rels, others)
        if key in seen:
            continue
        seen.add(key)
        out.append(_compose(cand_objs, cand_phrases, cand_rels, others))
    return out


def part_negatives(parts: list[str], mode: str = "auto", vocabulary: Mapping[str, str] | None = None,
                   parser: str | None = None, caption: str | None = None) -> list[str]:
    """One negative phrase per part, aligned with `parts`.

    Each part is an object of the parse: the caption's, when `caption` is
    given and `parts` are its phrases (what `split_parts(caption)` gives),
    else the part's own parse ("a cup of coffee": head "cup", no attributes;
    "a red fire hydrant": "red" on "fire hydrant"). A part the parser does
    not read as one object of the same words (several objects, or words it
    drops) is read as written: its last word the noun, the words before it
    the attributes.

    Args:
        parts: phrases, one per object ("a red pentagon").
        mode: "swap" (the part with the attributes of the next part that has
            different ones: the binding confusion, "a blue pentagon"),
            "confuser" (the noun, else an attribute, replaced by its nearest
            confuser: "a red hexagon"), or "auto" (swap where another part
            differs, else confuser).
        vocabulary: concept -> nearest confuser; None = none (then "confuser"
            makes no negatives).
        parser: as `split_parts`' (None: `$GEOSTEER_PARSER`, unset "auto").
        caption: the caption the parts were split from, if any.

    Returns:
        `len(parts)` phrases; "" where no negative can be made (callers mask
        those out), such as a part that is only an article ("the").

    Raises:
        ValueError: an unknown `mode`; `parts` not a list of non-empty str.
    """
    if mode not in ("auto", "swap", "confuser"):
        raise ValueError(f"mode must be 'auto', 'swap' or 'confuser', got {mode!r}")
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in parts):
        raise ValueError(f"parts must be a list of non-empty str, got {parts!r}")
    vocab = {} if vocabulary is None else vocabulary
    # a part that is only an article ("the": a caller's phrase, or a caption
    # naming no object kept whole) names no object, so it gets no negative
    objs = _part_objects(parts, parser, caption)
    out = []
    for i, obj in enumerate(objs):
        neg = ""
        if obj is None:
            out.append(neg)
            continue
        if mode in ("auto", "swap"):
            for step in range(1, len(objs)):
                other = objs[(i + step) % len(objs)]
                if other is not None and other.attrs != obj.attrs:
                    neg = replace(obj, prefix=other.prefix).phrase()
                    break
        if not neg and mode in ("auto", "confuser"):
            noun = _noun_confuser(obj, vocab)
            if noun is not None:
                neg = noun.phrase()
            else:
                for a, word in enumerate(obj.attrs):
                    if word in vocab:
                        neg = _attribute_confuser(obj, a, vocab).phrase()
                        break
        out.append(neg)
    return out

