"""The model work behind the routes: batch handlers for the micro-batcher, and one-off work (warm-up, maps).

Everything here runs on the batcher's single worker thread and only calls public APIs: ``Predictor.predict_many``
(one image forward for a whole batch of scans), ``Predictor.sweep``, the model's ``encode_image`` /
``encode_text`` and ``tasks.explain.compute_cams``. A batch that fails as a whole (one scan whose pixels cannot
be preprocessed) is answered scan by scan, so only the bad scan's request fails.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import FetalCLIPError
from .uploads import UploadError

MAX_TEXTS = 64
MAX_TEXT_CHARS = 1000


@dataclass
class ScanJob:
    pixels: Any
    spacing_mm: float | None
    source: str
    view: str | None = None  # the plane the operator says the scan shows (``fetalclip predict --view``)


class Engine:
    """Batch handlers over one predictor (and its model); ``handlers()`` is what ``MicroBatcher`` takes."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.model = predictor.model

    def handlers(self) -> dict[str, Any]:
        return {"predict": self.predict, "embed": self.embed, "text": self.embed_text, "sweep": self.sweeps}

    # -- batch handlers -----------------------------------------------------------------------------------
    def predict(self, jobs: Sequence[ScanJob]) -> list[Any]:
        """One ``predict_many`` call per distinct ``view`` among the jobs (almost always one), answers in job order."""
        answers: list[Any] = [None] * len(jobs)
        for view in dict.fromkeys(job.view for job in jobs):
            positions = [i for i, job in enumerate(jobs) if job.view == view]
            for i, answer in zip(positions, self._predict_view([jobs[i] for i in positions], view)):
                answers[i] = answer
        return answers

    def _predict_view(self, jobs: Sequence[ScanJob], view: str | None) -> list[Any]:
        try:
            answers = self.predictor.predict_many([j.pixels for j in jobs], [j.spacing_mm for j in jobs],
                                                  [j.source for j in jobs], batch_size=max(1, len(jobs)), view=view)
            return [answer.to_dict() for answer in answers]
        except Exception:  # noqa: BLE001 - find the scan at fault: each alone
            return [_as_upload_error(self._one(job)) for job in jobs]

    def _one(self, job: ScanJob) -> Any:
        try:
            return self.predictor(job.pixels, spacing_mm=job.spacing_mm, source=job.source, view=job.view).to_dict()
        except Exception as exc:  # noqa: BLE001 - returned in the job's place
            return exc

    def sweeps(self, jobs: Sequence[ScanJob]) -> list[Any]:
        out = []
        for job in jobs:  # a sweep is a batch by itself: its frames are encoded together
            try:
                out.append(self.predictor.sweep(list(job.pixels), spacing_mm=job.spacing_mm, source=job.source).to_dict())
            except Exception as exc:  # noqa: BLE001
                out.append(_as_upload_error(exc))
        return out

    def embed(self, images: Sequence[Any]) -> list[Any]:
        import torch

        try:
            tensors = [self.model.preprocess(image) for image in images]
        except Exception:  # noqa: BLE001 - one at a time to find the bad one
            return [self._embed_one(image) for image in images]
        with torch.inference_mode():
            features = self.model.encode_image(torch.stack(tensors), normalize=True).float().cpu().numpy()
        return [row.tolist() for row in features]

    def _embed_one(self, image: Any) -> Any:
        try:
            return self.embed([image])[0]
        except Exception as exc:  # noqa: BLE001
            return _as_upload_error(exc)

    def embed_text(self, requests: Sequence[list[str]]) -> list[Any]:
        """Every request's texts encoded in one call, then split back per request."""
        import torch

        flat = [text for texts in requests for text in texts]
        with torch.inference_mode():
            features = self.model.encode_text(flat, normalize=True).float().cpu().numpy()
        out, start = [], 0
        for texts in requests:
            out.append([row.tolist() for row in features[start:start + len(texts)]])
            start += len(texts)
        return out

    # -- one-off work -------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One full answer on a blank scan: first-call costs (allocations, the age text bank) are paid now."""
        blank = np.zeros((256, 320), dtype=np.uint8)
        blank[64:192, 80:240] = 128
        self.predictor.predict_many([blank], [0.2], ["warm-up"], batch_size=1)
        self.predictor(blank, spacing_mm=0.2, source="warm-up", view="brain")

    def explain(self, pixels: Any, target: str | None) -> dict[str, Any]:
        """The scan as the model sees it (a PNG data URL) and its Grad-CAM for ``target`` on the patch grid."""
        from ..tasks.explain import compute_cams

        classes = self.predictor.classes
        if target is not None and target not in classes:
            raise UploadError(400, f"target {target!r} is not one of the planes ({', '.join(classes)})")
        vectors = self.predictor.plane_classifier.clone()  # built under inference_mode; autograd needs a plain copy
        result = compute_cams(self.model, [pixels], classes, vectors, [target])[0]
        height, width = np.asarray(pixels).shape[:2]
        return {"target": result.target, "predicted": result.predicted, "method": result.method,
                "cam": np.round(result.cam.astype(float), 4).tolist(), "image": png_data_url(result.model_image),
                "original_size": [int(width), int(height)]}  # maps original pixels onto the square model image


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def check_texts(body: Any) -> list[str]:
    """The ``texts`` of an embed-text request: 1..MAX_TEXTS non-empty strings of at most MAX_TEXT_CHARS."""
    texts = body.get("texts") if isinstance(body, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise UploadError(400, 'expected a JSON body {"texts": ["...", ...]} with non-empty strings')
    if len(texts) > MAX_TEXTS:
        raise UploadError(413, f"{len(texts)} texts, over the limit of {MAX_TEXTS} per request")
    long = [i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS]
    if long:
        raise UploadError(413, f"texts {long[:5]} are over {MAX_TEXT_CHARS} characters")
    return texts


def _as_upload_error(result: Any) -> Any:
    """Expected failures of one scan become a 422 naming the problem; anything else stays as it is (a 500)."""
    if isinstance(result, FetalCLIPError) and not isinstance(result, UploadError):
        return UploadError(422, str(result))
    return result


__all__ = ["Engine", "ScanJob", "check_texts", "png_data_url"]
