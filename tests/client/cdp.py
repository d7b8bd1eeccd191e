"""Headless Chromium driven over the Chrome DevTools Protocol, with ``websockets``.

Just what the browser tests need: open a page, evaluate JavaScript in it, take a
screenshot, collect console lines and uncaught exceptions. Chromium runs with a
fresh profile, no network services of its own, and is stopped by pid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0"]


class JsError(AssertionError):
    """JavaScript evaluated in the page threw."""


class Browser:
    """One Chromium process and its browser-level DevTools connection."""

    def __init__(self, proc: subprocess.Popen[bytes], ws: ClientConnection,
                 profile: Path) -> None:
        self.proc = proc
        self.ws = ws
        self.profile = profile
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._listeners: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, executable: Path, profile: Path, timeout: float = 30) -> Browser:
        profile.mkdir(parents=True, exist_ok=True)
        log = (profile.parent / "chromium.log").open("ab")
        proc = subprocess.Popen([str(executable), *FLAGS, f"--user-data-dir={profile}",
                                 "about:blank"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"chromium did not start (exit {proc.poll()}); see "
                                   f"{profile.parent / 'chromium.log'}")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        ws = await connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10)
        return cls(proc, ws, profile)

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                msg = orjson.loads(raw)
                if "id" in msg:
                    future = self._calls.pop(msg["id"], None)
                    if future is not None and not future.done():
                        future.set_result(msg)
                    continue
                self.events.append(msg)
                for listener in list(self._listeners):
                    method, session, future = listener
                    if msg.get("method") == method and session in (None, msg.get("sessionId")) \
                            and not future.done():
                        future.set_result(msg)
                        self._listeners.remove(listener)

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None, timeout: float = 30) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[msg_id] = future
        frame: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            frame["sessionId"] = session
        await self.ws.send(orjson.dumps(frame).decode())
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def expect(self, method: str, session: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event ``method`` (register before causing it)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._listeners.append((method, session, future))
        return future

    async def new_page(self, url: str, timeout: float = 20) -> Page:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        loaded = self.expect("Page.loadEventFired", page.session)
        await page.call("Page.navigate", {"url": url})
        await asyncio.wait_for(loaded, timeout)
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("Browser.close"), 5)
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        try:
            await asyncio.to_thread(self.proc.wait, 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 5)


class Page:
    """One tab, through a flattened DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.call(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises awaited); raises JsError."""
        result = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise JsError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}\n{self.console()}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", {"format": "png",
                                                          "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def console(self) -> str:
        """Console lines and uncaught exceptions of this page so far."""
        lines = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", "")))
                                for a in params.get("args", []))
                lines.append(f"console.{params.get('type')}: {text}")
            elif event.get("method") == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append("exception: " + str(details.get("exception", {}).get(
                    "description") or details.get("text")))
        return "\n".join(lines)
