"""The sizing table of docs/scaling.md, recomputed from its figures.

Nothing is measured here: each constant below is a figure of docs/scaling.md
(measured by the script named beside it, results in bench/results/) or an
assumption, marked so. Change one and rerun to see what moves. For each case
(concurrent connections, messages per user per minute, at most once or
ACK-required) it prints one JSON line with every step: the message rate, the
pods' CPU by cause, the pods needed and what bounds them, Redis commands per
second by cause and the shards needed, RabbitMQ broker messages per second and
the nodes needed, and the first bottleneck. ``--markdown`` prints the table.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import orjson

# -- pods -----------------------------------------------------------------------
POD_CORE = 0.7  # assumption: plan a pod (one process: one core at most) at 70 %
POD_IDLE_CORE = 0.007  # pod_idle: 0.5-0.9 % of a core with no connection
IDLE_US_PER_CONN = 12.7  # pod_idle: 1.27 % of a core per 1,000 idle connections
CONNECT_US, DISCONNECT_US = 2000.0, 400.0  # pod_idle: 1.4-2.3 ms, 0.37-0.41 ms
SESSION_S = 3600.0  # assumption: a connection lasts an hour on average
# closed_loop --spread, net of idle: every delivery its own broker message (batch
# factor ~1, as with many pods) 1.0-1.5 ms of pod CPU (sender + receiver); 1.0 is
# the 4 pods at 1,000 msg/s point, the busiest of them; the rate limit (off there)
# adds about 0.1 ms (capacity_limiter: +40 to +120 µs). ACK-required: + 0.65 ms
# (closed loop, 2 and 4 pods, against at most once at the same batch).
MSG_US = {"at_most_once": 1100.0, "ack": 1800.0}
CONN_CAP_FDS = 65536 - 4096  # assumption: ulimit -n 65536, less the pod's reserve
CONN_CAP_MEM = int((2048 - 75) * 1024 / (19.4 + 4.0))  # assumption: 2 GiB pod; 19.4 KiB
# RSS (pod_idle) + ~4 KiB of kernel memory per idle socket (assumed, not measured)

# -- Redis ----------------------------------------------------------------------
SHARD_CMDS = 100_000  # one master core at 70 %: 7 µs a command (measured 2.8-3.2 µs
# without persistence, 6.5 µs with appendfsync always and a replica)
POD_CMDS = 100.0  # redis_load, pod_idle: scans per pod per second
RECONCILE_CMDS = 1 / 30  # pod_idle: a ZRANGE per held user every 30 s
SESSION_CMDS = 4.8 + 3.8  # pod_idle: a connect and a disconnect
MSG_CMDS = {"at_most_once": 0.5 + 4.0,  # presence misses + the rate limit's script
            "ack": 52.0 + 4.0}  # redis_load (51-58) + the rate limit

# -- RabbitMQ ---------------------------------------------------------------------
RMQ_US_PER_BROKER_MSG = 350.0  # closed_loop: 280-460 µs (one node)
RMQ_CLUSTER_FACTOR = 2.0  # rabbit_batches: a 3-node cluster spent 1.5-3.3x per message
RMQ_NODE_CORE = 4 * 0.7  # assumption: 4 cores a node, planned at 70 %
CANARY_PER_POD = 1 / 5  # one canary per pod per HEARTBEAT_INTERVAL
RMQ_MAX_NODES = 7  # assumption: past this, one RabbitMQ cluster is no longer the answer


def size(conns: int, per_min: float, kind: str) -> dict[str, Any]:
    rate = conns * per_min / 60
    churn = conns / SESSION_S
    cores = {"idle_connections": conns * IDLE_US_PER_CONN / 1e6,
             "connect_disconnect": churn * (CONNECT_US + DISCONNECT_US) / 1e6,
             "messages": rate * MSG_US[kind] / 1e6}
    pods = 1
    for _ in range(50):  # the pods' own idle cost depends on how many: iterate
        cores["pods_idle"] = pods * POD_IDLE_CORE
        by_cpu = math.ceil(sum(cores.values()) / POD_CORE)
        by_conns = math.ceil(conns / min(CONN_CAP_FDS, CONN_CAP_MEM))
        if max(by_cpu, by_conns) == pods:
            break
        pods = max(by_cpu, by_conns)
    cmds = {"pods": pods * POD_CMDS, "reconcile": conns * RECONCILE_CMDS,
            "connect_disconnect": churn * SESSION_CMDS, "messages": rate * MSG_CMDS[kind]}
    shards = math.ceil(sum(cmds.values()) / SHARD_CMDS)
    cross = (pods - 1) / pods  # random partners: the share of messages crossing pods
    broker_msgs = rate * cross + pods * CANARY_PER_POD  # batch factor ~1 at these sizes
    rmq_cores = broker_msgs * RMQ_US_PER_BROKER_MSG / 1e6
    nodes = 1 if rmq_cores <= RMQ_NODE_CORE else math.ceil(
        rmq_cores * RMQ_CLUSTER_FACTOR / RMQ_NODE_CORE)
    # The first bottleneck: grow to this size by adding pods to one Redis master
    # and one RabbitMQ node; the first of those two to pass its capacity is it
    # (its demand in units of one master or node), else the pods' CPU, by its
    # largest part.
    single = {"Redis": sum(cmds.values()) / SHARD_CMDS, "RabbitMQ": rmq_cores / RMQ_NODE_CORE}
    worst = max(single, key=lambda k: single[k])
    if single[worst] > 1:
        first = f"{worst} ({single[worst]:.1f}x one {'master' if worst == 'Redis' else 'node'})"
    else:
        part = max(cores, key=lambda k: cores[k])
        first = f"pod CPU ({part.replace('_', ' ')}: {cores[part] / sum(cores.values()):.0%})"
    if nodes > RMQ_MAX_NODES:
        first += f"; {nodes} nodes: past one cluster"
    return {"connections": conns, "per_user_per_min": per_min, "kind": kind,
            "msgs_per_s": round(rate), "connects_per_s": round(churn),
            "pod_cores": {k: round(v, 1) for k, v in cores.items()},
            "pods": pods, "conns_per_pod": conns // pods,
            "pods_bound": "CPU" if math.ceil(sum(cores.values()) / POD_CORE) >= math.ceil(
                conns / min(CONN_CAP_FDS, CONN_CAP_MEM)) else "connections",
            "redis_cmds_per_s": {k: round(v) for k, v in cmds.items()},
            "redis_shards": shards, "broker_msgs_per_s": round(broker_msgs),
            "rabbitmq_cores": round(rmq_cores * (RMQ_CLUSTER_FACTOR if nodes > 1 else 1), 1),
            "rabbitmq_nodes": nodes,
            "single_instance_load": {k: round(v, 2) for k, v in single.items()},
            "first_bottleneck": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = [size(c, m, kind) for kind in ("at_most_once", "ack")
            for c in (100_000, 1_000_000, 10_000_000) for m in (1, 10)]
    if not args.markdown:
        for row in rows:
            print(orjson.dumps(row).decode())
        return
    for kind in ("at_most_once", "ack"):
        print(f"\n{kind.replace('_', ' ')}:\n")
        print("| connections | msg/user/min | msg/s | pod cores | pods (connections each) "
              "| Redis commands/s | Redis masters | broker msg/s | RabbitMQ nodes "
              "| first bottleneck |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in (r for r in rows if r["kind"] == kind):
            print(f"| {r['connections']:,} | {r['per_user_per_min']} | {r['msgs_per_s']:,} "
                  f"| {sum(r['pod_cores'].values()):,.0f} "
                  f"| {r['pods']:,} ({r['conns_per_pod']:,}) "
                  f"| {sum(r['redis_cmds_per_s'].values()):,} | {r['redis_shards']} "
                  f"| {r['broker_msgs_per_s']:,} | {r['rabbitmq_nodes']} "
                  f"| {r['first_bottleneck']} |")

if __name__ == "__main__":
    main()
