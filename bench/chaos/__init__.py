"""A randomized chaos soak of wsnode: ``make chaos MINUTES=5``.

Three real ``wsnode serve`` pods share a private ``redis-server`` (AOF,
``appendfsync always``) and the shared RabbitMQ, each through a TCP proxy the
soak can cut. Producers send ACK-required messages through the pods' admin API
(retrying the same id on another pod when a call fails) and at-most-once ones;
SDK clients that reconnect receive them, some users on two pods at once.
Meanwhile pods are SIGKILLed and SIGTERMed (and restarted with the same id),
RabbitMQ connections cut, Redis clients killed, Redis made read-only or
short of replicas, and Redis restarted.

Then the faults stop, the cluster is healed, and after a bounded settle the
checker asks of every *accepted* ACK-required message: was it received by its
user, or dead-lettered with a reason? Anything else is lost, listed with the
faults around it. Modules:

* :mod:`bench.chaos.world`: the private cluster (start, heal, clean up);
* :mod:`bench.chaos.traffic`: producers and the ledger of sends;
* :mod:`bench.chaos.devices`: the receiving clients;
* :mod:`bench.chaos.faults`: fault injection and its timeline;
* :mod:`bench.chaos.checker`: settle, verdict, inspection of losses;
* :mod:`bench.chaos.report`: figures as JSON and a one-screen summary;
* :mod:`bench.chaos.soak`: one run, start to end.
"""
