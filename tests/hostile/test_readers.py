"""Hostile inputs for the readers: bombs and lying headers of every format, made here, in ``tmp_path``.

Each case asserts the one outcome that matters: ``ImageReadError`` with a one-line reason naming the file.
The memory cases also run in a child process under ``RLIMIT_AS``, so a regression that decodes first and
checks later fails the test (a ``MemoryError`` or a killed child) instead of eating the machine; a control
child with the budget lifted shows that the limit is low enough to catch such a regression.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fetalclip.cli import app
from fetalclip.data import read_rules, readers
from fetalclip.data.readers import (
    FRAME_PIXELS_ENV,
    frame_files,
    image_header_size,
    open_image_bytes,
    read_frame,
    read_image,
    read_samples,
    reading,
)
from fetalclip.errors import FetalCLIPError, ImageReadError

# About three times the child's own footprint (python, numpy, Pillow, pydicom, PyAV: 270 MB of address space), far
# below what any bomb here would take to decode (0.9 to 2 GB).
CHILD_MEMORY_LIMIT = 768 << 20


# -- makers of hostile files ----------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(path, width: int, height: int):
    """A valid-looking PNG of a few hundred bytes whose header claims ``width`` x ``height`` grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * 4 * (min(width, 1000) + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))
    return path


def tiff_pages(path, sizes: list[tuple[int, int]]):
    """An uncompressed grey TIFF with one page per (width, height), each holding only 16 bytes of pixels."""
    entries_per_page = 9
    ifd_size = 2 + entries_per_page * 12 + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    data_start = 8 + ifd_size * len(sizes)
    for page, (width, height) in enumerate(sizes):
        strip = data_start + 16 * page
        following = 8 + ifd_size * (page + 1) if page + 1 < len(sizes) else 0
        tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, strip),
                (277, 3, 1), (278, 4, height), (279, 4, 16)]
        out += struct.pack("<H", len(tags))
        for tag, kind, value in tags:
            out += struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        out += struct.pack("<I", following)
    out += b"\x07" * 16 * len(sizes)
    path.write_bytes(bytes(out))
    return path


def animated_gif(path, frames: int = 3, size: int = 16):
    pages = [Image.fromarray(np.full((size, size), 40 * k, np.uint8)) for k in range(frames)]
    pages[0].save(path, save_all=True, append_images=pages[1:], duration=100, loop=0)
    return path


def gif_declaring(path, width: int, height: int):
    """An animated GIF whose logical screen (what Pillow sizes every frame by) claims ``width`` x ``height``."""
    data = bytearray(animated_gif(path).read_bytes())
    data[6:10] = struct.pack("<HH", width, height)
    path.write_bytes(bytes(data))
    return path


def dicom_declaring(path, dicom_writer, rows: int, columns: int, frames=None, **write):
    """A small DICOM whose header is then changed to claim ``rows`` x ``columns`` (pixel data untouched)."""
    import pydicom

    stored = np.zeros((32, 32), np.uint8) if frames is None else frames
    dicom_writer(path, stored, **write)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path)
    return path


def rle_bomb(path, dicom_writer, side: int):
    """A real RLE bomb: one frame of ``side`` x ``side`` zeros in runs of 128, about side^2/64 bytes on disk."""
    import pydicom
    from pydicom.encaps import encapsulate

    dicom_writer(path, np.zeros((32, 32), np.uint8), transfer_syntax="rle")
    runs = b"\x81\x00" * (side * side // 128)  # header byte 0x81: repeat the next byte 128 times
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = side
    ds.PixelData = encapsulate([header + runs])
    ds.save_as(path)
    return path


def y4m_declaring(path, width: int, height: int):
    """A raw YUV4MPEG2 stream (FFmpeg finds it by content whatever the suffix) declaring a huge frame size."""
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\0" * 1000)
    return path


def assert_read_error(path, match: str, read=lambda p: list(read_samples(p))):
    with pytest.raises(ImageReadError) as info:
        read(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message, message
    assert info.value.path == str(path)
    assert match in info.value.reason, info.value.reason
    return info.value


# -- raster -----------------------------------------------------------------------------------------------------
def test_png_bomb_fails_on_its_header(tmp_path):
    assert_read_error(png_declaring(tmp_path / "bomb.png", 30000, 30000), "declares 900,000,000 pixels per frame")
    # Between Pillow's warning and its error: the project's budget decides, with the declared size.
    error = assert_read_error(png_declaring(tmp_path / "big.png", 10000, 10000), "declares 10000x10000")
    assert FRAME_PIXELS_ENV in error.reason
    for read in (read_image, read_frame, readers.open_image, image_header_size):
        assert_read_error(tmp_path / "big.png", "declares 10000x10000", read)


def test_png_bomb_in_memory_bytes(tmp_path):
    data = png_declaring(tmp_path / "bomb.png", 10000, 10000).read_bytes()
    with pytest.raises(ImageReadError, match=r"shard-000001\.tar/7\.png: declares 10000x10000"):
        open_image_bytes(data, "shard-000001.tar/7.png")


def test_tiff_declaring_a_huge_page(tmp_path):
    assert_read_error(tiff_pages(tmp_path / "one.tif", [(9000, 9000)]), "declares 9000x9000")
    # Pillow checks only the first page's size at open; every page is checked before it is decoded.
    two = tiff_pages(tmp_path / "two.tif", [(4, 4), (9000, 9000)])
    assert_read_error(two, "declares 9000x9000")
    assert read_frame(two, 0)["image"].shape == (4, 4)  # the honest page alone still reads


def test_gif_declaring_a_huge_screen(tmp_path):
    assert_read_error(gif_declaring(tmp_path / "screen.gif", 9000, 9000), "declares 9000x9000")


def test_frames_times_size_per_file(tmp_path, monkeypatch):
    gif = animated_gif(tmp_path / "loop.gif", frames=3, size=16)
    monkeypatch.setattr(read_rules, "MAX_FILE_PIXELS", 3 * 16 * 16 - 1)
    assert_read_error(gif, "declares 3 frames of 16x16")
    monkeypatch.setattr(read_rules, "MAX_FILE_PIXELS", 3 * 16 * 16)
    assert len(list(read_samples(gif))) == 3


def test_truncated_and_corrupt_png(tmp_path):
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(whole)
    data = whole.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert_read_error(tmp_path / "cut.png", "")
    # Bytes flipped inside the compressed rows: zlib's error, not Pillow's.
    broken = bytearray(data)
    broken[60:80] = b"\xff" * 20
    (tmp_path / "flipped.png").write_bytes(bytes(broken))
    assert_read_error(tmp_path / "flipped.png", "")


def test_budget_can_be_raised_and_must_be_a_number(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(small)
    monkeypatch.setenv(FRAME_PIXELS_ENV, "599")
    assert_read_error(small, "declares 30x20 = 600 pixels per frame, over the limit of 599")
    monkeypatch.setenv(FRAME_PIXELS_ENV, "600")
    assert read_image(small)["image"].shape == (20, 30)
    monkeypatch.setenv(FRAME_PIXELS_ENV, "lots")
    with pytest.raises(FetalCLIPError, match=f"{FRAME_PIXELS_ENV}='lots'"):
        read_image(small)


# -- one error type, whatever the library raised ------------------------------------------------------------------
@pytest.mark.parametrize("raised", [struct.error("unpack requires a buffer of 4 bytes"), SyntaxError("not a PNG"),
                                    ValueError("cannot reshape array of size 3 into shape (2,2)"), OSError("broken data stream"),
                                    RuntimeError("all plugins failed:\n  pydicom: bad\n  pylibjpeg: worse"), MemoryError()])
def test_reading_boundary_turns_any_library_error_into_one_line(tmp_path, raised):
    with pytest.raises(ImageReadError) as info:
        with reading(tmp_path / "x.dcm"):
            raise raised
    assert info.value.path == str(tmp_path / "x.dcm") and "\n" not in str(info.value) and info.value.reason


def test_reading_boundary_keeps_the_projects_own_errors(tmp_path):
    original = ImageReadError(tmp_path / "y.png", "mask is 3x3 but its image is 4x4")
    with pytest.raises(ImageReadError) as info:
        with reading(tmp_path / "x.png"):
            raise original
    assert info.value is original


# -- DICOM ------------------------------------------------------------------------------------------------------
def test_dicom_declaring_30000_squared_with_1kb_of_pixels(tmp_path, dicom_writer):
    path = dicom_declaring(tmp_path / "lie.dcm", dicom_writer, 30000, 30000)
    assert path.stat().st_size < 4096
    assert_read_error(path, "declares 30000x30000")


def test_rle_dicom_declaring_16000_squared(tmp_path, dicom_writer):
    path = dicom_declaring(tmp_path / "rle.dcm", dicom_writer, 16000, 16000, transfer_syntax="rle")
    assert_read_error(path, "declares 16000x16000")
    assert_read_error(rle_bomb(tmp_path / "bomb.dcm", dicom_writer, 16000), "declares 16000x16000")


@pytest.mark.filterwarnings("ignore:The decoded RLE segment")
def test_dicom_header_and_pixel_data_must_agree(tmp_path, dicom_writer, ramp_frames):
    frame = ramp_frames[0]  # 48 x 64
    # Header smaller than the data: pydicom would hand back the top 40 rows as if they were the image.
    assert_read_error(dicom_declaring(tmp_path / "crop.dcm", dicom_writer, 40, 64, frame), "holds 3,072")
    assert_read_error(dicom_declaring(tmp_path / "more.dcm", dicom_writer, 56, 64, frame), "holds 3,072")
    rle_crop = dicom_declaring(tmp_path / "rle_crop.dcm", dicom_writer, 40, 64, frame, transfer_syntax="rle")
    assert_read_error(rle_crop, "more than the header's Rows x Columns")
    # More frames in the data than the header declares.
    import pydicom

    loop = dicom_writer(tmp_path / "loop.dcm", ramp_frames[:2], transfer_syntax="rle")
    ds = pydicom.dcmread(loop)
    ds.NumberOfFrames = 1
    ds.save_as(loop)
    assert_read_error(loop, "declares 1 frame(s) but the pixel data holds 2 fragment(s)")
    # Fewer frames than declared, uncompressed: the length check says so before decoding.
    short = dicom_writer(tmp_path / "short.dcm", ramp_frames[:2])
    ds = pydicom.dcmread(short)
    ds.NumberOfFrames = 5
    ds.save_as(short)
    assert_read_error(short, "but the file holds 6,144")


def test_dicom_frame_count_is_bounded(tmp_path, dicom_writer):
    import pydicom

    path = dicom_writer(tmp_path / "many.dcm", np.zeros((2, 4, 4), np.uint8))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 10**9
    ds.save_as(path)
    assert_read_error(path, "declares 1,000,000,000 frames")


# -- video ------------------------------------------------------------------------------------------------------
def test_video_declaring_a_huge_frame(tmp_path):
    pytest.importorskip("av")
    assert_read_error(y4m_declaring(tmp_path / "big.mkv", 9000, 9000), "declares 9000x9000")


def test_video_size_is_checked_before_decoding(tmp_path, video_writer, monkeypatch):
    from fetalclip.data import video

    path = video_writer(tmp_path / "loop.mp4", [np.zeros((16, 32), np.uint8)] * 3)
    monkeypatch.setenv(FRAME_PIXELS_ENV, str(16 * 32 - 1))
    monkeypatch.setattr(video, "_decoded_frames", lambda *args: pytest.fail("decoding started"))
    assert_read_error(path, "declares 32x16")


def test_video_without_a_whole_frame_is_an_error_not_an_empty_clip(tmp_path):
    pytest.importorskip("av")
    header = b"YUV4MPEG2 W16 H16 F10:1 Ip A1:1 C420jpeg\n"
    (tmp_path / "empty.mkv").write_bytes(header)
    (tmp_path / "cut.mkv").write_bytes(header + b"FRAME\n" + b"\0" * 10)
    for name in ("empty.mkv", "cut.mkv"):
        assert_read_error(tmp_path / name, "holds no video frames")


# -- memory, in a child under a hard address-space limit ------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from fetalclip.data.readers import read_samples
    from fetalclip.errors import ImageReadError
    for name in sys.argv[1:]:
        try:
            list(read_samples(name))
            print(json.dumps({{"file": name, "read": True}}))
        except ImageReadError as exc:
            print(json.dumps({{"file": name, "error": str(exc)}}))
    """
)


def _run_child(files, env_extra=None):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(env_extra or {})}
    done = subprocess.run([sys.executable, "-c", CHILD.format(limit=CHILD_MEMORY_LIMIT), *map(str, files)],
                          capture_output=True, text=True, timeout=120, env=env)
    return done, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_bombs_fail_fast_in_bounded_memory(tmp_path, dicom_writer):
    pytest.importorskip("av")
    files = [png_declaring(tmp_path / "bomb.png", 30000, 30000), png_declaring(tmp_path / "big.png", 10000, 10000),
             tiff_pages(tmp_path / "big.tif", [(4, 4), (9000, 9000)]), gif_declaring(tmp_path / "big.gif", 9000, 9000),
             dicom_declaring(tmp_path / "lie.dcm", dicom_writer, 30000, 30000),
             rle_bomb(tmp_path / "rle.dcm", dicom_writer, 16000), y4m_declaring(tmp_path / "big.mkv", 9000, 9000)]
    done, results = _run_child(files)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MemoryError" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert [r["file"] for r in results] == [str(f) for f in files]
    for result in results:
        assert "error" in result and "over the limit" in result["error"], result


def test_memory_limit_would_catch_a_reader_that_decodes_first(tmp_path, dicom_writer):
    """Control: with the budget lifted, the 4 MB RLE bomb does not fit under the child's limit."""
    bomb = rle_bomb(tmp_path / "rle.dcm", dicom_writer, 16000)
    done, results = _run_child([bomb], {FRAME_PIXELS_ENV: str(10**12)})
    failed_by_memory = done.returncode != 0 or "not enough memory" in results[0].get("error", "")
    assert failed_by_memory and "declares" not in results[0].get("error", ""), (done.returncode, results, done.stderr[-500:])


# -- end to end: a batch command with --skip-bad counts the bomb and goes on ------------------------------------------
def test_pack_with_skip_bad_counts_a_bomb_listed_in_a_csv(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / "good.png")
    png_declaring(tmp_path / "bomb.png", 30000, 30000)
    table = tmp_path / "list.csv"
    table.write_text("path,label,pixel_spacing_mm\ngood.png,brain,0.2\nbomb.png,brain,0.2\n")
    out, summary = tmp_path / "shards", tmp_path / "summary.json"
    args = ["data", "pack", "--dataset", f"csv:{table}", "--out", str(out), "--workers", "0", "--no-clean"]
    result = CliRunner().invoke(app, [*args, "--skip-bad", "--json", str(summary)])
    assert result.exit_code == 0, result.output
    report = json.loads(summary.read_text())
    assert report["samples"] == 1 and report["skipped"] == 1
    assert report["skipped_inputs"][0]["source"].endswith("bomb.png") and "declares 900,000,000" in report["skipped_inputs"][0]["reason"]
    # Without --skip-bad the same input stops the run with the project's error, naming the file.
    stopped = CliRunner().invoke(app, [*args[:4], "--out", str(tmp_path / "other"), *args[6:]])
    assert isinstance(stopped.exception, ImageReadError) and "bomb.png" in str(stopped.exception)


# -- animated GIFs in folder scans ------------------------------------------------------------------------------
def test_animated_gifs_are_listed_and_read(tmp_path):
    from fetalclip.data.datasets import open_dataset

    clip = tmp_path / "brain"
    clip.mkdir()
    animated_gif(clip / "loop.gif", frames=3)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(clip / "still.png")
    assert [p.name for p in frame_files(clip)] == ["loop.gif", "still.png"]
    dataset = open_dataset(f"folder:{tmp_path}")
    assert sorted(r["source"].rsplit("/", 1)[1] for r in dataset.records) == ["loop.gif", "still.png"]
    first = dataset[[r["source"] for r in dataset.records].index(str(clip / "loop.gif"))]
    assert first["image"].shape == (16, 16) and int(first["image"].max()) == 0  # its first frame
    assert [s["frame_index"] for s in read_samples(clip / "loop.gif")] == [0, 1, 2]
