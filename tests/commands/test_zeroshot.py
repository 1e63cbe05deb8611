"""``fetalclip zeroshot planes|brain|ga`` end to end on a few real images with fetalclip-tiny."""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fetalclip.cli import app, main

runner = CliRunner()


def _fpdb_manifest(fpdb_dir, path, brain=False):
    rows = list(csv.DictReader((fpdb_dir / "FETAL_PLANES_DB_data.csv").open(encoding="utf-8-sig"), delimiter=";"))
    key = "Brain_plane" if brain else "Plane"
    names = ("Trans-thalamic", "Trans-cerebellum", "Trans-ventricular") if brain else ("Fetal abdomen", "Fetal brain", "Other")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "brain_plane"])
        for name in names:
            for row in [r for r in rows if r[key] == name][:2]:
                writer.writerow([fpdb_dir / "Images" / f"{row['Image_name']}.png", row["Plane"], row["Brain_plane"]])
    return path


def _hc18_manifest(hc18_dir, path, n=3, spacing=True):
    rows = list(csv.DictReader((hc18_dir / "training_set_pixel_size_and_HC.csv").open()))[300 : 300 + n]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "pixel_spacing_mm", "hc_mm"])
        for row in rows:
            spacing_mm = row["pixel size(mm)"] if spacing else ""
            writer.writerow([hc18_dir / "training_set" / row["filename"], "brain", spacing_mm, row["head circumference (mm)"]])
    return path


def test_planes_table_and_json(fpdb_dir, tmp_path):
    manifest = _fpdb_manifest(fpdb_dir, tmp_path / "planes.csv")
    out = tmp_path / "planes.json"
    args = ["zeroshot", "planes", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}"]
    result = runner.invoke(app, [*args, "-o", str(out), "--n-bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "macro F1" in result.output and "95% CI" in result.output and "distractors offered: femur" in result.output
    assert "2 images without a planes label were left out" in result.output
    saved = json.loads(out.read_text())
    assert saved["details"]["classes_evaluated"] == ["abdomen", "brain"] and len(saved["rows"]) == 4
    assert saved["schema_version"] == 1 and saved["task"] == "zeroshot-planes" and saved["metrics"]["macro_f1"]["unit"] == "%"
    printed = float(result.output.split("macro F1 ")[1].split()[0])
    assert saved["metrics"]["macro_f1"]["value"] == pytest.approx(printed, abs=0.005)  # the JSON is what was printed
    no_distractors = runner.invoke(app, [*args, "--no-distractors", "--n-bootstrap", "0"])
    assert no_distractors.exit_code == 0 and "distractors offered" not in no_distractors.output


def test_rows_left_out_are_reported_in_the_json(fpdb_dir, tmp_path):
    """A listed file that is missing and a repeated row are left out, and the result says so."""
    manifest = _fpdb_manifest(fpdb_dir, tmp_path / "planes.csv")
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[1], f"{tmp_path / 'gone.png'},Fetal brain,"]) + "\n")
    out = tmp_path / "planes.json"
    result = runner.invoke(app, ["zeroshot", "planes", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "-o", str(out),
                                 "--n-bootstrap", "0"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    (left_out,) = saved["rows_left_out"].values()
    assert left_out["missing"]["count"] == 1 and "gone.png" in left_out["missing"]["first"]["source"]
    assert left_out["duplicates"]["count"] == 1 and len(saved["rows"]) == 4  # the repeat is not counted twice


def test_brain_sub_planes(fpdb_dir, tmp_path):
    manifest = _fpdb_manifest(fpdb_dir, tmp_path / "brain.csv", brain=True)
    result = runner.invoke(app, ["zeroshot", "brain", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "--n-bootstrap", "20"])
    assert result.exit_code == 0, result.output
    for name in ("trans-thalamic", "trans-cerebellum", "trans-ventricular"):
        assert name in result.output
    assert "over 6 images, 3 classes" in result.output


def test_unknown_label_exits_2_listing_known_labels(fpdb_dir, tmp_path, capsys):
    manifest = _fpdb_manifest(fpdb_dir, tmp_path / "planes.csv")
    manifest.write_text(manifest.read_text().replace("Fetal abdomen", "Fetal elbow"))
    with pytest.raises(SystemExit) as info:
        main(["zeroshot", "planes", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}"])
    assert info.value.code == 2
    assert "'Fetal elbow'" in capsys.readouterr().err


def test_ga_end_to_end_then_redecode_without_a_model(hc18_dir, tmp_path):
    manifest = _hc18_manifest(hc18_dir, tmp_path / "hc.csv")
    templates = tmp_path / "t.json"
    templates.write_text(json.dumps(["Fetal head at {weeks} weeks and {days} days, {spacing} mm per pixel."]))
    out, scores = tmp_path / "ga.json", tmp_path / "scores.npz"
    args = ["zeroshot", "ga", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}", "--templates", str(templates)]
    result = runner.invoke(app, [*args, "-o", str(out), "--save-scores", str(scores), "--n-bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "VPR" in result.output
    saved = json.loads(out.read_text())
    rows = list(csv.DictReader((tmp_path / "ga.csv").open()))
    assert len(rows) == 3 and {"pred_ga_days", "hc_mm", "within_who_band"} <= set(rows[0])
    assert (tmp_path / "ga.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = np.load(scores)
    assert data["scores"].shape == (3, 175) and data["hc_mm"].shape == (3,)
    assert saved["details"]["n_images"] == 3 and [r["pred_ga_days"] for r in saved["rows"]] == [int(r["pred_ga_days"]) for r in rows]

    redo = runner.invoke(app, ["zeroshot", "ga", "--scores", str(scores), "--csv", str(tmp_path / "again.csv"), "--n-bootstrap", "50"])
    assert redo.exit_code == 0, redo.output
    again = list(csv.DictReader((tmp_path / "again.csv").open()))
    assert [r["pred_ga_days"] for r in again] == [r["pred_ga_days"] for r in rows]
    assert [r["source"] for r in again] == [r["source"] for r in rows]


def test_ga_argument_and_spacing_errors(hc18_dir, tmp_path, capsys):
    manifest = _hc18_manifest(hc18_dir, tmp_path / "hc.csv", n=2, spacing=False)
    with pytest.raises(SystemExit) as info:
        main(["zeroshot", "ga", "-m", "fetalclip-tiny", "-d", f"csv:{manifest}"])
    assert info.value.code == 2 and "no pixel spacing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["zeroshot", "ga", "--scores", str(tmp_path / "x.npz"), "-m", "fetalclip-tiny"])
    assert info.value.code == 2 and "without --model" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", scores=np.zeros((2, 175)))
    with pytest.raises(SystemExit):
        main(["zeroshot", "ga", "--scores", str(tmp_path / "bad.npz")])
    assert "hc_mm" in capsys.readouterr().err
