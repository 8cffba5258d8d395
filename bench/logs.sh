#!/usr/bin/env bash
# Log shipping throughput: lines/s from a log file to a collector, and the shipper's
# RSS while doing it — the Outrider sidecar (file → HTTP NDJSON sink) against rsyslog
# (imfile → omfwd over TCP; Debian's rsyslog has no omhttp) in the same run, on the
# same pre-generated file, each shipping to a counting collector on localhost.
#
#   bash bench/logs.sh                 # 500,000 lines
#   BENCH_LINES=200000 bash bench/logs.sh
#
# Needs cargo, python3, rsyslog (apt-get install rsyslog). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${BENCH_LINES:-500000}
BATCH=${BENCH_BATCH:-1000}
cargo build --release --bins --locked -q
BIN=$PWD/target/release
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A collector that counts lines: HTTP POST bodies on one port, a TCP stream on another.
HTTP_PORT=$(free_port); TCP_PORT=$(free_port); COUNT_PORT=$(free_port)
cat > "$tmp/collector.py" <<'PY'
import socketserver, sys, threading, http.server
counts = {"http": 0, "tcp": 0}
lock = threading.Lock()
class Ingest(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = self.rfile.read(n)
        with lock: counts["http"] += body.count(b"\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        with lock: b = ("%d %d\n" % (counts["http"], counts["tcp"])).encode()
        self.send_response(200); self.send_header("content-length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(1 << 16)
            if not d: return
            with lock: counts["tcp"] += d.count(b"\n")
class H(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
class T(socketserver.ThreadingMixIn, socketserver.TCPServer): daemon_threads = True; allow_reuse_address = True
h, t = int(sys.argv[1]), int(sys.argv[2])
threading.Thread(target=T(("127.0.0.1", t), Tcp).serve_forever, daemon=True).start()
H(("127.0.0.1", h), Ingest).serve_forever()
PY
python3 "$tmp/collector.py" "$HTTP_PORT" "$TCP_PORT" & pids+=($!)
count() { curl -s "http://127.0.0.1:$HTTP_PORT/" | awk -v w="$1" '{print (w=="http") ? $1 : $2}'; }

python3 - "$tmp/lines.log" "$LINES" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write('{"seq":%d,"level":"info","msg":"order %d processed in 12ms","user":"u%d"}\n' % (i, i, i % 977))
PY
echo "generated $LINES lines ($(du -h "$tmp/lines.log" | cut -f1))"

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# run_until WHAT PID: waits for LINES at the collector, sampling RSS; prints "secs peak_kib"
measure() {
  local what=$1 pid=$2 start peak=0 r n
  start=$(date +%s.%N)
  while :; do
    n=$(count "$what"); r=$(rss "$pid"); [ "$r" -gt "$peak" ] && peak=$r
    [ "$n" -ge "$LINES" ] && break
    sleep 0.1
  done
  echo "$(echo "$(date +%s.%N) - $start" | bc -l) $peak"
}

# --- Outrider sidecar ----------------------------------------------------------------
CP_GRPC=$(free_port); CP_HTTP=$(free_port); APP=$(free_port)
"$BIN/outrider-control-plane" --grpc-addr 127.0.0.1:$CP_GRPC --http-addr 127.0.0.1:$CP_HTTP --data-dir "$tmp/cp" >"$tmp/cp.log" 2>&1 & pids+=($!)
"$BIN/outrider-echo" --listen 127.0.0.1:$APP --name app >"$tmp/echo.log" 2>&1 & pids+=($!)
mkdir -p "$tmp/sc-logs"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$CP_HTTP/readyz" >/dev/null && break; sleep 0.1; done
curl -sf -X PUT "http://127.0.0.1:$CP_HTTP/api/v1/services/bench/policies/logging" -H 'content-type: application/json' \
  -d "{\"appLogs\":[{\"path\":\"$tmp/sc-logs/*.log\",\"parser\":\"json\"}],\"sink\":{\"type\":\"http\",\"url\":\"http://127.0.0.1:$HTTP_PORT/ingest\",\"format\":\"ndjson\",\"batchSize\":$BATCH,\"flushInterval\":\"200ms\"}}" >/dev/null
OUTRIDER_CONTROL_PLANE=http://127.0.0.1:$CP_GRPC OUTRIDER_SERVICE=bench OUTRIDER_APP_PORT=$APP \
OUTRIDER_INBOUND_ADDR=127.0.0.1:$(free_port) OUTRIDER_OUTBOUND_ADDR=127.0.0.1:$(free_port) OUTRIDER_ADMIN_ADDR=127.0.0.1:$(free_port) OUTRIDER_HEALTH_ADDR=off \
OUTRIDER_STATE_DIR="$tmp/sc-state" OUTRIDER_CONFIG_DIR="$tmp/sc-config" OUTRIDER_POD_NAME=bench-1 OUTRIDER_LOG_PATHS="$tmp/sc-logs/**" \
  "$BIN/outrider-sidecar" >"$tmp/sidecar.log" 2>&1 & SC=$!; pids+=($SC)
for _ in $(seq 100); do grep -q "log shipping starts" "$tmp/sidecar.log" && break; sleep 0.1; done
sleep 0.5
SC_IDLE=$(rss $SC)
cp "$tmp/lines.log" "$tmp/sc-logs/app.log"
read -r SC_SECS SC_PEAK < <(measure http $SC)

# --- rsyslog -------------------------------------------------------------------------
mkdir -p "$tmp/rs-logs" "$tmp/rs-work"
cat > "$tmp/rsyslog.conf" <<CONF
global(workDirectory="$tmp/rs-work")
module(load="imfile")
template(name="raw" type="string" string="%msg%\n")
input(type="imfile" File="$tmp/rs-logs/*.log" Tag="app" ruleset="ship")
ruleset(name="ship" queue.type="LinkedList" queue.size="100000") {
  action(type="omfwd" target="127.0.0.1" port="$TCP_PORT" protocol="tcp" template="raw"
         queue.type="LinkedList" queue.size="100000" action.resumeRetryCount="-1")
}
CONF
rsyslogd -n -f "$tmp/rsyslog.conf" -i "$tmp/rsyslog.pid" >"$tmp/rsyslog.log" 2>&1 & RS=$!; pids+=($RS)
sleep 1
RS_IDLE=$(rss $RS)
cp "$tmp/lines.log" "$tmp/rs-logs/app.log"
read -r RS_SECS RS_PEAK < <(measure tcp $RS)

rate() { echo "$LINES / $1" | bc -l | xargs printf '%.0f'; }
SC_RATE=$(rate "$SC_SECS"); RS_RATE=$(rate "$RS_SECS")
cat <<TABLE

| shipper | path | lines | seconds | lines/s | RSS idle (MiB) | RSS peak (MiB) |
|---|---|---:|---:|---:|---:|---:|
| outrider-sidecar | file → HTTP NDJSON, batch $BATCH, parse json + enrich | $LINES | $(printf %.2f "$SC_SECS") | $SC_RATE | $(echo "$SC_IDLE/1024" | bc -l | xargs printf %.1f) | $(echo "$SC_PEAK/1024" | bc -l | xargs printf %.1f) |
| rsyslogd $(rsyslogd -v | head -1 | awk '{print $2}' | tr -d ,) | imfile → omfwd TCP, raw message | $LINES | $(printf %.2f "$RS_SECS") | $RS_RATE | $(echo "$RS_IDLE/1024" | bc -l | xargs printf %.1f) | $(echo "$RS_PEAK/1024" | bc -l | xargs printf %.1f) |

sidecar / rsyslog throughput: $(echo "$SC_RATE / $RS_RATE" | bc -l | xargs printf %.2f)
TABLE
