import json

import pytest
import torch

import fetalclip
from fetalclip.errors import CheckpointError, ModelNotFoundError
from fetalclip.models import read_published_state_dict, write_published_checkpoint


def _embeddings(model):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        return model.encode_image(images), model.encode_text(["fetal head", "maternal cervix"])


def test_our_format_round_trip(tmp_path, tiny_model):
    out = tiny_model.save(tmp_path / "ckpt", provenance={"data": "unit-test", "steps": 0})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "fetalclip" and config["context_length"] == 117
    assert config["preprocess"]["image_size"] == 224
    assert config["provenance"]["data"] == "unit-test" and "git_commit" in config["provenance"]
    loaded = fetalclip.load(out)
    assert loaded.name == "fetalclip-tiny"
    for a, b in zip(_embeddings(tiny_model), _embeddings(loaded)):
        assert torch.equal(a, b)
    # The weights file and config.json inside the folder are accepted too.
    assert fetalclip.load(out / "model.safetensors").name == "fetalclip-tiny"


def test_saving_refuses_to_clobber(tmp_path, tiny_model):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        tiny_model.save(tmp_path / "ckpt")
    tiny_model.save(tmp_path / "ckpt", overwrite=True)
    assert not (tmp_path / "ckpt" / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind


def test_published_format_loads_and_infers_architecture(tmp_path, tiny_model):
    path = write_published_checkpoint(tmp_path / "FetalCLIP_weights.pt", tiny_model.clip.state_dict(), epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and all(key.startswith("module.") for key in raw["state_dict"])
    loaded = fetalclip.load(path)
    assert loaded.name == "fetalclip-tiny"
    for a, b in zip(_embeddings(tiny_model), _embeddings(loaded)):
        assert torch.equal(a, b)


def _write_raw(path, state_dict):
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    return path


def test_missing_key_is_named(tmp_path, tiny_model):
    state = dict(tiny_model.clip.state_dict())
    del state["visual.proj"]
    path = _write_raw(tmp_path / "w.pt", state)
    with pytest.raises(CheckpointError, match=r"missing keys: visual\.proj"):
        fetalclip.load(path, model_name="fetalclip-tiny")
    with pytest.raises(CheckpointError, match="match no registered architecture"):
        fetalclip.load(path)


def test_unexpected_key_and_shape_mismatch_are_named(tmp_path, tiny_model):
    state = dict(tiny_model.clip.state_dict())
    state["extra.weight"] = torch.zeros(3)
    state["positional_embedding"] = torch.zeros(77, 128)
    path = _write_raw(tmp_path / "w.pt", state)
    with pytest.raises(CheckpointError) as info:
        fetalclip.load(path, model_name="fetalclip-tiny")
    message = str(info.value)
    assert "unexpected keys: extra.weight" in message
    assert "positional_embedding: checkpoint (77, 128) vs model (117, 128)" in message


def test_truncated_file_is_a_clear_error(tmp_path, tiny_model):
    path = write_published_checkpoint(tmp_path / "w.pt", tiny_model.clip.state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        fetalclip.load(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "hook": _Marker()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_published_state_dict(path)


class _Marker:
    pass


def test_non_state_dict_content_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="dict of tensors"):
        read_published_state_dict(path)


def test_truncated_safetensors_is_a_clear_error(tmp_path, tiny_model):
    out = tiny_model.save(tmp_path / "ckpt")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        fetalclip.load(out)


def test_folder_without_config_and_unknown_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        fetalclip.load(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="registered model"):
        fetalclip.load(tmp_path / "nothing-here.pt")


def test_newer_format_version_is_refused(tmp_path, tiny_model):
    out = tiny_model.save(tmp_path / "ckpt")
    config = json.loads((out / "config.json").read_text())
    config["format_version"] = 99
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="newer"):
        fetalclip.load(out)


def test_weights_hash_covers_zero_dim_tensors_and_every_byte():
    from fetalclip.models.checkpoint import hash_weights

    base = {"w": torch.ones(2, 3), "num_batches_tracked": torch.tensor(7)}  # a BatchNorm counter is 0-d
    same = hash_weights(dict(base)).hexdigest()
    assert same == hash_weights({"num_batches_tracked": torch.tensor(7), "w": torch.ones(2, 3)}).hexdigest()
    assert same != hash_weights({**base, "num_batches_tracked": torch.tensor(8)}).hexdigest()
    assert same != hash_weights({**base, "w": torch.ones(3, 2)}).hexdigest()  # same bytes, other shape
