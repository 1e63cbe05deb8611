"""Scanner-look augmentation, plain captions sharing the prompts' wording, and a machine held out of pretraining."""

import json

import numpy as np
import pytest
from PIL import Image

from fetalclip.data.captions import TEMPLATES, VIEW_PHRASES, plain_caption, template_caption, view_key
from fetalclip.errors import FetalCLIPError
from fetalclip.train import make_config
from fetalclip.train.augment import Augmentation, UltrasoundAugmentation, augment_name, make_augmentation
from fetalclip.train.config import trajectory_differences
from fetalclip.train.data import open_sources, split_by_patient

from .conftest import small_config


def _square(side=300):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 80, (side, side), dtype=np.uint8)
    pixels[100:200, 60:240] = 220  # a bright structure, off-centre
    return Image.fromarray(pixels).convert("RGB")


def test_ultrasound_augmentation_is_seeded_varied_and_keeps_size_and_grey():
    augment = UltrasoundAugmentation()
    square = _square(augment.source_side(224))
    first = np.asarray(augment(square, np.random.default_rng(5), 224, Image.Resampling.BILINEAR))
    again = np.asarray(augment(square, np.random.default_rng(5), 224, Image.Resampling.BILINEAR))
    assert first.shape == (224, 224, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.array_equal(first[..., 0], first[..., 1]) and np.array_equal(first[..., 1], first[..., 2])  # still grey
    others = [np.asarray(augment(square, np.random.default_rng(s), 224, Image.Resampling.BILINEAR)) for s in range(12)]
    assert len({o.tobytes() for o in others}) == 12
    # Its operations actually vary what they claim to: mean grey level and sharpness spread across draws.
    means = [o.mean() for o in others]
    assert max(means) - min(means) > 10


def test_each_look_changes_the_image_when_forced():
    square = _square(224)
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    base = dict(crop_scale=(1.0, 1.0), aspect=(1.0, 1.0), flip_p=0.0, max_rotation_deg=0.0, gain=(1.0, 1.0), gamma=(1.0, 1.0),
                contrast=(1.0, 1.0), noise_p=0.0, lowres_p=0.0, sector_p=0.0, overlay_p=0.0)
    identity = np.asarray(UltrasoundAugmentation(**base)(square, rng(), 224, Image.Resampling.BILINEAR))
    np.testing.assert_allclose(identity.astype(int), np.asarray(square).astype(int), atol=1)
    for change in ({"flip_p": 1.0}, {"noise_p": 1.0}, {"lowres_p": 1.0}, {"sector_p": 1.0}, {"overlay_p": 1.0}, {"gamma": (1.5, 1.5)}):
        changed = np.asarray(UltrasoundAugmentation(**{**base, **change})(square, rng(), 224, Image.Resampling.BILINEAR))
        assert np.abs(changed.astype(int) - identity.astype(int)).mean() > 0.5, change
    flipped = np.asarray(UltrasoundAugmentation(**{**base, "flip_p": 1.0})(square, rng(), 224, Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(flipped, identity[:, ::-1])


def test_recipe_names_for_augmentation_and_old_runs_resume(tmp_path):
    assert [augment_name(v) for v in (False, True, "false", "mild", "ultrasound")] == ["none", "mild", "none", "mild", "ultrasound"]
    assert make_augmentation("none") is None and isinstance(make_augmentation(True), Augmentation)
    assert isinstance(make_augmentation("ultrasound"), UltrasoundAugmentation)
    with pytest.raises(FetalCLIPError, match="augment must be one of"):
        make_config(None, {"augment": "heavy"})
    config = make_config(None, {"augment": True})
    assert config.augment == "mild"
    saved = json.loads(json.dumps(dict(config.to_dict(), augment=True)))  # a run saved when augment was a boolean
    assert trajectory_differences(saved, config) == []


def test_plain_captions_name_the_view_without_numbers():
    rng = np.random.default_rng(0)
    sample = {"label": "brain", "hc_mm": 250.0, "pixel_spacing_224_mm": 0.4}
    plain = {plain_caption(sample, rng) for _ in range(50)}
    assert not any(ch.isdigit() for text in plain for ch in text)
    assert all(any(phrase in text for phrase in VIEW_PHRASES["brain"]) for text in plain)
    assert any(ch.isdigit() for ch in template_caption(sample, rng))


def test_captions_and_packaged_prompts_share_one_vocabulary():
    from importlib.resources import files

    prompts = json.loads(files("fetalclip.tasks").joinpath("prompts/planes.json").read_text())
    for label, texts in prompts.items():
        key = view_key(label)
        assert key in VIEW_PHRASES, f"prompt class {label!r} has no caption phrasing"
        captions = {template.format(view=phrase, ga="", spacing="") for template in TEMPLATES for phrase in VIEW_PHRASES[key]}
        # The first, canonical prompt of every class is a caption the plain captioner writes for that view...
        assert texts[0] in captions, (label, texts[0])
        # ...and no caption of one view is another class's canonical prompt.
        for other, other_texts in prompts.items():
            if other != label:
                assert other_texts[0] not in captions


def test_a_machine_held_out_of_pretraining_is_never_trained_on(fpdb_dir):
    sources = open_sources([f"fpdb:{fpdb_dir}"])
    records = sources[0].records
    train_items, held = split_by_patient(sources, 0.2, 0, "us_machine=Aloka")
    machine = lambda item: (records[item[1]].get("metadata") or {}).get("us_machine")  # noqa: E731
    assert not any(machine(item) == "Aloka" for item in train_items)
    assert sum(machine(item) == "Aloka" for item in held) == sum((r.get("metadata") or {}).get("us_machine") == "Aloka" for r in records)
    assert any(machine(item) != "Aloka" for item in held)  # the drawn fraction still holds other patients out
    with pytest.raises(FetalCLIPError, match="no sample has us_machine = 'Nowhere'"):
        split_by_patient(sources, 0.2, 0, "us_machine=Nowhere")
    with pytest.raises(FetalCLIPError, match="holdout_group must read FIELD=VALUE"):
        small_config([f"fpdb:{fpdb_dir}"], holdout_group="Aloka")


def test_own_captions_can_give_way_to_the_recipe_captioner():
    from fetalclip.data.captions import caption_sample

    sample = {"label": "femur", "caption": "Ultrasound image of the fetal femur at 20 weeks, 0.3 mm per pixel."}
    rng = np.random.default_rng(0)
    assert caption_sample(sample, rng, plain_caption) == sample["caption"]
    replaced = caption_sample(sample, rng, plain_caption, own=False)
    assert replaced != sample["caption"] and "femur" in replaced and not any(ch.isdigit() for ch in replaced)
