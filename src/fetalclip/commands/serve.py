"""``fetalclip serve``: the HTTP service and its web page (``fetalclip.serve``) under uvicorn.

The command only turns options into ``ServeSettings`` and runs one uvicorn worker: the model lives in this one
process, so scaling out is more processes (or machines) behind a load balancer, each with its own model.
It binds 127.0.0.1 unless ``--host`` says otherwise: exposing a medical-image service is a decision to make
explicitly (with ``--api-key-file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .embed import MODEL_HELP


def serve_command(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="From `fetalclip calibrate` for this model."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="A trained segmenter folder (head ellipse, HC/BPD/OFD)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes the service to the network)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most scans per model forward."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", min=0.0, help="Longest wait to fill a batch."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Waiting requests beyond which the answer is 503."),
    max_upload_mb: float = typer.Option(64.0, "--max-upload-mb", min=0.001, help="Largest request body (413 above)."),
    timeout_s: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds per request before a 504."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File holding the API key (else $FETALCLIP_API_KEY; none: open)."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow browser calls from this origin (repeatable; default: none)."),
    head: list[Path] = typer.Option([], "--head", help="A saved probe head (repeatable): its score joins each answer."),
    backend: str = typer.Option("torch", "--backend", help="torch, or onnx: MODEL is a `fetalclip export` folder (ONNX Runtime)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Serve predictions over HTTP (/v1/predict, /docs) with a web page at /."""
    from ..errors import FetalCLIPError
    from ..serve.settings import ServeSettings, read_api_key

    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise FetalCLIPError(f"the service needs the [serve] extra (pip install 'fetalclip[serve]'): {exc}") from None
    settings = ServeSettings(
        model=model, calibration=str(calibration) if calibration else None, segmenter=str(segmenter) if segmenter else None,
        heads=[str(h) for h in head], backend=backend, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), timeout_s=timeout_s, api_key=read_api_key(api_key_file),
        cors_origins=list(cors_origin),
    )
    app = create_app(settings)
    typer.echo(f"fetalclip serve: {model} on http://{host}:{port}/ (API docs at /docs"
               f"{', API key required' if settings.api_key else ''})")
    # uvicorn's graceful shutdown lets the requests in flight finish before the app's own shutdown drains the queue.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(timeout_s) + 5)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
