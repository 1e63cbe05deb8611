"""Calibrated plane confidence: temperature scaling, split-conformal sets and a "not a standard plane" threshold.

A zero-shot plane score is a softmax of 100 x cosine: its confidence is a number, not a probability. Three
post-hoc layers make it mean something, each fitted on labelled images of *some* patients and measured on the
*other* patients (a patient-level split stratified by plane, so no patient is on both sides):

- **Temperature scaling** (Guo et al. 2017): one scalar T dividing the logits, fitted by minimising the
  negative log-likelihood of the true plane. It changes no argmax, only how sure the answer sounds.
- **Split conformal prediction** (the LAC / "score = 1 - probability of the true class" recipe): the
  ``ceil((n+1) c) / n`` empirical quantile ``q`` of the fitting scores gives sets ``{class: p >= 1 - q}`` that
  contain the true plane with probability at least ``c`` for exchangeable images.
- **Abstention** ("not a standard plane"): a linear probe on the frozen image embedding, trained to tell
  the fitting patients' standard-plane images from non-standard ones: the dataset's own (FETAL_PLANES_DB's
  ``Other``) and synthetic junk (noise, blank and grey screens, gradients, stripes, checkerboards, blobs:
  outlier exposure, Hendrycks et al. 2019). Its threshold keeps ``accept`` of the fitting patients'
  standard-plane images (95% by default), scored out of fold (patient-grouped) so that it holds for images
  the probe has not seen. Similarity to the prompts or to the class means is not enough: a
  small CLIP's embeddings lie in a narrow cone, and a phantom-trained ``fetalclip-tiny`` put pure noise
  *closer* to its class prompts and class centroids than real planes (measured: noise 0.75 cosine against a
  0.70 threshold; "cervix, 98%"). Without embeddings (``fit_calibration`` on logits alone) the score falls back
  to the largest prompt cosine.

The result is a small JSON document bound to the fingerprint of the image tower it was fitted for; loading it
for other weights is refused, because a temperature and thresholds fitted for one model mean nothing for another.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import FetalCLIPError
from .junk import JUNK_KINDS, junk_images  # noqa: F401  (re-exported)

FORMAT = "fetalclip-calibration"
VERSION = 1
ECE_BINS = 15
LOGIT_SCALE = 100.0  # zero-shot logits are 100 x cosine (tasks.zeroshot)


class CalibrationError(FetalCLIPError):
    """A calibration file that cannot be read or does not belong to the model it is used with."""


# -- the three layers, as functions of logits -----------------------------------------------------------------
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes ``y`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (1e-2, 1e3)) -> float:
    """The T minimising ``nll(logits, y, T)``, searched on log T (the NLL is smooth and unimodal there)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        raise FetalCLIPError("temperature scaling needs at least one labelled image")
    found = minimize_scalar(lambda log_t: nll(logits, y, math.exp(log_t)), bounds=tuple(map(math.log, bounds)),
                            method="bounded", options={"xatol": 1e-6})
    return float(math.exp(found.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the image-weighted mean |accuracy - confidence| over ``bins`` equal-width confidence bins."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == np.asarray(y)).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / max(len(y), 1))


def conformal_threshold(probs: np.ndarray, y: np.ndarray, coverage: float) -> float:
    """Split-conformal ``q``: sets ``{c: p_c >= 1 - q}`` cover the true class with probability >= ``coverage``."""
    if not 0 < coverage < 1:
        raise FetalCLIPError(f"coverage must be between 0 and 1 (got {coverage})")
    scores = np.sort(1.0 - np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y])
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)  # the finite-sample correction: the rank-th smallest of n scores
    if n == 0 or rank > n:
        return 1.0  # too few fitting images for this coverage: every class is in every set
    return float(scores[rank - 1])


def prediction_sets(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean ``[N, C]``: class c is in image i's set when ``p_ic >= 1 - threshold``, and the most probable
    class always is (an empty set answers nothing; adding the top class can only raise the coverage)."""
    probs = np.asarray(probs)
    sets = probs >= 1.0 - threshold - 1e-12
    sets[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return sets


def standardness(logits: np.ndarray) -> np.ndarray:
    """The abstention score of each image: its largest cosine to any class prompt."""
    return np.asarray(logits, dtype=np.float64).max(axis=1) / LOGIT_SCALE


def fit_standardness_probe(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, float]:
    """(weights, bias) of a balanced logistic regression on embeddings, standardisation folded into the weights."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    probe = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    weights = probe.coef_[0] / scale
    return weights, float(probe.intercept_[0] - weights @ mean)


def _out_of_fold_scores(positives: np.ndarray, patients: Sequence[str], negatives: np.ndarray, folds: int = 5) -> np.ndarray:
    """Standardness scores of ``positives``, each from a probe fitted without its patient's images."""
    from sklearn.model_selection import GroupKFold

    k = min(folds, len(set(patients)))
    if k < 2:
        weights, bias = fit_standardness_probe(positives, negatives)
        return positives @ weights + bias
    scores = np.empty(len(positives))
    for train, held in GroupKFold(n_splits=k).split(positives, groups=list(patients)):
        weights, bias = fit_standardness_probe(positives[train], negatives)
        scores[held] = positives[held] @ weights + bias
    return scores


def abstain_threshold(scores: np.ndarray, accept: float) -> float:
    """The score above which ``accept`` of these (standard-plane) images lie."""
    if not 0 < accept <= 1:
        raise FetalCLIPError(f"accept must be in (0, 1] (got {accept})")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - accept, method="lower"))


# -- the fitted calibration ---------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What a predictor needs to turn one image's logits into a calibrated, honest answer."""

    task: str
    classes: list[str]
    temperature: float
    coverage: float
    conformal_threshold: float
    abstain_threshold: float
    accept: float
    abstain_weights: list[float] | None = None  # the standardness probe on the image embedding (None: prompt cosine)
    abstain_bias: float = 0.0
    model: str = ""
    model_fingerprint: str = ""
    fit: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def standard_scores(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """The abstention score of each image (higher: more like a standard plane)."""
        if self.abstain_weights is None:
            return standardness(logits)
        if features is None:
            raise FetalCLIPError("this calibration judges standard planes from image embeddings; pass them")
        return np.asarray(features, dtype=np.float64) @ np.asarray(self.abstain_weights) + self.abstain_bias

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        from ..io import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    def check_model(self, fingerprint: str, where: str = "calibration") -> None:
        """Refuse to be used with weights other than those it was fitted for."""
        if self.model_fingerprint and fingerprint != self.model_fingerprint:
            raise CalibrationError(f"{where}: fitted for model {self.model or '?'} with weights "
                                   f"{self.model_fingerprint[:12]}, not these ({fingerprint[:12]}); calibrate again")


def load_calibration(path: str | os.PathLike, fingerprint: str | None = None) -> Calibration:
    """A saved calibration; with ``fingerprint`` (``tasks.features.model_fingerprint``) it must be that model's."""
    from .zeroshot import read_json_file

    path = Path(path)
    try:
        data = read_json_file(path, "calibration")
    except FetalCLIPError as exc:
        raise CalibrationError(str(exc)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CalibrationError(f"{path}: not a {FORMAT} file (version {VERSION})")
    names = {f for f in Calibration.__dataclass_fields__}
    try:
        calibration = Calibration(**{k: v for k, v in data.items() if k in names})
        numbers = (calibration.temperature, calibration.conformal_threshold, calibration.abstain_threshold)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or calibration.temperature <= 0:
            raise TypeError("temperature and thresholds must be finite numbers, the temperature positive")
        if not calibration.classes or not all(isinstance(c, str) for c in calibration.classes):
            raise TypeError("classes must be a list of names")
        weights = calibration.abstain_weights
        if weights is not None and not (isinstance(weights, list) and all(
                isinstance(w, (int, float)) and math.isfinite(w) for w in [*weights, calibration.abstain_bias])):
            raise TypeError("abstain_weights must be a list of finite numbers")
    except TypeError as exc:
        raise CalibrationError(f"{path}: {exc}") from None
    if fingerprint is not None:
        calibration.check_model(fingerprint, str(path))
    return calibration


# -- fitting on a labelled dataset --------------------------------------------------------------------------
NON_STANDARD = "other"


def fit_calibration(
    logits: np.ndarray,
    labels: Sequence[str],
    patients: Sequence[str],
    classes: Sequence[str],
    coverage: float = 0.9,
    accept: float = 0.95,
    seed: int = 0,
    eval_fraction: float = 0.5,
    features: np.ndarray | None = None,
    junk_features: np.ndarray | None = None,
) -> Calibration:
    """Fit on one patient-level part of the images, measure on the other.

    ``labels`` are plane names from ``classes`` or ``other`` (a non-standard image: never used for the plane
    layers). Each patient counts under its most common label for the stratified split. With ``features``
    (image embeddings, one row per label) and ``junk_features`` (embeddings of ``junk_images``), abstention is
    the standardness probe, fitted on the fitting half (half of the junk too) and measured on the rest.
    """
    from ..data.splits import make_splits
    from ..metrics import auroc

    logits = np.asarray(logits, dtype=np.float64)
    classes = list(classes)
    unknown = sorted({str(label) for label in labels if label != NON_STANDARD and label not in classes})
    if unknown:
        raise FetalCLIPError(f"labels {unknown} are not among the offered classes {classes}")
    records = [{"patient": str(p), "source": f"#{i}", "label": str(label)} for i, (p, label) in enumerate(zip(patients, labels))]
    split = make_splits(records, k=1, test_fraction=eval_fraction, seed=seed, stratify="label")
    parts = split.indices(records)
    fit_idx, eval_idx = parts["train"], parts["test"]
    standard = np.array([label != NON_STANDARD for label in labels])
    y = np.array([classes.index(label) if label != NON_STANDARD else -1 for label in labels])

    def standard_part(indices: list[int]) -> np.ndarray:
        return np.array([i for i in indices if standard[i]], dtype=int)

    fit_std, eval_std = standard_part(fit_idx), standard_part(eval_idx)
    if len(fit_std) < 2 or len(eval_std) < 1:
        raise FetalCLIPError(f"calibration needs standard-plane images of several patients on both sides of the split "
                             f"(fit {len(fit_std)}, evaluate {len(eval_std)})")
    temperature = fit_temperature(logits[fit_std], y[fit_std])
    threshold = conformal_threshold(softmax(logits[fit_std], temperature), y[fit_std], coverage)
    weights, bias, junk_eval = None, 0.0, None
    if features is not None:
        features = np.asarray(features, dtype=np.float64)
        junk = np.zeros((0, features.shape[1])) if junk_features is None else np.asarray(junk_features, dtype=np.float64)
        junk_fit, junk_eval = junk[: len(junk) // 2], junk[len(junk) // 2:]
        fit_other = [i for i in fit_idx if not standard[i]]
        negatives = np.concatenate([features[fit_other], junk_fit])
        if len(negatives) == 0:
            raise FetalCLIPError("the standardness probe needs non-standard examples ('other' images or junk)")
        weights, bias = fit_standardness_probe(features[fit_std], negatives)
        scores = features @ weights + bias
        # The threshold comes from scores of standard images the probe did not see (patient-grouped folds of
        # the fitting half): its own training images score too high, and a threshold set on them rejects
        # more held-out standard images than ``accept`` allows.
        threshold_scores = _out_of_fold_scores(features[fit_std], [records[i]["patient"] for i in fit_std], negatives)
    else:
        scores = standardness(logits)
        threshold_scores = scores[fit_std]
    abstain = abstain_threshold(threshold_scores, accept)

    before, after = softmax(logits[eval_std], 1.0), softmax(logits[eval_std], temperature)
    sets = prediction_sets(after, threshold)
    evaluation: dict[str, Any] = {
        "n_images": len(eval_std),
        "n_patients": len({records[i]["patient"] for i in eval_idx}),
        "accuracy": float((after.argmax(axis=1) == y[eval_std]).mean()),
        "ece_before": expected_calibration_error(before, y[eval_std]),
        "ece_after": expected_calibration_error(after, y[eval_std]),
        "nll_before": nll(logits[eval_std], y[eval_std], 1.0),
        "nll_after": nll(logits[eval_std], y[eval_std], temperature),
        "coverage": float(sets[np.arange(len(eval_std)), y[eval_std]].mean()),
        "mean_set_size": float(sets.sum(axis=1).mean()),
        "standard_accepted": float((scores[eval_std] >= abstain).mean()),
    }
    eval_other = np.array([i for i in eval_idx if not standard[i]], dtype=int)
    if len(eval_other):
        both = np.concatenate([eval_std, eval_other])
        evaluation.update(n_non_standard=len(eval_other),
                          abstain_auroc=auroc(standard[both].astype(int), scores[both]),
                          non_standard_rejected=float((scores[eval_other] < abstain).mean()))
    if junk_eval is not None and len(junk_eval):
        evaluation.update(n_junk=len(junk_eval), junk_rejected=float((junk_eval @ weights + bias < abstain).mean()))
    fit = {"n_images": len(fit_std), "n_patients": len({records[i]["patient"] for i in fit_idx}), "seed": seed,
           "split": "patient-level, stratified by plane",
           "abstain_score": "largest prompt cosine" if weights is None else
                            "linear probe on the image embedding: standard planes against 'other' and synthetic junk"}
    return Calibration("planes", classes, temperature, coverage, threshold, abstain, accept,
                       None if weights is None else [float(w) for w in weights], bias, fit=fit, evaluation=evaluation)


def calibrate_planes(
    model: Any,
    dataset: Any,
    coverage: float = 0.9,
    accept: float = 0.95,
    seed: int = 0,
    prompts: Mapping[str, Sequence[str]] | str | os.PathLike | None = None,
    batch_size: int = 32,
    skip_bad: bool = False,
    progress: bool = False,
    cache: Any = None,
    junk: int = 128,
) -> tuple[Calibration, list[tuple[str, str]]]:
    """Zero-shot plane logits of every labelled image of ``dataset`` (``other`` included), then ``fit_calibration``.

    Returns the calibration (bound to ``model``'s weights) and the images skipped as unreadable.
    """
    from .dataset_features import embed_dataset
    from .features import model_fingerprint
    from .zeroshot import build_classifier, encode_images, load_prompts, logits_from_features, record_target

    if not isinstance(prompts, Mapping):
        prompts = load_prompts(prompts, "planes")
    targets = [record_target(record, "planes") for record in dataset.records]
    keep = [i for i, t in enumerate(targets) if t is not None and (t in prompts or t == NON_STANDARD)]
    unknown = sorted({t for t in targets if t is not None and t not in prompts and t != NON_STANDARD})
    if unknown:
        raise FetalCLIPError(f"{dataset.name}: label(s) {unknown} have no plane prompts; known: {', '.join(prompts)}")
    if not keep:
        raise FetalCLIPError(f"{dataset.name}: no images with a plane label to calibrate on")
    classes = [c for c in prompts if c != NON_STANDARD]
    classifier = build_classifier(model, classes, prompts)
    embedded = embed_dataset(model, dataset, keep, batch_size=batch_size, skip_bad=skip_bad, progress=progress,
                             desc="calibrate", cache=cache)
    records = [dataset.records[i] for i in embedded.indices]
    junk = encode_images(model, junk_images(junk, seed), batch_size).numpy() if junk else None
    calibration = fit_calibration(
        logits_from_features(embedded.features, classifier), [targets[i] for i in embedded.indices],
        [r.get("patient") or r["source"] for r in records], classes, coverage=coverage, accept=accept, seed=seed,
        features=embedded.features.numpy(), junk_features=junk,
    )
    calibration.model, calibration.model_fingerprint = model.name, model_fingerprint(model)
    return calibration, embedded.skipped


__all__ = [
    "Calibration",
    "CalibrationError",
    "abstain_threshold",
    "calibrate_planes",
    "conformal_threshold",
    "expected_calibration_error",
    "fit_calibration",
    "fit_standardness_probe",
    "fit_temperature",
    "junk_images",
    "load_calibration",
    "nll",
    "prediction_sets",
    "softmax",
    "standardness",
]
