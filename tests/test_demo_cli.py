"""`geosteer eval` and `geosteer demo` end to end, tiny, with the shipped demo model."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from geosteer.cli import main


def test_eval_cli_writes_parsable_json(tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    assert main(["eval", "--split", "binding", "--seed", "100", "--queries", "6", "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["splits"] == ["binding"] and res["seeds"] == [100] and res["model"] == "demo"
    assert list(res["methods"]) == ["cosine", "rerank", "rerank-max", "steer"]
    assert res["methods"]["rerank-max"]["config"]["matching"] == "max"
    for method, stats in res["summary"]["binding"].items():
        for metric in ("r1", "r5", "ndcg10"):
            assert 0.0 <= stats[metric]["mean"] <= 1.0 and stats[metric]["n"] == 1
        per = res["per_seed"]["binding"]["100"][method]
        assert per["r1"] <= per["r5"]  # R@1 <= R@5 always
        assert per["r1"] * 6 == pytest.approx(round(per["r1"] * 6))  # a fraction of the 6 queries
    # K is capped at the gallery size (6 queries: 18 scenes)
    assert any(k.startswith("first_stage_recall@") for k in res["diagnostics"]["binding"]["100"])
    printed = capsys.readouterr().out
    assert "R@1" in printed and "rerank-max" in printed and str(out) in printed


def test_demo_quick_writes_a_self_contained_page(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    page = (out / "index.html").read_text()
    # images are embedded (no server, no side files) and every shown query has them
    uris = re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)
    shown = page.count("class='q'")
    assert shown >= 2 and len(uris) >= shown * 6
    assert 'src="http' not in page and "src='http" not in page
    for method in ("cosine", "rerank", "steer"):
        assert f"<span class='label'>{method}<br>" in page
    assert "rerank+steer" not in page  # no such preset: it was "rerank" (default) again
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 300 and sheet.height > 60
    res = json.loads((out / "results.json").read_text())
    assert set(res["splits"]) == {"binding", "fine"} and res["num_queries"] == 8
    printed = capsys.readouterr().out
    assert "binding" in printed and "index.html" in printed


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's own
        main(["eval", "--split", "nope"])
    assert exit_.value.code == 2
    capsys.readouterr()
    # ours: one line, status 2, before the model loads (every kind: tests/test_cli_errors.py)
    assert main(["eval", "--queries", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err == "geosteer eval: error: --queries must be >= 1, got 0\n"
