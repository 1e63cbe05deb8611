"""Captions: views, gestational age (given or from HC), 224-input spacing, seeded phrasing, the hook."""

import re

import numpy as np
import pytest

from fetalclip.data.captions import (
    VIEW_PHRASES,
    absent_views,
    caption_ga_days,
    caption_sample,
    format_ga,
    load_caption_fn,
    plain_caption,
    template_caption,
    view_caption,
    view_key,
    view_lineage,
    view_phrases,
)
from fetalclip.data.labels import known_labels
from fetalclip.errors import FetalCLIPError
from fetalclip.growth import who_hc


def _sample(**fields):
    base = {"label": None, "pixel_spacing_224_mm": None, "source": "x.png"}
    base.update(fields)
    return base


def test_format_ga():
    assert format_ga(142) == "20 weeks and 2 days" and format_ga(140.4) == "20 weeks and 0 days"


def test_caption_has_view_ga_and_spacing():
    text = template_caption(_sample(label="femur", ga_days=150, pixel_spacing_224_mm=0.4567), np.random.default_rng(0))
    assert "femur" in text or "thigh" in text
    assert "21 weeks and 3 days" in text and "0.46" in text and text.endswith(".")


def test_hc18_style_sample_gets_ga_from_the_who_median():
    hc = float(who_hc(150.0, 0.5))  # the median head at 21w3d
    sample = _sample(label="brain", hc_mm=hc, pixel_spacing_224_mm=0.5)
    days, source = caption_ga_days(sample)
    assert source == "who_hc_median" and days == pytest.approx(150.0, abs=0.05)
    assert "21 weeks and 3 days" in template_caption(sample, np.random.default_rng(1))
    assert caption_ga_days(_sample(label="brain", ga_days=100, hc_mm=hc)) == (100.0, "dataset")
    assert caption_ga_days(_sample(label="brain")) == (None, None)


def test_unknowns_are_left_out_not_guessed():
    text = template_caption(_sample(label="abdomen"), np.random.default_rng(0))
    assert "week" not in text and "mm" not in text and not re.search(r"\d", text)


def test_phrasings_vary_by_seed_and_repeat_for_the_same_seed():
    sample = _sample(label="thorax", ga_days=200, pixel_spacing_224_mm=0.31)
    texts = {template_caption(sample, np.random.default_rng(seed)) for seed in range(40)}
    assert len(texts) >= 10
    assert template_caption(sample, np.random.default_rng(5)) == template_caption(sample, np.random.default_rng(5))
    assert all("28 weeks and 4 days" in t and "0.31" in t for t in texts)


def test_vocabulary_covers_the_published_categories():
    for name in ("brain", "trans-thalamic", "trans-cerebellum", "trans-ventricular", "abdomen", "femur", "thorax",
                 "four chamber", "LVOT", "RVOT", "3VV", "3VT", "cervix", "spine", "profile", "lips/nose", "kidneys",
                 "upper limb", "lower limb", "placenta", "heart"):
        assert view_key(name) is not None, name
    assert all(view_key(label) in VIEW_PHRASES for label in known_labels("plane"))
    assert all(len(VIEW_PHRASES[key]) >= 3 for key in VIEW_PHRASES if key != "other")


def test_most_specific_view_wins():
    assert "four-chamber" in view_phrases(_sample(label="thorax", view="4CH"))[0]
    assert "trans-thalamic" in view_phrases(_sample(label="brain", brain_plane="trans-thalamic"))[0]
    # FETAL_PLANES_DB's "Other" brain plane says less than the label.
    assert view_phrases(_sample(label="brain", brain_plane="other")) == VIEW_PHRASES["brain"]
    assert view_phrases(_sample(label="chd_clip")) == ("chd clip",)
    assert view_phrases(_sample()) == VIEW_PHRASES["other"]


def test_hook_and_existing_captions():
    rng = np.random.default_rng(0)
    assert caption_sample(_sample(label="femur", caption="given text"), rng) == "given text"
    assert caption_sample(_sample(label="femur"), rng, lambda s, r: f"  custom {s['label']} ") == "custom femur"
    with pytest.raises(FetalCLIPError, match="non-empty string"):
        caption_sample(_sample(label="femur"), rng, lambda s, r: "")
    fn = load_caption_fn("fetalclip.data.captions:template_caption")
    assert fn is template_caption
    for bad in ("nocolon", "not_a_module_xyz:f", "fetalclip.data.captions:nothing_here"):
        with pytest.raises(FetalCLIPError, match="caption function"):
            load_caption_fn(bad)


def test_absent_views_leave_out_what_the_data_shows_and_its_relatives():
    present = ["trans-thalamic", "abdomen", "four_chamber", "femur", "cervix", "other"]
    absent = set(absent_views(present))
    # Unrelated anatomy is absent; what the data shows, its parents and its sub-views are not.
    assert {"profile", "spine", "kidney", "lips_nose", "foot"} <= absent
    assert not absent & {"trans-thalamic", "brain", "abdomen", "four_chamber", "thorax", "femur", "lower_limb", "limbs",
                         "cervix", "other"}
    assert "trans-cerebellum" in absent  # a sibling sub-plane is another view
    assert {"lvot", "rvot"} <= absent
    assert view_lineage("foot") == ("foot", "lower_limb", "limbs")
    # Brain images keep every brain sub-plane out of the negatives (each is a brain image too).
    assert not set(absent_views(["brain"])) & {"trans-thalamic", "trans-cerebellum", "trans-ventricular"}
    assert set(absent_views([])) == set(VIEW_PHRASES) - {"other"}


def test_a_view_caption_is_the_plain_caption_of_a_sample_with_that_view():
    for view in ("profile", "trans-cerebellum", "made_up_view"):
        a, b = np.random.default_rng(5), np.random.default_rng(5)
        assert view_caption(view, a) == plain_caption({"view": view}, b)
    texts = {view_caption("spine", np.random.default_rng(k)) for k in range(40)}
    assert len(texts) > 5 and all("spine" in t or "vertebra" in t for t in texts)
