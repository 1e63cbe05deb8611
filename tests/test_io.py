import os
import stat

import numpy as np
import pytest

from fetalclip.io import atomic_path, save_npz_atomic, write_json_atomic


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": np.float32(1.5)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text().strip().endswith("}")


def test_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    save_npz_atomic(target, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2]
