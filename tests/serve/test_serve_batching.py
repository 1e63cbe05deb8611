"""Micro-batching: concurrent requests share a forward, a full queue answers 503, shutdown finishes the work."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
pytest.importorskip("httpx", reason="the service tests drive the app with httpx")

from fetalclip.serve.batching import MicroBatcher, Overloaded  # noqa: E402


def test_jobs_are_gathered_answered_in_order_and_failures_stay_with_their_job():
    sizes = []

    def double(payloads):
        return [ValueError(f"bad {p}") if p == 3 else 2 * p for p in payloads]

    async def scenario():
        batcher = MicroBatcher({"double": double}, max_batch=4, max_wait_ms=200, on_batch=lambda k, n: sizes.append(n))
        batcher.start()
        futures = [batcher.submit("double", i) for i in range(6)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert results[:3] == [0, 2, 4] and isinstance(results[3], ValueError) and results[4:] == [8, 10]
    assert sizes == [4, 2]  # up to max_batch at once, the rest in the next batch


def test_a_full_queue_is_refused_and_close_finishes_what_was_queued():
    release = threading.Event()

    def slow(payloads):
        release.wait(10)
        return list(payloads)

    async def scenario():
        batcher = MicroBatcher({"slow": slow}, max_batch=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        first = batcher.submit("slow", 1)
        while batcher.running == 0:  # the first job is on the worker
            await asyncio.sleep(0.005)
        queued = [batcher.submit("slow", 2), batcher.submit("slow", 3)]
        with pytest.raises(Overloaded):
            batcher.submit("slow", 4)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):  # no new work once shutting down
            batcher.submit("slow", 5)
        release.set()
        await closing
        return [await first] + [await f for f in queued]

    assert asyncio.run(scenario()) == [1, 2, 3]


def _async_client(app):
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_concurrent_requests_share_one_forward(predictor, scan_image):
    from fetalclip.serve import create_app

    app = create_app(predictor, warm_up=False, max_batch=8, max_wait_ms=300)
    service = app.state.service
    images = [np.roll(scan_image, 7 * k, axis=1) for k in range(6)]

    async def scenario():
        async with app.router.lifespan_context(app), _async_client(app) as client:
            answers = await asyncio.gather(*[client.post("/v1/predict", files={"file": (f"{k}.png", _png(im))})
                                             for k, im in enumerate(images)])
            metrics = (await client.get("/metrics")).text
        return answers, metrics

    answers, metrics = asyncio.run(scenario())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert service.metrics.largest_batch > 1 and service.batcher.batches < len(images)
    assert 'fetalclip_batch_size_count{kind="predict"}' in metrics
    for image, answer in zip(images, answers):  # batching changes no answer
        alone = predictor(image).to_dict()["plane"]
        assert answer.json()["plane"]["label"] == alone["label"]
        assert answer.json()["plane"]["probability"] == pytest.approx(alone["probability"], abs=1e-4)


def test_overload_is_503_with_retry_after(predictor, scan_image):
    from fetalclip.serve import create_app

    app = create_app(predictor, warm_up=False, max_batch=1, max_wait_ms=0, max_queue=1)
    batcher = app.state.service.batcher
    release = threading.Event()
    png = _png(scan_image)

    async def scenario():
        async with app.router.lifespan_context(app), _async_client(app) as client:
            blocker = asyncio.ensure_future(batcher.run_exclusive(lambda: release.wait(10)))  # the worker is busy
            first = asyncio.ensure_future(client.post("/v1/predict", files={"file": ("a.png", png)}))
            while batcher.running == 0:  # first has left the queue for the (busy) worker: the queue is empty again
                await asyncio.sleep(0.005)
            second = asyncio.ensure_future(client.post("/v1/predict", files={"file": ("b.png", png)}))
            while batcher.depth < 1:
                await asyncio.sleep(0.005)
            refused = await client.post("/v1/predict", files={"file": ("c.png", png)})
            release.set()
            await blocker
            return refused, await first, await second

    refused, first, second = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "waiting" in refused.json()["error"]
    assert first.status_code == 200 and second.status_code == 200
