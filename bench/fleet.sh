#!/usr/bin/env bash
# Fleet-scale benchmark of the control plane (issue 9): simulated sidecars
# (outrider-fleet-sim) on one control plane, on PostgreSQL and on SQLite, at several
# fleet sizes. For each backend, size and build:
#   ready   time until every sidecar is connected and ACKed its first snapshot
#   rest    control-plane RSS before the fleet and after (per sidecar), CPU and bytes
#           sent over FLEET_REST_S with the whole fleet reporting
#   write   FLEET_WRITES RateLimitPolicy PUTs to a FLEET_HOT-instance service, each until
#           all its sidecars ACKed: write -> ACK delays (p50/p99, from revision_acks),
#           and how many sidecars received anything
#   join    one instance joins one service: how many other sidecars receive anything,
#           and how many bytes
#   roll    a FLEET_ROLL_COUNT-instance service (started on top of the fleet) is replaced
#           pod by pod: duration, control-plane CPU and bytes sent to the whole fleet
# Every wait is capped by FLEET_PHASE_TIMEOUT and reported as "not reached"; a build that
# does not get its fleet ready at one size is not tried at the larger sizes.
#
# Usage: bash bench/fleet.sh
#
# Knobs (environment):
#   FLEET_SIZES="1000 5000 10000"  simulated sidecars (the FLEET_HOT service included)
#   FLEET_SERVICES=100        services they are spread over (one of them is fleet-hot)
#   FLEET_REPORT_MS=10000     health report interval; the control plane is told it, with
#                             --unhealthy-after 3x and --disconnected-after 6x
#   FLEET_PHASE_TIMEOUT=300   seconds any one wait may take
#   FLEET_BACKENDS="postgres sqlite"
#   FLEET_PG_URL=postgres://postgres@127.0.0.1:5432   server for a fresh database per run
#   FLEET_HOT=100             instances of fleet-hot, the service the writes go to
#   FLEET_WRITES=3            policy writes in the write phase (delays pooled)
#   FLEET_SETTLE_S=10         pause after the fleet is ready, before measuring
#   FLEET_REST_S=30           length of the CPU-at-rest window
#   FLEET_JOIN_WAIT_S=5       how long after the join what arrives still counts
#   FLEET_ROLL_COUNT=1000     instances of fleet-roll (0: skip the roll)
#   FLEET_ROLL_MS=50          pause between two replacements of the roll
#   FLEET_CP_CPUS, FLEET_SIM_CPUS   taskset CPU lists for the control plane and the
#                             simulators (default: unpinned; PostgreSQL is never pinned)
#   BENCH_NO_BUILD=1          use the binaries already in target/$BENCH_PROFILE (default
#                             release; a debug profile is only good for testing this script)
#   BENCH_KEEP=1              keep the temp dir (logs, stats files, SQLite stores)
#   BENCH_BEFORE_BIN=DIR      also measure DIR/outrider-control-plane (another build, e.g.
#                             the previous commit's) in the same run, as "before"; its
#                             DIR/outrider-fleet-sim drives it if that one has --stats-file
#
# Needs: cargo, curl, python3, psql (for postgres), taskset (if pinning). Not part of CI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
PROFILE=${BENCH_PROFILE:-release}
BIN="$ROOT/target/$PROFILE"
REPORT="$BENCH/fleet_report.py"

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

export FLEET_SIZES=${FLEET_SIZES:-1000 5000 10000}
export FLEET_SERVICES=${FLEET_SERVICES:-100}
export FLEET_REPORT_MS=${FLEET_REPORT_MS:-10000}
export FLEET_PHASE_TIMEOUT=${FLEET_PHASE_TIMEOUT:-300}
export FLEET_BACKENDS=${FLEET_BACKENDS:-postgres sqlite}
export FLEET_PG_URL=${FLEET_PG_URL:-postgres://postgres@127.0.0.1:5432}
export FLEET_HOT=${FLEET_HOT:-100}
export FLEET_WRITES=${FLEET_WRITES:-3}
export FLEET_SETTLE_S=${FLEET_SETTLE_S:-10}
export FLEET_REST_S=${FLEET_REST_S:-30}
export FLEET_JOIN_WAIT_S=${FLEET_JOIN_WAIT_S:-5}
export FLEET_ROLL_COUNT=${FLEET_ROLL_COUNT:-1000}
export FLEET_ROLL_MS=${FLEET_ROLL_MS:-50}
export FLEET_CP_CPUS=${FLEET_CP_CPUS:-}
export FLEET_SIM_CPUS=${FLEET_SIM_CPUS:-}
export BENCH_PROFILE=$PROFILE

log() { printf '\033[1m[fleet]\033[0m %s\n' "$*" >&2; }

tools=(cargo curl python3)
[[ " $FLEET_BACKENDS " == *" postgres "* ]] && tools+=(psql)
[[ -n "$FLEET_CP_CPUS$FLEET_SIM_CPUS" ]] && tools+=(taskset)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
((FLEET_SERVICES >= 2)) || { echo "FLEET_SERVICES must be at least 2 (one is fleet-hot)" >&2; exit 2; }
for n in $FLEET_SIZES; do
  ((n > FLEET_HOT)) || { echo "every size must exceed FLEET_HOT=$FLEET_HOT (got $n)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/outrider-fleet.XXXXXX)
RAW="$WORK/raw.jsonl"
: >"$RAW"
PIDS=()        # everything we started, for the exit trap
RUN_PIDS=()    # the current run's simulators (stopped before its control plane)
DATABASES=()   # PostgreSQL databases we created

stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

cleanup() {
  stop_pids "${PIDS[@]}"
  local db
  for db in "${DATABASES[@]}"; do
    psql "$FLEET_PG_URL/postgres" -XAtqc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# utime+stime in clock ticks; field 2 (comm) may contain spaces, so cut after ')'.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }

# pinned CPUS CMD...: execs CMD (under taskset when CPUS is set). Only for `pinned … &`:
# the exec makes $! the process itself, so signals, /proc figures and RSS are its own
# rather than a subshell's.
pinned() {
  local cpus=$1; shift
  if [[ -n "$cpus" ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

# record KIND JSON-FIELDS: one line of raw results for the current run.
record() {
  printf '{"kind":"%s","backend":"%s","build":"%s","size":%s,%s}\n' \
    "$1" "$RUN_BACKEND" "$RUN_BUILD" "$RUN_SIZE" "$2" >>"$RAW"
}

# ---------------------------------------------------------------- build
cd "$ROOT"
if [[ "${BENCH_NO_BUILD:-0}" == 1 ]]; then
  log "not building; using binaries in $BIN"
elif [[ "$PROFILE" != release ]]; then
  log "BENCH_PROFILE=$PROFILE needs BENCH_NO_BUILD=1"; exit 2
else
  log "building control plane and fleet-sim (release)"
  cargo build --release -p outrider-control-plane -p outrider-testkit
fi

BUILDS=(current)
declare -A CP_BIN=([current]="$BIN/outrider-control-plane")
declare -A SIM_BIN=([current]="$BIN/outrider-fleet-sim")
if [[ -n "${BENCH_BEFORE_BIN:-}" ]]; then
  BUILDS=(before current)
  CP_BIN[before]="$BENCH_BEFORE_BIN/outrider-control-plane"
  SIM_BIN[before]="$BIN/outrider-fleet-sim"
  # A simulator of the same build speaks that build's protocol; an older one without
  # --stats-file cannot report what the phases need, so the current one drives it.
  if "$BENCH_BEFORE_BIN/outrider-fleet-sim" --help 2>/dev/null | grep -q -- --stats-file; then
    SIM_BIN[before]="$BENCH_BEFORE_BIN/outrider-fleet-sim"
  fi
fi
for b in "${BUILDS[@]}"; do
  for f in "${CP_BIN[$b]}" "${SIM_BIN[$b]}"; do
    [[ -x "$f" ]] || { log "missing $f"; exit 1; }
  done
  log "$b: ${CP_BIN[$b]} driven by ${SIM_BIN[$b]}"
done
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- one run
# State of the current run: RUN_BACKEND RUN_BUILD RUN_SIZE RUN_DIR CP_PID CP_HTTP
# CP_GRPC DB_URL DB_FILE, and SIM_STATS (stats files of the running simulators).

# sql QUERY: rows of QUERY on the run's store, columns separated by '|'.
sql() {
  if [[ "$RUN_BACKEND" == postgres ]]; then
    psql "$DB_URL" -XAtqc "$1"
  else
    python3 "$REPORT" sqlite "$DB_FILE" "$1"
  fi
}

# start_sim NAME ARGS...: a fleet-sim of the current build with its stdout, stderr and
# stats file in RUN_DIR; sets SIM_PID.
start_sim() {
  local name=$1; shift
  pinned "$FLEET_SIM_CPUS" "${SIM_BIN[$RUN_BUILD]}" --control-plane "http://127.0.0.1:$CP_GRPC" \
    --report-ms "$FLEET_REPORT_MS" --stats-file "$RUN_DIR/$name.json" "$@" \
    >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.err" &
  SIM_PID=$!
  disown "$SIM_PID" # no "Killed" notices from the shell when a run is torn down
  PIDS+=("$SIM_PID")
  RUN_PIDS+=("$SIM_PID")
  SIM_STATS+=("$RUN_DIR/$name.json")
}

# wait_lines SECONDS PATTERN FILE...: until every FILE has a line matching PATTERN;
# fails when the time is up or the control plane died.
wait_lines() {
  local secs=$1 pattern=$2; shift 2
  local deadline=$((SECONDS + secs)) f missing
  while :; do
    missing=0
    for f in "$@"; do grep -q "$pattern" "$f" 2>/dev/null || missing=1; done
    ((missing)) || return 0
    ((SECONDS < deadline)) || return 1
    kill -0 "$CP_PID" 2>/dev/null || { log "the control plane died; last lines of its log:"; tail -n 20 "$RUN_DIR/cp.log" >&2; return 1; }
    sleep 0.1
  done
}

# mark: every running simulator starts its since-mark counters now.
mark() { kill -USR1 "${RUN_PIDS[@]}"; }

# stats [NAME...]: the simulators' counters summed as JSON, once every file was rewritten
# after this call (only NAME's files when given).
stats() {
  local files=("${SIM_STATS[@]}") n
  if (($#)); then files=(); for n in "$@"; do files+=("$RUN_DIR/$n.json"); done; fi
  python3 "$REPORT" stats --after "$(now_ms)" "${files[@]}"
}

start_control_plane() {
  read -r CP_GRPC CP_HTTP < <(python3 "$REPORT" ports 2)
  local store_args=()
  if [[ "$RUN_BACKEND" == postgres ]]; then
    local db="outrider_fleet_$$_${#DATABASES[@]}"
    psql "$FLEET_PG_URL/postgres" -XAtqc "CREATE DATABASE $db" >/dev/null
    DATABASES+=("$db")
    DB_URL="$FLEET_PG_URL/$db"
    store_args=(--database-url "$DB_URL")
  else
    DB_FILE="$RUN_DIR/cp/outrider.db"
    store_args=(--data-dir "$RUN_DIR/cp")
  fi
  OUTRIDER_LOG=${OUTRIDER_LOG:-warn} pinned "$FLEET_CP_CPUS" "${CP_BIN[$RUN_BUILD]}" "${store_args[@]}" \
    --grpc-addr "127.0.0.1:$CP_GRPC" --http-addr "127.0.0.1:$CP_HTTP" \
    --report-interval "${FLEET_REPORT_MS}ms" --unhealthy-after "$((FLEET_REPORT_MS * 3))ms" \
    --disconnected-after "$((FLEET_REPORT_MS * 6))ms" >"$RUN_DIR/cp.log" 2>&1 &
  CP_PID=$!
  disown "$CP_PID"
  PIDS+=("$CP_PID")
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$CP_HTTP/readyz" 2>/dev/null; do
    if ((SECONDS >= deadline)) || ! kill -0 "$CP_PID" 2>/dev/null; then
      log "the control plane did not start; last lines of its log:"; tail -n 40 "$RUN_DIR/cp.log" >&2; exit 1
    fi
    sleep 0.1
  done
}

# not_reached PHASE [JSON-FIELDS]: records that PHASE did not finish in time.
not_reached() {
  log "  $1: not reached in $FLEET_PHASE_TIMEOUT s"
  record "$1" "\"reached\":false,\"timeoutS\":$FLEET_PHASE_TIMEOUT${2:+,$2}"
}

# run_fleet: all phases for RUN_BACKEND/RUN_BUILD/RUN_SIZE; sets NOT_READY=1 if the
# fleet was never ready (and skips the other phases).
run_fleet() {
  local n=$RUN_SIZE main=$((RUN_SIZE - FLEET_HOT)) t0 t1 c0 c1 s
  RUN_DIR="$WORK/$RUN_BACKEND-$RUN_BUILD-$n"
  mkdir -p "$RUN_DIR"
  RUN_PIDS=(); SIM_STATS=()
  start_control_plane
  record rss "\"phase\":\"empty\",\"rssKb\":$(rss_kb "$CP_PID")"

  # ready: the fleet over FLEET_SERVICES-1 services, plus the write target fleet-hot.
  t0=$(now_ms)
  start_sim main --service fleet --services $((FLEET_SERVICES - 1)) --count "$main"
  start_sim hot --service fleet-hot --count "$FLEET_HOT" --start-index "$main"
  if ! wait_lines "$FLEET_PHASE_TIMEOUT" '^ready' "$RUN_DIR/main.out" "$RUN_DIR/hot.out"; then
    not_reached ready "\"stats\":$(stats)"
    NOT_READY=1
    return 0
  fi
  t1=$(now_ms)
  log "  ready: $n sidecars in $(( (t1 - t0) ))ms"
  record ready "\"reached\":true,\"ms\":$((t1 - t0)),\"cpuTicks\":$(cpu_ticks "$CP_PID"),\"clkTck\":$CLK_TCK"

  # rest: RSS and CPU with the whole fleet reporting.
  sleep "$FLEET_SETTLE_S"
  record rss "\"phase\":\"ready\",\"rssKb\":$(rss_kb "$CP_PID")"
  mark
  c0=$(cpu_ticks "$CP_PID"); t0=$(now_ms)
  sleep "$FLEET_REST_S"
  c1=$(cpu_ticks "$CP_PID"); t1=$(now_ms)
  s=$(stats)
  record rest "\"ms\":$((t1 - t0)),\"cpuTicks\":$((c1 - c0)),\"clkTck\":$CLK_TCK,\"rssKb\":$(rss_kb "$CP_PID"),\"hwmKb\":$(hwm_kb "$CP_PID"),\"stats\":$s"
  log "  rest: $((c1 - c0)) ticks over $((t1 - t0))ms, RSS $(rss_kb "$CP_PID") KiB"

  # write: policy PUTs to fleet-hot, each until all its sidecars ACKed.
  local w rev revs=() acked deadline reached=true
  mark
  for w in $(seq "$FLEET_WRITES"); do
    rev=$(curl -fsS -X PUT -H 'content-type: application/json' \
      "http://127.0.0.1:$CP_HTTP/api/v1/services/fleet-hot/policies/rate-limit" \
      -d "{\"rules\":[{\"name\":\"all\",\"requestsPerSecond\":$((1000 + w)),\"burst\":1000}]}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
    revs+=("$rev")
    deadline=$((SECONDS + FLEET_PHASE_TIMEOUT))
    until acked=$(sql "SELECT COUNT(*) FROM revision_acks WHERE revision = $rev") && ((acked >= FLEET_HOT)); do
      if ((SECONDS >= deadline)); then reached=false; break; fi
      sleep 0.1
    done
    [[ $reached == true ]] || break
  done
  sleep 1 # what the last write still sends counts toward its receivers
  local delays
  delays=$(sql "SELECT a.acked_at_ms - r.created_at_ms FROM revision_acks a JOIN revisions r ON r.revision = a.revision
                WHERE a.revision IN ($(IFS=,; echo "${revs[*]}")) ORDER BY 1" | paste -sd, -)
  if [[ $reached == true ]]; then
    record write "\"reached\":true,\"revisions\":[$(IFS=,; echo "${revs[*]}")],\"delaysMs\":[$delays],\"stats\":$(stats)"
    log "  write: ${#revs[@]} revision(s) ACKed by all $FLEET_HOT sidecars of fleet-hot"
  else
    not_reached write "\"revisions\":[$(IFS=,; echo "${revs[*]}")],\"delaysMs\":[$delays],\"stats\":$(stats)"
  fi

  # join: one more instance of fleet-000; what do the others receive?
  mark
  t0=$(now_ms)
  start_sim join --service fleet-000 --count 1 --pod-prefix fleet-join --start-index "$n"
  if wait_lines "$FLEET_PHASE_TIMEOUT" '^ready' "$RUN_DIR/join.out"; then
    t1=$(now_ms)
    sleep "$FLEET_JOIN_WAIT_S"
    record join "\"reached\":true,\"ms\":$((t1 - t0)),\"stats\":$(stats main hot)"
    log "  join: ready in $((t1 - t0))ms"
  else
    not_reached join "\"stats\":$(stats main hot)"
  fi

  # roll: a FLEET_ROLL_COUNT-instance service joins, then is replaced pod by pod.
  ((FLEET_ROLL_COUNT > 0)) || return 0
  t0=$(now_ms)
  start_sim roll --service fleet-roll --count "$FLEET_ROLL_COUNT" --start-index $((n + 1)) \
    --roll-every "$FLEET_ROLL_MS"
  if ! wait_lines "$FLEET_PHASE_TIMEOUT" '^ready' "$RUN_DIR/roll.out"; then
    not_reached roll "\"stage\":\"connect\",\"stats\":$(stats roll)"
    return 0
  fi
  t1=$(now_ms)
  log "  roll: $FLEET_ROLL_COUNT more sidecars ready in $((t1 - t0))ms; rolling"
  sleep "$FLEET_SETTLE_S"
  mark # also starts the roll
  c0=$(cpu_ticks "$CP_PID"); t0=$(now_ms)
  if wait_lines "$FLEET_PHASE_TIMEOUT" '^rolled' "$RUN_DIR/roll.out"; then
    c1=$(cpu_ticks "$CP_PID"); t1=$(now_ms)
    sleep "$FLEET_JOIN_WAIT_S"
    record roll "\"reached\":true,\"ms\":$((t1 - t0)),\"cpuTicks\":$((c1 - c0)),\"clkTck\":$CLK_TCK,\"stats\":$(stats)"
    log "  roll: $FLEET_ROLL_COUNT replaced in $((t1 - t0))ms, $((c1 - c0)) CPU ticks"
  else
    not_reached roll "\"stage\":\"replace\",\"cpuTicks\":$(($(cpu_ticks "$CP_PID") - c0)),\"clkTck\":$CLK_TCK,\"stats\":$(stats)"
  fi
}

# stop_run: the simulators first, so the control plane is not measured tearing them down.
stop_run() {
  stop_pids "${RUN_PIDS[@]}"
  stop_pids "$CP_PID"
  if [[ "$RUN_BACKEND" == postgres ]]; then
    psql "$FLEET_PG_URL/postgres" -XAtqc "DROP DATABASE IF EXISTS ${DB_URL##*/} WITH (FORCE)" >/dev/null
  fi
}

declare -A MISSED=()
for RUN_BACKEND in $FLEET_BACKENDS; do
  for RUN_SIZE in $FLEET_SIZES; do
    for RUN_BUILD in "${BUILDS[@]}"; do
      key="$RUN_BACKEND/$RUN_BUILD"
      if [[ -n "${MISSED[$key]:-}" ]]; then
        log "$key at $RUN_SIZE: skipped (not ready at ${MISSED[$key]})"
        record skipped "\"notReadyAt\":${MISSED[$key]}"
        continue
      fi
      log "$key: $RUN_SIZE sidecars over $FLEET_SERVICES services"
      NOT_READY=0
      run_fleet
      if ((NOT_READY)); then MISSED[$key]=$RUN_SIZE; fi
      stop_run
    done
  done
done

# ---------------------------------------------------------------- report
mkdir -p "$BENCH/results"
OUT="$BENCH/results/fleet-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 "$REPORT" collect --raw "$RAW" --out "$OUT"
log "raw results: $OUT"
echo
python3 "$REPORT" markdown "$OUT"
