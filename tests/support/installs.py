"""One install at a time across test processes.

The suite runs in several pytest-xdist workers (``make test``). Fixtures that
install a tool on a new machine (Chromium and haproxy with apt-get, the JS
client's packages with ``npm ci``) would otherwise run together: two apt-gets
fail on dpkg's lock, two ``npm ci`` in one directory delete each other's files.
:func:`one_at_a_time` holds an exclusive ``flock`` on one file in the system's
temporary directory; callers check again, under it, whether the tool is there.
"""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "wsnode-tests-install.lock"


@contextmanager
def one_at_a_time() -> Iterator[None]:
    """Block until no other test process holds the install lock, then hold it."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
