#!/usr/bin/env bash
# `make run`: one embedded pod on 127.0.0.1:8765 (admin 9765) with a development
# JWT secret and API key, kept in .dev.env so tokens survive restarts.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DEV_ENV=${WSNODE_DEV_ENV:-.dev.env}

if [ ! -f "$DEV_ENV" ]; then
  umask 077
  {
    echo "WSNODE_JWT_SECRET=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')"
    echo "WSNODE_API_KEY=$("$BIN/python" -c 'import secrets; print(secrets.token_hex(16))')"
  } > "$DEV_ENV"
fi
set -a; . "$(cd "$(dirname "$DEV_ENV")" && pwd)/$(basename "$DEV_ENV")"; set +a

cat <<MSG
wsnode development pod (embedded: no Redis or RabbitMQ needed)
  WebSocket  ws://127.0.0.1:8765/ws      admin  http://127.0.0.1:9765
  export WSNODE_JWT_SECRET=$WSNODE_JWT_SECRET
  export WSNODE_API_KEY=$WSNODE_API_KEY
  token:   $BIN/wsctl token alice
  send:    $BIN/wsctl send alice --type notification --payload '{"text":"hi"}' --node http://127.0.0.1:9765
  (run those in another shell after the two exports; Ctrl-C drains and stops the pod)
MSG
exec "$BIN/wsnode" serve --pod-id "${WSNODE_POD_ID:-dev}" --host 127.0.0.1 --port 8765 \
  --admin-port 9765 --app wsnode.examples.chat
