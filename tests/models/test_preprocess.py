import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from fetalclip.models.preprocess import Preprocessor, pad_to_square, spacing_224, to_rgb_image


@pytest.fixture
def preprocess():
    return Preprocessor()


def test_matches_open_clip_eval_transform_on_padded_image(preprocess, gray_image):
    pil = Image.fromarray(gray_image)
    reference = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD)
    expected = reference(pad_to_square(pil.convert("RGB")))
    assert torch.equal(preprocess(pil), expected)
    assert torch.equal(preprocess(gray_image), expected)


@pytest.mark.parametrize("width,height", [(181, 120), (120, 181), (7, 4), (4, 7)])
def test_padding_is_centred_with_floor_offsets(width, height):
    image = Image.new("RGB", (width, height), (255, 255, 255))
    padded = np.asarray(pad_to_square(image))[:, :, 0]
    side = max(width, height)
    rows, cols = np.nonzero(padded)
    assert padded.shape == (side, side)
    assert cols.min() == (side - width) // 2 and rows.min() == (side - height) // 2
    assert cols.max() == (side - width) // 2 + width - 1 and rows.max() == (side - height) // 2 + height - 1


def test_square_images_are_not_padded():
    image = Image.new("L", (50, 50), 7)
    assert pad_to_square(image) is image


def test_spacing_224_arithmetic(preprocess, gray_image):
    assert spacing_224(0.1, width=800, height=540) == pytest.approx(0.1 * 800 / 224)
    assert spacing_224(0.2, width=540, height=800) == pytest.approx(0.2 * 800 / 224)
    assert spacing_224(None, width=800, height=540) is None
    tensor, spacing = preprocess.with_spacing(gray_image, 0.15)
    assert tensor.shape == (3, 224, 224)
    assert spacing == pytest.approx(0.15 * 181 / 224)


def _modes():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    rgb = np.stack([gray] * 3, axis=-1)
    yield "L", Image.fromarray(gray)
    yield "RGB", Image.fromarray(rgb)
    yield "RGBA", Image.fromarray(np.dstack([rgb, np.full_like(gray, 128)]))
    yield "P", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    yield "I;16", Image.fromarray(gray.astype(np.uint16) * 257)
    yield "uint16-array", gray.astype(np.uint16) * 257
    yield "float-array", gray.astype(np.float32) / 255.0
    yield "HxWx1", gray[:, :, None]
    yield "HxWx4", np.dstack([rgb, np.zeros_like(gray)])


@pytest.mark.parametrize("name,image", list(_modes()), ids=[name for name, _ in _modes()])
def test_all_input_kinds_give_the_same_grayscale_result(preprocess, name, image):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    expected = preprocess(gray)
    result = preprocess(image)
    # A palette quantises; everything else must be exact.
    tolerance = 0.1 if name == "P" else 0.0
    assert (result - expected).abs().max().item() <= tolerance


def test_sixteen_bit_uses_the_full_range():
    assert np.asarray(to_rgb_image(np.array([[0, 65535]], dtype=np.uint16)))[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("bad", [np.zeros((0, 5), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((2, 2, 2, 2))])
def test_bad_arrays_are_clear_errors(preprocess, bad):
    with pytest.raises(ValueError, match="shape"):
        preprocess(bad)


def test_tensors_are_refused(preprocess):
    with pytest.raises(TypeError, match="preprocessed"):
        preprocess(torch.zeros(3, 224, 224))


def test_one_spacing_224_with_keyword_sizes():
    from fetalclip.data import sample

    assert spacing_224 is sample.spacing_224  # one rule, re-exported by the preprocessing
    assert spacing_224(0.25, width=640, height=480, size=112) == 0.25 * 640 / 112
    with pytest.raises(TypeError, match="width"):
        spacing_224(0.25, height=480)  # both sizes are required
    with pytest.raises(sample.InvalidValueError, match="pixel_spacing_mm"):
        spacing_224(0.0, width=640, height=480)


def test_spacing_224_sizes_are_keywords_only():
    with pytest.raises(TypeError):
        spacing_224(0.1, 540, 800)  # which is the width? the signature refuses to guess
