"""wsctl: the operator CLI of wsnode (DESIGN §5).

Modules::

    cli.py          the typer app: parses, calls, prints; nothing else
    target.py       the Target protocol (what wsctl asks of wsnode) and resolve_target
    target_node.py  NodeTarget: a Target over one pod's admin HTTP API (DESIGN §6)
    operations.py   what each command does with a Target: calls, --wait polls, verdicts
    documents.py    the JSON documents of the admin API, as TypedDicts
    envelope.py     the envelope of ``wsctl send`` from its options (pure)
    tokens.py       ``wsctl token``: mint a JWT from the WSNODE_* settings
    output.py       rich tables for humans, one JSON document for machines, error lines
    errors.py       CtlError and the exit code of each kind of failure

Nothing here is a public Python API: the command line is the interface.
"""
