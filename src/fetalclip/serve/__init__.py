"""The HTTP service and its web page, on ``tasks.predictor.Predictor`` (``fetalclip serve``; needs the
``[serve]`` extra: FastAPI, uvicorn, python-multipart, prometheus-client).

``create_app(predictor_or_settings, **settings)`` builds the app; nothing here imports FastAPI until it is called.
"""

from __future__ import annotations

from .settings import ServeSettings


def create_app(predictor_or_settings, **overrides):
    from .app import create_app as build

    return build(predictor_or_settings, **overrides)


__all__ = ["ServeSettings", "create_app"]
