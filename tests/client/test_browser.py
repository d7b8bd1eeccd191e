"""The JS client in a real browser: the demo page in headless Chromium, three pods.

Must show (issue 7): a browser tab receives, acks and never double-displays 100
ACK-required messages sent while its pod is drained and it reconnects elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.client.cdp import Browser, Page
from tests.client.conftest import start_cluster
from tests.client.tooling import JS_DIR
from tests.conftest import PodFactory
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess, base_env
from tests.support.waits import api

# The first test may install Chromium with apt-get (a minute or two on a new machine).
pytestmark = pytest.mark.timeout(900)

USER = "tab-user"
TOTAL = 100


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def static_origin() -> Iterator[str]:
    """``clients/js`` (module and demo page) over HTTP on a free port; its origin."""
    handler = functools.partial(_Quiet, directory=str(JS_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def browser(chromium: Path, tmp_path: Path) -> AsyncIterator[Browser]:
    launched = await Browser.launch(chromium, tmp_path / "chromium-profile")
    yield launched
    await launched.close()


def wsctl(cluster: ClusterSlice, *args: str) -> subprocess.CompletedProcess[str]:
    """``wsctl`` in cluster mode (Redis and RabbitMQ, no pod address)."""
    return subprocess.run([sys.executable, "-m", "wsctl", *args],
                          env=base_env(**cluster.env()), capture_output=True, text=True,
                          timeout=60, check=False)


async def open_demo(browser: Browser, origin: str, pods: list[PodProcess]) -> Page:
    query = urlencode({"urls": ",".join(p.ws_url for p in pods),
                       "token": pods[0].token(USER)})
    page = await browser.new_page(f"{origin}/demo/?{query}")
    await page.wait_for("window.wsnodeDemo?.client?.state === 'connected'", 10,
                        "the demo page connected")
    return page


async def test_tab_receives_acks_and_never_double_displays_across_a_drain(
        pod_factory: PodFactory, cluster: ClusterSlice, static_origin: str,
        browser: Browser, tmp_path: Path) -> None:
    a, b, c = start_cluster(pod_factory, cluster, 3, WSNODE_ALLOWED_ORIGINS=static_origin)
    page = await open_demo(browser, static_origin, [a, b, c])
    assert await page.evaluate("wsnodeDemo.client.podId") == "pod-a"
    assert await page.evaluate("location.search.includes('token')") is False

    # One through wsctl, which waits for the tab's ack: the pod saw it settled.
    done = await asyncio.to_thread(
        wsctl, cluster, "send", USER, "--type", "demo", "--payload", '{"n": 0}', "--ack",
        "--id", "msg-0", "--wait", "10", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    await page.wait_for("document.querySelector('tr[data-id=\"msg-0\"] td.ack')"
                        "?.textContent === 'acked'", 5, "msg-0 shown as acked")

    # 99 more, paced, through pod C's API; pod A (the tab's) is drained in the middle.
    drained: asyncio.Task[subprocess.CompletedProcess[str]] | None = None
    for i in range(1, TOTAL):
        await api(c, "POST", "/v1/send", {"user": USER, "envelope": {
            "type": "demo", "id": f"msg-{i}", "requiresAck": True, "payload": {"n": i}}})
        if i == 30:
            drained = asyncio.create_task(asyncio.to_thread(
                wsctl, cluster, "drain", "pod-a", "--over", "1"))
        await asyncio.sleep(0.02)
    assert drained is not None
    done = await drained
    assert done.returncode == 0, done.stdout + done.stderr

    await page.wait_for(f"wsnodeDemo.messages.length >= {TOTAL}", 30,
                        f"{TOTAL} messages shown")
    await asyncio.sleep(1.0)  # room for a late duplicate to (wrongly) show up
    want = [f"msg-{i}" for i in range(TOTAL)]
    shown = await page.evaluate(
        "[...document.querySelectorAll('#messages tbody tr')].map(r => r.dataset.id)")
    assert len(shown) == TOTAL and sorted(shown) == sorted(want), shown
    assert await page.evaluate("wsnodeDemo.messages.map(m => m.id)") == shown
    acks = await page.evaluate(
        "[...document.querySelectorAll('#messages td.ack')].map(td => td.textContent)")
    assert acks == ["acked"] * TOTAL

    states: list[dict[str, Any]] = await page.evaluate("wsnodeDemo.states")
    away = [s for s in states if s["state"] == "reconnecting"]
    assert [s["reason"] for s in away] == ["drain"], json.dumps(states)
    landed = [s["podId"] for s in states if s["state"] == "connected"]
    assert landed == ["pod-a", "pod-b"], json.dumps(states)
    assert await page.evaluate("wsnodeDemo.client.podId") == "pod-b"

    async def state_of(msg_id: str) -> str:
        return str((await api(b, "GET", f"/v1/messages/{USER}/{msg_id}"))["state"])
    for _ in range(50):
        states_now = await asyncio.gather(*(state_of(m) for m in want))
        if set(states_now) == {"acked"}:
            break
        await asyncio.sleep(0.2)
    assert set(states_now) == {"acked"}, dict(zip(want, states_now, strict=True))
    await page.screenshot(tmp_path / "demo-after-drain.png")
    assert "exception" not in page.console(), page.console()


async def test_demo_page_sends_and_shows_server_errors(
        pod_factory: PodFactory, cluster: ClusterSlice, static_origin: str,
        browser: Browser) -> None:
    (a,) = start_cluster(pod_factory, cluster, 1, WSNODE_ALLOWED_ORIGINS=static_origin)
    page = await open_demo(browser, static_origin, [a])

    async def submit(typ: str, payload: str) -> str:
        await page.evaluate(f"""(() => {{
            document.getElementById('send-result').textContent = '';
            document.getElementById('send-type').value = {json.dumps(typ)};
            document.getElementById('send-payload').value = {json.dumps(payload)};
            document.querySelector('#send button').click(); }})()""")
        return str(await page.wait_for("document.getElementById('send-result').textContent",
                                       5, f"a result for {typ}"))

    # The chat app echoes to the recipient: send to ourselves, see it arrive and get acked.
    result = await submit("chat_message", json.dumps({"to": USER, "text": "hello"}))
    assert result.startswith("acked by the server"), result
    await page.wait_for("wsnodeDemo.messages.some(m => m.payload?.text === 'hello')", 5,
                        "our own chat message")
    assert (await submit("nope", "{}")).startswith("refused: unknown_type"), result
    assert (await submit("chat_message", "{not json")).startswith("payload is not JSON")


async def test_a_page_from_another_origin_is_refused(
        pod_factory: PodFactory, cluster: ClusterSlice, static_origin: str,
        browser: Browser) -> None:
    """Without WSNODE_ALLOWED_ORIGINS the pod refuses the page (403 before the upgrade);
    the browser cannot see the status, so the client reports a failed connect."""
    (a,) = start_cluster(pod_factory, cluster, 1)
    query = urlencode({"urls": a.ws_url, "token": a.token(USER)})
    page = await browser.new_page(f"{static_origin}/demo/?{query}")
    await page.wait_for("wsnodeDemo.client?.state === 'closed'", 10, "the connect failed")
    log = await page.evaluate("document.getElementById('log').textContent")
    assert "could not connect" in log, log
