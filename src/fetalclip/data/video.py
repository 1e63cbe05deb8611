"""Video files (mp4, avi, ...) frame by frame, through PyAV when it is installed (``fetalclip[video]``).

PyAV wraps FFmpeg's own libraries (shipped inside its wheels), so one optional dependency decodes every
container and codec an ultrasound export is likely to use, without a system FFmpeg. Frames are decoded in
order and only the selected ones are converted, so memory stays at one frame; decoding stops after the last
selected frame. Grey loops (equal colour channels, within codec noise) come back 2-D like grey PNGs, so a
cine loop and a still of the same scanner look alike to everything downstream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ImageReadError
from .frames import FrameSelection
from .sample import make_sample

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")

# Colour differences up to this are chroma-subsampling/compression noise on grey content.
_GREY_TOLERANCE = 8

INSTALL_HINT = "reading videos needs PyAV: pip install 'fetalclip[video]'"


def _av(path: Path):
    try:
        import av
    except ImportError:
        raise ImageReadError(path, INSTALL_HINT) from None
    return av


def _open(path: Path):
    av = _av(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        container = av.open(str(path))
    except Exception as exc:  # av.error.* for unknown containers, bad headers
        raise ImageReadError(path, f"cannot open video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise ImageReadError(path, "no video stream")
    return container


def _count(container) -> int:
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    # Some containers (raw streams, some avi) do not record a count: count packets, which costs no decoding.
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def video_frame_count(path: str | os.PathLike) -> int:
    path = Path(path)
    container = _open(path)
    try:
        return _count(container)
    finally:
        container.close()


def frame_to_array(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW when the channels agree (grey content), else unchanged."""
    as_int = rgb.astype(np.int16)
    spread = max(int(np.abs(as_int[..., 0] - as_int[..., 1]).max()), int(np.abs(as_int[..., 1] - as_int[..., 2]).max()))
    if spread <= _GREY_TOLERANCE:
        return np.round(as_int.mean(axis=2)).astype(np.uint8)
    return rgb


def read_video(path: str | os.PathLike, frames: "FrameSelection | str | None" = None, **fields: Any) -> Iterator[dict[str, Any]]:
    """Samples for the selected frames of a video, in order; ``frame_index`` counts decoded frames from 0."""
    path = Path(path)
    container = _open(path)
    try:
        n_frames = _count(container)
        try:
            wanted = FrameSelection.parse(frames).select(n_frames)
        except IndexError as exc:
            raise ImageReadError(path, str(exc)) from None
        if not wanted:
            return
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else None
        fields = dict(fields)
        fields.pop("frame_index", None)
        fields["metadata"] = {"format": "video", "codec": stream.codec_context.name, "frames_per_second": rate,
                              "number_of_frames": n_frames, **(fields.get("metadata") or {})}
        targets = set(wanted)
        last = wanted[-1]
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index in targets:
                    image = frame_to_array(frame.to_ndarray(format="rgb24"))
                    yield make_sample(image, str(path), frame_index=index, **fields)
                if index >= last:
                    break
        except ImageReadError:
            raise
        except Exception as exc:  # av.error.InvalidDataError and friends on damaged streams
            raise ImageReadError(path, f"cannot decode video frame ({exc})") from exc
    finally:
        container.close()
