"""Contrast texts: attribute swaps, relation reversals, nearest confusers, on the caption's parse.

tests/data/geoshapes_contrast.jsonl holds what `split_parts`, `contrast_texts`,
`part_negatives` and `compose` gave on 256 GeoShapes captions (the six
splits, seeds 0-2, 16 queries each) before they ran on the spaCy parse
(commit cd9c538, the regex splitter); both parsers must still give exactly
that, in every caption template.
"""

import json
from pathlib import Path

import pytest
from spacy_marks import needs_spacy

from geosteer.encoders.contrast import compose, contrast_texts, part_negatives
from geosteer.encoders.parts import split_parts
from geosteer.geoshapes.vocabulary import CONFUSERS

SNAPSHOT = Path(__file__).resolve().parent / "data" / "geoshapes_contrast.jsonl"

PARSERS = ["regex", pytest.param("spacy", marks=needs_spacy)]


def test_binding_swap_and_confusers():
    texts = contrast_texts("a red pentagon and a blue hexagon", CONFUSERS)
    assert texts[0] == "a blue pentagon and a red hexagon"  # attribute swap first
    assert "a red hexagon and a blue hexagon" in texts  # pentagon -> hexagon
    assert "a red pentagon and a blue pentagon" in texts  # hexagon -> pentagon
    assert "an orange pentagon and a blue hexagon" in texts  # colour confuser, article fixed
    assert "a red pentagon and a blue hexagon" not in texts
    assert len(texts) == len(set(texts))


def test_relation_reversal():
    texts = contrast_texts("a red pentagon to the left of a blue hexagon", CONFUSERS)
    assert "a red pentagon to the right of a blue hexagon" in texts
    assert "a blue pentagon to the left of a red hexagon" in texts
    assert "a red pentagon above a blue hexagon" not in texts  # only the reversal
    assert set(contrast_texts("a cat above a dog")) >= {"a cat below a dog"}


def test_no_text_means_the_query():
    # swapping equal attributes or reordering must not come back as a "negative"
    queries = ["two red pentagons", "a red pentagon and a red hexagon", "a red circle, a blue square and a green star"]
    for query in queries:
        own = sorted(split_parts(query)[0])
        for text in contrast_texts(query, CONFUSERS):
            parts, rels = split_parts(text)
            assert sorted(parts) != own or rels, (query, text)
    texts = contrast_texts("a red pentagon and a red hexagon", CONFUSERS)
    assert "two red pentagons" in texts and "two red hexagons" in texts
    assert contrast_texts("a dog", CONFUSERS) == []  # nothing in the vocabulary, nothing to swap


def test_without_a_vocabulary_only_swaps_and_reversals():
    """The library knows no concept's confuser: with none given, no word is replaced."""
    assert contrast_texts("a red pentagon and a blue hexagon") == ["a blue pentagon and a red hexagon"]
    assert contrast_texts("a cat to the left of a dog") == ["a cat to the right of a dog"]
    assert part_negatives(["a red pentagon"]) == [""]
    assert part_negatives(["a red pentagon"], vocabulary={"pentagon": "hexagon"}) == ["a red hexagon"]


def test_compose_round_trips():
    for caption in [
        "a red pentagon and a blue hexagon",
        "two red pentagons and a blue hexagon",
        "a red circle, a blue square and an orange star",
        "a red pentagon to the left of a blue hexagon",
        "an orange star below two purple hexagons",
    ]:
        assert compose(*split_parts(caption)) == caption


def test_part_negatives_aligned():
    parts = ["a red pentagon", "a blue hexagon"]
    v = CONFUSERS
    assert part_negatives(parts, vocabulary=v) == ["a blue pentagon", "a red hexagon"]
    assert part_negatives(parts, mode="confuser", vocabulary=v) == ["a red hexagon", "a blue pentagon"]
    assert part_negatives(["a red pentagon"], vocabulary=v) == ["a red hexagon"]  # no other part: confuser
    assert part_negatives(["a red pentagon", "a red hexagon"], vocabulary=v) == ["a red hexagon", "a red pentagon"]
    assert part_negatives(["a black cat", "a white dog"], vocabulary=v) == ["a white cat", "a black dog"]
    assert part_negatives(["a dog"], vocabulary=v) == [""]  # nothing known: masked by callers
    assert part_negatives(["a black cat", "a white dog"], mode="confuser", vocabulary=v) == ["", ""]
    assert part_negatives(["a pink star"], mode="swap", vocabulary=v) == [""]
    assert part_negatives(["a small pink star"], mode="confuser", vocabulary=v) == ["a small pink triangle"]
    with pytest.raises(ValueError, match="mode"):
        part_negatives(parts, mode="random")
    with pytest.raises(ValueError, match="parts"):
        part_negatives(["a dog", ""])


def test_confusers_cover_benchmark_vocabulary():
    from geosteer.geoshapes import COLOURS, SHAPES

    for word in (*SHAPES, *COLOURS):
        assert CONFUSERS[word] != word and CONFUSERS[word] in (*SHAPES, *COLOURS)
    assert CONFUSERS["pentagon"] == "hexagon" and CONFUSERS["hexagon"] == "pentagon"


@pytest.mark.parametrize("parser", PARSERS)
def test_geoshapes_outputs_are_unchanged(parser):
    """Every GeoShapes caption, in every template: the parts, relations, contrast texts, part negatives and
    composition of the stored snapshot (made by the code before the parse was wired in)."""
    from geosteer.geoshapes.scenes import CAPTION_TEMPLATES

    rows = [json.loads(line) for line in SNAPSHOT.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 256 and sum(bool(r["relations"]) for r in rows) == 48
    for row in rows:
        for template in CAPTION_TEMPLATES:
            c = template.format(row["caption"])
            p, rel = split_parts(c, parser=parser)
            got = {
                "parts": p, "relations": [list(r) for r in rel],
                "contrast": contrast_texts(c, CONFUSERS, parser=parser),
                "contrast_plain": contrast_texts(c, parser=parser),
                "part_negatives": part_negatives(p, vocabulary=CONFUSERS, parser=parser),
                "swap": part_negatives(p, mode="swap", vocabulary=CONFUSERS, parser=parser),
                "confuser": part_negatives(p, mode="confuser", vocabulary=CONFUSERS, parser=parser),
                "compose": compose(p, rel, parser=parser),
            }
            assert got == {k: v for k, v in row.items() if k != "caption"}, c
            # the caption's own parse (how Indexer.encode_queries calls it) reads the parts the same way
            assert part_negatives(p, vocabulary=CONFUSERS, parser=parser, caption=c) == row["part_negatives"], c


# Real captions through the spaCy parse (expected texts written by hand).
REAL = [
    # an object keeps its compound noun; its attribute words move together
    ("A yellow fire hydrant sitting on a sidewalk.", {"hydrant": "mailbox"},
     ["a fire hydrant on a yellow sidewalk", "a yellow fire hydrant under a sidewalk",
      "a yellow fire mailbox on a sidewalk"]),
    # a container keeps its content; next_to reversed says the same, so it gives no text
    ("a white cup of coffee next to a red plate", {"cup": "mug", "red": "orange"},
     ["a red cup of coffee next to a white plate", "a white mug of coffee next to a red plate",
      "a white cup of coffee next to an orange plate"]),
    # "red and white" moves whole; `in` has no converse: subject and object swapped; a plural stays plural
    ("red and white flowers in a vase", {"flower": "tree"},
     ["flowers in a red and white vase", "red and white flowers and a vase, the vase in the red and white flowers",
      "red and white trees in a vase"]),
    # the parse's (1, 0, left_of) is written from the first object; "with" adds nothing to a placed pair
    ("a rocket with a cat on its left", None, ["a rocket to the left of a cat"]),
    ("a bowl with an apple in it", None, ["a bowl in an apple"]),
    # other relations keep their word; a count is reversed as a whole
    ("a man riding a horse", {"horse": "donkey"}, ["a man riding a donkey"]),
    ("three men on a bench", None, ["three men under a bench"]),
]


@needs_spacy
@pytest.mark.parametrize("caption,vocabulary,texts", REAL)
def test_real_captions(caption, vocabulary, texts):
    assert contrast_texts(caption, vocabulary, parser="spacy") == texts


@needs_spacy
def test_part_negatives_read_the_parse():
    caption = "A yellow fire hydrant sitting on a sidewalk."
    parts = split_parts(caption, parser="spacy")[0]
    assert parts == ["a yellow fire hydrant", "a sidewalk"]
    # the caption's parse: "yellow" is the hydrant's attribute, "fire hydrant" its name
    assert part_negatives(parts, parser="spacy", caption=caption) == ["a fire hydrant", "a yellow sidewalk"]
    # a part's own parse: "a cup of coffee" is a cup; read as written, its last word would be the noun
    vocab = {"cup": "mug", "coffee": "tea"}
    assert part_negatives(["a cup of coffee"], vocabulary=vocab, parser="spacy") == ["a mug of coffee"]
    assert part_negatives(["a cup of coffee"], vocabulary=vocab, parser="regex") == ["a cup of tea"]
    # parts that are not the caption's phrases are read on their own
    assert part_negatives(["a cup of coffee"], vocabulary=vocab, parser="spacy", caption=caption) == ["a mug of coffee"]
    with pytest.raises(TypeError, match="caption must be a str or None"):
        part_negatives(parts, caption=3)


@needs_spacy
def test_compose_writes_any_relation():
    assert compose(["a cup of coffee"] * 2, [], parser="spacy") == "two cups of coffee"
    assert compose(["a man"] * 3 + ["a bench"], [(0, 3, "on"), (1, 3, "on"), (2, 3, "on")]) == "three men on a bench"
    assert compose(["a rocket", "a cat"], [(1, 0, "left_of")]) == "a rocket to the right of a cat"
    assert compose(["a bowl", "an apple"], [(1, 0, "in")]) == "a bowl and an apple, the apple in the bowl"
    assert compose(["a man", "a horse"], [], [(0, 1, "riding")]) == "a man riding a horse"
    assert compose(["a dog", "a dog", "a cat", "a sofa"], [(0, 3, "on"), (1, 3, "on"), (2, 3, "on")]) == (
        "two dogs, a cat on a sofa, the dogs on the sofa")
    assert compose(["a dog", "a dog", "a cat", "a sofa"], [(0, 3, "on"), (2, 3, "on")]) == (
        "two dogs, a cat on a sofa, the dog on the sofa")
