"""``python -m wsnode.examples.chat_client``, the client of the README's "Try it",
against a real pod: it prints what reaches its user, acks, sends typed lines
through the chat app, follows a drain, and stops on Ctrl-C without a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from queue import Empty, Queue
from typing import IO

import orjson
import pytest

from tests.conftest import PodFactory
from tests.support.pods import PodProcess
from tests.support.waits import api, eventually


class Running:
    """A chat_client process whose stdout and stderr lines are read as they come."""

    def __init__(self, pod: PodProcess, user: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsnode.examples.chat_client", user, "--url", pod.ws_url,
             *args], env=pod.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1)
        self.out: Queue[str] = Queue()
        self.err: Queue[str] = Queue()
        self.stderr_seen: list[str] = []
        self.pumps = [threading.Thread(target=self._pump, args=(stream, queue), daemon=True)
                      for stream, queue in ((self.proc.stdout, self.out),
                                            (self.proc.stderr, self.err))]
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(stream: IO[str] | None, queue: Queue[str]) -> None:
        assert stream is not None
        for line in stream:
            queue.put(line.rstrip("\n"))

    def wait_err(self, text: str, timeout: float = 20) -> str:
        """The next stderr line containing ``text``."""
        deadline = timeout
        while True:
            try:
                line = self.err.get(timeout=deadline)
            except Empty:
                raise AssertionError(f"no {text!r} on stderr; saw {self.stderr_seen}") from None
            self.stderr_seen.append(line)
            if text in line:
                return line

    def wait_exit(self, timeout: float = 60) -> tuple[int, str]:
        """The exit code and everything it wrote on stderr."""
        code = self.proc.wait(timeout)
        for pump in self.pumps:
            pump.join(10)
        with contextlib.suppress(Empty):
            while True:
                self.stderr_seen.append(self.err.get_nowait())
        return code, "\n".join(self.stderr_seen)

    def next_message(self, timeout: float = 20) -> dict:
        return orjson.loads(self.out.get(timeout=timeout))

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def clients() -> Iterator[list[Running]]:
    running: list[Running] = []
    yield running
    for client in running:
        client.stop()


async def test_chat_client_of_the_readme(pod_factory: PodFactory,
                                         clients: list[Running]) -> None:
    pod = pod_factory("readme", args=["--app", "wsnode.examples.chat"])
    alice = Running(pod, "alice")
    clients.append(alice)
    await asyncio.to_thread(alice.wait_err, "-- connected to pod readme")
    await api(pod, "POST", "/v1/send", {"user": "alice", "envelope": {
        "type": "notification", "id": "n-1", "requiresAck": True, "payload": {"text": "hi"}}})
    got = await asyncio.to_thread(alice.next_message)
    assert got == {"type": "notification", "payload": {"text": "hi"}, "id": "n-1", "seq": 1}

    async def acked() -> bool:
        state = (await api(pod, "GET", "/v1/messages/alice/n-1"))["state"]
        return state == "acked"
    await eventually(acked, 10, "the client acked n-1")

    bob = Running(pod, "bob", "--to", "alice")
    clients.append(bob)
    await asyncio.to_thread(bob.wait_err, "-- connected")
    bob.type("hello alice")
    chat = await asyncio.to_thread(alice.next_message)
    assert chat["type"] == "chat_message"
    assert chat["payload"] == {"to": "alice", "text": "hello alice", "from": "bob"}

    # A drain: the client is told to move, and comes back (here to the same pod,
    # which refuses it while it drains: it keeps trying, with backoff).
    await api(pod, "POST", "/v1/drain", {"pod": "readme", "overSeconds": 0})
    await asyncio.to_thread(alice.wait_err, "connection lost (drain)")

    alice.proc.send_signal(signal.SIGINT)  # Ctrl-C
    code, seen = await asyncio.to_thread(alice.wait_exit)
    assert code == 0, seen
    assert seen.endswith("-- bye") and "Traceback" not in seen, seen


def test_chat_client_without_a_token_or_secret_says_so(pod_factory: PodFactory) -> None:
    pod = pod_factory("readme-2")
    env = {k: v for k, v in pod.env.items() if k != "WSNODE_JWT_SECRET"}
    done = subprocess.run([sys.executable, "-m", "wsnode.examples.chat_client", "alice",
                           "--url", pod.ws_url], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == ("chat_client: no token: pass --token, or export "
                                   "WSNODE_JWT_SECRET (the pods' secret) to mint one")


async def test_chat_client_in_a_room(pod_factory: PodFactory, clients: list[Running]) -> None:
    """``--room``: the README's rooms; what is typed is posted to the room."""
    pod = pod_factory("rooms", args=["--app", "wsnode.examples.chat"])
    alice = Running(pod, "alice", "--room", "lobby")
    bob = Running(pod, "bob", "--room", "lobby")
    clients.extend([alice, bob])
    for who in (alice, bob):
        await asyncio.to_thread(who.wait_err, "-- in room lobby")
    bob.type("hello room")
    post = {"type": "room_message", "id": None, "seq": None,
            "payload": {"room": "lobby", "text": "hello room", "from": "bob"}}
    assert await asyncio.to_thread(alice.next_message) == post
    assert await asyncio.to_thread(bob.next_message) == post  # the sender is in the room
    await api(pod, "POST", "/v1/publish", {"topic": "room:lobby", "envelope": {
        "type": "news", "payload": {"text": "from the server"}}})
    for who in (alice, bob):
        assert (await asyncio.to_thread(who.next_message))["type"] == "news"

    refused = Running(pod, "carol", "--room", "No Such Name")
    clients.append(refused)
    code, seen = await asyncio.to_thread(refused.wait_exit)
    assert code == 1 and "bad_envelope" in seen and "Traceback" not in seen, seen
