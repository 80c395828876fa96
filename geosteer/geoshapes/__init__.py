"""The GeoShapes application: the built-in benchmark and everything around it.

Seeded scenes and captions (`scenes`), retrieval splits (`splits`), their
words (`vocabulary`), indexing a split with the library's `Indexer`
(`index`), evaluation (`eval`), the demo report (`report`), the CLI commands
over GeoShapes (`commands`) and demo-model training (`train_demo`). Nothing
in the library imports this package; it uses only the library's public API.
"""

from geosteer.geoshapes.scenes import (
    BACKGROUND_RGB,
    CAPTION_TEMPLATES,
    COLOUR_RGB,
    COLOURS,
    RELATION_WORDS,
    SHAPES,
    Scene,
    ShapeObject,
    caption,
    object_boxes,
    object_crop,
    object_phrase,
    place,
    random_scene,
    relation_holds,
    render,
)
from geosteer.geoshapes.splits import (
    DESCRIPTIONS,
    SPLITS,
    TEST_SEEDS,
    VALIDATION_SEEDS,
    Split,
    caption_matches,
    check_unique,
    make_split,
)

__all__ = [
    "DESCRIPTIONS",
    "SPLITS",
    "Split",
    "TEST_SEEDS",
    "VALIDATION_SEEDS",
    "caption_matches",
    "check_unique",
    "make_split",
    "BACKGROUND_RGB",
    "CAPTION_TEMPLATES",
    "COLOURS",
    "COLOUR_RGB",
    "RELATION_WORDS",
    "SHAPES",
    "Scene",
    "ShapeObject",
    "caption",
    "object_boxes",
    "object_crop",
    "object_phrase",
    "place",
    "random_scene",
    "relation_holds",
    "render",
]
