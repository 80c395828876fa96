"""Caption -> one phrase per object, plus relations."""

import pytest

from geosteer.encoders.parts import query_parts, split_parts

CASES = [
    ("a red pentagon", ["a red pentagon"], []),
    ("a red pentagon and a blue hexagon", ["a red pentagon", "a blue hexagon"], []),
    ("A Red Pentagon and a Blue Hexagon.", ["a red pentagon", "a blue hexagon"], []),
    ("a red circle, a blue square and an orange star", ["a red circle", "a blue square", "an orange star"], []),
    ("a red circle, a blue square, and an orange star", ["a red circle", "a blue square", "an orange star"], []),
    ("red circle and blue square", ["a red circle", "a blue square"], []),
    ("a red circle with a green star", ["a red circle", "a green star"], []),
    ("a red square next to a blue circle", ["a red square", "a blue circle"], []),
    ("two red pentagons", ["a red pentagon", "a red pentagon"], []),
    ("three green stars", ["a green star"] * 3, []),
    ("2 boxes", ["a box", "a box"], []),
    ("two red pentagons and a blue hexagon", ["a red pentagon", "a red pentagon", "a blue hexagon"], []),
    ("a picture of a red pentagon and a blue hexagon", ["a red pentagon", "a blue hexagon"], []),
    ("there is a yellow triangle", ["a yellow triangle"], []),
    ("a red pentagon to the left of a blue hexagon", ["a red pentagon", "a blue hexagon"], [(0, 1, "left_of")]),
    ("a red pentagon left of a blue hexagon", ["a red pentagon", "a blue hexagon"], [(0, 1, "left_of")]),
    ("a red pentagon to the right of a blue hexagon", ["a red pentagon", "a blue hexagon"], [(0, 1, "right_of")]),
    ("a cat above a dog", ["a cat", "a dog"], [(0, 1, "above")]),
    ("a cat on top of a table", ["a cat", "a table"], [(0, 1, "above")]),
    ("the red circle is below the blue square", ["a red circle", "a blue square"], [(0, 1, "below")]),
    ("a ball under a chair", ["a ball", "a chair"], [(0, 1, "below")]),
    ("an orange star beneath two purple hexagons",
     ["an orange star", "a purple hexagon", "a purple hexagon"], [(0, 1, "below")]),
    ("a red square next to a blue circle under a green star",
     ["a red square", "a blue circle", "a green star"], [(1, 2, "below")]),
    ("a red pentagon and a blue hexagon on top of a green star",
     ["a red pentagon", "a blue hexagon", "a green star"], [(1, 2, "above")]),
    ("a red pentagon, and above it a blue star", ["a red pentagon", "a blue star"], [(0, 1, "above")]),
    ("a photo of a dog", ["a dog"], []),
    # words that merely contain a relation or conjunction are not split
    ("a handsome overcoat", ["a handsome overcoat"], []),
]


@pytest.mark.parametrize("caption,parts,relations", CASES)
def test_split_parts(caption, parts, relations):
    assert split_parts(caption) == (parts, relations)


def test_split_parts_round_trips_benchmark_captions():
    import random

    from geosteer.geoshapes import caption, random_scene

    rng = random.Random(0)
    for _ in range(50):
        scene = random_scene(rng, num_objects=(1, 3))
        parts, rels = split_parts(caption(scene))
        assert len(parts) == len(scene.objects) and rels == []
        for part, obj in zip(parts, scene.objects):
            assert part.endswith(f"{obj.colour} {obj.shape}")


def test_bad_input():
    with pytest.raises(TypeError, match="caption"):
        split_parts(None)
    with pytest.raises(ValueError, match="caption"):
        split_parts("   ")
    with pytest.raises(ValueError, match="parts"):
        query_parts("a dog", parts=[])
    assert query_parts("a dog and a cat") == ["a dog", "a cat"]
    assert query_parts("ignored", parts=["a dog", "a hat"]) == ["a dog", "a hat"]


def test_every_relation_name_comes_from_the_one_registry():
    from geosteer.encoders.parts import RELATION_PHRASES
    from geosteer.geoshapes.scenes import RELATION_WORDS
    from geosteer.relations import AXIS_RELATIONS, GEOMETRY, OPPOSITE, RELATIONS, WORDS

    assert {name for _, name in RELATION_PHRASES} == set(AXIS_RELATIONS)
    assert RELATION_WORDS == {r: WORDS[r] for r in AXIS_RELATIONS}
    assert set(GEOMETRY) == set(AXIS_RELATIONS) and RELATIONS[:4] == AXIS_RELATIONS  # ids never change
    assert set(WORDS) == set(RELATIONS) and set(OPPOSITE) == set(RELATIONS) - {"in"}
    assert all(OPPOSITE[OPPOSITE[r]] == r for r in OPPOSITE)
    for words, name in RELATION_PHRASES:  # each relation's own caption words parse back to it
        if words == WORDS[name]:
            assert split_parts(f"a red circle {words} a blue star")[1] == [(0, 1, name)]
