"""Video files (mp4, avi, ...) frame by frame, through PyAV when it is installed (``fetalclip[video]``).

PyAV wraps FFmpeg's own libraries (shipped inside its wheels), so one optional dependency decodes every
container and codec an ultrasound export is likely to use, without a system FFmpeg. Frames are decoded in
order and only the selected ones are converted, so memory stays at one frame; decoding stops after the last
selected frame. Grey loops (equal colour channels, within codec noise) come back 2-D like grey PNGs, so a
cine loop and a still of the same scanner look alike to everything downstream.

The readers' pixel budget applies before anything is decoded: the frame size the stream header declares,
the frame count (declared, or counted from packets, which stops at the limit), and again each decoded
frame's own size before it is converted (a stream may change resolution mid-way). Every PyAV/FFmpeg failure
comes out as ``ImageReadError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ImageReadError
from .frames import FrameSelection
from .read_rules import MAX_FRAMES, check_frame_count, check_pixel_budget, reading, require_file
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
    require_file(path)
    try:
        container = av.open(str(path))
    except Exception as exc:  # av.error.* for unknown containers, bad headers
        raise ImageReadError(path, f"cannot open video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise ImageReadError(path, "no video stream")
    return container


def _count(path: Path, container) -> int:
    stream = container.streams.video[0]
    if stream.frames:
        count = int(stream.frames)
    else:
        # Some containers (raw streams, some avi) do not record a count: count packets, which costs no decoding,
        # and stop one past the limit so an endless stream cannot keep this loop going.
        count = 0
        for packet in container.demux(stream):
            count += 1 if packet.size else 0
            if count > MAX_FRAMES:
                break
        container.seek(0)
    if count == 0:
        raise ImageReadError(path, "holds no video frames")
    check_frame_count(path, count)
    return count


def _declared_size(container) -> tuple[int, int] | None:
    """(width, height) from the stream header; ``None`` when it gives none (then each frame is checked)."""
    context = container.streams.video[0].codec_context
    return (context.width, context.height) if context.width and context.height else None


def video_frame_count(path: str | os.PathLike) -> int:
    path = Path(path)
    container = _open(path)
    try:
        with reading(path):
            return _count(path, container)
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
        with reading(path):
            size = _declared_size(container)
            if size:
                check_pixel_budget(path, *size)  # before counting: a counting pass reads every packet
            n_frames = _count(path, container)
            if size:
                check_pixel_budget(path, *size, frames=n_frames)
            try:
                wanted = FrameSelection.parse(frames).select(n_frames)
            except IndexError as exc:
                raise ImageReadError(path, str(exc)) from None
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            codec = stream.codec_context.name
        if not wanted:
            return
        fields = dict(fields)
        fields.pop("frame_index", None)
        fields["metadata"] = {"format": "video", "codec": codec, "frames_per_second": rate,
                              "number_of_frames": n_frames, **(fields.get("metadata") or {})}
        for index, image in _decoded_frames(path, container, wanted):
            yield make_sample(image, str(path), frame_index=index, **fields)
    finally:
        container.close()


def _decoded_frames(path: Path, container, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, array) of the ``wanted`` frames; decoding stops after the last one."""
    stream = container.streams.video[0]
    targets, last = set(wanted), wanted[-1]
    with reading(path):
        decoded = enumerate(container.decode(stream))
    while True:
        # Only decoding runs inside the boundary; the caller's work between frames is not ours to judge.
        with reading(path):
            index, frame = next(decoded, (None, None))
            if frame is None:
                return
            image = None
            if index in targets:
                check_pixel_budget(path, frame.width, frame.height)
                image = frame_to_array(frame.to_ndarray(format="rgb24"))
        if image is not None:
            yield index, image
        if index >= last:
            return
