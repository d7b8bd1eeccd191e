"""Counters the capacity benchmarks read at the two ends of a measured window.

- :func:`redis_stats`: a Redis server's ``total_commands_processed`` (scripts'
  inner calls are counted by Redis too, so this is its work) and its CPU seconds.
- :func:`pod_metrics`: a pod's bus counters from its admin ``/metrics``:
  ``wsnode_published_total`` (deliveries it published to other pods) and
  ``wsnode_bus_batches_published_total`` (the broker messages that carried them:
  one per destination pod per event-loop tick, canaries not counted), and the
  receiving side's ``wsnode_bus_delivered_total`` / ``wsnode_bus_batches_received_total``.

Reading costs the servers a command (``INFO``) or a scrape per window end:
negligible next to the thousands of messages a window carries.
"""

from __future__ import annotations

import urllib.request

BUS_COUNTERS = ("wsnode_published_total", "wsnode_bus_batches_published_total",
                "wsnode_bus_delivered_total", "wsnode_bus_batches_received_total")


def redis_stats(url: str) -> dict[str, float]:
    """``commands`` processed since the server started and ``cpu_s`` (user + sys)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats, cpu = client.info("stats"), client.info("cpu")
    finally:
        client.close()
    return {"commands": float(stats["total_commands_processed"]),
            "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


def pod_metrics(admin_port: int, names: tuple[str, ...] = BUS_COUNTERS) -> dict[str, float]:
    """The named counters (summed over their labels) of one pod's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        # prometheus_client writes `name{labels} value`, no timestamp.
        base = line.split("{", 1)[0].split(" ", 1)[0]
        if base in out:
            out[base] += float(line.rsplit(" ", 1)[1])
    return out


def sum_pods(ports: list[int]) -> dict[str, float]:
    """:func:`pod_metrics` of every pod, added up."""
    total = dict.fromkeys(BUS_COUNTERS, 0.0)
    for port in ports:
        for k, v in pod_metrics(port).items():
            total[k] += v
    return total


def read_all(redis_url: str, admin_ports: list[int]) -> dict[str, float]:
    """:func:`redis_stats` (as ``redis_commands``, ``redis_cpu_s``) and :func:`sum_pods`."""
    stats = redis_stats(redis_url)
    return {"redis_commands": stats["commands"], "redis_cpu_s": stats["cpu_s"],
            **sum_pods(admin_ports)}


def per_message(c0: dict[str, float], c1: dict[str, float], delivered: int,
                rabbit_cpu_s: float | None) -> dict[str, float | None]:
    """What the window cost Redis and the bus per delivered message.

    ``published_per_msg``: deliveries that crossed the bus per message delivered
    (0 on one pod; 1 when every target is on another pod). ``deliveries_per_broker_msg``:
    the batch factor. ``rabbitmq_us_per_broker_msg``: the broker's CPU per
    message published to it (its canaries, one per pod per 5 s, left out)."""
    d = {k: c1[k] - c0[k] for k in c0}
    n = max(delivered, 1)
    batches, published = d["wsnode_bus_batches_published_total"], d["wsnode_published_total"]
    return {
        "redis_cmds_per_msg": round(d["redis_commands"] / n, 2),
        "published_per_msg": round(published / n, 3),
        "broker_msgs_per_msg": round(batches / n, 3),
        "deliveries_per_broker_msg": round(published / batches, 2) if batches else None,
        "rabbitmq_us_per_broker_msg": (round(rabbit_cpu_s / batches * 1e6, 1)
                                       if batches and rabbit_cpu_s is not None else None),
        "broker_msgs": int(batches), "deliveries_published": int(published),
    }
