"""Frame selection for cine loops, multi-frame DICOM, videos and folders of frames.

Clip-level tasks (e.g. heart-defect detection on four-chamber loops) want a fixed number of frames spread
over the loop; pretraining wants every k-th frame so neighbouring, nearly identical frames do not dominate.
``FrameSelection`` says which, independently of the container, and turns a frame count into indices. The
string form (``all``, ``first``, ``every:K``, ``even:N``, ``0,5,9``) is what the command line accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FetalCLIPError


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of an ``n``-frame source to read.

    mode ``all``: every frame; ``every``: frames 0, k, 2k, ...; ``even``: ``count`` frames evenly spaced from
    first to last (all frames when the source has fewer); ``indices``: exactly these (out-of-range ones are
    an error, not silently dropped).
    """

    mode: str = "all"
    step: int = 1
    count: int = 0
    indices: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: "str | FrameSelection | None") -> "FrameSelection":
        if text is None:
            return cls()
        if isinstance(text, FrameSelection):
            return text
        spec = str(text).strip().lower()
        try:
            if spec in ("", "all"):
                return cls()
            if spec == "first":
                return cls("indices", indices=(0,))
            if spec.startswith("every:"):
                step = int(spec.split(":", 1)[1])
                if step < 1:
                    raise ValueError("step must be >= 1")
                return cls("every", step=step)
            if spec.startswith("even:"):
                count = int(spec.split(":", 1)[1])
                if count < 1:
                    raise ValueError("count must be >= 1")
                return cls("even", count=count)
            indices = tuple(int(part) for part in spec.split(","))
            if any(i < 0 for i in indices):
                raise ValueError("indices must be >= 0")
            return cls("indices", indices=indices)
        except ValueError as exc:
            raise FetalCLIPError(
                f"frame selection {text!r}: {exc}; use all, first, every:K, even:N or a list like 0,5,9"
            ) from None

    def select(self, n_frames: int) -> list[int]:
        """Sorted frame indices to read from a source with ``n_frames`` frames."""
        if self.mode == "all":
            return list(range(n_frames))
        if self.mode == "every":
            return list(range(0, n_frames, self.step))
        if self.mode == "even":
            if n_frames <= self.count:
                return list(range(n_frames))
            # Rounded positions on [0, n-1] always include the first and the last frame.
            return sorted(set(int(i) for i in np.round(np.linspace(0, n_frames - 1, self.count))))
        bad = [i for i in self.indices if i >= n_frames]
        if bad:
            raise IndexError(f"frames {bad} requested but the source has {n_frames} frame(s)")
        return sorted(set(self.indices))

    def __str__(self) -> str:
        if self.mode == "every":
            return f"every:{self.step}"
        if self.mode == "even":
            return f"even:{self.count}"
        if self.mode == "indices":
            return ",".join(map(str, self.indices))
        return "all"
