"""GeoShapes' words for steering and diagnostics: each concept's nearest confuser, the label phrases."""

from __future__ import annotations

from geosteer.geoshapes.scenes import COLOURS, SHAPES, object_phrase

#: Concept -> its nearest confuser, the vocabulary GeoShapes passes to
#: `geosteer.encoders.contrast_texts` / `part_negatives`. Shapes by silhouette
#: (the pentagon / hexagon pair is the benchmark's fine-grained confusion),
#: colours by hue (nearest neighbour on the colour wheel of `COLOUR_RGB`),
#: sizes by antonym.
CONFUSERS: dict[str, str] = {
    "pentagon": "hexagon",
    "hexagon": "pentagon",
    "circle": "hexagon",
    "square": "pentagon",
    "triangle": "star",
    "star": "triangle",
    "red": "orange",
    "orange": "yellow",
    "yellow": "orange",
    "green": "cyan",
    "cyan": "blue",
    "blue": "purple",
    "purple": "blue",
    "pink": "red",
    "small": "large",
    "large": "small",
    "big": "small",
}
#: "a red pentagon", ... for every shape x colour (48 phrases, shape-major):
#: the classes of the region-recognition diagnostic.
LABEL_PHRASES: list[str] = [object_phrase((s, c)) for s in SHAPES for c in COLOURS]
