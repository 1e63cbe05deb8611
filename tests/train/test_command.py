"""``fetalclip train`` on the command line: expected failures are one clear line and exit status 2."""

import pytest

from fetalclip.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "learning_rate=1"], "learning_rate"),
        (["--config", "missing.toml"], "missing.toml"),
        (["--data", "nosuchscheme:x"], "unknown scheme"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
