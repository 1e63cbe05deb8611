"""The service's routes (see ``app`` for the list); each validates, decodes, queues and returns the answer.

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at run time.
"""

from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .engine import ScanJob, check_texts
from .guards import key_matches
from .uploads import UploadError, parse_spacing

STATIC = Path(__file__).resolve().parent / "static"  # the page's assets, served by the package (no CDN)

PREDICT_DOC = """The answer for one scan: exactly what `fetalclip predict --out` writes per scan.

A still image (or a one-frame DICOM) gives a ScanPrediction: `{schema, source, plane: {label, probability,
probabilities, calibrated, prediction_set, coverage, standard_plane, standard_score, reason}, brain_plane,
gestational_age: {days, weeks_days, range_days, range_weeks_days, spacing_224_mm, reason}, notes}`.
A cine (video, multi-frame DICOM or TIFF) gives a SweepPrediction: `{schema, source, frames: [{frame, plane,
probability, standard_plane}], best_frames: {plane: {frame, probability}}, head}` (`head`: the ScanPrediction of
the best brain frame). Errors are `{error, status}`: 400 bad field, 401 key, 413 too large, 415 not an image,
422 undecodable, 503 overloaded (Retry-After), 504 timeout."""


def add_routes(app, service) -> None:

    def require_key(authorization: Optional[str] = Header(None), x_api_key: Optional[str] = Header(None)) -> None:
        if not key_matches(service.settings.api_key, authorization, x_api_key):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer KEY, or X-API-Key)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_key)]

    # -- the page and probes ------------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    async def readyz() -> Any:
        """The model is loaded and has answered once (readiness): 503 until then and while shutting down."""
        if not service.ready:
            return JSONResponse({"ready": False, "status": 503}, status_code=503)
        return {"ready": True, "model": service.info()["model"], "queue_depth": service.batcher.depth}

    @app.get("/metrics", tags=["probes"], dependencies=guarded)
    async def metrics() -> Any:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    # -- information --------------------------------------------------------------------------------------
    @app.get("/v1/model", tags=["model"], dependencies=guarded)
    async def model() -> dict[str, Any]:
        """Model name, weight fingerprint (sha256 of the image tower), licence, provenance, calibration."""
        return service.info()

    @app.get("/v1/growth/hc", tags=["model"], dependencies=guarded)
    async def growth_hc() -> dict[str, Any]:
        """The WHO head-circumference chart (Kiserud et al. 2017): mm at 2.5th, 50th, 97.5th centiles by week."""
        return hc_chart()

    # -- answers ------------------------------------------------------------------------------------------
    answer_schema = _document_prediction_schema(app)

    @app.post("/v1/predict", tags=["answers"], dependencies=guarded, description=PREDICT_DOC,
              responses={200: {"description": "The answer (plus `schema`: the schema version)",
                               "content": {"application/json": {"schema": answer_schema}}}})
    async def predict(file: UploadFile = File(..., description="The scan: image, DICOM or short cine"),
                      spacing_mm: Optional[str] = Form(None, description="mm per pixel of the original image"),
                      view: Optional[str] = Form(None, description="the plane the scan shows, if known (brain: "
                                                                   "always read sub-plane and age)")) -> Any:
        spacing = parse_spacing(spacing_mm)
        view = _view(view, service.predictor.classes)

        async def work():
            scan = await service.scan(file)
            use = spacing if spacing is not None else scan.spacing_mm
            if scan.is_sweep:
                return await service.batcher.submit("sweep", ScanJob(scan.frames, use, scan.source))
            return await service.batcher.submit("predict", ScanJob(scan.frames[0], use, scan.source, view))

        return await service.bounded(work())

    @app.post("/v1/embed", tags=["answers"], dependencies=guarded)
    async def embed(file: UploadFile = File(...)) -> Any:
        """L2-normalised image embeddings, one per frame (one for a still image)."""
        async def work():
            scan = await service.scan(file)
            futures = [service.batcher.submit("embed", frame) for frame in scan.frames]
            vectors = [await future for future in futures]
            return {"model": service.info()["model"], "source": scan.source, "dim": len(vectors[0]),
                    "embeddings": vectors}

        return await service.bounded(work())

    @app.post("/v1/embed-text", tags=["answers"], dependencies=guarded)
    async def embed_text(request: Request) -> Any:
        """L2-normalised text embeddings for `{"texts": ["...", ...]}` (at most 64 texts of 1000 characters)."""
        try:
            body = await request.json()
        except ValueError:
            raise UploadError(400, 'the body is not JSON; expected {"texts": ["...", ...]}') from None
        texts = check_texts(body)
        vectors = await service.bounded(service.batcher.submit("text", texts))
        return {"model": service.info()["model"], "dim": len(vectors[0]), "embeddings": vectors}

    @app.post("/v1/explain", tags=["answers"], dependencies=guarded)
    async def explain(file: UploadFile = File(...), frame: Optional[str] = Form(None),
                      target: Optional[str] = Form(None)) -> Any:
        """The frame as the model sees it (PNG data URL, square) and its Grad-CAM on the patch grid for the plane
        ``target`` (default: the predicted plane)."""
        index = _frame_index(frame)

        async def work():
            scan = await service.scan(file)
            if index >= len(scan.frames):
                raise UploadError(400, f"frame {index} asked for; the upload has {len(scan.frames)} frame(s)")
            pixels = scan.frames[index]
            return await service.batcher.run_exclusive(lambda: service.engine.explain(pixels, target or None))

        return await service.bounded(work())


def _document_prediction_schema(app) -> dict[str, Any]:
    """The JSON schema of ``ScanPrediction | SweepPrediction`` (from the dataclasses themselves, so it cannot drift
    from what ``to_dict`` writes), its definitions added to the OpenAPI components; returns the reference."""
    from pydantic import TypeAdapter

    from ..tasks.predictor import ScanPrediction, SweepPrediction

    try:
        schema = TypeAdapter(ScanPrediction | SweepPrediction).json_schema(ref_template="#/components/schemas/{model}")
    except Exception:  # noqa: BLE001 - a field pydantic cannot describe costs the documentation, not the service
        return {"type": "object"}
    definitions = schema.pop("$defs", {})
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
    return schema


def _view(text: Optional[str], classes: list[str]) -> Optional[str]:
    from ..tasks.predictor import HEAD_VIEW

    if text is None or not text.strip():
        return None
    known = sorted({*classes, HEAD_VIEW})
    if text.strip() not in known:
        raise UploadError(400, f"view {text.strip()[:40]!r} is not one of {', '.join(known)}")
    return text.strip()


def _frame_index(text: Optional[str]) -> int:
    if text is None or not str(text).strip():
        return 0
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise UploadError(400, f"frame {text!r} is not a frame number (0, 1, ...)")
    return index


def hc_chart(step_weeks: float = 0.5) -> dict[str, Any]:
    import numpy as np

    from ..growth import WHO_CHART_WEEKS, who_hc_weeks

    weeks = np.arange(WHO_CHART_WEEKS[0], WHO_CHART_WEEKS[1] + 1e-9, step_weeks)
    return {"reference": "WHO fetal growth charts, head circumference (Kiserud et al., PLoS Med 2017)",
            "weeks": [round(float(w), 2) for w in weeks],
            "centiles": {str(q): [round(float(v), 2) for v in who_hc_weeks(weeks, q)] for q in (0.025, 0.5, 0.975)}}


__all__ = ["add_routes", "hc_chart"]
