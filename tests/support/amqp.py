"""Delete what pods of one ``KEY_PREFIX`` declared on the shared RabbitMQ.

For harnesses that keep their Redis data elsewhere (a private ``redis-server``)
and so do not use :class:`tests.support.cluster.ClusterSlice`. Kill the pods
first: a live pod declares again what this deletes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import aio_pika

from wsnode.keys import AmqpNames


async def delete_amqp_names(amqp_url: str, prefix: str, pods: Iterable[str]) -> list[str]:
    """Delete the queues of ``pods``, the stranded and poison queues and both
    exchanges of ``prefix``; returns what could not be deleted (never raises
    for a broker that is gone: cleanup must not hide the result of a run)."""
    names = AmqpNames(prefix)
    failed: list[str] = []
    queues = [*(names.pod_queue(p) for p in pods), names.stranded_queue, names.poison_queue]
    exchanges = [names.exchange, names.stranded_exchange]
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError):
        return queues + exchanges
    async with connection:
        for queue in queues:
            # A failed delete closes its channel: one channel per name.
            channel = await connection.channel()
            try:
                await channel.queue_delete(queue)
            except aio_pika.exceptions.AMQPError:
                failed.append(queue)
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.close()
        for exchange in exchanges:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(exchange)
            except aio_pika.exceptions.AMQPError:
                failed.append(exchange)
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.close()
    return failed
