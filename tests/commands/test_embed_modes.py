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


def test_onnx_backend_gives_the_torch_embeddings(tmp_path, folder):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'fetalclip[export]')")
    exported = runner.invoke(app, ["export", "--model", "fetalclip-tiny", "--out", str(tmp_path / "exp"), "--int8",
                                   "--ga-spacings", ""])
    assert exported.exit_code == 0, exported.output
    reference = _embed(folder, tmp_path / "torch.npz", "--mode", "eager")
    onnx = np.load(_write(folder, tmp_path / "onnx.npz", tmp_path / "exp", "--backend", "onnx"))
    assert str(onnx["backend"]) == "onnx" and list(onnx["sources"]) == list(reference["sources"])
    np.testing.assert_allclose(onnx["embeddings"], reference["embeddings"], atol=1e-5, rtol=0)
    int8 = np.load(_write(folder, tmp_path / "int8.npz", tmp_path / "exp", "--backend", "onnx", "--mode", "int8"))
    assert (int8["embeddings"] * reference["embeddings"]).sum(1).min() >= 0.999


def _write(folder, out, model, *extra):
    result = runner.invoke(app, ["embed", str(folder), "--model", str(model), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out


def test_torchrun_two_processes_give_the_single_process_output(tmp_path, folder):
    """2 ranks over gloo on the CPU: disjoint chunks, joined by rank 0, row for row the plain run's output."""
    import os
    import subprocess
    import sys

    single = _embed(folder, tmp_path / "single.npz", "-b", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fetalclip",
               "embed", str(folder), "--model", "fetalclip-tiny", "--out", str(tmp_path / "two.npz"), "-b", "2",
               "--chunk-size", "1"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    two = np.load(tmp_path / "two.npz")
    assert list(two["sources"]) == list(single["sources"])
    np.testing.assert_allclose(two["embeddings"], single["embeddings"], atol=1e-6, rtol=0)
    assert sorted(p.name for p in (tmp_path / "two.npz.parts").iterdir()) == [
        "index.json", "part-000000.npz", "part-000001.npz", "part-000002.npz", "run.json"]
