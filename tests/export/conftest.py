"""Fixtures for the export tests: one tiny export (fp32 + int8) shared by the module's tests.

Every test here needs onnxruntime and skips, with the reason, where it is not installed (it is the
``[export]`` extra, not a core dependency).
"""

import pytest


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'fetalclip[export]')")
    import torch

    from fetalclip.export import export_onnx

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("export") / "tiny"
        export_onnx(tiny_model, folder, int8=True, ga_spacings=[0.30, 0.45])
    finally:
        torch.set_num_threads(before)
    return folder


@pytest.fixture
def hc18_images(hc18_dir):
    from PIL import Image

    files = sorted((hc18_dir / "training_set").glob("*_HC.png"))[:5]
    return files, [Image.open(f).copy() for f in files]
