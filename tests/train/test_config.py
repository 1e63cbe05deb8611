"""Recipe files, overrides and validation."""

import pytest

from fetalclip.errors import FetalCLIPError
from fetalclip.train.config import TrainConfig, make_config, parse_assignment, read_config_file, trajectory_differences


def test_toml_sections_flatten_and_overrides_win(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "fetalclip-tiny"\ndata = ["hc18:/x"]\n[optimizer]\nlr = 1e-3\nsteps = 50\n'
                      '[architecture]\nmodel_overrides = {text_cfg = {context_length = 64}}\n')
    config = make_config(recipe, {"steps": 7, "lr": None})
    assert config.lr == 1e-3 and config.steps == 7 and config.data == ["hc18:/x"]
    assert config.model_overrides == {"text_cfg": {"context_length": 64}}


def test_unknown_key_names_file(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("lr = 1e-3\nlearning_rate = 2\n")
    with pytest.raises(FetalCLIPError, match=r"r\.toml.*learning_rate"):
        read_config_file(recipe)


def test_set_assignments_are_typed():
    assert parse_assignment("lr=3e-4") == ("lr", 3e-4)
    assert parse_assignment("steps=12") == ("steps", 12)
    assert parse_assignment("clean=yes") == ("clean", True)
    assert parse_assignment("augment=ultrasound") == ("augment", "ultrasound")
    assert parse_assignment("grad_clip=none") == ("grad_clip", None)
    assert parse_assignment("data=hc18:/a,fpdb:/b") == ("data", ["hc18:/a", "fpdb:/b"])
    assert parse_assignment('model_overrides={"embed_dim": 64}') == ("model_overrides", {"embed_dim": 64})
    with pytest.raises(FetalCLIPError):
        parse_assignment("steps=1.5")
    with pytest.raises(FetalCLIPError):
        parse_assignment("nonsense=1")


def test_validation_and_resume_guard(tmp_path):
    with pytest.raises(FetalCLIPError, match="accum_steps"):
        make_config(None, {"batch_size": 10, "accum_steps": 3})
    with pytest.raises(FetalCLIPError, match="loss"):
        make_config(None, {"loss": "triplet"})
    saved = TrainConfig(data=["a"]).to_dict()
    assert trajectory_differences(saved, TrainConfig(data=["a"], steps=999, log_every=5)) == []
    assert trajectory_differences(saved, TrainConfig(data=["a"], lr=1.0))[0].startswith("lr")
    with pytest.raises(FetalCLIPError, match="balance_views"):
        make_config(None, {"balance_views": 1.5})


def test_run_saved_before_a_setting_existed_resumes_at_its_default():
    saved = TrainConfig(data=["a"]).to_dict()
    del saved["balance_views"]  # a run folder written before the setting was added
    assert trajectory_differences(saved, TrainConfig(data=["a"])) == []
    assert trajectory_differences(saved, TrainConfig(data=["a"], balance_views=0.5))[0].startswith("balance_views")
