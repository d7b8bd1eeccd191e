"""Container health check: exit 0 when this pod's admin ``/readyz`` answers 200.

Copied into the image by the Dockerfile (``HEALTHCHECK``). Reads the same
``WSNODE_*`` variables as the pod, so it follows ``WSNODE_ADMIN_PORT`` and
``WSNODE_ADMIN_HOST``/``WSNODE_HOST``. Standard library only: the image has no
curl. A draining pod, or one that lost Redis or RabbitMQ, answers 503: unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# Listening on every interface: ask over loopback.
WILDCARD = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104


def readyz_url() -> str:
    host = os.environ.get("WSNODE_ADMIN_HOST") or os.environ.get("WSNODE_HOST") or "127.0.0.1"
    if host in WILDCARD:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = os.environ.get("WSNODE_ADMIN_PORT") or "9765"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    url = readyz_url()
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (our own http URL)
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(512).decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
