#!/usr/bin/env bash
# Make sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) answer.
# Already running: nothing to do. Installed but stopped: start. Absent: install
# with apt-get, start. Then wait until each is ready, or fail naming which one.
set -euo pipefail

REDIS_PORT=${REDIS_PORT:-6379}
AMQP_PORT=${AMQP_PORT:-5672}

say() { echo "services: $*" >&2; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exec 3>&- 3<&-
}

redis_ready() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
  else
    port_open 127.0.0.1 "$REDIS_PORT"
  fi
}

amqp_ready() {
  # The AMQP port opens before the broker accepts logins; the diagnostics ping
  # checks the node itself when the tool is present.
  port_open 127.0.0.1 "$AMQP_PORT" || return 1
  if command -v rabbitmq-diagnostics >/dev/null 2>&1; then
    rabbitmq-diagnostics -q check_running >/dev/null 2>&1
  fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "$1 is not installed and apt-get is not available: install $1 and retry"
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "installing $* with apt-get"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # name check seconds
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    if $2; then say "$1 ready"; return 0; fi
    sleep 0.25
  done
  say "$1 did not become ready within $3 s"; return 1
}

if ! redis_ready; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  say "starting redis-server on 127.0.0.1:$REDIS_PORT"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for redis redis_ready 30
fi

if ! amqp_ready; then
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  if ! port_open 127.0.0.1 "$AMQP_PORT"; then
    say "starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  wait_for rabbitmq amqp_ready 90
fi
