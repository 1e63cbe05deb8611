"""Readers: raster formats, DICOM variants, videos, frame folders, and the single error type."""

import numpy as np
import pytest
from PIL import Image

from fetalclip.data.frames import FrameSelection
from fetalclip.data.readers import as_uint8, read_clip, read_frame, read_image, read_samples, source_kind
from fetalclip.errors import FetalCLIPError, ImageReadError


# -- raster ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode,suffix,shape,dtype",
    [("L", ".png", (30, 40), np.uint8), ("RGB", ".jpg", (30, 40, 3), np.uint8), ("RGBA", ".png", (30, 40, 3), np.uint8),
     ("P", ".bmp", (30, 40, 3), np.uint8), ("LA", ".png", (30, 40), np.uint8), ("RGB", ".tif", (30, 40, 3), np.uint8),
     ("I;16", ".png", (30, 40), np.uint16), ("I;16", ".tif", (30, 40), np.uint16), ("L", ".bmp", (30, 40), np.uint8)],
)
def test_raster_modes(tmp_path, mode, suffix, shape, dtype):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"img{suffix}"
    image.save(path)
    sample = read_image(path, label="brain", pixel_spacing_mm=0.5)
    assert sample["image"].shape == shape and sample["image"].dtype == dtype
    assert sample["pixel_spacing_224_mm"] == pytest.approx(0.5 * 40 / 224)
    assert as_uint8(sample["image"]).dtype == np.uint8


def test_sixteen_bit_keeps_its_values(tmp_path):
    values = np.array([[0, 256, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    image = read_image(tmp_path / "d.png")["image"]
    assert image.dtype == np.uint16 and image.tolist() == values.tolist()
    assert as_uint8(image).tolist() == [[0, 1, 255]]


def test_grey_palette_becomes_grey(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")["image"].ndim == 2


def test_broken_inputs_raise_one_error_type_naming_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("this is a text file, not an image")
    Image.fromarray(np.zeros((50, 50), np.uint8) + 7).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 100)
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 300)
    for name in ("notes.png", "truncated.png", "clip.mp4", "fake.dcm", "missing.png"):
        with pytest.raises(ImageReadError) as info:
            list(read_samples(tmp_path / name))
        assert name in str(info.value) and info.value.reason
        assert isinstance(info.value, FetalCLIPError)


def test_multipage_tiff_is_frames(tmp_path, ramp_frames):
    pages = [Image.fromarray(f) for f in ramp_frames]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    samples = list(read_samples(tmp_path / "stack.tif", frames="every:2"))
    assert [s["frame_index"] for s in samples] == [0, 2, 4]
    assert np.array_equal(samples[1]["image"], ramp_frames[2])


# -- frame selection ------------------------------------------------------------------------------------------
def test_frame_selection():
    assert FrameSelection.parse("every:3").select(10) == [0, 3, 6, 9]
    assert FrameSelection.parse("even:4").select(10) == [0, 3, 6, 9]
    assert FrameSelection.parse("even:16").select(5) == [0, 1, 2, 3, 4]
    assert FrameSelection.parse("even:1").select(7) == [0]
    assert FrameSelection.parse(None).select(3) == [0, 1, 2]
    assert FrameSelection.parse("first").select(3) == [0]
    assert FrameSelection.parse("4,1").select(5) == [1, 4]
    assert str(FrameSelection.parse("even:8")) == "even:8"
    with pytest.raises(IndexError):
        FrameSelection.parse("7").select(5)
    for bad in ("every:0", "even:x", "sometimes"):
        with pytest.raises(FetalCLIPError, match="frame selection"):
            FrameSelection.parse(bad)


# -- DICOM ----------------------------------------------------------------------------------------------------
def test_dicom_multiframe_with_region_spacing(tmp_path, dicom_writer, ramp_frames, phi):
    path = dicom_writer(tmp_path / "loop.dcm", ramp_frames, region_spacing_cm=(0.02, 0.02))
    samples = list(read_samples(path))
    assert [s["frame_index"] for s in samples] == [0, 1, 2, 3, 4]
    assert all(np.array_equal(s["image"], f) for s, f in zip(samples, ramp_frames))
    assert samples[0]["pixel_spacing_mm"] == pytest.approx(0.2)  # 0.02 cm
    assert samples[0]["pixel_spacing_224_mm"] == pytest.approx(0.2 * 64 / 224)
    meta = samples[0]["metadata"]
    assert meta["spacing_source"] == "ultrasound_region" and meta["number_of_frames"] == 5 and meta["modality"] == "US"
    # Nothing identifying anywhere in what the reader returns.
    text = repr([{k: v for k, v in s.items() if k != "image"} for s in samples])
    assert not any(value.split("^")[0] in text for value in phi.values())
    assert samples[0]["patient"] is None
    # Evenly spaced frames for clip tasks, and a single frame.
    assert [s["frame_index"] for s in read_clip(path, frames="even:3")] == [0, 2, 4]
    assert np.array_equal(read_frame(path, 3)["image"], ramp_frames[3])
    assert source_kind(path) == "dicom"


def test_dicom_without_spacing_and_with_pixel_spacing(tmp_path, dicom_writer, ramp_frames):
    bare = dicom_writer(tmp_path / "bare.dcm", ramp_frames[0])
    sample = read_frame(bare)
    assert sample["pixel_spacing_mm"] is None and sample["pixel_spacing_224_mm"] is None and sample["frame_index"] is None
    spaced = dicom_writer(tmp_path / "ps.dcm", ramp_frames[0], pixel_spacing_mm=(0.3, 0.3))
    assert read_frame(spaced)["pixel_spacing_mm"] == pytest.approx(0.3)
    odd = dicom_writer(tmp_path / "aniso.dcm", ramp_frames[0], pixel_spacing_mm=(0.3, 0.2))
    sample = read_frame(odd)
    assert sample["pixel_spacing_mm"] is None and sample["metadata"]["pixel_spacing_xy_mm"] == [0.2, 0.3]
    # A spacing the caller knows wins over the file's.
    assert read_frame(spaced, pixel_spacing_mm=0.5)["pixel_spacing_mm"] == 0.5


def test_dicom_extensionless_file_is_recognised(tmp_path, dicom_writer, ramp_frames):
    path = dicom_writer(tmp_path / "IM0001", ramp_frames[0])
    assert source_kind(path) == "dicom" and read_frame(path)["image"].shape == (48, 64)


def test_dicom_colour_models(tmp_path, dicom_writer):
    rng = np.random.default_rng(1)
    # Smooth colours, so 4:2:2 chroma subsampling loses little.
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([xx * 5, yy * 7, 255 - xx * 5], axis=-1).astype(np.uint8)
    for photometric, tolerance in (("RGB", 0), ("YBR_FULL", 2), ("YBR_FULL_422", 8)):
        sample = read_frame(dicom_writer(tmp_path / f"{photometric}.dcm", rgb, photometric=photometric))
        assert sample["image"].shape == (32, 48, 3) and sample["image"].dtype == np.uint8
        assert np.abs(sample["image"].astype(int) - rgb).max() <= tolerance, photometric
        assert sample["metadata"]["photometric_interpretation"] == photometric
    grey = rng.integers(0, 255, (32, 48), dtype=np.uint8)
    inverted = read_frame(dicom_writer(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1"))["image"]
    assert np.array_equal(inverted, 255 - grey)


def test_dicom_twelve_bit_and_compressed(tmp_path, dicom_writer, ramp_frames):
    deep = (ramp_frames[0].astype(np.uint16) * 16)  # 12-bit values
    sample = read_frame(dicom_writer(tmp_path / "d12.dcm", deep, bits_stored=12))
    assert sample["image"].dtype == np.uint16 and np.array_equal(as_uint8(sample["image"]), ramp_frames[0])
    rle = list(read_samples(dicom_writer(tmp_path / "rle.dcm", ramp_frames, transfer_syntax="rle")))
    assert len(rle) == 5 and np.array_equal(rle[4]["image"], ramp_frames[4])
    assert rle[0]["metadata"]["transfer_syntax"] == "RLE Lossless"
    jpeg = read_frame(dicom_writer(tmp_path / "jpeg.dcm", ramp_frames[0], transfer_syntax="jpeg"))
    assert np.abs(jpeg["image"].astype(int) - ramp_frames[0]).mean() < 3
    with pytest.raises(ImageReadError, match=r"JPEG-LS Lossless.*1\.2\.840\.10008\.1\.2\.4\.80.*(needs|installed)"):
        read_frame(dicom_writer(tmp_path / "jls.dcm", ramp_frames[0], transfer_syntax="jpeg-ls"))


def test_dicom_truncated_pixel_data(tmp_path, dicom_writer, ramp_frames):
    path = dicom_writer(tmp_path / "cut.dcm", ramp_frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        list(read_samples(path))


# -- video and frame folders ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix,codec", [(".mp4", "mpeg4"), (".avi", "mjpeg")])
def test_video_frames(tmp_path, video_writer, suffix, codec):
    yy, xx = np.mgrid[0:64, 0:96]
    frames = [((xx + yy * 2 + 25 * k) % 220).astype(np.uint8) for k in range(8)]
    path = video_writer(tmp_path / f"loop{suffix}", frames, codec=codec)
    assert source_kind(path) == "video"
    every = list(read_samples(path, frames="every:3", label="thorax"))
    assert [s["frame_index"] for s in every] == [0, 3, 6]
    assert every[0]["image"].ndim == 2 and every[0]["label"] == "thorax" and every[0]["pixel_spacing_mm"] is None
    # Lossy, but each decoded frame is closest to the frame it claims to be.
    for sample in every:
        errors = [np.abs(sample["image"].astype(int) - f).mean() for f in frames]
        assert int(np.argmin(errors)) == sample["frame_index"] and min(errors) < 6
    clip = read_clip(path, frames="even:4")
    assert [s["frame_index"] for s in clip] == [0, 2, 5, 7]
    assert clip[0]["metadata"]["number_of_frames"] == 8


def test_colour_video_stays_rgb(tmp_path, video_writer):
    frame = np.zeros((32, 48, 3), np.uint8)
    frame[..., 0] = 200  # red: colour Doppler-like content
    samples = list(read_samples(video_writer(tmp_path / "doppler.mp4", [frame] * 3)))
    assert len(samples) == 3 and samples[0]["image"].shape == (32, 48, 3)


def test_video_without_decoder_says_how_to_get_one(tmp_path, monkeypatch):
    import sys

    (tmp_path / "loop.mp4").write_bytes(b"\x00" * 10)
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(ImageReadError, match=r"fetalclip\[video\]"):
        list(read_samples(tmp_path / "loop.mp4"))


def test_folder_of_frames_is_a_clip(tmp_path, ramp_frames):
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    for k, frame in enumerate(ramp_frames):
        Image.fromarray(frame).save(clip_dir / f"frame_{k + 1}.png")  # frame_10 would sort after frame_9
    (clip_dir / "notes.txt").write_text("ignored")
    samples = list(read_samples(clip_dir, frames="even:2"))
    assert [s["frame_index"] for s in samples] == [0, 4] and samples[0]["source"] == str(clip_dir)
    assert np.array_equal(samples[1]["image"], ramp_frames[4]) and samples[1]["metadata"]["frame_file"] == "frame_5.png"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no image frames"):
        list(read_samples(tmp_path / "empty"))


# -- GIF, the pixel budget and exact pixel data on good inputs --------------------------------------------------
def test_gif_is_a_raster_format_like_tiff(tmp_path, ramp_frames):
    from fetalclip.data.readers import RASTER_SUFFIXES, frame_files, raster_frame_count

    pages = [Image.fromarray(f) for f in ramp_frames]
    pages[0].save(tmp_path / "loop.gif", save_all=True, append_images=pages[1:], duration=100)
    assert ".gif" in RASTER_SUFFIXES and source_kind(tmp_path / "loop.gif") == "raster"
    assert raster_frame_count(tmp_path / "loop.gif") == 5
    # A still-image use reads the first frame; read_samples gives every frame, as for a multi-page TIFF.
    assert np.array_equal(read_image(tmp_path / "loop.gif")["image"], ramp_frames[0])
    assert [s["frame_index"] for s in read_samples(tmp_path / "loop.gif", frames="every:2")] == [0, 2, 4]
    assert frame_files(tmp_path) == [tmp_path / "loop.gif"]


def test_images_at_the_budget_read_and_one_pixel_more_does_not(tmp_path, monkeypatch):
    from fetalclip.data.readers import FRAME_PIXELS_ENV

    Image.fromarray(np.full((10, 12), 9, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv(FRAME_PIXELS_ENV, "120")
    assert read_image(tmp_path / "a.png")["image"].shape == (10, 12)
    monkeypatch.setenv(FRAME_PIXELS_ENV, "119")
    with pytest.raises(ImageReadError, match=r"a\.png: declares 12x10 = 120 pixels per frame"):
        read_image(tmp_path / "a.png")


def test_dicom_odd_length_pixel_data_keeps_its_pad_byte(tmp_path, dicom_writer):
    odd = np.arange(15, dtype=np.uint8).reshape(3, 5)  # 15 bytes, stored padded to 16
    assert np.array_equal(read_frame(dicom_writer(tmp_path / "odd.dcm", odd))["image"], odd)
    assert np.array_equal(read_frame(dicom_writer(tmp_path / "odd_rle.dcm", odd, transfer_syntax="rle"))["image"], odd)


def test_frame_folder_error_names_the_frame_file(tmp_path, ramp_frames):
    clip = tmp_path / "clip"
    clip.mkdir()
    Image.fromarray(ramp_frames[0]).save(clip / "frame_1.png")
    (clip / "frame_2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError) as info:
        list(read_samples(clip))
    assert info.value.path == str(clip / "frame_2.png")
