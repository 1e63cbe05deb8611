"""The cine phantom: beating four-chamber hearts, per-patient defects with a visible cue, and its export."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fetalclip.data.datasets import open_dataset
from fetalclip.errors import FetalCLIPError
from fetalclip.sim.anatomy import THORAX_LABELS
from fetalclip.sim.cine import CineConfig, frame_plan, parse_cine_spec, patient_defect, plan_clip, render_clip, write_cine
from fetalclip.sim.dataset import parse_sim_spec, render_sample, sim_dataset
from fetalclip.sim.render import render_plan
from fetalclip.sim.shapes import paint_mask
from fetalclip.tasks.probe_clips import list_clip_frames


def chamber_areas(config: CineConfig, clip) -> dict[str, np.ndarray]:
    """Pixel area of every chamber in every frame, from the frames' label masks."""
    areas: dict[str, list[int]] = {name: [] for name in THORAX_LABELS if name != "heart"}
    for t in range(config.frames):
        plan = frame_plan(config, clip, t)
        mask = paint_mask(plan.shapes, plan.labels, plan.height, plan.width)
        for name in areas:
            areas[name].append(int(np.sum(mask == THORAX_LABELS[name])))
    return {name: np.array(values, dtype=float) for name, values in areas.items()}


def first_clip(config: CineConfig, defect: str | None):
    for index in range(40):
        clip = plan_clip(config, index)
        if clip.defect == defect:
            return clip
    raise AssertionError(f"no {defect} clip among the first 40")


def test_the_heart_beats_ventricles_and_atria_in_counter_phase():
    config = CineConfig(seed=1, frames=12)
    areas = chamber_areas(config, first_clip(config, None))
    for name in ("left_ventricle", "right_ventricle"):
        assert areas[name].max() > 1.25 * areas[name].min(), name  # ~20% smaller in systole, per axis
    # Ventricles empty while the atria fill.
    assert np.corrcoef(areas["left_ventricle"], areas["left_atrium"])[0, 1] < -0.5


def test_hypoplastic_left_heart_has_a_small_left_ventricle():
    config = CineConfig(seed=1, frames=8, defect="hlhs")
    normal = chamber_areas(config, first_clip(config, None))
    hlhs = chamber_areas(config, first_clip(config, "hlhs"))
    ratio_normal = normal["left_ventricle"] / normal["right_ventricle"]
    ratio_hlhs = hlhs["left_ventricle"] / hlhs["right_ventricle"]
    assert np.all((ratio_normal > 0.8) & (ratio_normal < 1.25))
    assert np.all(ratio_hlhs < 0.35)
    # ...and it barely contracts.
    assert hlhs["left_ventricle"].max() < 1.15 * hlhs["left_ventricle"].min()


def test_septal_defect_opens_the_septum_in_the_image():
    config = CineConfig(seed=2, frames=6, defect="vsd", overlay=0.0)
    clip = first_clip(config, "vsd")
    healthy = replace(clip, defect=None)
    septum, elsewhere = [], []
    for t in range(config.frames):
        plan = frame_plan(config, clip, t)
        heart = next(s for s in plan.shapes if getattr(s, "label", None) == "heart")
        ventricles = [s for s in plan.shapes if getattr(s, "label", None) in ("left_ventricle", "right_ventricle")]
        # The septum's middle: halfway between the two ventricles' centres.
        x = int(round((ventricles[0].cx + ventricles[1].cx) / 2))
        y = int(round((ventricles[0].cy + ventricles[1].cy) / 2))
        image = render_plan(plan, (0, t), (0,))[0].astype(float)
        other = render_plan(frame_plan(config, healthy, t), (0, t), (0,))[0].astype(float)
        septum.append(other[y - 1:y + 2, x - 1:x + 2].mean() - image[y - 1:y + 2, x - 1:x + 2].mean())
        far = (int(round(heart.cy)), int(round(heart.cx - 0.9 * heart.a)))  # outside the heart's inner structures
        elsewhere.append(abs(other[far] - image[far]))
    assert np.mean(septum) > 40  # tissue in a normal heart, blood where the defect is
    assert np.mean(elsewhere) < 5  # same speckle draws: nothing else changes


def test_defects_belong_to_patients_and_pairs_are_balanced():
    config = CineConfig(seed=4, clips_per_patient=3)
    clips = [plan_clip(config, i) for i in range(60)]
    by_patient: dict[str, set] = {}
    for clip in clips:
        by_patient.setdefault(clip.patient, set()).add(clip.defect)
    assert all(len(defects) == 1 for defects in by_patient.values())  # every clip of a patient agrees
    assert len(by_patient) == 20
    for pair in range(10):
        pair_defects = [patient_defect(config, 2 * pair), patient_defect(config, 2 * pair + 1)]
        assert sum(d is not None for d in pair_defects) == 1
    kinds = {clip.defect for clip in clips} - {None}
    assert kinds == {"hlhs", "vsd"}  # mixed by default
    assert {plan_clip(CineConfig(seed=4, defect="hlhs"), i).defect for i in range(20)} == {None, "hlhs"}
    assert {clip.label for clip in clips} == {"chd", "normal"}


def test_a_clip_depends_only_on_seed_and_index_and_moves():
    config = CineConfig(seed=5, frames=4, size=128)
    _, first = render_clip(config, 3)
    _, again = render_clip(config, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1])
    clip = plan_clip(config, 3)
    origins = {(frame_plan(config, clip, t).placement.ox, frame_plan(config, clip, t).placement.oy) for t in range(4)}
    assert len(origins) == 4  # the probe drifts


def test_export_reads_back_as_a_clip_dataset(tmp_path):
    summary = write_cine(6, CineConfig(seed=6, frames=3, size=96), tmp_path / "cine")
    assert summary["patients"] == 3 and sum(summary["counts"].values()) == 6
    dataset = open_dataset(summary["spec"])
    assert len(dataset) == 6
    assert {record["label"] for record in dataset.records} == {"chd", "normal"}
    for record in dataset.records:
        frames = list_clip_frames(record["source"])
        assert len(frames) == 3 and [p for p, _ in frames] == sorted(p for p, _ in frames)
    assert (tmp_path / "cine" / "cine.json").is_file()


@pytest.mark.parametrize(
    "spec, message",
    [("x", "number of clips"), ("0", "positive"), ("4,defect=tof", "unknown cine defect"),
     ("4,frames=1", "at least 2 frames"), ("4,colour=red", "unknown option"), ("4,frames=many", "bad value")],
)
def test_bad_cine_specs_name_the_problem(spec, message):
    with pytest.raises(FetalCLIPError, match=message):
        parse_cine_spec(spec)


def test_image_phantom_without_defects_is_unchanged_and_with_them_captions_the_finding():
    n, plain = parse_sim_spec("36,seed=7")
    _, with_chd = parse_sim_spec("36,seed=7,chd=1")
    plain_records = sim_dataset(n, plain).records
    chd_records = sim_dataset(n, with_chd).records
    assert not any("finding" in record for record in plain_records)
    thorax = [i for i, record in enumerate(chd_records) if record["label"] == "thorax"]
    assert thorax and all(chd_records[i]["finding"] in ("hlhs", "vsd") for i in thorax)
    assert all("finding" not in record for i, record in enumerate(chd_records) if i not in thorax)
    # Captions keep their drawn sentence and add the finding's.
    i = thorax[0]
    assert chd_records[i]["caption"].startswith(plain_records[i]["caption"])
    assert chd_records[i]["caption"] != plain_records[i]["caption"]
    # Only thorax views change: another view renders the same pixels.
    other = next(j for j, record in enumerate(plain_records) if record["label"] == "abdomen")
    assert np.array_equal(render_sample(other, plain)["image"], render_sample(other, with_chd)["image"])
    assert not np.array_equal(render_sample(i, plain)["image"], render_sample(i, with_chd)["image"])
    _, half = parse_sim_spec("240,seed=7,chd=0.5")
    findings = {record["patient"]: record["finding"] for record in sim_dataset(240, half).records if "finding" in record}
    assert "normal_heart" in findings.values() and {"hlhs", "vsd"} & set(findings.values())
