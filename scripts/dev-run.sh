#!/usr/bin/env bash
# `make run`: one embedded pod on 127.0.0.1:8765 (admin 9765) with a development
# JWT secret and API key, kept in .dev.env so tokens survive restarts.
# WSNODE_PORT and WSNODE_ADMIN_PORT choose other ports: WSNODE_PORT=8800 make run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DEV_ENV=${WSNODE_DEV_ENV:-.dev.env}
# Read before .dev.env is loaded: the shell's choice wins.
PORT=${WSNODE_PORT:-8765}
ADMIN_PORT=${WSNODE_ADMIN_PORT:-9765}
POD_ID=${WSNODE_POD_ID:-dev}

if [ ! -f "$DEV_ENV" ]; then
  umask 077
  {
    echo "WSNODE_JWT_SECRET=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')"
    echo "WSNODE_API_KEY=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(16))')"
  } > "$DEV_ENV"
fi
set -a; . "$(cd "$(dirname "$DEV_ENV")" && pwd)/$(basename "$DEV_ENV")"; set +a

port_taken() {  # a listener on 127.0.0.1:$1 (bash's /dev/tcp: no extra tool needed)
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for p in "$PORT" "$ADMIN_PORT"; do
  if port_taken "$p"; then
    echo "make run: port $p on 127.0.0.1 is in use (another pod, or another make run?)" >&2
    echo "hint: stop it, or pick free ports: WSNODE_PORT=8800 WSNODE_ADMIN_PORT=9800 make run" >&2
    exit 1
  fi
done

cat <<MSG
wsnode development pod (embedded: no Redis or RabbitMQ needed)
  WebSocket  ws://127.0.0.1:$PORT/ws      admin  http://127.0.0.1:$ADMIN_PORT
  export WSNODE_JWT_SECRET=$WSNODE_JWT_SECRET
  export WSNODE_API_KEY=$WSNODE_API_KEY
  client:  $BIN/python -m wsnode.examples.chat_client alice --url ws://127.0.0.1:$PORT/ws
  token:   $BIN/wsctl token alice
  send:    $BIN/wsctl send alice --type notification --payload '{"text":"hi"}' --node http://127.0.0.1:$ADMIN_PORT
  (run those in other shells after the two exports; Ctrl-C drains and stops the pod)
MSG
exec "$BIN/wsnode" serve --pod-id "$POD_ID" --host 127.0.0.1 --port "$PORT" \
  --admin-port "$ADMIN_PORT" --app wsnode.examples.chat
