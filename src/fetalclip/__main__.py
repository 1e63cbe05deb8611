"""``python -m fetalclip ...`` and ``torchrun --nproc-per-node N -m fetalclip train ...``: the ``fetalclip`` command.

torchrun launches a module, not a console script, so the package itself is runnable and hands its arguments to
the one command line (``fetalclip.cli``). The launcher lives here, at the top, because only the top layer may
import the CLI: the library packages below (``train`` among them) never do.
"""

from fetalclip.cli import main

if __name__ == "__main__":
    main()
