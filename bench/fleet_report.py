#!/usr/bin/env python3
"""Helpers for bench/fleet.sh: read the simulators' stats and the SQLite store, and turn
raw records into a results file and markdown tables.

  fleet_report.py stats --after MS FILE...    # simulators' counters summed, once fresh
  fleet_report.py sqlite DB QUERY             # rows of QUERY, read-only, '|'-separated
  fleet_report.py ports N                     # N distinct free TCP ports on 127.0.0.1
  fleet_report.py collect --raw raw.jsonl --out results/fleet-X.json
  fleet_report.py markdown results/fleet-X.json

Standard library only.
"""

import argparse
import json
import math
import os
import platform
import socket
import sqlite3
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import cpu_model, fmt, mib, sh  # noqa: E402  (bench/report.py, run.sh's helpers)

# Counters of outrider-fleet-sim's --stats-file that add up across processes.
SUMMED = ["count", "ready", "messages", "bytes", "snapshots", "streamErrors", "rolled"]
SINCE_MARK = ["receivers", "messages", "bytes"]


def cmd_stats(args):
    # The simulators rewrite their files every second; wait (briefly) for versions
    # written after `--after` so that what happened just before the call is counted.
    deadline = time.time() + 5
    while True:
        docs = []
        for path in args.files:
            try:
                with open(path) as f:
                    docs.append(json.load(f))
            except (OSError, ValueError):
                docs.append(None)
        fresh = all(d is not None and d["atMs"] >= args.after for d in docs)
        if fresh or time.time() >= deadline:
            break
        time.sleep(0.1)
    docs_ok = [d for d in docs if d is not None]
    out = {k: sum(d.get(k, 0) for d in docs_ok) for k in SUMMED}
    out["sinceMark"] = {k: sum(d["sinceMark"][k] for d in docs_ok) for k in SINCE_MARK}
    if not fresh:
        out["stale"] = True
    print(json.dumps(out, separators=(",", ":")))


def cmd_sqlite(args):
    conn = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True, timeout=10)
    for row in conn.execute(args.query):
        print("|".join("" if v is None else str(v) for v in row))


def cmd_ports(args):
    # All bound at once, so the kernel cannot hand out the same port twice.
    socks = [socket.socket() for _ in range(args.n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def percentile(xs, q):
    """Nearest-rank percentile: a value that was actually measured."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, min(len(xs), math.ceil(q / 100 * len(xs))) - 1)]


def summarize(records):
    runs = {}
    for r in records:
        key = (r["backend"], r["build"], r["size"])
        row = runs.setdefault(key, {"backend": key[0], "build": key[1], "size": key[2]})
        kind = r["kind"]
        if kind == "skipped":
            row["skipped"] = {"notReadyAt": r["notReadyAt"]}
        elif kind == "rss":
            row.setdefault("rssKb", {})[r["phase"]] = r["rssKb"]
        elif not r.get("reached", True):
            row[kind] = {"reached": False, "timeoutS": r["timeoutS"], "stage": r.get("stage")}
            if kind == "roll" and "cpuTicks" in r:
                row[kind]["cpuSeconds"] = r["cpuTicks"] / r["clkTck"]
        elif kind == "ready":
            row["ready"] = {"reached": True, "seconds": r["ms"] / 1000, "cpuSeconds": r["cpuTicks"] / r["clkTck"]}
        elif kind == "rest":
            secs = r["ms"] / 1000
            row["rest"] = {
                "reached": True,
                "seconds": secs,
                "cpuCore": r["cpuTicks"] / r["clkTck"] / secs,
                "rssKb": r["rssKb"],
                "hwmKb": r["hwmKb"],
                "bytesPerSecond": r["stats"]["sinceMark"]["bytes"] / secs,
                "receivers": r["stats"]["sinceMark"]["receivers"],
            }
            row.setdefault("rssKb", {})["rest"] = r["rssKb"]
        elif kind == "write":
            d = r["delaysMs"]
            writes = len(r["revisions"])
            row["write"] = {
                "reached": True,
                "writes": writes,
                "acks": len(d),
                "p50Ms": percentile(d, 50),
                "p99Ms": percentile(d, 99),
                "maxMs": max(d) if d else None,
                "receivers": r["stats"]["sinceMark"]["receivers"],
                "bytesPerWrite": r["stats"]["sinceMark"]["bytes"] / max(writes, 1),
            }
        elif kind == "join":
            row["join"] = {
                "reached": True,
                "seconds": r["ms"] / 1000,
                "receivers": r["stats"]["sinceMark"]["receivers"],
                "messages": r["stats"]["sinceMark"]["messages"],
                "bytes": r["stats"]["sinceMark"]["bytes"],
            }
        elif kind == "roll":
            secs = r["ms"] / 1000
            cpu = r["cpuTicks"] / r["clkTck"]
            row["roll"] = {
                "reached": True,
                "seconds": secs,
                "cpuSeconds": cpu,
                "cpuCore": cpu / secs if secs else None,
                "receivers": r["stats"]["sinceMark"]["receivers"],
                "bytes": r["stats"]["sinceMark"]["bytes"],
            }
    for row in runs.values():
        rss = row.get("rssKb", {})
        if "empty" in rss and "rest" in rss:
            row["kbPerSidecar"] = (rss["rest"] - rss["empty"]) / row["size"]
    return sorted(runs.values(), key=lambda r: (r["backend"], r["size"], r["build"] != "before"))


def cmd_collect(args):
    with open(args.raw) as f:
        records = [json.loads(line) for line in f if line.strip()]
    meta = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gitRevision": sh("git", "rev-parse", "--short", "HEAD"),
        "gitDirty": bool(sh("git", "status", "--porcelain")),
        "host": {"kernel": platform.release(), "cpu": cpu_model(), "onlineCpus": os.cpu_count()},
        "tools": {"postgres": sh("psql", "--version")},
        "params": {k: v for k, v in sorted(os.environ.items()) if k.startswith("FLEET_") and k != "FLEET_PG_URL"}
        | {k: os.environ.get(k) for k in ("BENCH_PROFILE", "BENCH_BEFORE_BIN")},
    }
    doc = {"meta": meta, "runs": summarize(records), "raw": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def cell(row, phase, value, lead=False):
    """`value(phase's summary)`, or why there is none (said in the `lead` column only)."""
    p = row.get(phase)
    if p is not None and p["reached"]:
        return value(p)
    if not lead:
        return "–"
    if "skipped" in row:
        return f"skipped (not ready at {row['skipped']['notReadyAt']:,})"
    if p is None:
        ready = row.get("ready")
        return "–" if ready is None or ready["reached"] else "fleet not ready"
    stage = f" ({p['stage']})" if p.get("stage") else ""
    return f"not reached in {p['timeoutS']} s{stage}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cmd_markdown(args):
    with open(args.results) as f:
        doc = json.load(f)
    meta, runs = doc["meta"], doc["runs"]
    params = meta["params"]
    host = meta["host"]
    print(
        f"Run {meta['time']} at {meta['gitRevision']}{' (dirty)' if meta['gitDirty'] else ''}, "
        f"{host['onlineCpus']} CPUs ({host['cpu']}), profile {params.get('BENCH_PROFILE')}; "
        f"{params.get('FLEET_SERVICES')} services, reports every {params.get('FLEET_REPORT_MS')} ms, "
        f"phase timeout {params.get('FLEET_PHASE_TIMEOUT')} s."
    )
    head = "| backend | build | sidecars |"
    sep = "|---|---|---:|"

    def rows(cols):
        for r in runs:
            cells = [c(r) for c in cols]
            print(f"| {r['backend']} | {r['build']} | {r['size']:,} | " + " | ".join(cells) + " |")

    print("\n**Connect and rest**\n")
    print(head + " all connected and ACKed (s) | CP RSS empty → fleet (MiB) | per sidecar (KiB) "
          "| CP CPU at rest (% of a core) | sent at rest (bytes/s) |")
    print(sep + "---:|---:|---:|---:|---:|")
    rows([
        lambda r: cell(r, "ready", lambda p: fmt(p["seconds"], ".1f"), lead=True),
        lambda r: cell(r, "rest", lambda p: f"{fmt(mib(r['rssKb'].get('empty')), '.0f')} → {fmt(mib(p['rssKb']), '.0f')}"),
        lambda r: cell(r, "rest", lambda p: fmt(r.get("kbPerSidecar"), ".1f")),
        lambda r: cell(r, "rest", lambda p: fmt(p["cpuCore"] * 100, ".1f")),
        lambda r: cell(r, "rest", lambda p: fmt(p["bytesPerSecond"], ",.0f")),
    ])

    hot = params.get("FLEET_HOT") or "100"
    print(f"\n**Policy write to a {hot}-instance service ({params.get('FLEET_WRITES')} writes), until all ACKed**\n")
    print(head + " write → ACK p50 (ms) | p99 (ms) | max (ms) | sidecars that received anything | KiB sent per write |")
    print(sep + "---:|---:|---:|---:|---:|")
    rows([
        lambda r: cell(r, "write", lambda p: fmt(p["p50Ms"]), lead=True),
        lambda r: cell(r, "write", lambda p: fmt(p["p99Ms"])),
        lambda r: cell(r, "write", lambda p: fmt(p["maxMs"])),
        lambda r: cell(r, "write", lambda p: fmt(p["receivers"], ",")),
        lambda r: cell(r, "write", lambda p: fmt(p["bytesPerWrite"] / 1024, ",.1f")),
    ])

    print("\n**One instance joins one service**\n")
    print(head + " joiner ready (s) | other sidecars that received anything | messages | KiB sent |")
    print(sep + "---:|---:|---:|---:|")
    rows([
        lambda r: cell(r, "join", lambda p: fmt(p["seconds"], ".2f"), lead=True),
        lambda r: cell(r, "join", lambda p: fmt(p["receivers"], ",")),
        lambda r: cell(r, "join", lambda p: fmt(p["messages"], ",")),
        lambda r: cell(r, "join", lambda p: fmt(p["bytes"] / 1024, ",.1f")),
    ])

    print(f"\n**Rolling restart of a {params.get('FLEET_ROLL_COUNT')}-instance service "
          f"(one pod at a time, {params.get('FLEET_ROLL_MS')} ms apart), on top of the fleet**\n")
    print(head + " duration (s) | CP CPU (s) | CP CPU (% of a core) | MiB sent | sidecars that received anything |")
    print(sep + "---:|---:|---:|---:|---:|")
    rows([
        lambda r: cell(r, "roll", lambda p: fmt(p["seconds"], ".1f"), lead=True),
        lambda r: cell(r, "roll", lambda p: fmt(p["cpuSeconds"], ".1f")),
        lambda r: cell(r, "roll", lambda p: fmt(p["cpuCore"] * 100, ".0f")),
        lambda r: cell(r, "roll", lambda p: fmt(p["bytes"] / 2**20, ",.1f")),
        lambda r: cell(r, "roll", lambda p: fmt(p["receivers"], ",")),
    ])

    pairs = {}
    for r in runs:
        pairs.setdefault((r["backend"], r["size"]), {})[r["build"]] = r
    pairs = {k: v for k, v in pairs.items() if "before" in v and "current" in v}
    if pairs:
        def get(r, phase, field):
            p = r.get(phase)
            return p.get(field) if p and p.get("reached") else None

        measures = [
            ("all ready (s)", lambda r: get(r, "ready", "seconds")),
            ("KiB per sidecar", lambda r: r.get("kbPerSidecar")),
            ("CPU at rest", lambda r: get(r, "rest", "cpuCore")),
            ("write → ACK p99", lambda r: get(r, "write", "p99Ms")),
            ("join: bytes sent", lambda r: get(r, "join", "bytes")),
            ("roll: CP CPU (s)", lambda r: get(r, "roll", "cpuSeconds")),
            ("roll: bytes sent", lambda r: get(r, "roll", "bytes")),
        ]
        print("\n**Current / before (same run; below 1 is better; – where either was not reached)**\n")
        print("| backend | sidecars | " + " | ".join(m for m, _ in measures) + " |")
        print("|---|---:|" + "---:|" * len(measures))
        for (backend, size), v in sorted(pairs.items()):
            cells = [fmt(ratio(f(v["current"]), f(v["before"])), ".3f") for _, f in measures]
            print(f"| {backend} | {size:,} | " + " | ".join(cells) + " |")


# Each subcommand: its function and its arguments (name, argparse options).
COMMANDS = {
    "stats": (cmd_stats, [("--after", {"type": int, "required": True}), ("files", {"nargs": "+"})]),
    "sqlite": (cmd_sqlite, [("db", {}), ("query", {})]),
    "ports": (cmd_ports, [("n", {"type": int})]),
    "collect": (cmd_collect, [("--raw", {"required": True}), ("--out", {"required": True})]),
    "markdown": (cmd_markdown, [("results", {})]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, (func, params) in COMMANDS.items():
        p = sub.add_parser(name)
        for arg, options in params:
            p.add_argument(arg, **options)
        p.set_defaults(func=func)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
