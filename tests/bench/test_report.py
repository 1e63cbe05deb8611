"""The benchmark outputs from fake results of two models: files, table layout, provenance, and the HTML in Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from fetalclip.bench.report import markdown_table, write_report


def _inline_pngs(page: str) -> list[np.ndarray]:
    encoded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("L")) for text in encoded]


def test_writes_all_four_outputs_with_provenance(tmp_path, two_model_run):
    paths = write_report(two_model_run, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["report.html", "results.csv", "results.json", "results.md"]
    document = json.loads((tmp_path / "results.json").read_text())
    assert [m["label"] for m in document["models"]] == ["tiny-random", "tiny-trained"]
    assert document["provenance"]["git_commit"] == "0" * 40 and document["provenance"]["seed"] == 0
    assert document["provenance"]["data"]["planes"]["manifest_sha256"] == "ab" * 32
    planes = next(r for r in document["results"] if r["model"] == "tiny-trained" and r["task"] == "zeroshot-planes")
    assert planes["metrics"]["macro_f1"]["ci"] == [80.0, 90.0]
    assert planes["provenance"]["model_sha256"] == "sha-tiny-trained"
    assert all("figures" not in r for r in document["results"])  # images stay out of the machine record
    assert document["tasks"]["zeroshot-planes"]["published"] == {"FetalCLIP": 97.27, "CLIP ViT-L/14": 30.77}
    assert {s["task"] for s in document["skipped"]} == {"segment-hc", "clips", "probe-brain"}

    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    vpr = next(r for r in rows if r["model"] == "tiny-random" and r["metric"] == "vpr")
    assert float(vpr["value"]) == pytest.approx(44.0) and float(vpr["ci_low"]) == pytest.approx(39.0)
    assert vpr["model_sha256"] == "sha-tiny-random" and vpr["seed"] == "0"
    failed = next(r for r in rows if r["task"] == "zeroshot-brain")
    assert failed["status"] == "failed" and failed["metric"] == ""

    markdown = (tmp_path / "results.md").read_text()  # every metric of every task below the table
    details = markdown[markdown.index("## All metrics"):markdown.index("## Models")]
    assert "### HC abs. error (`biometry-hc`)" in details and "| tiny-trained | 3.60 [2.60, 4.60] |" in details
    assert "zeroshot-brain" not in details  # failed everywhere: nothing to list


def test_markdown_table_bolds_best_per_column_and_marks_published_rows(two_model_run):
    table = markdown_table(two_model_run).splitlines()
    header, random_row, trained_row, fetalclip_row, clip_row = table[0], table[2], table[3], table[4], table[5]
    # Columns in the published order, then transfer; tasks without data (segment-hc, clips) and figure-only tasks are not columns.
    assert [c.strip() for c in header.split("|")[2:-1]] == [
        "ZS planes F1 (%)", "ZS brain F1 (%)", "ZS GA VPR (%)", "LP planes F1 (%)", "LP brain F1 (%)",
        "FS planes F1 (%)", "HC abs. error (mm) ↓", "LOMO LP F1 (%)",
    ]
    assert "**85.00** [80.00, 90.00]" in trained_row and "60.00 [55.00, 65.00]" in random_row
    assert "**3.60** [2.60, 4.60]" in trained_row and "**" not in random_row.split("|")[-2]  # lower is better for HC error
    assert "failed" in random_row.split("|")[3]  # zeroshot-brain failed for both
    assert "—" in random_row.split("|")[6]  # probe-brain: no entry
    assert fetalclip_row.startswith("| FetalCLIP *(published)* | 97.27 | 70.15 | 83.42 | 94.73 | 82.01 | — | — |")
    assert clip_row.startswith("| CLIP ViT-L/14 *(published)* | 30.77 | 20.61 | 11.43 | 86.74 | 63.42 |")
    assert "**" not in fetalclip_row + clip_row  # published rows never compete for bold


def test_html_is_self_contained_and_its_figures_are_not_blank(tmp_path, two_model_run):
    page = write_report(two_model_run, tmp_path)["report.html"].read_text()
    assert not re.search(r'(src|href)="(?!data:)', page), "report must not reference external files"
    images = _inline_pngs(page)
    # GA x2, confusion x2, few-shot curve x1, embedding map x2, CAM grid x2
    assert len(images) == 9
    for image in images:
        assert min(image.shape) > 100 and image.std() > 5, "a figure is blank"
    assert page.count('class="best"') == 5  # one per column that has values (brain failed, LP brain absent)
    assert "tiny-trained" in page and "FetalCLIP (published)" in page


def test_report_renders_in_headless_chromium_without_console_errors(tmp_path, two_model_run, render_in_chromium):
    report = write_report(two_model_run, tmp_path)["report.html"]
    body, console, pixels = render_in_chromium(report)
    assert console == [], console
    assert 'data-images="9"' in body and 'data-broken-images="0"' in body, body
    assert pixels.std() > 10  # the page drew a table and figures, not a blank or error page


def test_markdown_escapes_labels_taken_from_paths(two_model_run):
    """A model label is often a folder name: table pipes, emphasis or HTML in it must stay literal text."""
    import dataclasses
    import re

    from fetalclip.bench.report import _md_code

    hostile = "run|x*<img src=y>`[z](http://e)"
    old = two_model_run.models[1].label
    models = [two_model_run.models[0], dataclasses.replace(two_model_run.models[1], label=hostile)]
    entries = [{**e, "model": hostile} if e["model"] == old else e for e in two_model_run.entries]
    run = dataclasses.replace(two_model_run, models=models, entries=entries)
    header, _, first, second = markdown_table(run).splitlines()[:4]
    def unescaped_pipes(line):
        return len(re.findall(r"(?<!\\)\|", line))
    assert unescaped_pipes(second) == unescaped_pipes(first) == unescaped_pipes(header)
    assert not re.search(r"(?<!\\)[<*\[`]", second.split(" | ")[0])  # every special of the label escaped
    assert r"\<img" in second and r"\[z\]" in second
    # A code span holding a backtick gets a longer fence, so it cannot be closed from inside.
    assert _md_code("a`b") == "`` a`b ``" and _md_code("plain") == "`plain`"
