"""Helpers for wsctl tests: run the typer app in-process with a clean environment.

``wsctl`` calls ``asyncio.run`` itself, so async tests (which hold WebSocket
clients open on the running loop) invoke it in a worker thread: ``await
wsctl.arun(...)``. Every run gets exactly the ``WSNODE_*`` variables it is
given, none inherited from the developer's shell.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import pytest
from typer.testing import CliRunner, Result

from tests.support.pods import API_KEY, SECRET, PodProcess
from wsctl.cli import app


class Wsctl:
    """Runs ``wsctl ARGS`` against one pod (or none) with a chosen environment."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def env_for(self, pod: PodProcess | None, extra: Mapping[str, str | None] | None = None
                ) -> dict[str, str | None]:
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("WSNODE_")}
        env.update(WSNODE_API_KEY=API_KEY, WSNODE_JWT_SECRET=SECRET)
        if pod is not None:
            env["WSNODE_NODE"] = pod.admin_url
        env.update(extra or {})
        return env

    def run(self, *args: str, pod: PodProcess | None = None,
            env: Mapping[str, str | None] | None = None, stdin: str | None = None) -> Result:
        result = self.runner.invoke(app, list(args), env=self.env_for(pod, env), input=stdin)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug in wsctl: show its traceback in the test
        return result

    async def arun(self, *args: str, pod: PodProcess | None = None,
                   env: Mapping[str, str | None] | None = None) -> Result:
        return await asyncio.to_thread(self.run, *args, pod=pod, env=env)


@pytest.fixture
def wsctl() -> Wsctl:
    return Wsctl()
