"""wsnode.metrics_tally: the counts of the hot path, kept as numbers until a scrape,
read exactly as direct Prometheus increments and observations would read."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wsnode.metrics import LATENCY_BUCKETS, Metrics


def _samples(text: bytes, names: set[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
            if family.name in names and not s.name.endswith("_created")}


async def test_tallied_metrics_read_as_direct_ones_at_every_scrape() -> None:
    metrics = Metrics()
    ref = CollectorRegistry()
    latency = Histogram("wsnode_send_latency_seconds", "x", buckets=LATENCY_BUCKETS,
                        registry=ref)
    messages_in = Counter("wsnode_messages_in_total", "x", ["type"], registry=ref)
    messages_out = Counter("wsnode_messages_out_total", "x", ["type"], registry=ref)
    published = Counter("wsnode_published_total", "x", registry=ref)
    lookups = Counter("wsnode_presence_lookups_total", "x", ["result"], registry=ref)
    names = {"wsnode_send_latency_seconds", "wsnode_messages_in", "wsnode_messages_out",
             "wsnode_published", "wsnode_presence_lookups"}
    rng = random.Random(7)
    # Bucket bounds themselves, values between them, zero and past the last bound.
    values = [*LATENCY_BUCKETS, 0.0, 0.0007, 0.003, 7.5, *(rng.uniform(0, 3) for _ in range(50))]
    for scrape in range(3):
        for _ in range(300):
            kind = rng.randrange(4)
            if kind == 0:
                value = rng.choice(values)
                metrics.send_latency.observe(value)
                latency.observe(value)
            elif kind == 1:
                kind_of = rng.choice(["chat_message", "typing", "other"])
                metrics.count_in(kind_of)
                messages_in.labels(kind_of).inc()
                n = rng.randint(1, 5)
                metrics.count_out(kind_of, n)
                messages_out.labels(kind_of).inc(n)
            elif kind == 2:
                metrics.published.inc()
                published.inc()
            else:
                hits, misses = rng.randint(0, 3), rng.randint(0, 3)
                metrics.count_lookups(hits, misses)
                for result, n in (("hit", hits), ("miss", misses)):
                    if n:
                        lookups.labels(result).inc(n)
        got = _samples(metrics.render(), names)
        want = _samples(generate_latest(ref), names)
        assert got == pytest.approx(want, rel=1e-12), f"scrape {scrape}"  # sums: add order
        assert got[("wsnode_published_total", ())] > 0


async def test_nothing_is_counted_twice_by_repeated_scrapes() -> None:
    metrics = Metrics()
    metrics.send_latency.observe(0.002)
    metrics.acks_stored.inc()
    first = _samples(metrics.render(), {"wsnode_send_latency_seconds", "wsnode_acks_stored"})
    assert first == _samples(metrics.render(),
                             {"wsnode_send_latency_seconds", "wsnode_acks_stored"})
    assert first[("wsnode_acks_stored_total", ())] == 1
    assert first[("wsnode_send_latency_seconds_count", ())] == 1
    assert first[("wsnode_send_latency_seconds_bucket", (("le", "0.0025"),))] == 1
    assert first[("wsnode_send_latency_seconds_bucket", (("le", "0.001"),))] == 0
