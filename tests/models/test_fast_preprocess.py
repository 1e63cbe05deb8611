"""The grayscale fast path must give the very same tensor as the published preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from fetalclip.models.fast_preprocess import FastPreprocessor
from fetalclip.models.preprocess import Preprocessor


@pytest.fixture(scope="module")
def pair():
    reference = Preprocessor()
    return reference, FastPreprocessor(reference)


def test_identical_on_real_hc18_images(hc18_dir, pair):
    reference, fast = pair
    files = sorted((hc18_dir / "training_set").glob("*_HC.png"))[:12]
    for path in files:
        image = Image.open(path)
        image.load()
        assert image.mode == "L"  # the case the fast path exists for
        assert torch.equal(fast(image), reference(image)), path


@pytest.mark.parametrize("shape", [(120, 181), (181, 120), (301, 300), (224, 224), (50, 37), (1, 9), (997, 640)])
def test_identical_on_grayscale_of_any_shape(shape, pair):
    reference, fast = pair
    rng = np.random.default_rng(sum(shape))
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    array[: shape[0] // 2, : shape[1] // 3] = 255  # hard edges, where bicubic overshoot and clamping show
    for image in (array, Image.fromarray(array)):
        got, expected = fast(image), reference(image)
        assert got.shape == (3, 224, 224) and got.is_contiguous()
        assert torch.equal(got, expected)


def test_other_inputs_take_the_reference_route(gray_image, pair):
    reference, fast = pair
    rgb = np.dstack([gray_image, gray_image[::-1], 255 - gray_image])
    sixteen = gray_image.astype(np.uint16) * 257
    for image in (rgb, Image.fromarray(rgb), sixteen, Image.fromarray(gray_image).convert("P"), gray_image / 255.0):
        assert torch.equal(fast(image), reference(image))


def test_unpadded_configuration(gray_image):
    reference = Preprocessor({"pad_to_square": False, "image_size": 96})
    assert torch.equal(FastPreprocessor(reference)(gray_image), reference(gray_image))
