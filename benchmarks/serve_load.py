"""Load benchmark of ``fetalclip serve``: N concurrent clients on real HC18 scans, batching on and off, and the
served throughput against offline ``fetalclip embed`` on the same images at the same batch size.

The service under test is the real command (``python -m fetalclip serve``) in a subprocess, bound to 127.0.0.1
on a free port: a process of its own, as deployed, so the clients (httpx, asyncio, in this process) do not
share its interpreter lock. It is started once per mode: ``--max-batch 16 --max-wait-ms 10`` (micro-batching)
and ``--max-batch 1`` (one scan per forward), and probed on ``/readyz`` (model loaded and warmed) first. Each
client posts ``/v1/predict`` (an HC18 ``*_HC.png`` with its ``spacing_mm`` from the HC18 CSV) and waits for the
answer before the next, until ``--requests`` are sent or ``--max-seconds`` have passed (then the mode is
reported as stopped early). Latency is per request, as the client sees it; throughput counts 200 answers over
the wall time; any other status or a transport error is an error. The server's own ``/metrics`` gives the mean
and largest batch, and ``/proc`` its resident memory (what one more worker costs).

The offline side is ``tasks.embed.embed_files`` with ``fetalclip embed``'s defaults (mode ``exact``), in this
process, with the same model name (same random weights, seed 0), on the same files, at batch ``--max-batch``,
after one warm-up batch. It runs once before and once after the served modes (the machine may be shared) and
the mean is the reference. The last line is ``ratio: X``, served scans/s with batching over offline images/s;
the issue's goals (16 clients): ratio >= 0.8, p99 <= 3x p50, no errors over >= 2,000 requests. Note that the
served side does more than embed (the plane, sub-plane and age scores, the JSON) and shares the CPU with the
clients on a loopback benchmark.

    FETALCLIP_DATA=../shared/data python benchmarks/serve_load.py [--model fetalclip-vit-b16] [--clients 16]
        [--requests 2000] [--max-seconds 600] [--max-batch 16] [--max-wait-ms 10] [--images 128]

Scaling on one machine. One ``fetalclip serve`` process holds one model copy and one model thread (torch
already spreads a forward over the cores), so more processes means more copies: run K processes on K ports
(``fetalclip serve --port 8001``, ``8002``, ...; ``uvicorn --workers K`` would do the same, one model per worker)
with ``OMP_NUM_THREADS`` = cores / K each so they do not oversubscribe the CPU, behind a local proxy (nginx,
HAProxy, Envoy). Memory grows linearly: each worker costs its RSS (printed below; for ``fetalclip-vit-b16`` the
fp32 weights alone are ~0.6 GB, plus a batch's activations). On CPU, K > 1 mostly overlaps upload decoding and
HTTP work with the forward; on a machine with several GPUs, one process per GPU (``CUDA_VISIBLE_DEVICES``,
``--device cuda``) is the natural split.

Many machines. Put the instances behind any HTTP load balancer: ``GET /readyz`` is the health check (503
until the model is loaded and warmed, so a new instance gets traffic only when it can answer at full speed),
``GET /healthz`` the liveness probe. Requests are independent (no session, no state between calls), so no
sticky sessions: round robin or least-connections both work, and least-connections suits uneven scan sizes.
The bounded queue is the back-pressure: a full instance answers 503 with ``Retry-After`` at once instead of
queueing without limit, so the balancer can retry another instance and clients back off. ``/metrics``
(Prometheus: queue depth, batch sizes, latency) per instance is what to scrape and autoscale on. To take an
instance out, remove it from the pool, then SIGTERM: requests in flight finish and the queue drains. Bind to
anything but 127.0.0.1 only behind the balancer and with ``--api-key-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

HOST = "127.0.0.1"  # loopback only, by design: a benchmark never exposes the service


@dataclass
class Scan:
    path: Path
    data: bytes
    spacing_mm: str | None


def hc18_scans(count: int) -> list[Scan]:
    """The first ``count`` HC18 training images, their bytes and pixel size (mm) from the HC18 CSV."""
    hc18 = Path(os.environ.get("FETALCLIP_DATA", REPO.parent / "shared" / "data")) / "hc18"
    files = sorted((hc18 / "training_set").glob("*_HC.png"))[:count]
    if not files:
        sys.exit(f"no HC18 images under {hc18 / 'training_set'} (set FETALCLIP_DATA)")
    spacing: dict[str, str] = {}
    table = hc18 / "training_set_pixel_size_and_HC.csv"
    if table.is_file():
        with table.open(newline="") as handle:
            spacing = {row["filename"]: row["pixel size(mm)"] for row in csv.DictReader(handle)}
    return [Scan(f, f.read_bytes(), spacing.get(f.name)) for f in files]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """``python -m fetalclip serve`` on a free loopback port; a context manager giving its base URL."""

    def __init__(self, model: str, max_batch: int, max_wait_ms: float, timeout_s: float, ready_s: float = 600):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ready_s = ready_s
        self.command = [sys.executable, "-m", "fetalclip", "serve", "--model", model, "--host", HOST,
                        "--port", str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", f"{max_wait_ms:g}",
                        "--timeout", f"{timeout_s:g}"]
        self.log = tempfile.NamedTemporaryFile(prefix="serve_load-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServiceProcess":
        import httpx

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
        # the log goes to a file, not a pipe, so a chatty server never blocks on a full pipe
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"the service exited with status {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self._fail(f"the service was not ready within {self.ready_s:g} s")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)

    def rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except (OSError, AttributeError):
            return None
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
        return None if kb is None else kb / 1024

    def _fail(self, reason: str):
        self.__exit__()
        tail = Path(self.log.name).read_text(errors="replace")[-3000:] if os.path.exists(self.log.name) else ""
        sys.exit(f"{reason}: {' '.join(self.command)}\n{tail}")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    stopped_early: bool = False

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return sum(self.statuses.values()) - self.ok

    def quantile_ms(self, q: float) -> float:
        return 1000 * float(np.quantile(self.latencies, q)) if self.latencies else float("nan")


async def drive(url: str, scans: list[Scan], clients: int, requests: int, max_seconds: float) -> LoadResult:
    """``clients`` closed-loop clients posting scans in turn until ``requests`` are sent or time is up."""
    import httpx

    result, sent = LoadResult(), 0

    async def post(http, scan: Scan):
        data = {"spacing_mm": scan.spacing_mm} if scan.spacing_mm else None
        return await http.post(f"{url}/v1/predict", files={"file": (scan.path.name, scan.data, "image/png")}, data=data)

    async def client(http, deadline: float) -> None:
        nonlocal sent
        while sent < requests:
            if time.perf_counter() >= deadline:
                result.stopped_early = True
                return
            scan = scans[sent % len(scans)]
            sent += 1
            began = time.perf_counter()
            try:
                status = (await post(http, scan)).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            result.latencies.append(time.perf_counter() - began)
            result.statuses[status] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        # connections opened and first batches run before the clock starts (not counted)
        await asyncio.gather(*[post(http, scans[i % len(scans)]) for i in range(clients)])
        began = time.perf_counter()
        await asyncio.gather(*[client(http, began + max_seconds) for _ in range(clients)])
        result.wall_s = time.perf_counter() - began
    return result


def batch_stats(url: str) -> tuple[float, int | None]:
    """Mean predict batch size from the server's ``/metrics``, and the histogram bucket bounding the largest."""
    import httpx

    total = count = 0.0
    buckets: list[tuple[float, float]] = []  # (upper bound, cumulative count)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("#") or 'kind="predict"' not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("fetalclip_batch_size_sum"):
            total = float(value)
        elif name.startswith("fetalclip_batch_size_count"):
            count = float(value)
        elif name.startswith("fetalclip_batch_size_bucket") and 'le="+Inf"' not in name:
            buckets.append((float(name.split('le="')[1].split('"')[0]), float(value)))
    # buckets are cumulative: the first one holding every batch bounds the largest
    largest = next((int(bound) for bound, cumulative in sorted(buckets) if count and cumulative >= count), None)
    return (total / count if count else float("nan")), largest


def served(args, scans: list[Scan], max_batch: int) -> tuple[LoadResult, float, int, float | None]:
    with ServiceProcess(args.model, max_batch, args.max_wait_ms, args.server_timeout) as service:
        result = asyncio.run(drive(service.url, scans, args.clients, args.requests, args.max_seconds))
        mean_batch, largest = batch_stats(service.url)
        return result, mean_batch, largest, service.rss_mb()


def offline_embed(model, files: list[Path], batch_size: int) -> float:
    """Images/s of ``fetalclip embed``'s path (``embed_files``, mode ``exact``) over ``files``."""
    from fetalclip.tasks.embed import embed_files

    began = time.perf_counter()
    result = embed_files(model, files, batch_size=batch_size, mode="exact")
    return len(result.sources) / (time.perf_counter() - began)


def report(name: str, result: LoadResult, mean_batch: float, largest: int | None, rss: float | None, requests: int) -> None:
    rate = result.ok / result.wall_s if result.wall_s else 0.0
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(result.statuses.items(), key=str) if code != 200) or "none"
    print(f"{name:<18} {len(result.latencies):>5} requests in {result.wall_s:6.1f} s  {rate:7.2f} scans/s  "
          f"p50 {result.quantile_ms(0.5):8.1f} ms  p95 {result.quantile_ms(0.95):8.1f} ms  "
          f"p99 {result.quantile_ms(0.99):8.1f} ms  errors {result.errors} ({codes})  "
          f"mean batch {mean_batch:.1f}, largest <= {largest}  server RSS {rss or float('nan'):.0f} MB", flush=True)
    if result.stopped_early:
        print(f"  {name}: stopped early at the time limit, after {len(result.latencies)} of {requests} requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fetalclip-vit-b16")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000, help="per mode (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="per mode (upper bound)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=128, help="distinct HC18 images, sent in turn and embedded offline")
    parser.add_argument("--server-timeout", type=float, default=120.0, help="the service's --timeout (s)")
    args = parser.parse_args()
    if min(args.clients, args.requests, args.max_batch, args.images) < 1 or args.max_seconds <= 0:
        parser.error("--clients, --requests, --max-batch and --images must be >= 1, --max-seconds > 0")

    import torch

    from fetalclip.models import load

    scans = hc18_scans(args.images)
    files = [scan.path for scan in scans]
    print(f"model {args.model} (random init, seed 0), {len(scans)} HC18 images, {args.clients} clients, "
          f"{args.requests} requests / {args.max_seconds:g} s per mode, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)

    model = load(args.model)  # what `fetalclip embed --model NAME` opens
    offline_embed(model, files[: args.max_batch], args.max_batch)  # warm-up: exact mode's weight packing
    offline = [offline_embed(model, files, args.max_batch)]
    print(f"offline embed      {offline[0]:7.2f} img/s (batch {args.max_batch}, before)", flush=True)

    modes = {f"batched (max {args.max_batch})": args.max_batch, "one-at-a-time": 1}
    results = {}
    for name, max_batch in modes.items():
        results[name] = served(args, scans, max_batch)
        report(name, *results[name], args.requests)

    offline.append(offline_embed(model, files, args.max_batch))
    print(f"offline embed      {offline[1]:7.2f} img/s (batch {args.max_batch}, after)", flush=True)
    reference = float(np.mean(offline))
    batched = results[f"batched (max {args.max_batch})"][0]
    single = results["one-at-a-time"][0]
    batched_rate = batched.ok / batched.wall_s if batched.wall_s else 0.0
    single_rate = single.ok / single.wall_s if single.wall_s else 0.0
    tail = batched.quantile_ms(0.99) / batched.quantile_ms(0.5)
    ratio = batched_rate / reference
    print(f"batched / one-at-a-time: {batched_rate / single_rate if single_rate else float('nan'):.2f}x; "
          f"offline embed mean {reference:.2f} img/s; load average at end {os.getloadavg()[0]:.2f}")
    print(f"goals (batched): ratio {ratio:.2f} >= 0.8 {'ok' if ratio >= 0.8 else 'MISSED'}; "
          f"p99/p50 {tail:.2f} <= 3 {'ok' if tail <= 3 else 'MISSED'}; "
          f"errors {batched.errors} == 0 {'ok' if batched.errors == 0 else 'MISSED'}; "
          f"requests {len(batched.latencies)} >= 2000 {'ok' if len(batched.latencies) >= 2000 else 'MISSED'}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
