"""Contrast texts: attribute swaps, relation reversals, nearest confusers."""

import pytest

from geosteer.encoders.contrast import compose, contrast_texts, part_negatives
from geosteer.encoders.parts import split_parts
from geosteer.geoshapes.vocabulary import CONFUSERS


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
