"""The package as users meet it: a cheap ``import fetalclip`` that still shows its public API, ``python -m
fetalclip`` (also under torchrun), the one reader of torchrun's environment, and the layering rule that no
library package imports the command line."""

from __future__ import annotations

import ast
import json
import os
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest

import fetalclip
from fetalclip.torchrun import LaunchEnvironmentError, TorchrunEnv, torchrun_env

PACKAGE = Path(fetalclip.__file__).resolve().parent
ENTRY_POINTS = ("FetalCLIP", "FetalCLIPError", "Predictor", "calibrate_planes", "create_model", "list_models", "load",
                "load_calibration")


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{PACKAGE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args, *(["-c", code] if code else [])], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_import_is_cheap_but_dir_shows_the_public_api():
    done = _python(
        "import json, sys, fetalclip, fetalclip.growth, fetalclip.torchrun; "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'dir': dir(fetalclip), 'all': fetalclip.__all__}))"
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["torch"] is False  # listing the API must not load it
    for name in ENTRY_POINTS:
        assert name in seen["dir"] and name in seen["all"]


def test_lazy_names_resolve_to_the_real_objects():
    from fetalclip import models
    from fetalclip.tasks import calibration, predictor

    assert fetalclip.load is models.load and fetalclip.FetalCLIP is models.FetalCLIP
    assert fetalclip.Predictor is predictor.Predictor
    assert fetalclip.calibrate_planes is calibration.calibrate_planes
    assert fetalclip.load_calibration is calibration.load_calibration
    assert set(fetalclip.__all__) <= set(dir(fetalclip))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        fetalclip.nonsense  # noqa: B018 - the attribute access is the test


def test_help_lists_the_entry_points():
    text = pydoc.render_doc(fetalclip, renderer=pydoc.plaintext)
    for name in ENTRY_POINTS:
        assert name in text
    assert (PACKAGE / "py.typed").is_file()


def test_python_dash_m_fetalclip_is_the_command_line():
    done = _python("", "-m", "fetalclip", "--help")
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and "predict" in done.stdout


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the fetalclip modules that ``path`` imports (relative imports resolved)."""
    # The package a relative import starts from: the folder's dotted name (``x/__init__.py`` is in ``x`` too).
    package = ".".join(("fetalclip", *path.relative_to(PACKAGE).with_suffix("").parts)).rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "fetalclip" or name.startswith("fetalclip.")}


def test_no_library_module_imports_the_command_line():
    top = {PACKAGE / "cli.py", PACKAGE / "__main__.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in top or path.parent == PACKAGE / "commands":
            continue
        wrong = sorted(name for name in _imported_modules(path)
                       if name in ("fetalclip.cli", "fetalclip.commands") or name.startswith(("fetalclip.cli.", "fetalclip.commands.")))
        if wrong:
            offenders.append(f"{path.relative_to(PACKAGE)}: {wrong}")
    assert not offenders
    assert not (PACKAGE / "train" / "__main__.py").exists()  # torchrun -m fetalclip train, not -m fetalclip.train


def test_torchrun_environment_reader():
    assert torchrun_env({}) == TorchrunEnv()
    assert torchrun_env({"WORLD_SIZE": "1", "RANK": "3", "LOCAL_RANK": "2"}).is_main  # a world of one has rank 0
    env = torchrun_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert env == TorchrunEnv(rank=3, local_rank=1, world_size=4, local_world_size=2, master_addr="node0",
                              master_port=29500)
    assert env.distributed and not env.is_main
    with pytest.raises(LaunchEnvironmentError, match="WORLD_SIZE='two' is not an integer"):
        torchrun_env({"WORLD_SIZE": "two"})
    with pytest.raises(LaunchEnvironmentError, match="RANK=2 is outside WORLD_SIZE=2"):
        torchrun_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(LaunchEnvironmentError, match="LOCAL_RANK=2 is outside LOCAL_WORLD_SIZE=2"):
        torchrun_env({"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"})


def test_training_re_exports_the_one_reader():
    from fetalclip import torchrun
    from fetalclip.train import distributed

    assert distributed.torchrun_env is torchrun.torchrun_env and distributed.TorchrunEnv is torchrun.TorchrunEnv


def test_torchrun_launches_the_package_module():
    """Two processes under torchrun find ``-m fetalclip train`` (the training itself: tests/train/test_loop.py)."""
    done = _python("", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "fetalclip", "train", "--help", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Pretrain") == 2  # each process printed the train command's help
