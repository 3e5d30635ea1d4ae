"""The call-end webhook's delivery (procs/after_call.py) against receivers that fail in each way: refusing, erring,
hanging, unreachable. Delivery runs beside the calls, so `call_over` returns at once whatever the receiver does."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from aiohttp import web

from engine.admission import Party
from engine.call_transcript import signature_valid
from engine.config_load import load_config
from procs.after_call import AfterCall
from tools.solo import free_port

SECRET = "end-webhook-secret-0123456789"


def after_call(url: str, attempts: int = 3, timeout_s: float = 0.5) -> tuple[AfterCall, Counter[str]]:
    cfg = load_config(environ={"ENGINE_CONVERSATION__END_WEBHOOK": url,
                               "ENGINE_CONVERSATION__END_WEBHOOK_SECRET": SECRET,
                               "ENGINE_CONVERSATION__END_WEBHOOK_ATTEMPTS": str(attempts),
                               "ENGINE_CONVERSATION__END_WEBHOOK_TIMEOUT_S": str(timeout_s)})
    counters: Counter[str] = Counter()
    return AfterCall(cfg, None, counters), counters


async def receiving(answer: Any, scenario: Any) -> list[web.Request]:
    """Run `scenario(url)` against a receiver whose handler is `answer`; the requests it got."""
    got: list[web.Request] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        got.append(request)
        return await answer(request, len(got))

    app = web.Application()
    app.router.add_post("/ended", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)  # a hanging handler is cut
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await scenario(f"http://127.0.0.1:{port}/ended")
    finally:
        await runner.cleanup()
    return got


async def deliver(url: str, attempts: int = 3) -> Counter[str]:
    after, counters = after_call(url, attempts)
    after.call_over("CA1", {"call_sid": "CA1", "turns": []}, Party(), [])  # (returns at once: nothing awaited)
    await after.close()  # waits for the delivery (SHUTDOWN_GRACE_S at most)
    return counters


def test_a_refusal_is_not_retried_and_an_error_is() -> None:
    async def refuse(request: web.Request, n: int) -> web.Response:
        return web.Response(status=403)

    async def err_then_take(request: web.Request, n: int) -> web.Response:
        return web.Response(status=500 if n < 3 else 200)

    counted: list[Counter[str]] = []

    async def scenario(url: str) -> None:
        counted.append(await deliver(url))

    refused = asyncio.run(receiving(refuse, scenario))
    assert len(refused) == 1 and counted[-1]["end_webhook_failed"] == 1
    taken = asyncio.run(receiving(err_then_take, scenario))
    assert [r.headers["X-Engine-Attempt"] for r in taken] == ["1", "2", "3"]
    assert len({r.headers["X-Engine-Delivery"] for r in taken}) == 1 and counted[-1]["end_webhook_delivered"] == 1


def test_a_hanging_or_missing_receiver_costs_attempts_not_calls() -> None:
    async def hang(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=200)

    counted: list[Counter[str]] = []

    async def scenario(url: str) -> None:
        counted.append(await deliver(url, attempts=2))

    assert len(asyncio.run(receiving(hang, scenario))) == 2 and counted[-1]["end_webhook_failed"] == 1
    gone = asyncio.run(deliver(f"http://127.0.0.1:{free_port()}/ended", attempts=2))  # nothing listens there
    assert gone["end_webhook_failed"] == 1 and gone["end_webhook_delivered"] == 0


def test_each_attempt_is_signed_over_the_body() -> None:
    async def take(request: web.Request, n: int) -> web.Response:
        body = await request.read()
        ok = signature_valid(SECRET, request.headers["X-Engine-Signature"], body, time.time())
        return web.Response(status=204 if ok else 401)

    counted: list[Counter[str]] = []

    async def scenario(url: str) -> None:
        counted.append(await deliver(url))

    got = asyncio.run(receiving(take, scenario))
    assert len(got) == 1 and counted[-1]["end_webhook_delivered"] == 1
