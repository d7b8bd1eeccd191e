"""The closed-loop load client's accounting (``bench/loop_client.py``), against
real servers of both protocols it speaks: an embedded ``wsnode serve`` pod with
the chat example, and one python-socketio process of ``bench/peers``. Every
message sent is delivered once, to the user it was sent to, and counted once."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.counters import BUS_COUNTERS, per_message, pod_metrics
from bench.loop_client import LoopClient, LoopConfig, Tally, Window
from tests.conftest import PodFactory
from tests.support.pods import PodProcess

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 200


def window() -> Window:
    now = time.time()
    return Window(now, now, float("inf"), float("inf"))


async def run(cfg: LoopConfig) -> tuple[LoopClient, Tally]:
    client = LoopClient(cfg)
    try:
        await client.connect()
        tally = await asyncio.wait_for(client.run(window()), 60)
        return client, tally
    finally:
        client.close()


def assert_exact(tally: Tally) -> None:
    assert tally.sent == MESSAGES
    assert tally.delivered == MESSAGES
    assert (tally.duplicates, tally.late, tally.lost, tally.misrouted, tally.unknown,
            tally.errors) == (0, 0, 0, 0, 0, 0)
    assert tally.in_window == len(tally.latencies) == MESSAGES


@pytest.fixture
def chat_pod(pod_factory: PodFactory) -> PodProcess:
    return pod_factory("loop", env={"WSNODE_RATE_LIMIT": "0"},
                       args=["--insecure", "--app", "wsnode.examples.chat"])


@pytest.fixture
def chat_port(chat_pod: PodProcess) -> int:
    return chat_pod.port


@pytest.fixture
def socketio_port(tmp_path: Path) -> Iterator[int]:
    log = tmp_path / "pysio.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench/peers/pysio_server.py"),
                                 "--redis", "none"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(rb"listening (\d+)", log.read_bytes())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield int(found.group(1))
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.e2e
async def test_every_message_sent_is_delivered_once(chat_port: int) -> None:
    cfg = LoopConfig(proto="wsnode", senders=[chat_port] * 2, receivers=[chat_port] * 5,
                     inflight=10, messages=MESSAGES)
    client, tally = await run(cfg)
    assert_exact(tally)
    # Every credit came back: each delivery returned its sender's, once.
    assert sum(s.next_n for s in client.senders) == MESSAGES
    assert [s.credits for s in client.senders] == [5, 5]
    # An arrival already counted is a duplicate, not a second delivery.
    frame = (b'{"type":"chat_message","payload":{"to":"r0.0","s":0,"n":0,"ts":1.0}}')
    client.on_frame(client.receivers[0], frame)
    assert (tally.delivered, tally.duplicates) == (MESSAGES, 1)


@pytest.mark.e2e
async def test_ack_mode_acks_each_delivery(chat_port: int) -> None:
    cfg = LoopConfig(proto="wsnode", senders=[chat_port] * 2, receivers=[chat_port] * 5,
                     inflight=10, messages=MESSAGES, ack=True)
    _, tally = await run(cfg)
    assert_exact(tally)
    assert tally.acks_sent == MESSAGES
    # A second run on the same pod (closed_loop.py --interleave) is not taken
    # for repeats of the first one's ids, which the pod would settle unsent.
    _, again = await run(cfg)
    assert_exact(again)


@pytest.mark.e2e
async def test_socketio_protocol(socketio_port: int) -> None:
    cfg = LoopConfig(proto="socketio", senders=[socketio_port] * 2,
                     receivers=[socketio_port] * 5, inflight=10, messages=MESSAGES)
    _, tally = await run(cfg)
    assert_exact(tally)


@pytest.mark.e2e
async def test_counters_read_the_pods_metrics(chat_pod: PodProcess) -> None:
    """``bench/counters.py`` sums a labelled counter over its labels, and finds the
    bus counters (zero on an embedded pod: nothing crosses a bus)."""
    names = ("wsnode_messages_out_total", *BUS_COUNTERS)
    before = pod_metrics(chat_pod.admin_port, names)
    cfg = LoopConfig(proto="wsnode", senders=[chat_pod.port] * 2,
                     receivers=[chat_pod.port] * 5, inflight=10, messages=MESSAGES)
    _, tally = await run(cfg)
    assert_exact(tally)
    after = pod_metrics(chat_pod.admin_port, names)
    # Every chat message went out once (welcomes and restores count too).
    assert after["wsnode_messages_out_total"] - before["wsnode_messages_out_total"] >= MESSAGES
    assert all(after[k] == 0 for k in BUS_COUNTERS)
    load = per_message({**before, "redis_commands": 0.0}, {**after, "redis_commands": 10.0},
                       MESSAGES, None)
    assert load["published_per_msg"] == 0 and load["deliveries_per_broker_msg"] is None
    assert load["redis_cmds_per_msg"] == round(10 / MESSAGES, 2)
