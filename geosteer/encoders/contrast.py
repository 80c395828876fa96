"""Contrast texts for steering (DESIGN §1, stage 1): a query's confusers.

From the query alone, no gallery: swap the attributes between its objects
("a red pentagon and a blue hexagon" -> "a blue pentagon and a red
hexagon"), reverse its relations ("left of" -> "right of"), and replace one
concept by its nearest confuser from a vocabulary the caller gives
(`{"pentagon": "hexagon", "red": "orange", ...}`; without one, only swaps
and reversals). `part_negatives` gives one negative per part, aligned with
the parts, for per-object steering directions.
"""

from __future__ import annotations

from collections.abc import Mapping

from geosteer.encoders.parts import split_parts, with_article
from geosteer.relations import OPPOSITE, WORDS

_Obj = tuple[tuple[str, ...], str]  # (attribute words, noun)


def _parse(part: str) -> _Obj:
    words = part.split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    if not words:
        raise ValueError(f"part must name an object, got {part!r}")
    return tuple(words[:-1]), words[-1]


def _object(part: str) -> _Obj | None:
    """`_parse(part)`, or None for a part that names no object (only an article)."""
    try:
        return _parse(part)
    except ValueError:
        return None


def _phrase(obj: _Obj) -> str:
    return with_article(" ".join((*obj[0], obj[1])))


def compose(parts: list[str], relations: list[tuple[int, int, str]]) -> str:
    """Parts and relations back to one caption, in the benchmark's style.

    Adjacent identical parts that no relation separates are counted
    ("two red pentagons"); a relation (i, j, r) is written between part j
    and the group before it.

    Args:
        parts: phrases with articles, as `split_parts` gives them.
        relations: (i, j, relation) triples, j > i.

    Returns:
        The caption.
    """
    rel_into = {j: r for _, j, r in relations}
    groups: list[tuple[str, int, str | None]] = []  # (phrase, count, relation into it)
    for k, part in enumerate(parts):
        rel = rel_into.get(k)
        if groups and rel is None and groups[-1][0] == part:
            groups[-1] = (part, groups[-1][1] + 1, groups[-1][2])
        else:
            groups.append((part, 1, rel))
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    texts = []
    for phrase, count, _ in groups:
        if count == 1:
            texts.append(phrase)
        else:
            attrs, noun = _parse(phrase)
            texts.append(" ".join((words.get(count, str(count)), *attrs, noun + "s")))
    out = texts[0]
    for g in range(1, len(groups)):
        rel = groups[g][2]
        if rel is not None:
            out += f" {WORDS[rel]} {texts[g]}"
        elif g == len(groups) - 1:
            out += f" and {texts[g]}"
        else:
            out += f", {texts[g]}"
    return out


def _meaning(parts: list[str], relations: list[tuple[int, int, str]]) -> tuple:
    """Order-free key: captions with equal keys describe the same scenes."""
    rels = []
    for i, j, r in relations:
        a, b = parts[i], parts[j]
        # a right_of b == b left_of a; a below b == b above a
        rels.append((b, a, OPPOSITE[r]) if r in ("right_of", "below") else (a, b, r))
    return tuple(sorted(parts)), tuple(sorted(rels))


def contrast_texts(caption: str, vocabulary: Mapping[str, str] | None = None) -> list[str]:
    """Confusers of a query: attribute swaps, relation reversals, replacements.

    Args:
        caption: the query text.
        vocabulary: concept -> nearest confuser; None = no replacements.

    Returns:
        Distinct captions, each different in meaning from `caption` (a text
        that only reorders the query's objects is dropped), in this order:
        attribute swaps between object pairs, relation reversals, then one
        confuser replacement per concept word per object.
    """
    vocab = {} if vocabulary is None else vocabulary
    parts, relations = split_parts(caption)
    objs = [_parse(p) for p in parts]
    candidates: list[tuple[list[str], list[tuple[int, int, str]]]] = []
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            if objs[i][0] != objs[j][0]:
                swapped = list(objs)
                swapped[i] = (objs[j][0], objs[i][1])
                swapped[j] = (objs[i][0], objs[j][1])
                candidates.append(([_phrase(o) for o in swapped], relations))
    for k, (i, j, r) in enumerate(relations):
        flipped = list(relations)
        flipped[k] = (i, j, OPPOSITE[r])
        candidates.append((parts, flipped))
    for i, (attrs, noun) in enumerate(objs):
        words = (*attrs, noun)
        for w, word in enumerate(words):
            if word not in vocab:
                continue
            new = list(words)
            new[w] = vocab[word]
            replaced = list(parts)
            replaced[i] = _phrase((tuple(new[:-1]), new[-1]))
            candidates.append((replaced, relations))
    own = _meaning(parts, relations)
    seen = {own}
    out = []
    for cand_parts, cand_rels in candidates:
        key = _meaning(cand_parts, cand_rels)
        if key in seen:
            continue
        seen.add(key)
        out.append(compose(cand_parts, cand_rels))
    return out


def part_negatives(parts: list[str], mode: str = "auto", vocabulary: Mapping[str, str] | None = None) -> list[str]:
    """One negative phrase per part, aligned with `parts`.

    Args:
        parts: phrases, one per object ("a red pentagon").
        mode: "swap" (the part with the attributes of the next part that has
            different ones: the binding confusion, "a blue pentagon"),
            "confuser" (the noun, else an attribute, replaced by its nearest
            confuser: "a red hexagon"), or "auto" (swap where another part
            differs, else confuser).
        vocabulary: concept -> nearest confuser; None = none (then "confuser"
            makes no negatives).

    Returns:
        `len(parts)` phrases; "" where no negative can be made (callers mask
        those out), such as a part that is only an article ("the").
    """
    if mode not in ("auto", "swap", "confuser"):
        raise ValueError(f"mode must be 'auto', 'swap' or 'confuser', got {mode!r}")
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in parts):
        raise ValueError(f"parts must be a list of non-empty str, got {parts!r}")
    vocab = {} if vocabulary is None else vocabulary
    # a part that is only an article ("the": a caller's phrase, or a caption
    # naming no object kept whole) names no object, so it gets no negative
    objs = [_object(p.lower()) for p in parts]
    out = []
    for i, obj in enumerate(objs):
        neg = ""
        if obj is None:
            out.append(neg)
            continue
        attrs, noun = obj
        if mode in ("auto", "swap"):
            for step in range(1, len(objs)):
                other_obj = objs[(i + step) % len(objs)]
                if other_obj is None:
                    continue
                other = other_obj[0]
                if other != attrs:
                    neg = _phrase((other, noun))
                    break
        if not neg and mode in ("auto", "confuser"):
            if noun in vocab:
                neg = _phrase((attrs, vocab[noun]))
            else:
                for w, word in enumerate(attrs):
                    if word in vocab:
                        neg = _phrase((attrs[:w] + (vocab[word],) + attrs[w + 1:], noun))
                        break
        out.append(neg)
    return out
