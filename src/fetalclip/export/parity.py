"""Parity of an export with its PyTorch model, measured when the graphs are written and kept in the manifest.

The figures compare what a user would compare: the unnormalised and the L2-normalised embeddings of the same
preprocessed images and token ids, PyTorch (the unmodified open_clip tower) against the ONNX Runtime session of
each exported precision, at a batch size other than the one the graph was traced with (so the dynamic batch
axis is exercised). For int8, agreement is the cosine to the fp32 embeddings and whether the zero-shot plane
(argmax over the exported plane classifier) is the same. Images are phantom scans (``fetalclip.sim``) unless
the caller passes real ones; prompts are the packaged plane prompts and a gestational-age prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

FP32_TOLERANCE = 1e-5  # max abs difference of normalised embeddings
INT8_MIN_COSINE = 0.999


def parity_inputs(model, images: Sequence[Any] | None = None, n_phantoms: int = 4) -> tuple[torch.Tensor, list[str], str]:
    """Preprocessed images ``[N, 3, S, S]``, prompts, and a one-line description of where the images came from."""
    from ..sim.dataset import render_sample
    from ..tasks.zeroshot import load_prompts

    pictures = [render_sample(i)["image"] for i in range(n_phantoms)]
    described = f"{n_phantoms} phantom images (fetalclip.sim)"
    if images:
        pictures = list(images) + pictures
        described = f"{len(images)} given images + {described}"
    pixels = model.preprocess.batch(pictures)
    prompts = [texts[0] for texts in load_prompts(task="planes").values()]
    prompts.append("Ultrasound image at 20 weeks and 3 days gestation focusing on the fetal brain; pixel spacing 0.45 mm.")
    return pixels, prompts, described


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


def measure_parity(model, runtimes: dict[str, Any], pixels: torch.Tensor, prompts: list[str],
                   classifier: np.ndarray) -> dict[str, Any]:
    """Figures per precision: ``runtimes`` maps ``fp32``/``int8`` to an ``OnnxModel`` of that precision."""
    with torch.inference_mode():
        image_ref = model.encode_image(pixels).float().cpu()
        text_ref = model.encode_text(prompts).float().cpu()
    planes = torch.from_numpy(classifier).float()
    out: dict[str, Any] = {"images": len(pixels), "prompts": len(prompts)}
    fp32_image = fp32_text = None
    for precision, runtime in runtimes.items():
        image = runtime.encode_image(pixels)
        text = runtime.encode_text(prompts)
        first = runtime.encode_image(pixels[:1])  # batch 1: the dynamic axis at work
        figures = {
            "image_max_abs": _max_abs(image, image_ref),
            "image_max_abs_normalized": _max_abs(F.normalize(image, dim=-1), F.normalize(image_ref, dim=-1)),
            "text_max_abs": _max_abs(text, text_ref),
            "text_max_abs_normalized": _max_abs(F.normalize(text, dim=-1), F.normalize(text_ref, dim=-1)),
            "batch_one_max_abs": _max_abs(first, image[:1]),
            "image_min_cosine": _min_cosine(image, image_ref),
            "text_min_cosine": _min_cosine(text, text_ref),
        }
        if precision == "fp32":
            fp32_image, fp32_text = image, text
            figures["passed"] = max(figures["image_max_abs_normalized"], figures["text_max_abs_normalized"]) <= FP32_TOLERANCE
            figures["tolerance"] = FP32_TOLERANCE
        else:
            base_image = fp32_image if fp32_image is not None else image_ref
            base_text = fp32_text if fp32_text is not None else text_ref
            figures["image_min_cosine_to_fp32"] = _min_cosine(image, base_image)
            figures["text_min_cosine_to_fp32"] = _min_cosine(text, base_text)
            same = (F.normalize(image, dim=-1) @ planes.T).argmax(1) == (F.normalize(base_image, dim=-1) @ planes.T).argmax(1)
            figures["same_plane"] = float(same.float().mean())
            figures["passed"] = figures["image_min_cosine_to_fp32"] >= INT8_MIN_COSINE and figures["same_plane"] == 1.0
            figures["min_cosine"] = INT8_MIN_COSINE
        out[precision] = figures
    return out
