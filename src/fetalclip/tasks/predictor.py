"""One scan in, one answer out: plane (calibrated, with a conformal set and "not a standard plane"), brain
sub-plane, and gestational age for head views; for a sweep, every frame's plane and the best frame per plane.

``Predictor`` composes the task functions rather than repeating them: the plane and sub-plane classifiers are
``zeroshot.build_classifier`` (built once per predictor), gestational age is the published per-day scoring of
``gestational_age`` (its text bank computed once per distinct pixel-spacing string and kept), and
confidence is a ``calibration.Calibration`` fitted for these very weights. Without a calibration the plane
probabilities are the raw zero-shot softmax and the answer says so (``calibrated: false``, no standard-plane
verdict): an honest "unknown" rather than a confident number that means nothing.

Every answer is a ``ScanPrediction`` whose ``to_dict()`` is valid JSON (schema ``PREDICTION_SCHEMA``); what
cannot be answered (no spacing for the age, not a head view) is a stated reason, not an error.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import FetalCLIPError
from ..models.model import FetalCLIP
from .calibration import Calibration, prediction_sets, softmax, standardness

PREDICTION_SCHEMA = 1
HEAD_VIEW = "brain"  # the plane whose images carry a head: GA and the brain sub-plane are read there


def weeks_days(days: int) -> str:
    return f"{days // 7}w{days % 7}d"


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
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PREDICTION_SCHEMA, **asdict(self)}


@dataclass
class SweepPrediction:
    """A sweep (cine loop, multi-frame DICOM, frame folder): each frame's plane, and the best frame per plane."""

    source: str
    frames: list[dict[str, Any]]  # per frame: plane, probability, standard_plane
    best_frames: dict[str, dict[str, Any]]  # plane -> {"frame", "probability"} among frames judged standard
    head: ScanPrediction | None = None  # the whole answer (sub-plane, GA) for the best head frame

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PREDICTION_SCHEMA, "source": self.source, "frames": self.frames,
                "best_frames": self.best_frames, "head": None if self.head is None else self.head.to_dict()}


class Predictor:
    """Zero-shot answers about single scans from one model, with its calibration when given."""

    def __init__(self, model: FetalCLIP, calibration: Calibration | None = None,
                 plane_prompts: Any = None, brain_prompts: Any = None, ga_templates: Sequence[str] | str | os.PathLike | None = None):
        from .features import model_fingerprint
        from .gestational_age import resolve_templates
        from .zeroshot import build_classifier, load_prompts

        self.model = model.eval()
        self.calibration = calibration
        if calibration is not None:
            calibration.check_model(model_fingerprint(model))
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
        self._day_banks: dict[str, torch.Tensor] = {}

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
        from ..data.sample import positive_finite

        spacings_mm = list(spacings_mm) if spacings_mm is not None else [None] * len(images)
        sources = list(sources) if sources is not None else [None] * len(images)
        inputs, spacings_224, names = [], [], []
        for image, spacing, source in zip(images, spacings_mm, sources):
            pixels, spacing, name = self.read(image, spacing, source)
            spacing = positive_finite(spacing, "pixel spacing")
            tensor, spacing_224 = self.model.preprocess.with_spacing(pixels, spacing)
            inputs.append(tensor)
            spacings_224.append(spacing_224)
            names.append(name)
        answers = []
        for start in range(0, len(inputs), batch_size):
            batch = torch.stack(inputs[start:start + batch_size])
            features = self.model.encode_image(batch, normalize=True).float().cpu()
            for row, feature in enumerate(features):
                index = start + row
                answers.append(self._answer(feature, spacings_224[index], names[index], view))
        return answers

    @torch.inference_mode()
    def sweep(self, frames: Any, spacing_mm: float | None = None, source: str | None = None,
              batch_size: int = 32) -> SweepPrediction:
        """Per-frame planes of a sweep and, per plane, the frame with its highest probability among the frames
        judged standard (all frames without a calibration) where it is the answer; the head answer (sub-plane,
        GA) is that of the best brain frame. ``frames``: a list of images, or a path to a multi-frame source."""
        from ..data.readers import read_clip

        if isinstance(frames, (str, os.PathLike)):
            source = source or str(frames)
            samples = read_clip(frames)
            spacing_mm = spacing_mm if spacing_mm is not None else samples[0].get("pixel_spacing_mm")
            frames = [sample["image"] for sample in samples]
        source = source or "<sweep>"
        if not len(frames):
            raise FetalCLIPError(f"{source}: the sweep has no frames")
        answers = self.predict_many(list(frames), [spacing_mm] * len(frames), [f"{source}#{i}" for i in range(len(frames))],
                                    batch_size=batch_size)
        per_frame = [{"frame": i, "plane": a.plane.label, "probability": a.plane.probability,
                      "standard_plane": a.plane.standard_plane} for i, a in enumerate(answers)]
        best: dict[str, dict[str, Any]] = {}
        for i, answer in enumerate(answers):
            plane = answer.plane
            if plane.standard_plane is False:
                continue
            if plane.label not in best or plane.probability > best[plane.label]["probability"]:
                best[plane.label] = {"frame": i, "probability": plane.probability}
        head = answers[best[HEAD_VIEW]["frame"]] if HEAD_VIEW in best else None
        return SweepPrediction(source, per_frame, best, head)

    def _answer(self, feature: torch.Tensor, spacing_224: float | None, source: str, view: str | None) -> ScanPrediction:
        from .zeroshot import logits_from_features

        logits = logits_from_features(feature[None], self.plane_classifier)
        plane = self._plane(logits, feature[None].numpy())
        prediction = ScanPrediction(source, plane)
        if (view or plane.label) != HEAD_VIEW:
            return prediction
        if view is not None and plane.label != view:
            prediction.notes.append(f"read as a {view} view as asked; the model's own plane answer is {plane.label}")
        if plane.standard_plane is False:
            prediction.notes.append("not judged a standard plane: sub-plane and age are given with that caveat")
        brain_logits = logits_from_features(feature[None], self.brain_classifier)
        brain_probs = softmax(brain_logits)[0]
        prediction.brain_plane = {"label": self.brain_classes[int(brain_probs.argmax())], "calibrated": False,
                                  "probabilities": {c: float(p) for c, p in zip(self.brain_classes, brain_probs)}}
        prediction.gestational_age = self._age(feature, spacing_224)
        return prediction

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


__all__ = ["AgeAnswer", "PREDICTION_SCHEMA", "PlaneAnswer", "Predictor", "ScanPrediction", "SweepPrediction", "weeks_days"]
