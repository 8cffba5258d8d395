#!/usr/bin/env bash
# The main job: a control plane on the embedded SQLite store plus a small demo fleet
# (echo apps with their sidecars) to look at in the API and dashboard.
#
#   bash deploy/demo.sh            # Ctrl-C stops everything
#
# Control plane: http://127.0.0.1:18080 (REST API under /api/v1), gRPC on 18000.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p outrider-control-plane -p outrider-sidecar -p outrider-testkit -p outriderctl
# Where cargo put them: CARGO_TARGET_DIR when set (relative to the repository root,
# as for cargo, which runs from here too).
BIN=${CARGO_TARGET_DIR:-target}/release
DATA=${OUTRIDER_DATA_DIR:-./outrider-data}
mkdir -p "$DATA/demo"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping the demo fleet..."
  # Sidecars first (they deregister), then apps, then the control plane.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

cp_log="$DATA/demo/control-plane.log"
"$BIN/outrider-control-plane" --data-dir "$DATA" --grpc-addr 127.0.0.1:18000 --http-addr 127.0.0.1:18080 \
  >"$cp_log" 2>&1 &
cp_pid=$!

# The end of the control plane's log (without terminal colour codes, and without the
# stack trace that RUST_BACKTRACE adds after the error), then a non-zero exit.
start_failed() {
  echo "control plane did not start: $1; the end of $cp_log:" >&2
  sed '/^Stack backtrace:/,$d' "$cp_log" | tail -n 20 | sed 's/\x1b\[[0-9;]*m//g' >&2
  exit 1
}
# Ready when /readyz answers 200 *and* our process is still alive (so an answer from
# another program already on port 18080 does not count). A process that died (port
# taken, bad --data-dir) fails at once instead of after the whole wait.
ready=
for _ in $(seq 70); do # about 10 s
  kill -0 "$cp_pid" 2>/dev/null || { wait "$cp_pid" 2>/dev/null || true; start_failed "it exited"; }
  if curl -sf -m 1 http://127.0.0.1:18080/readyz >/dev/null && kill -0 "$cp_pid" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.15
done
if [ -z "$ready" ]; then
  kill -TERM "$cp_pid" 2>/dev/null || true
  start_failed "not ready after 10 s"
fi

# name service version app-port inbound-port admin-port
fleet=(
  "web-v1-a web v1 19001 15106 15100"
  "web-v1-b web v1 19002 15206 15200"
  "web-v2-a web v2 19003 15306 15300"
  "api-v1-a api v1 19004 15406 15400"
)
for line in "${fleet[@]}"; do
  read -r pod svc ver app inb adm <<<"$line"
  "$BIN/outrider-echo" --listen "127.0.0.1:$app" --name "$pod" >"$DATA/demo/$pod-app.log" 2>&1 &
  pids+=($!)
  OUTRIDER_CONTROL_PLANE=http://127.0.0.1:18000 OUTRIDER_SERVICE=$svc OUTRIDER_VERSION=$ver \
  OUTRIDER_POD_NAME=$pod OUTRIDER_APP_PORT=$app OUTRIDER_INBOUND_ADDR=127.0.0.1:$inb \
  OUTRIDER_ADMIN_ADDR=127.0.0.1:$adm OUTRIDER_OUTBOUND_ADDR=127.0.0.1:$((inb - 5)) OUTRIDER_HEALTH_ADDR=off \
  OUTRIDER_STATE_DIR="$DATA/demo/$pod/state" OUTRIDER_CONFIG_DIR="$DATA/demo/$pod/config" \
    "$BIN/outrider-sidecar" >"$DATA/demo/$pod-sidecar.log" 2>&1 &
  # Sidecars stop before their apps: put them first.
  pids=($! "${pids[@]}")
done
pids+=("$cp_pid")

# Seed policy once (a restart keeps whatever the operator changed since).
api=http://127.0.0.1:18080/api/v1
if ! curl -sf "$api/services/api/policies/rate-limit" >/dev/null; then
  curl -sf -X PUT "$api/services/api/policies/rate-limit" -H 'content-type: application/json' \
    -d '{"rules":[{"name":"per-client","key":"header:x-client-id","requestsPerSecond":5,"burst":10},
                  {"name":"all","requestsPerSecond":100,"burst":100,"scope":"service"}]}' >/dev/null
  curl -sf -X PUT "$api/services/web/policies/rate-limit" -H 'content-type: application/json' \
    -d '{"rules":[{"name":"all","requestsPerSecond":50,"burst":50,"scope":"service"}]}' >/dev/null
fi

sleep 1
cat <<MSG

Outrider demo is running (logs in $DATA/demo/).
  Dashboard:     http://127.0.0.1:18080/
  REST API:      curl http://127.0.0.1:18080/api/v1/sidecars
  Services:      curl http://127.0.0.1:18080/api/v1/services
  CLI:           $BIN/outriderctl get sidecars
  Through a sidecar (api, 5 req/s per client):
                 for i in \$(seq 15); do curl -s -o /dev/null -w '%{http_code} ' -H 'x-client-id: me' http://127.0.0.1:15406/; done
  Outbound (api's sidecar calling web, v1 and v2):
                 curl -H 'Host: web' http://127.0.0.1:15401/
  Canary:        $BIN/outriderctl canary set web --subset v2 --weight 20 --stable v1
  Sidecar admin: curl http://127.0.0.1:15400/config_dump
Press Ctrl-C to stop.
MSG
wait "$cp_pid"
