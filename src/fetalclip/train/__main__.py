"""``python -m fetalclip.train ARGS`` and ``torchrun --nproc-per-node N -m fetalclip.train ARGS``.

A launcher only: torchrun needs a module to run, and this one hands its arguments to the ``fetalclip train``
command, so both spellings take the same options and there is one argument parser.
"""

import sys

from fetalclip.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
