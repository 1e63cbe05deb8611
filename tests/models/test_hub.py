"""hf-hub: references, served offline from a cache laid out the way huggingface_hub lays it out."""

import shutil

import pytest

import fetalclip
from fetalclip.errors import HubUnavailableError
from fetalclip.models import write_published_checkpoint
from fetalclip.models.hub import parse_hub_reference

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _lay_out(cache, repo_id, files):
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    return snapshot


def test_parse_hub_reference():
    assert parse_hub_reference("hf-hub:org/repo") == ("org/repo", None)
    assert parse_hub_reference("hf-hub:org/repo/sub/FetalCLIP_weights.pt") == ("org/repo", "sub/FetalCLIP_weights.pt")
    with pytest.raises(HubUnavailableError, match="ORG/REPO"):
        parse_hub_reference("hf-hub:justone")


def test_our_format_from_cache(tmp_path, hub_cache, tiny_model):
    ckpt = tiny_model.save(tmp_path / "ckpt")
    _lay_out(hub_cache, "org/fetal-tiny", {"config.json": ckpt / "config.json", "model.safetensors": ckpt / "model.safetensors"})
    model = fetalclip.load("hf-hub:org/fetal-tiny")
    assert model.name == "fetalclip-tiny"
    assert model.config["provenance"]["loaded_from"] == "hf-hub:org/fetal-tiny"


def test_published_file_from_cache(tmp_path, hub_cache, tiny_model):
    weights = write_published_checkpoint(tmp_path / "FetalCLIP_weights.pt", tiny_model.clip.state_dict())
    _lay_out(hub_cache, "org/published", {"FetalCLIP_weights.pt": weights})
    assert fetalclip.load("hf-hub:org/published").name == "fetalclip-tiny"
    assert fetalclip.load("hf-hub:org/published/FetalCLIP_weights.pt").name == "fetalclip-tiny"


def test_uncached_and_unreachable_is_a_clear_message(hub_cache):
    with pytest.raises(HubUnavailableError, match="not in the local Hugging Face cache") as info:
        fetalclip.load("hf-hub:org/not-downloaded")
    assert "local path" in str(info.value)
