"""Whether spaCy's English pipeline loads here (the optional `parse` extra), and the skip mark for tests needing it."""

import pytest

from geosteer.encoders import scene_parse


def has_spacy() -> bool:
    """True when `scene_parse.load_pipeline()` loads a model (loading it once for the session)."""
    try:
        scene_parse.load_pipeline()
    except ImportError:
        return False
    return True


HAS_SPACY = has_spacy()
needs_spacy = pytest.mark.skipif(not HAS_SPACY, reason="spaCy or its English model is not installed (the parse extra)")
