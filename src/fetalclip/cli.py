"""The ``fetalclip`` command: one Typer app, one module per command group under ``fetalclip.commands``.

Each command module exposes ``register(app)``; adding a capability means adding its module name to
``COMMAND_MODULES``. Command modules import torch and friends inside the command functions, so
``fetalclip --help`` stays fast.

``main`` is the one error boundary, so no failure reaches the user as a stack trace unless asked for:

- expected failures (``FetalCLIPError``: a bad file, a refused output) print ``error: <message>``, exit 2;
- operating-system failures (disk full, permission denied, read-only filesystem) print one line naming the
  file, exit 2: they are about the environment, not a bug;
- anything else is a bug: one line ``error: <Type>: <message> (run with -v for the traceback)``, exit 1;
  with ``-v``/``--verbose`` the traceback is printed as well;
- Ctrl-C prints ``error: interrupted``, exit 130 (the shell convention for SIGINT).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

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
    "calibrate",
    "predict",
    "probe",
    "biometry",
    "export",
    "serve",
)

app = typer.Typer(
    name="fetalclip",
    help="Vision-language foundation model of fetal ultrasound: pretraining, zero-shot, probes, benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


_settings = {"verbose": False}  # set by the root callback; read by the error boundary in ``main``


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (and tracebacks) to stderr.")) -> None:
    _settings["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # huggingface_hub logs every network retry (and sets its level when imported, hence the environment
    # variable); our own error message says what matters.
    if not verbose:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


for _module in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.commands.{_module}").register(app)


def main(argv: list[str] | None = None) -> None:
    _settings["verbose"] = False
    try:
        app(args=argv, standalone_mode=True)
    except FetalCLIPError as exc:
        _fail(str(exc), 2)
    except SystemExit as exc:
        # Typer turns Ctrl-C into a silent exit 130; say what happened.
        if exc.code == 130 and _interrupted(exc):
            _fail("interrupted", 130)
        raise
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:
        _show_traceback()
        _fail(_os_error_text(exc), 2)
    except Exception as exc:  # noqa: BLE001 - the boundary: every bug gets one line, -v gets the stack
        _show_traceback()
        hint = "" if _settings["verbose"] else " (run with -v for the traceback)"
        _fail(f"{type(exc).__name__}: {exc}{hint}", 1)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _os_error_text(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    names = [name for name in (exc.filename, getattr(exc, "filename2", None)) if name is not None]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else f"{reason} ({type(exc).__name__})"


def _interrupted(exc: BaseException) -> bool:
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _show_traceback() -> None:
    if _settings["verbose"]:
        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    main()
