"""Convert the hand annotations in annotated.txt to annotated.jsonl (format only).

No caption is parsed here: every object, attribute and relation comes from the
annotation lines. The held-out split is fixed by a hash of the caption text
(sha256, first 8 hex digits as an int, mod 10 < 3 -> "heldout"), chosen before
any parser was tuned (RULES.md).

    python tests/data/captions/build_jsonl.py        # rewrites annotated.jsonl
    python tests/data/captions/build_jsonl.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "annotated.txt"
TARGET = HERE / "annotated.jsonl"
RELATIONS = ("left_of", "right_of", "above", "below", "on", "under", "next_to", "in", "in_front_of", "behind")


def split_of(caption: str) -> str:
    """"heldout" for ~30% of captions, fixed by the caption text alone."""
    return "heldout" if int(hashlib.sha256(caption.encode("utf-8")).hexdigest()[:8], 16) % 10 < 3 else "tune"


def _relation(text: str, n_objects: int, where: str) -> list:
    i, name, j = text.split()
    i, j = int(i), int(j)
    if name not in RELATIONS:
        raise ValueError(f"{where}: unknown relation {name!r}")
    if not (0 <= i < n_objects and 0 <= j < n_objects) or i == j:
        raise ValueError(f"{where}: bad indices in {text!r}")
    return [i, j, name]


def load(path: Path = SOURCE) -> list[dict]:
    """The annotation records of `path`, in file order."""
    records: list[dict] = []
    rec: dict | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip()
        where = f"{path.name}:{lineno}"
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("= "):
            head = line[2:].split()
            if head[0] == "paraphrase":
                source, kind = "paraphrase", "paraphrase"
            else:
                source, kind = head[0], {"pos": "caption", "neg": "negative_caption"}[head[1]]
            rec = {"caption": None, "source": source, "field": kind, "objects": [], "relations": [],
                   "alternatives": [], "notes": ""}
            records.append(rec)
        elif rec is None:
            raise ValueError(f"{where}: text before the first record")
        elif rec["caption"] is None:
            rec["caption"] = line
        elif line.startswith("o "):
            phrase, head, attrs = (s.strip() for s in line[2:].split(";"))
            rec["objects"].append({"phrase": phrase, "head": head, "attributes": attrs.split()})
        elif line.startswith("r "):
            readings = [_relation(t, len(rec["objects"]), where) for t in line[2:].split("|")]
            rec["relations"].append(readings[0])
            rec["alternatives"].append(readings[1:])
        elif line.startswith("n "):
            rec["notes"] = (rec["notes"] + " " + line[2:]).strip()
        else:
            raise ValueError(f"{where}: cannot read {line!r}")
    for rec in records:
        rec["split"] = split_of(rec["caption"])
    return records


def dumps(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


if __name__ == "__main__":
    text = dumps(load())
    if "--check" in sys.argv[1:]:
        sys.exit(0 if TARGET.exists() and TARGET.read_text(encoding="utf-8") == text else 1)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET} ({text.count(chr(10))} captions)")
