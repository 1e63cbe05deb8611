"""The ``fetalclip`` command: one Typer app, one module per command group under ``fetalclip.commands``.

Each command module exposes ``register(app)``; adding a capability means adding its module name to
``COMMAND_MODULES``. Command modules import torch and friends inside the command functions, so
``fetalclip --help`` stays fast. Expected failures (``FetalCLIPError``) print one clear line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from .errors import FetalCLIPError

COMMAND_MODULES = (
    "models",
    "embed",
    "data",
    "sim",
    "demo",
    "benchmark",
    "explain",
    "train",
    "zeroshot",
    "probe",
    "biometry",
)

app = typer.Typer(
    name="fetalclip",
    help="Vision-language foundation model of fetal ultrasound: pretraining, zero-shot, probes, benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # huggingface_hub logs every network retry (and sets its level when imported, hence the environment
    # variable); our own error message says what matters.
    if not verbose:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


for _module in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.commands.{_module}").register(app)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except FetalCLIPError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
