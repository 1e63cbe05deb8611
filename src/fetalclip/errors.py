"""Exception types shared by every layer.

One base class, so a command-line front end or a service can turn any expected failure into a clear message
(and a non-zero exit or an HTTP 4xx) while genuine bugs still surface as tracebacks. Every message names the
file or object at fault and the reason.
"""

from __future__ import annotations

import os


class FetalCLIPError(Exception):
    """Base class for expected, user-facing failures."""


class ModelNotFoundError(FetalCLIPError):
    """A model name or path that resolves to nothing loadable."""


class CheckpointError(FetalCLIPError):
    """A checkpoint that cannot be read, or whose weights do not fit the model it claims to be."""


class HubUnavailableError(FetalCLIPError):
    """A hub reference that is neither in the local cache nor reachable over the network."""


class PathError(FetalCLIPError):
    """A failure about one file: keeps the path and the reason apart, so callers can count, list or report either."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:  # rebuilt from its message alone, as torch's DataLoader re-raises a worker's error
            self.path, self.reason = "", str(path)
            super().__init__(self.reason)
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickles with both parts (multiprocessing pools)
        return (type(self), (self.path, self.reason) if self.path else (self.reason,))


class ImageReadError(PathError):
    """An input file that cannot be decoded into an image (or a frame of one).

    Carries the file and the reason separately so batch tools can count and list what they skipped.
    """


class OutputError(PathError):
    """An output that must not or cannot be written: it would replace an input or an existing file, two
    outputs share one path, or its folder is not writable (also raised when a write fails, e.g. disk full).
    """
