#!/usr/bin/env bash
# Benchmark of the sidecar's inbound path against baselines measured in the same run:
#   direct   wrk -> echo app
#   nginx    wrk -> nginx (1 worker, keepalive upstream) -> echo app
#   sidecar  wrk -> outrider-sidecar inbound (rate limiter active, never denying) -> echo app
# With --outbound, also the outbound path (app -> sidecar -> sidecar -> app) and its baseline:
#   nginx-nginx      wrk -> nginx -> nginx -> echo app (two nginx instances, keepalive hops)
#   sidecar-sidecar  wrk -> caller sidecar's outbound (Host: bench) -> callee sidecar inbound -> echo app
#                    (the hop between the sidecars is mTLS: both hold certificates from the mesh CA)
# With --mtls, also the like-for-like baseline of that hop, and what TLS itself costs:
#   nginx-tls-nginx  wrk -> nginx -> mutual TLS 1.3 (client certificate, ECDSA P-256, session
#                    reuse, keepalive) -> nginx -> echo app
#   handshakes/s     openssl s_time, full handshakes with a client certificate, one after
#                    another, each with one HTTP/1.0 request, against the
#                    callee sidecar's inbound and the TLS nginx, and the server CPU per handshake
#   idle memory      RSS growth of those two servers per idle mTLS connection held open
# For each: throughput (wrk -c$BENCH_CONNECTIONS), latency at concurrency 1, CPU time per
# request of the proxy processes, and RSS (idle, after load, peak).
#
# Usage: bash bench/run.sh [--baseline-only] [--outbound] [--mtls]
#   --baseline-only   skip the control plane and sidecars (direct and nginx paths only)
#   --outbound        add the two-hop paths nginx-nginx and sidecar-sidecar
#   --mtls            --outbound plus nginx-tls-nginx, handshakes per second and memory per
#                     idle mTLS connection
#
# Knobs (environment):
#   BENCH_DURATION=10s      length of each measured wrk run
#   BENCH_WARMUP=2s         unmeasured wrk run before each target
#   BENCH_CONNECTIONS=32    connections for the throughput run
#   BENCH_ROUNDS=1          repeat the whole direct/nginx/sidecar cycle; the report uses medians
#   BENCH_SERVER_CPUS=0     CPU list (taskset) for echo, nginx and sidecar; its size N sets
#                           nginx worker_processes, the sidecar's OUTRIDER_WORKER_THREADS and
#                           the echo app's threads, so every server gets the same parallelism
#   BENCH_LOAD_CPUS=1       CPU list for wrk (and the idle control plane)
#   BENCH_WAIT_IDLE=300     before each target, wait up to this many seconds for the machine
#                           to be quiet (<10% CPU busy); 0 = don't wait, just warn
#   BENCH_NO_BUILD=1        use the binaries already in target/$BENCH_PROFILE (default release;
#                           a debug profile is only good for testing this script)
#   BENCH_KEEP=1            keep the temp dir (logs, configs) after the run
#   BENCH_BEFORE_BIN=DIR    also measure DIR/outrider-sidecar (another build, e.g. the
#                           previous commit's) on the same inbound path, as sidecar-before
#   BENCH_IDLE_CONNS=1000   --mtls: idle connections held open for the memory figure
#
# Needs: cargo, nginx, wrk, curl, python3, taskset (and openssl for --mtls). Not part of CI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
PROFILE=${BENCH_PROFILE:-release}
BIN="$ROOT/target/$PROFILE"

BASELINE_ONLY=0
OUTBOUND=0
MTLS=0
for arg in "$@"; do
  case "$arg" in
    --baseline-only) BASELINE_ONLY=1 ;;
    --outbound) OUTBOUND=1 ;;
    --mtls) OUTBOUND=1; MTLS=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

export BENCH_DURATION=${BENCH_DURATION:-10s}
export BENCH_WARMUP=${BENCH_WARMUP:-2s}
export BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-32}
export BENCH_ROUNDS=${BENCH_ROUNDS:-1}
export BENCH_SERVER_CPUS=${BENCH_SERVER_CPUS:-0}
export BENCH_LOAD_CPUS=${BENCH_LOAD_CPUS:-1}
export BENCH_PROFILE=${BENCH_PROFILE:-release}
export BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}

SERVER_THREADS=$(python3 -c 'import sys
n = 0
for part in sys.argv[1].split(","):
    lo, _, hi = part.partition("-")
    n += int(hi or lo) - int(lo) + 1
print(n)' "$BENCH_SERVER_CPUS")
export BENCH_SERVER_THREADS=$SERVER_THREADS

for tool in cargo nginx wrk curl python3 taskset $( ((MTLS)) && echo openssl); do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool (apt-get install -y nginx-light wrk curl python3 util-linux)" >&2; exit 1; }
done

# Idle-connection runs hold BENCH_IDLE_CONNS sockets in each server (and in the holder).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }

WORK=$(mktemp -d /tmp/outrider-bench.XXXXXX)
chmod 755 "$WORK"
RAW="$WORK/raw.jsonl"
: >"$RAW"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS PROCESS_LOG: polls until URL answers 2xx.
wait_http() {
  local url=$1 secs=$2 logf=${3:-}
  local deadline=$((SECONDS + secs))
  until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "timed out waiting for $url"
      [[ -n "$logf" && -f "$logf" ]] && { log "last lines of $logf:"; tail -n 40 "$logf" >&2; }
      exit 1
    fi
    sleep 0.1
  done
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# utime+stime in clock ticks; field 2 (comm) may contain spaces, so cut after ')'.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }
sum_rss() { local k=0 p; for p in "$@"; do k=$((k + $(rss_kb "$p"))); done; echo "$k"; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }

# busy and total jiffies of the server CPUs, from /proc/stat.
server_cpu() { python3 "$BENCH/report.py" cpustat "$BENCH_SERVER_CPUS"; }
all_cpu() { python3 "$BENCH/report.py" cpustat "$BENCH_SERVER_CPUS,$BENCH_LOAD_CPUS"; }
# Fraction of all CPUs busy over one second while nothing of ours is under load: the noise floor.
background_busy() { python3 "$BENCH/report.py" background-busy; }

# record KIND TARGET ROUND JSON-FIELDS: one line of raw results.
record() { printf '{"kind":"%s","target":"%s","round":%s,%s}\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# ---------------------------------------------------------------- build
cd "$ROOT"
if [[ "${BENCH_NO_BUILD:-0}" == 1 ]]; then
  log "not building; using binaries in $BIN"
elif [[ "$PROFILE" != release ]]; then
  log "BENCH_PROFILE=$PROFILE needs BENCH_NO_BUILD=1"; exit 2
elif ((BASELINE_ONLY)); then
  log "building outrider-testkit (release)"
  cargo build --release -p outrider-testkit
else
  log "building control plane, sidecar and testkit (release)"
  if ! cargo build --release -p outrider-control-plane -p outrider-sidecar -p outrider-testkit; then
    log "build failed; use --baseline-only to measure direct and nginx alone"
    exit 1
  fi
fi

# ---------------------------------------------------------------- upstream: echo app
ECHO_PORT=$(free_port)
log "echo app on 127.0.0.1:$ECHO_PORT (CPUs $BENCH_SERVER_CPUS)"
taskset -c "$BENCH_SERVER_CPUS" "$BIN/outrider-echo" --listen "127.0.0.1:$ECHO_PORT" --name bench-echo \
  --threads "$SERVER_THREADS" \
  >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_http "http://127.0.0.1:$ECHO_PORT/healthz" 10 "$WORK/echo.log"

# ---------------------------------------------------------------- peer proxy: nginx
# start_nginx NAME LISTEN_PORT UPSTREAM_PORT [MODE]: an nginx in $WORK/NAME proxying to
# 127.0.0.1:UPSTREAM_PORT; sets NGINX_STARTED_PIDS to "master worker(s)". MODE:
#   plain       (default) plaintext in and out
#   tls-server  listens with TLS 1.3 and requires a client certificate from the bench CA
#   tls-client  speaks TLS 1.3 to its upstream with a client certificate, verifies the
#               upstream's certificate and reuses sessions; keeps those connections alive
start_nginx() {
  local name=$1 port=$2 upstream=$3 mode=${4:-plain} dir="$WORK/$1" master workers
  local listen_tls="" upstream_scheme=http upstream_tls="" scheme=http
  local probe=(curl -fsS -o /dev/null --max-time 1)
  mkdir -p "$dir/tmp"
  chmod -R 777 "$dir/tmp"
  case "$mode" in
    plain) ;;
    tls-server)
      scheme=https
      listen_tls=" ssl;
    ssl_certificate $PKI/server.crt;
    ssl_certificate_key $PKI/server.key;
    ssl_client_certificate $PKI/ca.crt;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:bench:10m;
    ssl_session_tickets on"
      probe+=(--cacert "$PKI/ca.crt" --cert "$PKI/client.crt" --key "$PKI/client.key") ;;
    tls-client)
      upstream_scheme=https
      upstream_tls="
      proxy_ssl_certificate $PKI/client.crt;
      proxy_ssl_certificate_key $PKI/client.key;
      proxy_ssl_trusted_certificate $PKI/ca.crt;
      proxy_ssl_verify on;
      proxy_ssl_name bench-nginx;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;" ;;
    *) log "start_nginx: unknown mode $mode"; exit 2 ;;
  esac
  cat >"$dir/nginx.conf" <<CONF
# As many workers as the sidecar has runtime threads (default 1), on the same CPU(s).
worker_processes $SERVER_THREADS;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  # Never close a benchmark connection because of a request count.
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  upstream next_hop {
    server 127.0.0.1:$upstream;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port$listen_tls;
    location / {
      proxy_pass $upstream_scheme://next_hop;
      proxy_http_version 1.1;
      proxy_set_header Connection "";$upstream_tls
    }
  }
}
CONF
  log "$name ($mode) on 127.0.0.1:$port -> 127.0.0.1:$upstream ($SERVER_THREADS worker(s), CPUs $BENCH_SERVER_CPUS)"
  taskset -c "$BENCH_SERVER_CPUS" nginx -p "$dir" -e "$dir/error.log" \
    -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/stdout.log" 2>&1 &
  master=$!
  PIDS+=("$master")
  local deadline=$((SECONDS + 10))
  until "${probe[@]}" "$scheme://127.0.0.1:$port/healthz" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "timed out waiting for $name"; tail -n 40 "$dir/error.log" >&2; exit 1
    fi
    sleep 0.1
  done
  workers=$(children "$master")
  [[ -n "$workers" ]] || { log "no $name worker found"; exit 1; }
  NGINX_STARTED_PIDS="$master $(echo $workers)"
}

# A private CA for the TLS nginx baseline, with keys of the kind the mesh CA issues (ECDSA
# P-256): a server certificate for the back nginx, a client certificate for the front.
make_pki() {
  PKI="$WORK/pki"
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj /CN=bench-ca -out ca.crt
    for who in server client; do
      openssl ecparam -name prime256v1 -genkey -noout -out "$who.key"
      openssl req -new -key "$who.key" -subj "/CN=bench-$who" -out "$who.csr"
      if [[ $who == server ]]; then
        printf 'subjectAltName=DNS:bench-nginx,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$who.ext"
      else
        printf 'extendedKeyUsage=clientAuth\n' >"$who.ext"
      fi
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -sha256 \
        -extfile "$who.ext" -out "$who.crt"
    done
  ) >"$WORK/pki.log" 2>&1 || { log "openssl failed:"; cat "$WORK/pki.log" >&2; exit 1; }
  chmod 644 "$PKI"/*
}
if ((MTLS)); then make_pki; fi

NGINX_PORT=$(free_port)
start_nginx nginx "$NGINX_PORT" "$ECHO_PORT"
NGINX_PIDS=$NGINX_STARTED_PIDS

# ---------------------------------------------------------------- Outrider
TARGETS=(direct nginx)
declare -A URL=([direct]="http://127.0.0.1:$ECHO_PORT/" [nginx]="http://127.0.0.1:$NGINX_PORT/")
declare -A PROXY_PIDS=([direct]="" [nginx]="$NGINX_PIDS")
# The Host header a path needs (the outbound proxy routes by Host); none for the others.
declare -A HOST_HEADER=()

if ((OUTBOUND)); then
  # The front nginx proxies to the first one, which proxies to the echo app.
  NGINX2_PORT=$(free_port)
  start_nginx nginx-front "$NGINX2_PORT" "$NGINX_PORT"
  TARGETS+=(nginx-nginx)
  URL[nginx-nginx]="http://127.0.0.1:$NGINX2_PORT/"
  PROXY_PIDS[nginx-nginx]="$NGINX_STARTED_PIDS $NGINX_PIDS"
fi

if ((MTLS)); then
  # The same two hops with mutual TLS between them: the back nginx terminates it.
  NGINX_TLS_PORT=$(free_port); NGINX_TLS_FRONT_PORT=$(free_port)
  start_nginx nginx-tls "$NGINX_TLS_PORT" "$ECHO_PORT" tls-server
  NGINX_TLS_PIDS=$NGINX_STARTED_PIDS
  start_nginx nginx-tls-front "$NGINX_TLS_FRONT_PORT" "$NGINX_TLS_PORT" tls-client
  TARGETS+=(nginx-tls-nginx)
  URL[nginx-tls-nginx]="http://127.0.0.1:$NGINX_TLS_FRONT_PORT/"
  PROXY_PIDS[nginx-tls-nginx]="$NGINX_STARTED_PIDS $NGINX_TLS_PIDS"
fi

if ((!BASELINE_ONLY)); then
  CP_GRPC=$(free_port); CP_HTTP=$(free_port)
  SC_IN=$(free_port); SC_ADMIN=$(free_port); SC_OUT=$(free_port)
  mkdir -p "$WORK/cp"
  log "control plane: grpc 127.0.0.1:$CP_GRPC, http 127.0.0.1:$CP_HTTP (CPUs $BENCH_LOAD_CPUS; idle during load)"
  taskset -c "$BENCH_LOAD_CPUS" "$BIN/outrider-control-plane" --data-dir "$WORK/cp" \
    --grpc-addr "127.0.0.1:$CP_GRPC" --http-addr "127.0.0.1:$CP_HTTP" >"$WORK/cp.log" 2>&1 &
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$CP_HTTP/healthz" 30 "$WORK/cp.log"

  # start_sidecar BIN NAME SERVICE INBOUND ADMIN OUTBOUND: one sidecar of SERVICE in front
  # of the echo app, state in $WORK/NAME, log in $WORK/NAME.log; sets STARTED_PID.
  start_sidecar() {
    local bin=$1 name=$2 service=$3 in=$4 admin=$5 out=$6
    mkdir -p "$WORK/$name"
    log "$name ($bin): inbound 127.0.0.1:$in, admin 127.0.0.1:$admin, outbound 127.0.0.1:$out ($SERVER_THREADS thread(s), CPUs $BENCH_SERVER_CPUS)"
    OUTRIDER_CONTROL_PLANE="http://127.0.0.1:$CP_GRPC" OUTRIDER_SERVICE="$service" OUTRIDER_POD_NAME="$service-1" \
      OUTRIDER_APP_PORT="$ECHO_PORT" OUTRIDER_INBOUND_ADDR="127.0.0.1:$in" \
      OUTRIDER_ADMIN_ADDR="127.0.0.1:$admin" OUTRIDER_OUTBOUND_ADDR="127.0.0.1:$out" OUTRIDER_HEALTH_ADDR=off \
      OUTRIDER_STATE_DIR="$WORK/$name" OUTRIDER_CONFIG_DIR="$WORK/$name/config" \
      OUTRIDER_WORKER_THREADS="$SERVER_THREADS" OUTRIDER_LOG="${OUTRIDER_LOG:-warn}" \
      taskset -c "$BENCH_SERVER_CPUS" "$bin/outrider-sidecar" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_http "http://127.0.0.1:$admin/readyz" 30 "$WORK/$name.log"
  }

  # limit_and_wait NAME SERVICE ADMIN: stores a limit so high it never denies (the
  # limiter runs on every request, as in production) and waits until the sidecar at
  # ADMIN enforces it.
  limit_and_wait() {
    local name=$1 service=$2 admin=$3 resp revision deadline
    resp=$(curl -fsS -X PUT -H 'content-type: application/json' \
      "http://127.0.0.1:$CP_HTTP/api/v1/services/$service/policies/rate-limit" \
      -d '{"rules":[{"name":"all","requestsPerSecond":100000000,"burst":100000000}]}')
    revision=$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
    log "rate-limit policy of $service stored as revision $revision; waiting for $name to apply it"
    deadline=$((SECONDS + 30))
    until curl -fsS --max-time 1 "http://127.0.0.1:$admin/config_dump" 2>/dev/null \
        | python3 "$BENCH/report.py" has-revision "$revision"; do
      if ((SECONDS >= deadline)); then
        log "$name never showed revision $revision in /config_dump"; tail -n 40 "$WORK/$name.log" >&2; exit 1
      fi
      sleep 0.2
    done
  }

  start_sidecar "$BIN" sidecar bench "$SC_IN" "$SC_ADMIN" "$SC_OUT"
  SIDECAR_PID=$STARTED_PID
  limit_and_wait sidecar bench "$SC_ADMIN"
  curl -fsS "http://127.0.0.1:$SC_ADMIN/config_dump" >"$WORK/config_dump.json"
  TARGETS+=(sidecar)
  URL[sidecar]="http://127.0.0.1:$SC_IN/"
  PROXY_PIDS[sidecar]="$SIDECAR_PID"

  if [[ -n "${BENCH_BEFORE_BIN:-}" ]]; then
    # The same path through another build of the sidecar (say, the previous commit's),
    # with the same app, control plane and policy, measured in the same run. Its own
    # service name keeps it out of the two-hop path's endpoints.
    SB_IN=$(free_port); SB_ADMIN=$(free_port); SB_OUT=$(free_port)
    start_sidecar "$BENCH_BEFORE_BIN" sidecar-before bench-before "$SB_IN" "$SB_ADMIN" "$SB_OUT"
    limit_and_wait sidecar-before bench-before "$SB_ADMIN"
    TARGETS+=(sidecar-before)
    URL[sidecar-before]="http://127.0.0.1:$SB_IN/"
    PROXY_PIDS[sidecar-before]="$STARTED_PID"
  fi

  if ((OUTBOUND)); then
    # The caller: a sidecar of another service whose app (the same echo process, idle
    # here) calls `bench` through the outbound port, as an app in the mesh would.
    CL_IN=$(free_port); CL_ADMIN=$(free_port); CL_OUT=$(free_port)
    start_sidecar "$BIN" caller bench-client "$CL_IN" "$CL_ADMIN" "$CL_OUT"
    CALLER_PID=$STARTED_PID
    log "waiting for the caller to route Host: bench to the callee"
    deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null --max-time 1 -H 'Host: bench' "http://127.0.0.1:$CL_OUT/healthz" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        log "the caller never routed to bench:"; curl -sS -H 'Host: bench' "http://127.0.0.1:$CL_OUT/healthz" >&2 || true
        tail -n 40 "$WORK/caller.log" >&2; exit 1
      fi
      sleep 0.2
    done
    # The hop must be mTLS before it is measured: the callee tells its app who called,
    # which it only knows from the caller's certificate.
    log "waiting for the hop between the sidecars to be mTLS"
    deadline=$((SECONDS + 30))
    until curl -fsS --max-time 1 -H 'Host: bench' "http://127.0.0.1:$CL_OUT/?headers=1" 2>/dev/null \
        | grep -q 'spiffe://[^"]*/svc/bench-client'; do
      if ((SECONDS >= deadline)); then
        log "the callee never saw the caller's identity; is the hop plaintext?"
        curl -sS -H 'Host: bench' "http://127.0.0.1:$CL_OUT/?headers=1" >&2 || true
        tail -n 40 "$WORK/caller.log" "$WORK/sidecar.log" >&2; exit 1
      fi
      sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$CL_ADMIN/config_dump" >"$WORK/caller_config_dump.json"
    TARGETS+=(sidecar-sidecar)
    URL[sidecar-sidecar]="http://127.0.0.1:$CL_OUT/"
    HOST_HEADER[sidecar-sidecar]="Host: bench"
    PROXY_PIDS[sidecar-sidecar]="$CALLER_PID $SIDECAR_PID"
  fi
fi

# ---------------------------------------------------------------- sanity: every path reaches the echo app
# hdr_args TARGET: the -H arguments a path needs, one per line (none, or its Host).
hdr_args() { if [[ -n "${HOST_HEADER[$1]:-}" ]]; then printf '%s\n' -H "${HOST_HEADER[$1]}"; fi; }

for t in "${TARGETS[@]}"; do
  mapfile -t H < <(hdr_args "$t")
  hdrs=$(curl -sS -D - -o /dev/null -H 'x-request-id: bench-sanity' "${H[@]}" "${URL[$t]}")
  if ! grep -qi '^x-echo-name: bench-echo' <<<"$hdrs" || ! grep -q ' 200' <<<"$(head -n1 <<<"$hdrs")"; then
    log "$t (${URL[$t]}) does not reach the echo app with 200:"; printf '%s\n' "$hdrs" >&2; exit 1
  fi
  printf '%s' "$hdrs" >"$WORK/headers-$t.txt"
done
for t in sidecar sidecar-before sidecar-sidecar; do
  if [[ -n "${URL[$t]:-}" ]] && ! grep -qi '^ratelimit-policy:' "$WORK/headers-$t.txt"; then
    log "WARNING: the $t answer carries no RateLimit-Policy header; is the callee's limiter active?"
  fi
done

# ---------------------------------------------------------------- measure
# run_wrk TARGET KIND ROUND ARGS...: one measured wrk run, recorded with the proxy's CPU time.
run_wrk() {
  local target=$1 kind=$2 round=$3; shift 3
  local pids=${PROXY_PIDS[$target]} before after out cpu0 cpu1 own0 own1
  # shellcheck disable=SC2086
  before=$(sum_ticks $pids)
  # shellcheck disable=SC2086
  own0=$(sum_ticks "$ECHO_PID" $pids)
  cpu0=$(server_cpu)
  all0=$(all_cpu)
  # `times` in the subshell prints wrk's CPU time (its children's line) after the run.
  local h
  mapfile -t h < <(hdr_args "$target")
  out=$(taskset -c "$BENCH_LOAD_CPUS" wrk -s "$BENCH/wrk-report.lua" "${h[@]}" "$@" "${URL[$target]}"; times)
  all1=$(all_cpu)
  alive
  cpu1=$(server_cpu)
  # shellcheck disable=SC2086
  after=$(sum_ticks $pids)
  # shellcheck disable=SC2086
  own1=$(sum_ticks "$ECHO_PID" $pids)
  local json busy wrk_secs
  json=$(sed -n 's/^WRKJSON //p' <<<"$out")
  # last line of `times`: children's user and system time, e.g. "0m1.234s 0m5.678s"
  wrk_secs=$(tail -n1 <<<"$out" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } printf "%.3f", n }')
  [[ -n "$json" ]] || { log "no result from wrk:"; printf '%s\n' "$out" >&2; exit 1; }
  # Fraction of the server CPUs' time that was busy (1.0 = saturated; anything else there counts too).
  busy=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { split(a, x, " "); split(b, y, " ");
    t = y[2] - x[2]; printf "%.3f", (t > 0 ? (y[1] - x[1]) / t : 0) }')
  record "$kind" "$target" "$round" \
    "\"proxyCpuTicks\":$((after - before)),\"serverCpuBusy\":$busy,\"serverJiffies\":[$(tr ' ' , <<<"$cpu0"),$(tr ' ' , <<<"$cpu1")],\"ownTicks\":$((own1 - own0)),\"allJiffies\":[$(tr ' ' , <<<"$all0"),$(tr ' ' , <<<"$all1")],\"wrkCpuSeconds\":$wrk_secs,\"wrk\":$json"
  python3 "$BENCH/report.py" line <<<"$json" | sed "s/^/[bench]   $target $kind: /" >&2
}

# alive: every server we started must still be running, or the numbers mean nothing.
alive() {
  local pid
  for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || echo gone)) died; logs in $WORK:"
      tail -n 20 "$WORK"/*.log "$WORK"/nginx*/error.log >&2 2>/dev/null || true
      BENCH_KEEP=1
      exit 1
    fi
  done
}

record_rss() {
  local target=$1 phase=$2 round=$3 p
  local pids=${PROXY_PIDS[$target]}
  [[ -n "$pids" ]] || return 0
  local items=()
  for p in $pids; do
    items+=("{\"pid\":$p,\"comm\":\"$(cat "/proc/$p/comm")\",\"rssKb\":$(rss_kb "$p"),\"hwmKb\":$(hwm_kb "$p")}")
  done
  record rss "$target" "$round" "\"phase\":\"$phase\",\"processes\":[$(IFS=,; echo "${items[*]}")]"
}

for round in $(seq "$BENCH_ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    log "round $round/$BENCH_ROUNDS: $t (${URL[$t]})"
    alive
    record_rss "$t" idle "$round"
    bg=$(background_busy)
    idle_deadline=$((SECONDS + ${BENCH_WAIT_IDLE:-0}))
    while awk -v b="$bg" 'BEGIN { exit !(b > 0.10) }' && ((SECONDS < idle_deadline)); do
      log "machine busy ($(awk -v b="$bg" 'BEGIN { printf "%.0f%%", b * 100 }')); waiting for it to be quiet"
      sleep 4
      bg=$(background_busy)
    done
    record background "$t" "$round" "\"cpuBusy\":$bg"
    if awk -v b="$bg" 'BEGIN { exit !(b > 0.10) }'; then
      log "WARNING: CPUs $(awk -v b="$bg" 'BEGIN { printf "%.0f%%", b * 100 }') busy before load; something else is running, results will be noisy"
    fi
    mapfile -t H < <(hdr_args "$t")
    taskset -c "$BENCH_LOAD_CPUS" wrk -t1 -c"$BENCH_CONNECTIONS" -d"$BENCH_WARMUP" "${H[@]}" "${URL[$t]}" >/dev/null
    run_wrk "$t" throughput "$round" -t1 -c"$BENCH_CONNECTIONS" -d"$BENCH_DURATION"
    record_rss "$t" loaded "$round"
    run_wrk "$t" latency "$round" -t1 -c1 -d"$BENCH_DURATION" --latency
  done
done

# ---------------------------------------------------------------- mTLS: handshakes and idle connections
# The two servers that terminate mutual TLS: the callee sidecar's inbound, with the caller
# sidecar's own certificate as the client's, and the back TLS nginx with the bench CA's.
if ((MTLS && !BASELINE_ONLY)); then
  declare -A TLS_PORT=([sidecar]="$SC_IN" [nginx-tls]="$NGINX_TLS_PORT")
  declare -A TLS_PIDS=([sidecar]="$SIDECAR_PID" [nginx-tls]="$NGINX_TLS_PIDS")
  declare -A TLS_CERT=([sidecar]="$WORK/caller/identity.crt" [nginx-tls]="$PKI/client.crt")
  declare -A TLS_KEY=([sidecar]="$WORK/caller/identity.key" [nginx-tls]="$PKI/client.key")
  declare -A TLS_CA=([sidecar]="$WORK/caller/trust-bundle.pem" [nginx-tls]="$PKI/ca.crt")
  secs=${BENCH_DURATION%s}
  for round in $(seq "$BENCH_ROUNDS"); do
    for t in sidecar nginx-tls; do
      alive
      # Full handshakes, one after another (-new: no resumption), each followed by one
      # request; what the server spends per handshake is its CPU time over the count.
      log "round $round/$BENCH_ROUNDS: $t full mTLS handshakes for ${secs}s (openssl s_time)"
      # shellcheck disable=SC2086
      before=$(sum_ticks ${TLS_PIDS[$t]})
      cpu0=$(server_cpu)
      t0=$(date +%s%N)
      out=$(taskset -c "$BENCH_LOAD_CPUS" openssl s_time -connect "127.0.0.1:${TLS_PORT[$t]}" -new \
        -time "$secs" -www /healthz -cert "${TLS_CERT[$t]}" -key "${TLS_KEY[$t]}" \
        -CAfile "${TLS_CA[$t]}" 2>&1) || { log "openssl s_time against $t failed:"; printf '%s\n' "$out" >&2; exit 1; }
      t1=$(date +%s%N)
      cpu1=$(server_cpu)
      # shellcheck disable=SC2086
      after=$(sum_ticks ${TLS_PIDS[$t]})
      conns=$(sed -n 's/^\([0-9]*\) connections in [0-9.]* real seconds.*/\1/p' <<<"$out" | head -n1)
      [[ -n "$conns" ]] || { log "no count from openssl s_time against $t:"; printf '%s\n' "$out" >&2; exit 1; }
      busy=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; printf "%.3f", (t > 0 ? (y[1] - x[1]) / t : 0) }')
      # -time counts s_time's own CPU seconds, not the clock's: the rate is over wall time.
      wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
      record handshakes "$t" "$round" \
        "\"connections\":$conns,\"seconds\":$wall,\"proxyCpuTicks\":$((after - before)),\"serverCpuBusy\":$busy"
      log "  $t: $conns handshakes in ${wall}s, server CPU $((after - before)) ticks"

      # Idle connections: the servers' RSS with BENCH_IDLE_CONNS more mTLS connections open.
      # First round only: once they close, nginx keeps the memory they had (its pools and
      # malloc's heap), so a second hold would cost it nothing visible.
      if ((round > 1)); then sleep 2; continue; fi
      # shellcheck disable=SC2086
      rss0=$(sum_rss ${TLS_PIDS[$t]})
      python3 "$BENCH/tls_hold.py" --port "${TLS_PORT[$t]}" --count "$BENCH_IDLE_CONNS" \
        --cert "${TLS_CERT[$t]}" --key "${TLS_KEY[$t]}" --ca "${TLS_CA[$t]}" >"$WORK/hold-$t.log" 2>&1 &
      hold=$!
      until grep -q '^held\|^failed' "$WORK/hold-$t.log" 2>/dev/null || ! kill -0 "$hold" 2>/dev/null; do sleep 0.2; done
      if ! grep -q '^held' "$WORK/hold-$t.log"; then
        log "holding $BENCH_IDLE_CONNS connections to $t failed:"; cat "$WORK/hold-$t.log" >&2; exit 1
      fi
      sleep 1
      # shellcheck disable=SC2086
      rss1=$(sum_rss ${TLS_PIDS[$t]})
      kill -TERM "$hold"; wait "$hold" 2>/dev/null || true
      record idleconns "$t" "$round" "\"connections\":$BENCH_IDLE_CONNS,\"rssBeforeKb\":$rss0,\"rssAfterKb\":$rss1"
      log "  $t: RSS $rss0 KiB -> $rss1 KiB with $BENCH_IDLE_CONNS idle mTLS connections"
      sleep 2
    done
  done
fi

# ---------------------------------------------------------------- report
mkdir -p "$BENCH/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$BENCH/results/$STAMP.json"
python3 "$BENCH/report.py" collect --raw "$RAW" --out "$OUT" \
  --echo-pid "$ECHO_PID" --clk-tck "$(getconf CLK_TCK)"
log "raw results: $OUT"
echo
python3 "$BENCH/report.py" markdown "$OUT"
