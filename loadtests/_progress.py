"""Live state of the swarm for ``wsctl swarm``, in the file ``WSNODE_SWARM_STATUS``.

Locust's CSV files say what the requests did but neither how many users run
right now (their history file is flushed every 5 s) nor when the test itself
started and stopped (the process also spends seconds importing and stopping).
With ``WSNODE_SWARM_STATUS`` set, the master (or the only) Locust process
writes this JSON object there every half second and once more on quitting,
replacing the file atomically:

``{"state", "users", "target", "startedAt", "spawnedAt", "stoppingAt", "at"}``

``state`` is Locust's (``spawning``, ``running``, ``stopping``, ``stopped``);
``users`` the users running now, ``target`` the users asked for; the times are
epoch seconds (``null`` until they happen): the test start, the end of the
ramp-up, the start of the stop. The CSV files are also flushed every second
then, so the live figures and the user count are of the same moment.

Without the variable this module does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import gevent
import locust.stats
from locust import events
from locust.runners import WorkerRunner

PATH = os.environ.get("WSNODE_SWARM_STATUS")
INTERVAL = 0.5
_times: dict[str, float | None] = {"startedAt": None, "spawnedAt": None, "stoppingAt": None}

if PATH:
    locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1  # read live by wsctl swarm


def _write(environment: Any) -> None:
    assert PATH is not None
    runner = environment.runner
    options = environment.parsed_options
    state = {"state": str(getattr(runner, "state", "") or ""),
             "users": int(getattr(runner, "user_count", 0) or 0),
             "target": int(getattr(options, "num_users", 0) or 0),
             **_times, "at": time.time()}
    tmp = f"{PATH}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, PATH)


def _loop(environment: Any) -> None:
    while True:
        with contextlib.suppress(OSError):  # wsctl removed the directory: nobody watches
            _write(environment)
        gevent.sleep(INTERVAL)


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    if PATH and not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_loop, environment)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    _times.update(startedAt=time.time(), spawnedAt=None, stoppingAt=None)


@events.spawning_complete.add_listener
def _on_spawned(user_count: int, **_: Any) -> None:
    _times["spawnedAt"] = _times["spawnedAt"] or time.time()


@events.test_stopping.add_listener
def _on_stopping(environment: Any, **_: Any) -> None:
    _times["stoppingAt"] = _times["stoppingAt"] or time.time()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    if PATH and not isinstance(environment.runner, WorkerRunner):
        _times["stoppingAt"] = _times["stoppingAt"] or time.time()
        with contextlib.suppress(OSError):
            _write(environment)
