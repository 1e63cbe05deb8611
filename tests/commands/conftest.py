"""Shared by the command tests: a small labelled phantom written once, and the CLI's exit code for arguments."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def planes_spec(tmp_path_factory):
    """A ``csv:`` spec of 24 phantom images (brain, femur, abdomen; two per patient) at 64 px."""
    from fetalclip.sim.dataset import parse_sim_spec, write_phantom

    n, config = parse_sim_spec("24,size=64,per_patient=2,classes=brain+femur+abdomen")
    return write_phantom(n, config, tmp_path_factory.mktemp("cli-planes"))["spec"]


@pytest.fixture
def cli_exit_code():
    """``cli_exit_code([...])``: run ``fetalclip.cli.main`` on the arguments and return its exit code."""
    from fetalclip.cli import main

    def run(args) -> int:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        return exit_info.value.code

    return run
