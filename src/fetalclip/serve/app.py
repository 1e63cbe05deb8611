"""The HTTP service: ``create_app(predictor_or_settings)`` builds a FastAPI app around one predictor.

Routes (``/docs`` has the OpenAPI page):

- ``POST /v1/predict``: multipart ``file`` (PNG/JPG/TIFF/GIF/BMP, DICOM, or a short cine: video, multi-frame
  DICOM or TIFF) and optional ``spacing_mm``; the answer is exactly ``ScanPrediction.to_dict()`` (one frame) or
  ``SweepPrediction.to_dict()`` (several), the JSON ``fetalclip predict --out`` writes per scan.
- ``POST /v1/embed`` (image -> normalised embeddings, one per frame), ``POST /v1/embed-text`` (``{"texts": [...]}``).
- ``POST /v1/explain``: the scan as the model sees it and its Grad-CAM for the plane (the page's overlay).
- ``GET /v1/model`` (name, weight fingerprint, licence, provenance, calibration), ``GET /v1/growth/hc`` (the
  WHO head-circumference chart the page draws), ``GET /healthz``, ``GET /readyz`` (loaded and warmed),
  ``GET /metrics`` (Prometheus), ``GET /`` (the page; its assets under ``/static``, nothing from the internet).

The design: requests decode their upload in a small bounded thread pool, then queue a job for the
micro-batcher (``batching.MicroBatcher``), whose one worker thread runs every model forward. Each request is
bounded in time (504), the queue in length (503 + ``Retry-After``), bodies in size (413). An app built with
``warm_up=False`` is ready at once (tests); otherwise ``/readyz`` answers 503 until one full answer has run.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Optional

from ..errors import FetalCLIPError
from .batching import MicroBatcher, Overloaded
from .engine import Engine
from .guards import AccessLog, BodyLimit, error_body
from .metrics import ServiceMetrics
from .settings import ServeSettings, open_predictor
from .uploads import UploadError, decode, safe_source

DECODE_THREADS = 4  # uploads decoded at once: bounds the memory that concurrent large files can take
log = logging.getLogger("fetalclip.serve")


class Service:
    """One predictor and everything around it; ``app.state.service``."""

    def __init__(self, predictor: Any, settings: ServeSettings):
        self.predictor, self.settings = predictor, settings
        self.engine = Engine(predictor)
        self.metrics = ServiceMetrics(queue_depth=lambda: self.batcher.depth)
        self.batcher = MicroBatcher(self.engine.handlers(), settings.max_batch, settings.max_wait_ms,
                                    settings.max_queue, on_batch=self.metrics.observe_batch)
        self.ready = False
        self._decoding: Optional[asyncio.Semaphore] = None
        self._info: Optional[dict[str, Any]] = None

    async def start(self) -> None:
        self._decoding = asyncio.Semaphore(DECODE_THREADS)
        self.batcher.start()
        if self.settings.warm_up:
            await self.batcher.run_exclusive(self.engine.warm_up)
        await self.batcher.run_exclusive(self.info)  # the fingerprint is hashed once, before the first request
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.close()

    async def scan(self, upload: Any) -> Any:
        """The decoded upload (``uploads.Scan``), decoded off the event loop, a few at a time."""
        data = await upload.read()
        assert self._decoding is not None, "the service has not started"
        async with self._decoding:
            return await asyncio.to_thread(decode, data, safe_source(upload.filename), self.settings.max_frames)

    async def bounded(self, work) -> Any:
        try:
            return await asyncio.wait_for(work, self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise UploadError(504, f"no answer within {self.settings.timeout_s:g} s") from None

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = model_info(self.predictor, self.settings)
        return self._info


def model_info(predictor: Any, settings: ServeSettings) -> dict[str, Any]:
    from ..tasks.features import model_fingerprint
    from ..tasks.predictor import PREDICTION_SCHEMA

    model, calibration = predictor.model, predictor.calibration
    config = model.config
    provenance = dict(config.get("provenance") or {})
    licence = next((source[key] for source in (config, provenance) for key in ("license", "licence", "weights_license")
                    if source.get(key)), None)
    fields = ("task", "classes", "model", "model_fingerprint", "coverage", "accept", "fit", "evaluation")
    segmenter = getattr(predictor, "segmenter", None)
    return {
        "model": model.name, "reference": settings.model, "fingerprint": model_fingerprint(model),
        "embed_dim": model.embed_dim, "licence": licence, "provenance": provenance,
        "calibration": None if calibration is None else {"file": settings.calibration,
                                                         **{k: getattr(calibration, k, None) for k in fields}},
        "segmenter": None if segmenter is None else {
            "reference": settings.segmenter, "taps": list(getattr(segmenter, "taps", [])),
            "size": getattr(segmenter, "size", None), "encoder_fingerprint": getattr(segmenter, "fingerprint", None)},
        "heads": [{"name": getattr(h, "name", None), "input": getattr(h, "input", None)} for h in getattr(predictor, "heads", ())],
        "classes": list(predictor.classes), "prediction_schema": PREDICTION_SCHEMA,
        "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "max_queue": settings.max_queue},
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_frames": settings.max_frames,
                   "timeout_s": settings.timeout_s},
    }


def create_app(predictor_or_settings: Any, **overrides: Any):
    """The FastAPI app for a ``Predictor`` (with ``ServeSettings`` fields as keyword overrides) or for settings."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    if isinstance(predictor_or_settings, ServeSettings):
        settings = replace(predictor_or_settings, **overrides)
        predictor = open_predictor(settings)
    else:
        settings = ServeSettings(**{"model": getattr(predictor_or_settings.model, "name", "custom"), **overrides})
        predictor = predictor_or_settings
    service = Service(predictor, settings)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()  # uvicorn has already let the requests in flight finish; the queue drains here

    app = FastAPI(title="fetalclip", version=_version(), lifespan=lifespan,
                  summary="Zero-shot fetal ultrasound: plane, standard-plane check and gestational age per scan.")
    app.state.service = service
    _install_errors(app)
    from .routes import add_routes

    add_routes(app, service)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AccessLog, metrics_of=lambda: service.metrics)
    return app


def _install_errors(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(UploadError)
    async def _upload(request, exc: UploadError):
        return JSONResponse(error_body(exc.status, str(exc)), status_code=exc.status)

    @app.exception_handler(Overloaded)
    async def _overloaded(request, exc: Overloaded):
        return JSONResponse(error_body(503, str(exc)), status_code=503, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(FetalCLIPError)
    async def _expected(request, exc: FetalCLIPError):
        return JSONResponse(error_body(422, str(exc)), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'request'}: {e.get('msg')}"
                             for e in exc.errors()[:5])
        return JSONResponse(error_body(400, problems or "invalid request"), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return JSONResponse(error_body(exc.status_code, exc.detail), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body(500, "internal error (logged on the server)"), status_code=500)


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["Service", "create_app", "model_info"]
