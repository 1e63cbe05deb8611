"""The command line, driven in-process through Typer's runner."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fetalclip.cli import app, main
from fetalclip.models import write_published_checkpoint

runner = CliRunner()


@pytest.fixture
def images(tmp_path, gray_image):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(gray_image).save(folder / "a.png")
    Image.fromarray(np.dstack([gray_image] * 3)).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_list_models_prints_counts():
    result = runner.invoke(app, ["list-models"])
    assert result.exit_code == 0, result.output
    assert "fetalclip-vit-l14" in result.output and "427.6M" in result.output
    assert "fetalclip-tiny" in result.output and "fetalclip-vit-b16" in result.output


def test_embed_folder(tmp_path, images, tiny_model):
    out = tmp_path / "emb.npz"
    result = runner.invoke(app, ["embed", str(images), "--model", "fetalclip-tiny", "--out", str(out), "-b", "1"])
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert [s.split("imgs/")[1] for s in data["sources"]] == ["a.png", "sub/b.jpg"]
    assert data["embeddings"].shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)
    # Gray PNG and its RGB JPEG twin differ only by JPEG loss.
    assert float(data["embeddings"][0] @ data["embeddings"][1]) > 0.99
    expected = tiny_model.encode_image([Image.open(images / "a.png")], normalize=True).detach().numpy()
    np.testing.assert_allclose(data["embeddings"][:1], expected, atol=1e-5)


def test_bad_file_stops_the_run_with_its_name(tmp_path, images):
    bad = images / "broken.png"
    bad.write_text("this is not a png")
    out = tmp_path / "emb.npz"
    result = runner.invoke(app, ["embed", str(images), "--out", str(out)])
    assert result.exit_code != 0
    assert "broken.png" in str(result.exception) and not out.exists()


def test_skip_bad_counts_and_lists(tmp_path, images, gray_image):
    (images / "broken.png").write_text("this is not a png")
    Image.fromarray(gray_image).save(images / "truncated.png")
    data = (images / "truncated.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "emb.npz"
    result = runner.invoke(app, ["embed", str(images), "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable files" in result.output
    saved = np.load(out)
    assert len(saved["sources"]) == 2 and sorted(s.rsplit("/", 1)[1] for s in saved["skipped"]) == ["broken.png", "truncated.png"]


def test_main_turns_expected_errors_into_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["embed", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.npz")])
    assert info.value.code == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def test_embed_text(tmp_path):
    out = tmp_path / "t.npz"
    result = runner.invoke(app, ["embed-text", "fetal brain", "fetal femur", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert data["embeddings"].shape == (2, 128) and list(data["texts"]) == ["fetal brain", "fetal femur"]


def test_convert_published_to_our_format(tmp_path, tiny_model):
    weights = write_published_checkpoint(tmp_path / "FetalCLIP_weights.pt", tiny_model.clip.state_dict())
    result = runner.invoke(app, ["convert", str(weights), str(tmp_path / "converted")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "converted" / "model.safetensors").is_file()
    assert "fetalclip-tiny" in result.output


# -- the error boundary in main --------------------------------------------------------------------------------
def _main_exit(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def _failing_loader(monkeypatch, exc):
    import fetalclip.models

    def load(*args, **kwargs):
        raise exc

    monkeypatch.setattr(fetalclip.models, "load", load)


def test_unexpected_error_is_one_line_with_a_hint_and_exit_1(tmp_path, monkeypatch, capsys):
    _failing_loader(monkeypatch, RuntimeError("shape mismatch\nin layer 3"))
    code, err = _main_exit(capsys, ["embed-text", "fetal brain", "--out", str(tmp_path / "t.npz")])
    assert code == 1
    assert err.strip() == "error: RuntimeError: shape mismatch in layer 3 (run with -v for the traceback)"


def test_verbose_shows_the_traceback_of_an_unexpected_error(tmp_path, monkeypatch, capsys):
    _failing_loader(monkeypatch, RuntimeError("shape mismatch"))
    code, err = _main_exit(capsys, ["-v", "embed-text", "fetal brain", "--out", str(tmp_path / "t.npz")])
    assert code == 1
    assert "Traceback (most recent call last)" in err and "in load" in err
    assert err.strip().splitlines()[-1] == "error: RuntimeError: shape mismatch"


def test_interrupt_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    _failing_loader(monkeypatch, KeyboardInterrupt())
    code, err = _main_exit(capsys, ["embed-text", "fetal brain", "--out", str(tmp_path / "t.npz")])
    assert code == 130
    assert err.strip() == "error: interrupted"


@pytest.mark.parametrize("number", [13, 28, 30])  # EACCES, ENOSPC, EROFS
def test_os_errors_name_the_file_and_exit_2(tmp_path, monkeypatch, capsys, number):
    import os

    _failing_loader(monkeypatch, OSError(number, os.strerror(number), "/models/weights.bin"))
    code, err = _main_exit(capsys, ["embed-text", "fetal brain", "--out", str(tmp_path / "t.npz")])
    assert code == 2
    assert err.strip() == f"error: /models/weights.bin: {os.strerror(number)}"


def test_usage_errors_keep_click_behaviour(capsys):
    code, err = _main_exit(capsys, ["embed", "--no-such-option"])
    assert code == 2 and "No such option" in err and "Traceback" not in err


def test_path_errors_survive_pickling_and_a_rebuild_from_their_message():
    """Worker processes send errors back pickled (pools) or rebuilt from the message alone (torch's
    DataLoader): both must give the error back, not a TypeError about missing arguments."""
    import pickle

    from fetalclip.errors import ImageReadError, OutputError

    for error in (ImageReadError("scan.png", "does not decode"), OutputError("out.json", "already exists")):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), again.path, again.reason, str(again)) == (type(error), error.path, error.reason, str(error))
        rebuilt = type(error)(f"in worker 0: {error}")
        assert str(rebuilt) == f"in worker 0: {error}" and rebuilt.path == ""
