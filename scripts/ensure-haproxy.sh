#!/usr/bin/env bash
# Make sure an `haproxy` binary is installed, for `make cluster` and tests/deploy
# (deploy/haproxy/haproxy.cfg needs 2.6 or newer, as in Debian 12): already there,
# nothing to do; absent, install Debian's package with apt-get. Never starts or stops a service: the package's own service is disabled
# again at once, because the loopback cluster runs its own haproxy in the foreground.
set -euo pipefail

say() { echo "haproxy: $*" >&2; }

find_haproxy() {
  command -v haproxy 2>/dev/null || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; }
}

check_version() { # warn only: the tests' `haproxy -c` names what an old one lacks
  local v
  v=$("$1" -v 2>/dev/null | sed -n 's/^HA-\{0,1\}Proxy version \([0-9]*\.[0-9]*\).*/\1/p' | head -1)
  case "$v" in
    1.*|2.[0-5]) say "$1 is version $v; deploy/haproxy/haproxy.cfg needs 2.6 or newer" ;;
  esac
}

if bin=$(find_haproxy) && [ -n "$bin" ]; then
  check_version "$bin"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "haproxy is not installed and apt-get is not available: install haproxy (2.4+) and retry"
  exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
say "installing haproxy with apt-get"
# policy-rc.d 101: the package must not start its own haproxy on port 80.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  created_policy=1
fi
cleanup() { [ -z "$created_policy" ] || $sudo rm -f "$policy"; }
trap cleanup EXIT
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  haproxy >/dev/null
bin=$(find_haproxy) || { say "apt-get installed haproxy but no binary was found"; exit 1; }
say "installed $("$bin" -v | head -1)"
