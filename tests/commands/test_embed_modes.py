"""``fetalclip embed --mode``: exact is the default and equals the reference; int8 is close; bad modes fail."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fetalclip.cli import app, main

runner = CliRunner()


@pytest.fixture
def folder(tmp_path, gray_image):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(np.roll(gray_image, 17 * index, axis=1)).save(folder / f"{index}.png")
    return folder


def _embed(folder, out, *extra):
    result = runner.invoke(app, ["embed", str(folder), "--model", "fetalclip-tiny", "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return np.load(out)


def test_default_mode_is_exact_and_int8_is_close(tmp_path, folder, tiny_model):
    default = _embed(folder, tmp_path / "default.npz")
    assert str(default["mode"]) == "exact"
    eager = _embed(folder, tmp_path / "eager.npz", "--mode", "eager")
    np.testing.assert_allclose(default["embeddings"], eager["embeddings"], atol=1e-5, rtol=0)
    int8 = _embed(folder, tmp_path / "int8.npz", "--mode", "int8", "-b", "2")
    assert str(int8["mode"]) == "int8" and list(int8["sources"]) == list(default["sources"])
    assert (int8["embeddings"] * default["embeddings"]).sum(1).min() >= 0.999


def test_unknown_mode_exits_with_a_clear_error(tmp_path, folder, capsys):
    with pytest.raises(SystemExit) as info:
        main(["embed", str(folder), "--mode", "fast", "--out", str(tmp_path / "x.npz")])
    assert info.value.code == 2
    assert "unknown inference mode 'fast'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
