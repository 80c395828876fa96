"""Caption -> one phrase per object, plus relations: the regex splitter, the parser choice, the fallback.

The spaCy parser's own cases are in tests/test_scene_parse.py; here, what
`split_parts` returns through each parser, how the parser is chosen
(argument, `GEOSTEER_PARSER`, "auto"), and the fallback to the regex splitter
with its one warning when spaCy is not installed (simulated where it is).
"""

import warnings

import pytest
from spacy_marks import needs_spacy

from geosteer.encoders import parts as parts_module
from geosteer.encoders import scene_parse
from geosteer.encoders.contrast import contrast_texts
from geosteer.encoders.parts import query_parts, split_captions, split_parts, split_parts_regex


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
def test_split_parts_regex(caption, parts, relations):
    assert split_parts_regex(caption) == (parts, relations)
    assert split_parts(caption, parser="regex") == (parts, relations)


# Where the spaCy parser reads real captions differently from the regex splitter (written by hand).
SPACY_CASES = [
    ("a cat on top of a table", ["a cat", "a table"], [(0, 1, "on")]),
    ("a ball under a chair", ["a ball", "a chair"], [(0, 1, "under")]),
    ("a red square next to a blue circle", ["a red square", "a blue circle"], [(0, 1, "next_to")]),
    ("an orange star beneath two purple hexagons",
     ["an orange star", "a purple hexagon", "a purple hexagon"], [(0, 1, "under"), (0, 2, "under")]),
    ("a rocket with a cat on its left", ["a rocket", "a cat"], [(1, 0, "left_of")]),
    ("a cat on the left and a rocket on the right", ["a cat", "a rocket"], [(0, 1, "left_of")]),
    ("three men on a bench", ["a man"] * 3 + ["a bench"], [(0, 3, "on"), (1, 3, "on"), (2, 3, "on")]),
    ("A herd of sheep in a field.", ["sheep", "a field"], [(0, 1, "in")]),
    # non-geometric relations (riding, wearing, holding) are not split_parts' relations
    ("a man riding a horse", ["a man", "a horse"], []),
    ("A man in a red shirt holding a cup of coffee next to a herd of sheep.",
     ["a man", "a red shirt", "a cup of coffee", "sheep"], [(2, 3, "next_to")]),
]


@needs_spacy
@pytest.mark.parametrize("caption,parts,relations", SPACY_CASES)
def test_split_parts_spacy(caption, parts, relations):
    assert split_parts(caption, parser="spacy") == (parts, relations)
    assert split_parts(caption) == (parts, relations)  # "auto" runs spaCy where it is installed


@needs_spacy
def test_non_geometric_relations_stay_in_the_parse():
    from geosteer.encoders.parts import read_captions
    from geosteer.relations import RELATIONS

    parse = read_captions(["a man riding a horse next to a woman holding an umbrella"], parser="spacy")[0]
    assert parse.phrases == ["a man", "a horse", "a woman", "an umbrella"]
    assert {(i, j, w) for i, j, w in parse.other_relations} >= {(0, 1, "riding"), (2, 3, "holding")}
    parts, relations = split_parts(parse.caption, parser="spacy")
    assert parts == parse.phrases and all(r in RELATIONS for _, _, r in relations)
    assert not {(i, j) for i, j, _ in relations} & {(0, 1), (2, 3)}


CAPTIONS = ["a red pentagon to the left of a blue hexagon", "two green stars", "at night", "",
            "a cat on top of a table", "a red pentagon to the left of a blue hexagon"]


@pytest.mark.parametrize("parser", ["regex", pytest.param("spacy", marks=needs_spacy)])
def test_split_captions_is_split_parts_of_each(parser, monkeypatch):
    """One batch: what split_parts gives each caption, ([], []) where it raises; one parser call for the new ones."""
    want = []
    for c in CAPTIONS:
        try:
            want.append(split_parts(c, parser=parser))
        except ValueError:
            want.append(([], []))
    # captions no other test parses (the cache lives for the process)
    fresh = [f"{c} and a tartan kite of test_parts" for c in CAPTIONS[:2]] + ["a tartan kite above a test_parts star"] * 2
    calls = []
    real_spacy, real_regex = scene_parse.parse_captions, parts_module._regex_parse
    monkeypatch.setattr(scene_parse, "parse_captions", lambda cs: calls.append(list(cs)) or real_spacy(cs))
    monkeypatch.setattr(parts_module, "_regex_parse", lambda c: calls.append([c]) or real_regex(c))
    assert split_captions(CAPTIONS, parser=parser) == want
    assert calls == [[""]]  # the rest were cached by split_parts above (which refuses "" before parsing)
    calls.clear()
    got = split_captions(fresh, parser=parser)
    if parser == "spacy":
        assert calls == [fresh[:3]]  # one nlp.pipe batch, each distinct caption once
    else:
        assert calls == [[c] for c in fresh[:3]]
    calls.clear()
    assert got == [split_parts(c, parser=parser) for c in fresh] and calls == []


def test_parser_choice(monkeypatch):
    """The argument wins; None reads GEOSTEER_PARSER; anything else is an error naming where it came from."""
    monkeypatch.setenv("GEOSTEER_PARSER", "regex")
    assert parts_module.resolve_parser() == "regex"
    assert parts_module.resolve_parser("regex") == "regex"
    monkeypatch.setenv("GEOSTEER_PARSER", "Regex ")
    assert parts_module.resolve_parser() == "regex"
    monkeypatch.setenv("GEOSTEER_PARSER", "nltk")
    with pytest.raises(ValueError, match="GEOSTEER_PARSER must be one of"):
        split_parts("a cat")
    monkeypatch.delenv("GEOSTEER_PARSER")
    for bad in ("nltk", 3, ""):
        with pytest.raises(ValueError, match="parser must be one of"):
            split_parts("a cat", parser=bad)
    with pytest.raises(TypeError, match="single str"):
        split_captions("a cat")
    with pytest.raises(TypeError, match=r"captions\[1\] must be a str"):
        split_captions(["a cat", None])


@needs_spacy
def test_env_var_chooses_the_regex_splitter(monkeypatch):
    caption = "a cat on top of a table"
    monkeypatch.setenv("GEOSTEER_PARSER", "regex")
    assert split_parts(caption) == split_parts_regex(caption) == (["a cat", "a table"], [(0, 1, "above")])
    monkeypatch.setenv("GEOSTEER_PARSER", "spacy")
    assert split_parts(caption) == (["a cat", "a table"], [(0, 1, "on")])


@pytest.fixture
def no_spacy(monkeypatch):
    """spaCy's model reported missing (as without the parse extra), the fallback's state fresh."""
    def missing():
        raise scene_parse.ModelUnavailable("spaCy is not installed; pip install 'geosteer[parse]'")

    monkeypatch.setattr(scene_parse, "load_pipeline", missing)
    monkeypatch.setattr(parts_module, "_SPACY_MISSING", None)
    monkeypatch.setattr(parts_module, "_WARNED", False)
    monkeypatch.delenv("GEOSTEER_PARSER", raising=False)


def test_auto_falls_back_to_the_regex_splitter_with_one_warning(no_spacy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the module's own once-per-process rule, not Python's filter
        for caption in ("a cat on top of a table", "a red pentagon below a blue star", "a dog"):
            assert split_parts(caption) == split_parts_regex(caption)
        assert split_captions(["a cat above a dog"]) == [split_parts_regex("a cat above a dog")]
    assert [w.category for w in caught] == [RuntimeWarning]
    assert caught[0].filename == __file__  # it points at the caller's line, not into geosteer
    message = str(caught[0].message)
    assert "pip install 'geosteer[parse]'" in message and "regular-expression splitter" in message
    assert "GEOSTEER_PARSER=regex" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert split_parts("a cat", parser="regex") == (["a cat"], [])
    assert caught == []


def test_spacy_asked_for_without_it_raises(no_spacy):
    with pytest.raises(ImportError, match=r"geosteer\[parse\]"):
        split_parts("a cat", parser="spacy")


def test_a_broken_install_is_not_hidden_by_the_fallback(monkeypatch):
    """An ImportError from inside an installed spaCy / model package propagates through "auto" too."""
    def broken():
        raise ImportError("cannot import name 'x' from 'thinc'")

    monkeypatch.setattr(scene_parse, "load_pipeline", broken)
    monkeypatch.setattr(parts_module, "_SPACY_MISSING", None)
    with pytest.raises(ImportError, match="thinc"):
        split_parts("a cat", parser="auto")


def test_split_parts_round_trips_benchmark_captions():
    import random

    from geosteer.geoshapes import caption, random_scene

    rng = random.Random(0)
    for _ in range(50):
        scene = random_scene(rng, num_objects=(1, 3))
        parts, rels = split_parts(caption(scene))  # either parser
        assert len(parts) == len(scene.objects) and rels == []
        for part, obj in zip(parts, scene.objects):
            assert part.endswith(f"{obj.colour} {obj.shape}")


@pytest.mark.parametrize("read", [split_parts, contrast_texts])
def test_bad_caption(read):
    """Every reader of one caption refuses the same input the same way."""
    with pytest.raises(TypeError, match="caption must be a str"):
        read(None)
    with pytest.raises(ValueError, match="caption must hold at least one word"):
        read("   ")
    with pytest.raises(ValueError, match="caption names no object"):
        read("the", parser="regex")
    with pytest.raises(ValueError, match="parser must be one of"):
        read("a cat", parser="nltk")


def test_bad_input():
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
            assert split_parts_regex(f"a red circle {words} a blue star")[1] == [(0, 1, name)]
