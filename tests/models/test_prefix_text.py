import pytest
import torch

from fetalclip.models.prefix_text import encode_prompt_grid, supports_prefix_sharing

TEMPLATES = (
    "Ultrasound image of the fetal brain at {w} weeks and {d} days, {s} mm per pixel.",
    "Head scan, {s} mm/pixel, at {w} weeks and {d} days of pregnancy",  # spacing mid-sentence
    "Fetal head at {w} weeks and {d} days",  # no spacing: every column identical
)
SPACINGS = ("0.19", "0.20", "0.54", "1.25", "12.00")  # tails of different lengths


def _grid():
    return [[t.format(w=day // 7, d=day % 7, s=s) for s in SPACINGS] for t in TEMPLATES for day in (98, 139, 272)]


def _plain(model, grid):
    with torch.inference_mode():
        return model.encode_text([p for row in grid for p in row]).view(len(grid), len(grid[0]), -1)


def test_the_tiny_model_qualifies(tiny_model):
    assert supports_prefix_sharing(tiny_model.clip)
    assert not supports_prefix_sharing(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("max_rows", [8192, 24])  # 24 forces chunking over rows and columns
def test_shared_prefix_encoding_equals_the_plain_encoder(tiny_model, max_rows):
    grid = _grid() if max_rows > 100 else _grid()[::3]
    shared = encode_prompt_grid(tiny_model, grid, max_rows=max_rows)
    plain = _plain(tiny_model, grid)
    assert shared.shape == plain.shape == (len(grid), len(SPACINGS), 128)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-5)
    # The fallback path (no prefix sharing) is the plain encoder itself.
    torch.testing.assert_close(encode_prompt_grid(tiny_model, grid, share_prefixes=False), plain, atol=1e-5, rtol=1e-5)


def test_single_prompts_and_prompts_cut_at_the_context_length(tiny_model):
    long = "fetal head " * 80  # longer than 117 tokens: truncated, end token kept in the last position
    grid = [[long + "0.19"], [long + "0.20"], ["short prompt"]]
    torch.testing.assert_close(encode_prompt_grid(tiny_model, grid), _plain(tiny_model, grid), atol=1e-4, rtol=1e-5)


def test_rows_must_have_equal_length(tiny_model):
    with pytest.raises(ValueError, match="same number"):
        encode_prompt_grid(tiny_model, [["a", "b"], ["c"]])
