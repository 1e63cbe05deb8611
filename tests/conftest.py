"""Shared fixtures: the real datasets (skipped when absent, required in CI), small models and images, and
small media files the tests write themselves: DICOM files (pydicom-written) and videos (PyAV-written).

Every DICOM carries made-up patient-identifying attributes (``PHI``) so tests can prove none of them
reaches a sample, a caption, a shard or a manifest.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("FETALCLIP_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        message = f"{what} not found at {path} (set FETALCLIP_DATA to the folder holding hc18/ and fetal_planes_db/)"
        if os.environ.get("FETALCLIP_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def hc18_dir() -> Path:
    return _require(shared_data_dir() / "hc18", "HC18 data")


@pytest.fixture(scope="session")
def fpdb_dir() -> Path:
    return _require(shared_data_dir() / "fetal_planes_db", "FETAL_PLANES_DB data")


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised fetalclip-tiny (fixed seed); treat as read-only."""
    from fetalclip.models import create_model

    return create_model("fetalclip-tiny", seed=0)


@pytest.fixture(scope="session")
def phantom_heads():
    """Twelve small phantom head images (six patients) with head masks."""
    from fetalclip.data.datasets import open_dataset

    return open_dataset("sim:12,size=96,per_patient=2,classes=brain")


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory, tiny_model, phantom_heads):
    """A tiny decoder on ``tiny_model``, trained a few epochs on ``phantom_heads``, saved as `probe segment --save`
    saves one (a folder); read-only."""
    import torch

    from fetalclip.tasks.features import FeatureCache
    from fetalclip.tasks.segmentation import run_segmentation, save_decoder, segmentation_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = FeatureCache(tiny_model, None)
        data, originals = segmentation_data(cache, phantom_heads, size=32, merge_labels=True)
        _, best, _ = run_segmentation(data, originals, epochs=8, lr=1e-2, channels=[8] * 5, seed=3)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("segmenter")
    save_decoder(folder, best.decoder, {"model": "fetalclip-tiny", "name": tiny_model.name, "fingerprint": cache.fingerprint,
                                        "taps": cache.blocks(phantom_heads).taps}, extra={"size": 32})
    return folder


@pytest.fixture
def one_thread():
    """One torch thread for the test: on the shared 2-core machine two OpenMP threads competing with other
    work stall each other (training and benchmark tasks measured 4-10x slower); results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gray_image() -> np.ndarray:
    """A 2:3 grayscale image with structure, so preprocessing differences show up."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(120, 181), dtype=np.uint8)
    image[40:80, 60:120] = 255
    return image

PHI = {
    "PatientName": "Testperson^Jane",
    "PatientID": "MRN-4471298",
    "PatientBirthDate": "19870412",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "Doctor^Who",
    "AccessionNumber": "ACC99812",
    "StudyDate": "20240102",
}


def write_dicom(
    path,
    frames: np.ndarray,
    photometric: str = "MONOCHROME2",
    region_spacing_cm: tuple[float, float] | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    bits_stored: int = 8,
    transfer_syntax: str | None = None,
):
    """Write ``frames`` ([F,]H,W[,3]) as an ultrasound DICOM; returns the path.

    ``photometric`` YBR_FULL / YBR_FULL_422 convert RGB input into that colour model (and the 4:2:2 layout);
    ``transfer_syntax`` ``rle`` compresses with pydicom's own RLE encoder, ``jpeg`` stores baseline JPEG
    made by Pillow, ``jpeg-ls`` writes a JPEG-LS header over bytes no installed plugin can decode.
    """
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGLSLossless,
        RLELossless,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    frames = np.asarray(frames)
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
    multi = frames.ndim == (4 if colour else 3)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Manufacturer = "TestVendor"
    for key, value in PHI.items():
        setattr(ds, key, value)
    stored = "MONOCHROME2" if photometric == "MONOCHROME1" else ("RGB" if colour else photometric)
    ds.set_pixel_data(frames, stored, bits_stored)
    if photometric == "MONOCHROME1":
        ds.PhotometricInterpretation = "MONOCHROME1"  # pixel values are taken as they are: 0 means white
    if photometric == "YBR_FULL":
        ds.PixelData = convert_color_space(frames, "RGB", "YBR_FULL").tobytes()
        ds.PhotometricInterpretation = "YBR_FULL"
    if photometric == "YBR_FULL_422":
        ybr = convert_color_space(frames, "RGB", "YBR_FULL").reshape(-1, frames.shape[-2], 3).astype(np.uint16)
        # 4:2:2: each horizontal pixel pair stores Y1 Y2 Cb Cr, chroma averaged over the pair.
        pairs = ybr.reshape(ybr.shape[0], -1, 2, 3)
        packed = np.stack(
            [pairs[:, :, 0, 0], pairs[:, :, 1, 0], pairs[:, :, :, 1].mean(axis=2).round(), pairs[:, :, :, 2].mean(axis=2).round()],
            axis=-1,
        ).astype(np.uint8)
        ds.PixelData = packed.tobytes()
        ds.PhotometricInterpretation = "YBR_FULL_422"
    if region_spacing_cm is not None:
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = frames.shape[-2 if colour else -1] - 1, frames.shape[-3 if colour else -2] - 1
        region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
        region.PhysicalDeltaX, region.PhysicalDeltaY = region_spacing_cm
        ds.SequenceOfUltrasoundRegions = [region]
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = list(pixel_spacing_mm)
    if multi:
        ds.FrameTime = 33.3
    if transfer_syntax == "rle":
        ds.compress(RLELossless)
    elif transfer_syntax in ("jpeg", "jpeg-ls"):
        single = frames if not multi else frames[0]
        buffer = io.BytesIO()
        Image.fromarray(single).save(buffer, "JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if transfer_syntax == "jpeg" else JPEGLSLossless
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_video(path, frames: list[np.ndarray], fps: int = 10, codec: str = "mpeg4"):
    """Write grey (HxW) or RGB (HxWx3) uint8 frames as a video with PyAV."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for frame in frames:
            rgb = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def ramp_frames() -> np.ndarray:
    """Five 48x64 grey frames, each a smooth ramp plus its frame number, so frames are told apart."""
    yy, xx = np.mgrid[0:48, 0:64]
    return np.stack([((xx * 3 + yy) % 200 + 20 * k).astype(np.uint8) for k in range(5)])


@pytest.fixture
def dicom_writer():
    return write_dicom


@pytest.fixture
def video_writer():
    return write_video


@pytest.fixture
def phi() -> dict[str, str]:
    return dict(PHI)


# -- headless Chromium ---------------------------------------------------------------------------------------
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def render_in_chromium(tmp_path):
    """``render(html_path) -> (body attributes after scripts ran, console lines, screenshot as a grey array)``.

    Without Chromium the call skips the test (put it last), or fails where ``FETALCLIP_REQUIRE_CHROMIUM`` is set
    (CI installs Debian's).
    """
    import re
    import shutil
    import subprocess
    import tempfile

    from PIL import Image

    def render(page: Path) -> tuple[str, list[str], np.ndarray]:
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            message = "chromium not installed (Debian: apt-get install -y chromium)"
            if os.environ.get("FETALCLIP_REQUIRE_CHROMIUM"):
                pytest.fail(message)
            pytest.skip(message)
        profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
        common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
        dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
        body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
        screenshot = Path(profile) / "shot.png"
        shot = subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1280,2400", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
        assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
        return body, console, np.asarray(Image.open(screenshot).convert("L"))

    return render
