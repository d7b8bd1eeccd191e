"""What the JS and browser tests need on the machine, installed by the tests.

- Node.js >= 20 and npm (on the machine; a clear failure otherwise).
- ``clients/js/node_modules``: the test-only npm packages of ``package-lock.json``
  (``ws`` for Node 20, which has no global WebSocket; ``typescript`` to check the
  ``.d.ts``), installed with ``npm ci`` when missing or stale.
- Debian's Chromium (``/usr/bin/chromium``), installed with apt-get when missing.
  No browser is ever downloaded by anything else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.support.installs import one_at_a_time

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "clients" / "js"
CHROMIUM = Path("/usr/bin/chromium")


class MissingTool(RuntimeError):
    """A tool the tests need is not there and could not be installed."""


def node_binary() -> str:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise MissingTool("the JS client tests need Node.js >= 20 and npm on PATH "
                          "(Debian: apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < 20:
        raise MissingTool(f"the JS client tests need Node.js >= 20, found {version}")
    return node


def npm_dependencies() -> Path:
    """``clients/js/node_modules`` as locked, installing it when needed."""
    node_binary()
    lock = JS_DIR / "package-lock.json"
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    with one_at_a_time():  # another worker may be running npm ci in JS_DIR
        if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
            return JS_DIR / "node_modules"
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=JS_DIR, capture_output=True, text=True, timeout=300,
                              check=False)
    if done.returncode != 0:
        raise MissingTool(f"npm ci in {JS_DIR} failed:\n{done.stdout}\n{done.stderr}")
    return JS_DIR / "node_modules"


def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when it is not there yet."""
    with one_at_a_time():  # apt-get of another worker holds dpkg's lock
        return _install_chromium()


def _install_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise MissingTool(f"the browser test needs {CHROMIUM} (Debian package chromium) "
                          "and there is no apt-get to install it")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run([*sudo, *cmd], capture_output=True, text=True, env=env,
                              timeout=900, check=False)
        if done.returncode != 0:
            raise MissingTool(f"could not install chromium ({' '.join(cmd)} exited "
                              f"{done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    if not CHROMIUM.exists():
        raise MissingTool(f"apt-get installed chromium but {CHROMIUM} is missing")
    return CHROMIUM
