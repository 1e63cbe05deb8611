"""Benchmark: the service with micro-batching against the same service answering one scan per forward.

Both sides are the real app (``fetalclip.serve.create_app``) under a real uvicorn on 127.0.0.1 in this process,
with the same predictor (same weights) and the same scans: HC18 images when ``FETALCLIP_DATA`` has them, else
synthetic ones. Concurrent clients (httpx, async) post ``/v1/predict`` until the request count or the time
limit is reached, whichever comes first, so a run is bounded on any machine. Batched is ``--max-batch`` /
``--max-wait-ms``; the baseline is ``max_batch=1`` (what a plain one-request-one-forward service does). The
sides alternate for ``--rounds`` and medians are compared, since the machine may be shared.

    python benchmarks/serve.py [--model fetalclip-tiny] [--clients 16] [--requests 320] [--seconds 60] [--rounds 2]

Prints each side's scans/s, p50/p95/p99 latency and errors; the last line is ``ratio: X`` (batched scans/s over
one-at-a-time scans/s).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402


def scans(count: int) -> list[bytes]:
    """PNG bytes of HC18 images (when present) or synthetic scans."""
    from PIL import Image

    root = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data")) / "hc18" / "training_set"
    files = sorted(root.glob("*_HC.png"))[:count]
    if files:
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = rng.integers(0, 80, (540, 800), dtype=np.uint8)
        image[150:400, 250:600] += 120
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The app under uvicorn on a loopback port, in a thread; a context manager."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            sys.exit("uvicorn did not start")
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def load(url: str, images: list[bytes], clients: int, requests: int, seconds: float) -> dict:
    """``clients`` concurrent loops posting scans until ``requests`` are sent or ``seconds`` have passed."""
    import httpx

    latencies, errors, sent = [], 0, 0
    deadline = time.perf_counter() + seconds

    async def client(http) -> None:
        nonlocal errors, sent
        while sent < requests and time.perf_counter() < deadline:
            index = sent
            sent += 1
            started = time.perf_counter()
            try:
                answer = await http.post(f"{url}/v1/predict", files={"file": ("scan.png", images[index % len(images)])})
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await http.post(f"{url}/v1/predict", files={"file": ("warm.png", images[0])})  # warm both sides alike
        started = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        wall = time.perf_counter() - started
    quantiles = np.quantile(latencies, [0.5, 0.95, 0.99]) if latencies else [float("nan")] * 3
    return {"done": len(latencies), "errors": errors, "per_s": (len(latencies) - errors) / wall,
            "p50": quantiles[0], "p95": quantiles[1], "p99": quantiles[2]}


def side(predictor, images, args, max_batch: int) -> dict:
    from fetalclip.serve import create_app

    app = create_app(predictor, max_batch=max_batch, max_wait_ms=args.max_wait_ms, max_queue=4 * args.clients,
                     timeout_s=120.0)
    with Server(app) as url:
        result = asyncio.run(load(url, images, args.clients, args.requests, args.seconds))
    result["largest_batch"] = app.state.service.metrics.largest_batch
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fetalclip-tiny")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=320, help="per side and round (upper bound)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per side and round (upper bound)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from fetalclip.models import load as load_model
    from fetalclip.tasks.predictor import Predictor

    predictor = Predictor(load_model(args.model, device=args.device))
    images = scans(args.images)
    runs = {"batched": [], "one-at-a-time": []}
    for round_number in range(args.rounds):
        for name, max_batch in (("batched", args.max_batch), ("one-at-a-time", 1)):
            result = side(predictor, images, args, max_batch)
            runs[name].append(result)
            print(f"round {round_number + 1} {name:<14} {result['done']:>5} requests {result['errors']:>3} errors "
                  f"{result['per_s']:8.1f} scans/s  p50 {1000 * result['p50']:7.1f} ms  p95 {1000 * result['p95']:7.1f} ms  "
                  f"p99 {1000 * result['p99']:7.1f} ms  largest batch {result['largest_batch']}", flush=True)
    medians = {name: statistics.median(r["per_s"] for r in results) for name, results in runs.items()}
    print(f"model {args.model}, {args.clients} clients, max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms")
    for name, value in medians.items():
        print(f"{name:<14} median {value:8.1f} scans/s")
    print(f"ratio: {medians['batched'] / medians['one-at-a-time']:.2f}")


if __name__ == "__main__":
    main()
