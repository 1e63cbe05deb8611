"""One scan in, one answer out: plane (calibrated, with a conformal set and "not a standard plane"), brain
sub-plane, and gestational age for head views; for a sweep, every frame's plane and the best frame per plane.

``Predictor`` composes the task functions rather than repeating them: the plane and sub-plane classifiers are
``zeroshot.build_classifier`` (built once per predictor), gestational age is the published per-day scoring of
``gestational_age`` (its text bank computed once per distinct pixel-spacing string and kept), and
confidence is a ``calibration.Calibration`` fitted for these very weights. Without a calibration the plane
probabilities are the raw zero-shot softmax and the answer says so (``calibrated: false``, no standard-plane
verdict): an honest "unknown" rather than a confident number that means nothing.

With a segmenter (a saved segmentation probe, ``probe segment --save DIR``) a head view also gets its biometry
(``segmentation_head``): the encoder's tapped blocks come from the same forward pass as the embedding
(``encode_image_intermediates``), so the decoder costs only itself. Saved probe heads (``heads.load_head``) add
their scores: image heads per scan, clip heads per sweep.

Every answer is a ``ScanPrediction`` whose ``to_dict()`` is valid JSON (schema ``PREDICTION_SCHEMA``); what
cannot be answered (no spacing for the age, not a head view) is a stated reason, not an error.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import FetalCLIPError
from ..models.fast_preprocess import FastPreprocessor
from ..models.model import FetalCLIP
from ..models.preprocess import Preprocessor
from .calibration import Calibration, prediction_sets, softmax, standardness
from .segmentation_decoder import Segmenter
from .segmentation_head import HeadBiometry, weeks_days

PREDICTION_SCHEMA = 1
HEAD_VIEW = "brain"  # the plane whose images carry a head: GA and the brain sub-plane are read there


@dataclass
class PlaneAnswer:
    label: str
    probability: float
    probabilities: dict[str, float]
    calibrated: bool
    prediction_set: list[str] | None = None  # conformal, at ``coverage``; None without a calibration
    coverage: float | None = None
    standard_plane: bool | None = None  # None without a calibration
    standard_score: float = 0.0  # the calibration's abstention score (without one: the largest prompt cosine)
    reason: str | None = None


@dataclass
class AgeAnswer:
    days: int | None = None
    weeks_days: str | None = None
    range_days: list[int] | None = None  # the span of the best-scoring days (top 15), not a confidence interval
    range_weeks_days: list[str] | None = None
    spacing_224_mm: float | None = None
    reason: str | None = None


@dataclass
class ScanPrediction:
    source: str
    plane: PlaneAnswer
    brain_plane: dict[str, Any] | None = None
    gestational_age: AgeAnswer | None = None
    biometry: HeadBiometry | None = None  # head views, with a segmenter
    heads: dict[str, dict[str, Any]] | None = None  # image probe heads: name -> {"label", "probabilities"}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from ..io import finite_json

        return finite_json({"schema": PREDICTION_SCHEMA, **asdict(self)})


@dataclass
class SweepPrediction:
    """A sweep (cine loop, multi-frame DICOM, frame folder): each frame's plane, and the best frame per plane."""

    source: str
    frames: list[dict[str, Any]]  # per frame: plane, probability, standard_plane
    best_frames: dict[str, dict[str, Any]]  # plane -> {"frame", "probability"} among frames judged standard
    head: ScanPrediction | None = None  # the whole answer (sub-plane, GA, biometry) for the best head frame
    heads: dict[str, dict[str, Any]] | None = None  # clip probe heads: name -> {"label", "probabilities"}

    def to_dict(self) -> dict[str, Any]:
        from ..io import finite_json

        return finite_json({"schema": PREDICTION_SCHEMA, "source": self.source, "frames": self.frames,
                            "best_frames": self.best_frames, "head": None if self.head is None else self.head.to_dict(),
                            "heads": self.heads})


@dataclass
class _Prepared:
    """One scan ready to encode: the model input and its spacing, and what the biometry needs besides (the
    original spacing and size, the decoder's image input, and after encoding the tapped blocks)."""

    tensor: torch.Tensor
    spacing_224: float | None
    name: str
    spacing_mm: float | None
    shape: tuple[int, int] | None = None
    model_image: np.ndarray | None = None
    blocks: np.ndarray | None = None


def _caught(function, *args):
    """``function(*args)``, or the exception it raised (the prefetching threads hand results, never raise)."""
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - re-raised by the caller, in order
        return exc


def head_scores(head, features: np.ndarray) -> list[dict[str, Any]]:
    """A probe head's answer per row of ``features``: its top class and every class's probability."""
    probs = np.asarray(head.predict(features), dtype=np.float64)  # [N, C], columns in ``classes`` order
    classes = list(head.classes)
    return [{"label": classes[int(row.argmax())], "probabilities": {str(c): float(p) for c, p in zip(classes, row)}}
            for row in probs]


class Predictor:
    """Zero-shot answers about single scans from one model, with its calibration when given."""

    def __init__(self, model: FetalCLIP, calibration: Calibration | None = None, segmenter: Any = None, heads: Sequence[Any] = (),
                 plane_prompts: Any = None, brain_prompts: Any = None, ga_templates: Sequence[str] | str | os.PathLike | None = None,
                 head_mask: bool = False):
        """``segmenter``: a saved segmentation probe folder (or a ``Segmenter``) trained on these weights.
        ``heads``: saved probe heads (files or loaded ``ProbeHead`` objects). ``head_mask``: put the head's
        label map, run-length coded, into each biometry answer (the ellipse is always there)."""
        from .features import model_fingerprint
        from .gestational_age import resolve_templates
        from .zeroshot import build_classifier, load_prompts

        self.model = model.eval()
        self.calibration = calibration
        heads = list(heads)
        fingerprint = model_fingerprint(model) if calibration is not None or segmenter is not None or heads else None
        if calibration is not None:
            calibration.check_model(fingerprint)
        self.segmenter = Segmenter.for_model(segmenter, model, fingerprint) if segmenter is not None else None
        self.head_mask = head_mask
        self.heads = [self._head(head, fingerprint) for head in heads]
        planes = plane_prompts if isinstance(plane_prompts, Mapping) else load_prompts(plane_prompts, "planes")
        self.classes = list(calibration.classes) if calibration is not None else [c for c in planes if c != "other"]
        missing = [c for c in self.classes if c not in planes]
        if missing:
            raise FetalCLIPError(f"the calibration's classes {missing} have no plane prompts")
        brain = brain_prompts if isinstance(brain_prompts, Mapping) else load_prompts(brain_prompts, "brain")
        self.brain_classes = list(brain)
        with torch.inference_mode():
            self.plane_classifier = build_classifier(model, self.classes, planes)
            self.brain_classifier = build_classifier(model, self.brain_classes, brain)
        self.templates = resolve_templates(ga_templates)
        self._fast_preprocess = FastPreprocessor(model.preprocess) if isinstance(model.preprocess, Preprocessor) else None
        self._day_banks: dict[str, torch.Tensor] = {}

    @staticmethod
    def _head(head: Any, fingerprint: str):
        """A probe head (a saved file or a loaded head), refused when trained on other weights."""
        if isinstance(head, (str, os.PathLike)):
            from .heads import load_head

            return load_head(head, fingerprint)
        if getattr(head, "input", None) not in ("image", "clip"):
            raise FetalCLIPError(f"probe head {getattr(head, 'name', head)!r}: input must be 'image' or 'clip'")
        if hasattr(head, "check_encoder"):
            head.check_encoder(fingerprint)
        return head

    # -- inputs -------------------------------------------------------------------------------------------
    @staticmethod
    def read(image: Any, spacing_mm: float | None = None, source: str | None = None) -> tuple[Any, float | None, str]:
        """(pixels, spacing, source) from a path (raster, DICOM: its first frame and PixelSpacing), PIL image or array."""
        from ..data.readers import read_frame

        if isinstance(image, (str, os.PathLike)):
            sample = read_frame(image)
            own = sample.get("pixel_spacing_mm")
            return sample["image"], spacing_mm if spacing_mm is not None else own, source or str(image)
        return image, spacing_mm, source or "<image>"

    # -- the answer ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, image: Any, spacing_mm: float | None = None, source: str | None = None,
                 view: str | None = None) -> ScanPrediction:
        return self.predict_many([image], [spacing_mm], [source], view=view)[0]

    @torch.inference_mode()
    def predict_many(self, images: Sequence[Any], spacings_mm: Sequence[float | None] | None = None,
                     sources: Sequence[str | None] | None = None, batch_size: int = 32,
                     view: str | None = None) -> list[ScanPrediction]:
        """Answers for several scans, their images encoded in batches.

        ``view``: the plane the operator says the scans show (e.g. ``brain`` for a folder of head scans). The
        plane is still predicted and reported, but what is read for that view (sub-plane, age) no longer
        waits on the prediction agreeing.
        """
        return self._predict(images, spacings_mm, sources, batch_size, view)[0]

    def _predict(self, images: Sequence[Any], spacings_mm, sources, batch_size: int, view: str | None,
                 frames_only: bool = False) -> tuple[list[ScanPrediction], np.ndarray]:
        """The answers and the raw (unnormalised) embeddings ``[N, D]`` the probe heads read.

        ``frames_only`` (a sweep's frames): each frame gets its plane only, the frames go through ``fetalclip
        embed``'s encoder (``tasks.embed.batch_encoder``, mode ``exact``: fused CPU kernels, the same
        embeddings to float rounding, < 1e-5) and are prepared one batch ahead in threads, as ``embed`` does.
        Single scans keep the plain tower, so they agree bit for bit with the zero-shot tasks; with a
        segmenter its tapped blocks come from that same pass.
        """
        from .batching import prefetched_batches

        spacings_mm = list(spacings_mm) if spacings_mm is not None else [None] * len(images)
        sources = list(sources) if sources is not None else [None] * len(images)
        items = list(zip(images, spacings_mm, sources))
        with_blocks = self.segmenter is not None and not frames_only
        encode = self.model.encode_image
        if frames_only:
            from .embed import batch_encoder

            encode = batch_encoder(self.model, "exact")
            batches = prefetched_batches(items, lambda item: _caught(self._prepare, item, with_blocks), batch_size)
        else:
            batches = ((items[i:i + batch_size], [self._prepare(item, with_blocks) for item in items[i:i + batch_size]])
                       for i in range(0, len(items), batch_size))
        image_heads = [head for head in self.heads if head.input == "image"]
        answers, raws = [], []
        for _, prepared in batches:
            for item in prepared:
                if isinstance(item, Exception):
                    raise item
            batch = torch.stack([item.tensor for item in prepared])
            if with_blocks:
                raw, blocks = self.model.encode_image_intermediates(batch, self.segmenter.taps)
                # float16, as the feature cache stores the blocks the decoder was trained on
                for item, grid in zip(prepared, blocks.to(torch.float16).cpu().numpy()):
                    item.blocks = grid
            else:
                raw = encode(batch)
            features = F.normalize(raw, dim=-1).float().cpu()
            raw = raw.float().cpu().numpy()
            raws.append(raw)
            scores = [head_scores(head, raw) for head in image_heads]
            for row, (feature, item) in enumerate(zip(features, prepared)):
                answer = self._answer(feature, item, view, plane_only=frames_only)
                if scores:
                    answer.heads = {head.name: per_row[row] for head, per_row in zip(image_heads, scores)}
                answers.append(answer)
        return answers, (np.concatenate(raws) if raws else np.zeros((0, self.model.embed_dim), np.float32))

    def _prepare(self, item: tuple[Any, float | None, str | None], with_blocks: bool) -> _Prepared:
        """One scan read and preprocessed: the model input, its spacings and, for the segmenter, the decoder's
        image input and the size its label map goes back to."""
        from ..data.sample import positive_finite, spacing_224
        from ..models.preprocess import to_rgb_image

        image, spacing, source = item
        pixels, spacing, name = self.read(image, spacing, source)
        spacing = positive_finite(spacing, "pixel spacing")
        preprocess = self.model.preprocess
        if self._fast_preprocess is not None and isinstance(pixels, (np.ndarray, Image.Image)):
            # The bit-identical fast route for grayscale frames (``models.fast_preprocess``), as ``embed`` takes.
            width, height = pixels.size if isinstance(pixels, Image.Image) else (pixels.shape[1], pixels.shape[0])
            tensor = self._fast_preprocess(pixels)
            spacing_224_mm = spacing_224(spacing, width=width, height=height, size=preprocess.config.image_size)
        else:
            tensor, spacing_224_mm = preprocess.with_spacing(pixels, spacing)
        prepared = _Prepared(tensor, spacing_224_mm, name, spacing)
        if with_blocks:
            rgb = to_rgb_image(pixels)
            prepared.shape = (rgb.height, rgb.width)
            prepared.model_image = np.asarray(preprocess.to_model_image(rgb), dtype=np.uint8)
        return prepared

    @torch.inference_mode()
    def sweep(self, frames: Any, spacing_mm: float | None = None, source: str | None = None,
              batch_size: int = 32) -> SweepPrediction:
        """Per-frame planes of a sweep and, per plane, the frame with its highest probability among the frames
        judged standard (all frames without a calibration) where it is the answer; the head answer (sub-plane,
        GA, biometry with a segmenter) is the best brain frame's single-scan answer; clip heads score the sweep.
        ``frames``: a list of images, or a path to a multi-frame source."""
        from ..data.readers import read_clip

        if isinstance(frames, (str, os.PathLike)):
            source = source or str(frames)
            samples = read_clip(frames)
            spacing_mm = spacing_mm if spacing_mm is not None else samples[0].get("pixel_spacing_mm")
            frames = [sample["image"] for sample in samples]
        source = source or "<sweep>"
        if not len(frames):
            raise FetalCLIPError(f"{source}: the sweep has no frames")
        names = [f"{source}#{i}" for i in range(len(frames))]
        answers, raw = self._predict(list(frames), [spacing_mm] * len(frames), names, batch_size, None, frames_only=True)
        per_frame = [{"frame": i, "plane": a.plane.label, "probability": a.plane.probability,
                      "standard_plane": a.plane.standard_plane} for i, a in enumerate(answers)]
        best: dict[str, dict[str, Any]] = {}
        for i, answer in enumerate(answers):
            plane = answer.plane
            if plane.standard_plane is False:
                continue
            if plane.label not in best or plane.probability > best[plane.label]["probability"]:
                best[plane.label] = {"frame": i, "probability": plane.probability}
        head = None
        if HEAD_VIEW in best:  # the best head frame's whole answer (sub-plane, GA, biometry)
            index = best[HEAD_VIEW]["frame"]
            if self.segmenter is not None:  # the decoder needs the tapped blocks: one plain pass for that frame
                head = self.predict_many([frames[index]], [spacing_mm], [names[index]])[0]
            else:
                feature = F.normalize(torch.from_numpy(raw[index:index + 1]), dim=-1)[0]
                head = self._answer(feature, self._prepare((frames[index], spacing_mm, names[index]), False), None)
                head.heads = answers[index].heads
        clip_heads = {head.name: head_scores(head, _clip_frames(raw, getattr(head, "frames", None))[None])[0]
                      for head in self.heads if head.input == "clip"}
        return SweepPrediction(source, per_frame, best, head, clip_heads or None)

    def _answer(self, feature: torch.Tensor, item: _Prepared, view: str | None, plane_only: bool = False) -> ScanPrediction:
        from .zeroshot import logits_from_features

        logits = logits_from_features(feature[None], self.plane_classifier)
        plane = self._plane(logits, feature[None].numpy())
        prediction = ScanPrediction(item.name, plane)
        if plane_only or (view or plane.label) != HEAD_VIEW:
            return prediction
        if view is not None and plane.label != view:
            prediction.notes.append(f"read as a {view} view as asked; the model's own plane answer is {plane.label}")
        if plane.standard_plane is False:
            prediction.notes.append("not judged a standard plane: sub-plane and age are given with that caveat")
        brain_logits = logits_from_features(feature[None], self.brain_classifier)
        brain_probs = softmax(brain_logits)[0]
        prediction.brain_plane = {"label": self.brain_classes[int(brain_probs.argmax())], "calibrated": False,
                                  "probabilities": {c: float(p) for c, p in zip(self.brain_classes, brain_probs)}}
        prediction.gestational_age = self._age(feature, item.spacing_224)
        if self.segmenter is not None:
            prediction.biometry = self._biometry(item, prediction.gestational_age.days)
            item.blocks = item.model_image = None  # measured: the token grids can go
        return prediction

    def _biometry(self, item: _Prepared, ga_days: int | None) -> HeadBiometry:
        """The segmenter's label map of the head at the original size, measured (``segmentation_head``)."""
        from .segmentation_head import head_biometry
        from .segmentation_masks import probabilities_to_original

        config = self.model.preprocess.config
        probs = next(self.segmenter.probabilities(item.blocks[None], item.model_image[None], config.mean, config.std))
        label_map = probabilities_to_original(probs, *item.shape)
        return head_biometry(label_map, item.spacing_mm, ga_days, with_mask=self.head_mask)

    def _plane(self, logits: np.ndarray, features: np.ndarray) -> PlaneAnswer:
        calibration = self.calibration
        probs = (calibration.probabilities(logits) if calibration is not None else softmax(logits))[0]
        best = int(probs.argmax())
        score = calibration.standard_scores(logits, features) if calibration is not None else standardness(logits)
        answer = PlaneAnswer(self.classes[best], float(probs[best]), {c: float(p) for c, p in zip(self.classes, probs)},
                             calibrated=calibration is not None, standard_score=float(score[0]))
        if calibration is None:
            answer.reason = "uncalibrated zero-shot softmax; `fetalclip calibrate` makes it a probability"
            return answer
        chosen = prediction_sets(probs[None], calibration.conformal_threshold)[0]
        answer.prediction_set = [c for c, keep in zip(self.classes, chosen) if keep]
        answer.coverage = calibration.coverage
        answer.standard_plane = bool(answer.standard_score >= calibration.abstain_threshold)
        if not answer.standard_plane:
            answer.reason = (f"standard-plane score {answer.standard_score:.3f} is below the calibrated "
                             f"{calibration.abstain_threshold:.3f}: not one of the standard planes")
        return answer

    def _age(self, feature: torch.Tensor, spacing_224: float | None) -> AgeAnswer:
        from .gestational_age import DAYS, FIRST_DAY, TOP_K, day_text_features, decode_top_k_median, format_spacing
        from .zeroshot import LOGIT_SCALE

        if spacing_224 is None:
            return AgeAnswer(reason="no pixel spacing: pass --spacing MM (or a DICOM with PixelSpacing)")
        text = format_spacing(spacing_224)
        if text not in self._day_banks:  # one text bank per spacing string, reused by every later scan
            self._day_banks[text] = day_text_features(self.model, self.templates, [text], DAYS)[0]
        scores = (LOGIT_SCALE * torch.nn.functional.normalize(feature[None], dim=-1) @ self._day_banks[text].T).numpy()
        day = int(decode_top_k_median(scores)[0])
        best = FIRST_DAY + np.argsort(-scores[0], kind="stable")[:TOP_K]
        span = [int(best.min()), int(best.max())]
        return AgeAnswer(day, weeks_days(day), span, [weeks_days(d) for d in span], float(spacing_224))


def _clip_frames(raw: np.ndarray, count: int | None) -> np.ndarray:
    """``count`` frame embeddings evenly spaced over the sweep (all of them when the head takes any number),
    as ``probe clips`` sampled its training clips."""
    if not count or count == len(raw):
        return raw
    return raw[[int(round(x)) for x in np.linspace(0, len(raw) - 1, int(count))]]


__all__ = ["AgeAnswer", "HeadBiometry", "PREDICTION_SCHEMA", "PlaneAnswer", "Predictor", "ScanPrediction", "SweepPrediction", "weeks_days"]
