#!/usr/bin/env python3
"""Helpers for bench/run.sh: turn raw wrk/RSS records into a results file and a markdown table.

  report.py collect --raw raw.jsonl --out results/X.json [--echo-pid N] [--clk-tck 100]
  report.py markdown results/X.json        # the table to paste into BENCHMARKS.md
  report.py line < wrk.json                # one-line summary of a wrk result (progress output)
  report.py has-revision N < config_dump   # exit 0 if the JSON mentions revision N

Standard library only.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

TARGETS = ["direct", "nginx", "sidecar", "sidecar-before", "nginx-nginx", "nginx-tls-nginx", "sidecar-sidecar"]
# (proxy path, its nginx baseline, key in `ratios`): one hop (inbound); two hops (outbound →
# inbound) against plaintext nginx → nginx and, with --mtls, against nginx → nginx with mutual
# TLS between them (the like-for-like one: the sidecars' hop is always mTLS). With
# BENCH_BEFORE_BIN, another build of the sidecar on the one-hop path, same baseline.
PAIRS = [
    ("sidecar", "nginx", None),
    ("sidecar-sidecar", "nginx-nginx", "twoHops"),
    ("sidecar-sidecar", "nginx-tls-nginx", "twoHopsTls"),
    ("sidecar-before", "nginx", "before"),
]
# Servers that terminate mutual TLS in the --mtls handshake and idle-connection runs.
TLS_SERVERS = ["sidecar", "nginx-tls"]


def rps(wrk):
    return wrk["requests"] / (wrk["durationUs"] / 1e6) if wrk["durationUs"] else 0.0


def errors(wrk):
    return sum(wrk["errors"].values())


def pct(wrk, q):
    return wrk["latencyUs"]["percentiles"][q]


def cmd_line(_args):
    wrk = json.load(sys.stdin)
    print(
        f"{rps(wrk):,.0f} req/s, p50 {pct(wrk, '50')} µs, p99 {pct(wrk, '99')} µs, "
        f"mean {wrk['latencyUs']['mean']:.0f} µs, errors {errors(wrk)}"
    )


def expand_cpus(spec):
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def cmd_cpustat(args):
    """Prints busy and total jiffies summed over the given CPU list (taskset syntax)."""
    cpus = expand_cpus(args.cpus)
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(v)
                busy += sum(v) - v[3] - v[4]
    print(busy, total)


def cmd_background_busy(_args):
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)

    import time

    b0, t0 = sample()
    time.sleep(1.0)
    b1, t1 = sample()
    print(f"{(b1 - b0) / max(t1 - t0, 1):.3f}")


def mentions_revision(doc, n):
    """True if some `*revision*` field holds n or later (revisions are global and monotonic)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if "revision" in k.lower() and isinstance(v, (int, str)) and str(v).isdigit() and int(v) >= n:
                return True
            if mentions_revision(v, n):
                return True
    elif isinstance(doc, list):
        return any(mentions_revision(v, n) for v in doc)
    return False


def cmd_has_revision(args):
    try:
        doc = json.load(sys.stdin)
    except ValueError:
        sys.exit(1)
    sys.exit(0 if mentions_revision(doc, int(args.revision)) else 1)


def sh(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def proc_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


NOISY = 0.10  # foreign CPU share on the server CPUs above which a run is noisy


def foreign_cpu(r, clk_tck):
    """Share of the benchmark CPUs' time (servers and wrk) used by other processes during a
    wrk run: busy jiffies minus the echo app's, the proxy's and wrk's own CPU time."""
    j, own = r.get("allJiffies"), r.get("ownTicks")
    if not j or own is None or r.get("wrkCpuSeconds") is None:
        return None
    b0, t0, b1, t1 = j
    ours = own + r["wrkCpuSeconds"] * clk_tck
    return max(0.0, ((b1 - b0) - ours) / max(t1 - t0, 1))


def clean_runs(runs, clk_tck):
    """Runs without foreign CPU noise; all runs if none is clean (the report says so)."""
    for r in runs:
        r["foreignCpu"] = foreign_cpu(r, clk_tck)
        r["noisy"] = r["foreignCpu"] is not None and r["foreignCpu"] > NOISY
    clean = [r for r in runs if not r["noisy"]]
    return clean or runs


def summarize(records, clk_tck):
    summary = {}
    for target in TARGETS:
        tp_all = [r for r in records if r["target"] == target and r["kind"] == "throughput"]
        lat_all = [r for r in records if r["target"] == target and r["kind"] == "latency"]
        tp, lat = clean_runs(tp_all, clk_tck), clean_runs(lat_all, clk_tck)
        rss = [r for r in records if r["target"] == target and r["kind"] == "rss"]
        if not tp and not lat:
            continue
        s = {
            "rounds": len(tp_all),
            "runsUsed": {"throughput": len(tp), "latency": len(lat)},
            "noisyRuns": sum(r["noisy"] for r in tp_all + lat_all),
        }
        s["throughputRps"] = median([rps(r["wrk"]) for r in tp])
        s["throughputRpsRange"] = [min(rps(r["wrk"]) for r in tp_all), max(rps(r["wrk"]) for r in tp_all)]
        s["throughputErrors"] = sum(errors(r["wrk"]) for r in tp)
        cpu = [
            r["proxyCpuTicks"] / clk_tck * 1e6 / r["wrk"]["requests"]
            for r in tp
            if r["wrk"]["requests"] and r.get("proxyCpuTicks") is not None
        ]
        s["proxyCpuUsPerRequest"] = median(cpu) if target != "direct" else None
        s["c1"] = {
            "rps": median([rps(r["wrk"]) for r in lat]),
            "p50Us": median([pct(r["wrk"], "50") for r in lat]),
            "p90Us": median([pct(r["wrk"], "90") for r in lat]),
            "p99Us": median([pct(r["wrk"], "99") for r in lat]),
            "meanUs": median([r["wrk"]["latencyUs"]["mean"] for r in lat]),
            "errors": sum(errors(r["wrk"]) for r in lat),
        }
        s["serverCpuBusy"] = median([r.get("serverCpuBusy") for r in tp])
        bg = [r["cpuBusy"] for r in records if r["target"] == target and r["kind"] == "background"]
        s["backgroundCpuBusyMax"] = max(bg, default=None)
        s["throughputLatency"] = {
            "p50Us": median([pct(r["wrk"], "50") for r in tp]),
            "p99Us": median([pct(r["wrk"], "99") for r in tp]),
        }
        for phase in ("idle", "loaded"):
            rows = [r for r in rss if r["phase"] == phase]
            if not rows:
                continue
            # nginx: the master holds little; the worker is what serves traffic.
            s[f"rss_{phase}"] = {
                "totalKb": median([sum(p["rssKb"] for p in r["processes"]) for r in rows]),
                "peakKb": max(sum(p["hwmKb"] for p in r["processes"]) for r in rows),
                "processes": rows[-1]["processes"],
            }
        summary[target] = s
    tls = summarize_tls(records, clk_tck)
    if tls:
        summary["mtlsServers"] = tls
    return summary


def summarize_tls(records, clk_tck):
    """Full handshakes per second (one client, one after another) and the server's CPU per
    handshake, which bounds what one core can take; RSS growth per idle mTLS connection."""
    out = {}
    for target in TLS_SERVERS:
        hs = [r for r in records if r["target"] == target and r["kind"] == "handshakes"]
        idle = [r for r in records if r["target"] == target and r["kind"] == "idleconns"]
        if not hs and not idle:
            continue
        cpu = [r["proxyCpuTicks"] / clk_tck * 1e6 / r["connections"] for r in hs if r["connections"]]
        # The first hold only: a server that keeps freed memory (nginx) shows nothing after.
        first = min((r["round"] for r in idle), default=None)
        per_conn = [
            (r["rssAfterKb"] - r["rssBeforeKb"]) / r["connections"]
            for r in idle
            if r["connections"] and r["round"] == first
        ]
        out[target] = {
            "handshakesPerSecond": median([r["connections"] / r["seconds"] for r in hs if r["seconds"]]),
            "serverCpuUsPerHandshake": median(cpu),
            "serverCpuBusy": median([r["serverCpuBusy"] for r in hs]),
            "idleConnections": idle[-1]["connections"] if idle else None,
            "kbPerIdleConnection": median(per_conn),
        }
    return out


def compare(d, n, s):
    """Ratios of one proxy path `s` and its nginx baseline `n` against direct `d`."""
    out = {}
    if d and n:
        out["nginxVsDirectThroughput"] = n["throughputRps"] / d["throughputRps"]
        out["nginxAddedP50Us"] = n["c1"]["p50Us"] - d["c1"]["p50Us"]
        out["nginxAddedP99Us"] = n["c1"]["p99Us"] - d["c1"]["p99Us"]
    if d and s:
        out["sidecarVsDirectThroughput"] = s["throughputRps"] / d["throughputRps"]
        out["sidecarAddedP50Us"] = s["c1"]["p50Us"] - d["c1"]["p50Us"]
        out["sidecarAddedP99Us"] = s["c1"]["p99Us"] - d["c1"]["p99Us"]
    if n and s:
        out["sidecarVsNginxThroughput"] = s["throughputRps"] / n["throughputRps"]
        if out.get("nginxAddedP50Us", 0) > 0:
            out["sidecarVsNginxAddedP50"] = out["sidecarAddedP50Us"] / out["nginxAddedP50Us"]
        if out.get("nginxAddedP99Us", 0) > 0:
            out["sidecarVsNginxAddedP99"] = out["sidecarAddedP99Us"] / out["nginxAddedP99Us"]
        if n.get("proxyCpuUsPerRequest") and s.get("proxyCpuUsPerRequest") is not None:
            out["sidecarVsNginxCpuPerRequest"] = s["proxyCpuUsPerRequest"] / n["proxyCpuUsPerRequest"]
    return out


def ratios(summary):
    """One-hop ratios at the top level (as before); the two-hop ones under `twoHops`."""
    d = summary.get("direct")
    out = {}
    for proxy, base, key in PAIRS:
        rr = compare(d, summary.get(base), summary.get(proxy))
        if key is None:
            out.update(rr)
        elif "sidecarVsNginxThroughput" in rr:
            out[key] = rr
    return out


def cmd_collect(args):
    with open(args.raw) as f:
        records = [json.loads(line) for line in f if line.strip()]
    summary = summarize(records, args.clk_tck)
    meta = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gitRevision": sh("git", "rev-parse", "--short", "HEAD"),
        "gitDirty": bool(sh("git", "status", "--porcelain")),
        "host": {
            "kernel": platform.release(),
            "cpu": cpu_model(),
            "onlineCpus": os.cpu_count(),
        },
        "tools": {"nginx": sh("nginx", "-v"), "wrk": (sh("wrk", "-v") or "").splitlines()[0:1]},
        "params": {
            k: os.environ.get(k)
            for k in (
                "BENCH_DURATION",
                "BENCH_WARMUP",
                "BENCH_CONNECTIONS",
                "BENCH_ROUNDS",
                "BENCH_SERVER_CPUS",
                "BENCH_LOAD_CPUS",
                "BENCH_SERVER_THREADS",
                "BENCH_PROFILE",
            )
        },
    }
    if args.echo_pid:
        meta["echoApp"] = {
            "rssKb": proc_kb(args.echo_pid, "VmRSS"),
            "hwmKb": proc_kb(args.echo_pid, "VmHWM"),
        }
    doc = {"meta": meta, "summary": summary, "ratios": ratios(summary), "raw": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def fmt(v, spec=",.0f", suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def mib(kb):
    return None if kb is None else kb / 1024


def cmd_markdown(args):
    with open(args.results) as f:
        doc = json.load(f)
    meta, summary, r = doc["meta"], doc["summary"], doc["ratios"]
    p = meta["params"]
    d = summary.get("direct")
    lines = [
        f"Run {meta['time']} at `{meta['gitRevision']}`{' (dirty)' if meta['gitDirty'] else ''}; "
        f"{meta['host']['cpu']}, {meta['host']['onlineCpus']} CPUs; servers on CPU "
        f"{p['BENCH_SERVER_CPUS']}, wrk on CPU {p['BENCH_LOAD_CPUS']}; "
        f"{p['BENCH_DURATION']} per run, {p['BENCH_ROUNDS']} round(s) (medians).",
        "",
        f"| path | req/s (c={p['BENCH_CONNECTIONS']}) | vs direct | p50 c=1 | p99 c=1 | mean c=1 "
        "| added p50 | added p99 | proxy CPU/req | proxy RSS idle | proxy RSS loaded |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    tls = summary.pop("mtlsServers", {})
    for t in TARGETS:
        s = summary.get(t)
        if not s:
            continue
        c1 = s["c1"]
        added50 = c1["p50Us"] - d["c1"]["p50Us"] if d and t != "direct" else None
        added99 = c1["p99Us"] - d["c1"]["p99Us"] if d and t != "direct" else None
        ratio = s["throughputRps"] / d["throughputRps"] if d else None
        idle = mib(s.get("rss_idle", {}).get("totalKb"))
        loaded = mib(s.get("rss_loaded", {}).get("totalKb"))
        lines.append(
            f"| {t} | {fmt(s['throughputRps'])} | {fmt(ratio, '.2f', '×')} "
            f"| {fmt(c1['p50Us'], ',.0f', ' µs')} | {fmt(c1['p99Us'], ',.0f', ' µs')} "
            f"| {fmt(c1['meanUs'], ',.0f', ' µs')} | {fmt(added50, '+,.0f', ' µs')} "
            f"| {fmt(added99, '+,.0f', ' µs')} | {fmt(s.get('proxyCpuUsPerRequest'), ',.1f', ' µs')} "
            f"| {fmt(idle, '.1f', ' MiB')} | {fmt(loaded, '.1f', ' MiB')} |"
        )
    busy = ", ".join(
        f"{t} {s['serverCpuBusy']:.0%}" for t, s in summary.items() if s.get("serverCpuBusy") is not None
    )
    bg = max((s.get("backgroundCpuBusyMax") or 0) for s in summary.values()) if summary else 0
    lines += [
        "",
        f"Server CPU(s) busy during the throughput runs: {busy} (below ~95% means the load "
        f"generator, not the server, was the limit). Background CPU use before each target, at most: "
        f"{bg:.0%}"
        + (" — **the machine was not idle; treat these numbers as noisy**." if bg > 0.10 else "."),
    ]
    noisy = {t: s["noisyRuns"] for t, s in summary.items() if s.get("noisyRuns")}
    lines += [
        "",
        f"Runs where other processes used >{NOISY:.0%} of the benchmark CPUs are left out of the "
        "medians when a clean run of the same kind exists: "
        + (", ".join(f"{t} {n}" for t, n in noisy.items()) + " noisy run(s) left out." if noisy else "none this time.")
        + " Throughput range over all rounds: "
        + ", ".join(
            f"{t} {s['throughputRpsRange'][0]:,.0f}–{s['throughputRpsRange'][1]:,.0f}"
            for t, s in summary.items()
        )
        + ".",
    ]
    errs = {t: s["throughputErrors"] + s["c1"]["errors"] for t, s in summary.items()}
    if any(errs.values()):
        lines += ["", f"**Errors (socket errors or non-2xx) during the run:** {errs}"]
    for proxy, base, key in PAIRS:
        rr = r if key is None else r.get(key, {})
        if "sidecarVsNginxThroughput" not in rr or "sidecarAddedP50Us" not in rr:
            continue
        lines += [
            "",
            f"| {proxy} vs {base} | value |",
            "|---|--:|",
            f"| throughput ratio ({proxy} / {base}) | {rr['sidecarVsNginxThroughput']:.2f} |",
            f"| added p50 at c=1 ({proxy} − direct vs {base} − direct) | "
            f"{rr['sidecarAddedP50Us']:+,.0f} µs vs {rr['nginxAddedP50Us']:+,.0f} µs"
            f" ({fmt(rr.get('sidecarVsNginxAddedP50'), '.2f', '×')}) |",
            f"| added p99 at c=1 | {rr['sidecarAddedP99Us']:+,.0f} µs vs "
            f"{rr['nginxAddedP99Us']:+,.0f} µs ({fmt(rr.get('sidecarVsNginxAddedP99'), '.2f', '×')}) |",
            f"| proxy CPU per request ({proxy} / {base}) | "
            f"{fmt(rr.get('sidecarVsNginxCpuPerRequest'), '.2f', '×')} |",
        ]
        if key == "twoHops":
            lines += ["", "(The sidecars' hop is mTLS; this nginx → nginx is plaintext.)"]
    if tls:
        lines += [
            "",
            "| mTLS server | full handshakes/s (1 client) | server CPU per handshake "
            "| handshakes/s per server core | RSS per idle mTLS connection |",
            "|---|--:|--:|--:|--:|",
        ]
        for t, v in tls.items():
            us = v.get("serverCpuUsPerHandshake")
            lines.append(
                f"| {t} | {fmt(v.get('handshakesPerSecond'))} | {fmt(us, ',.0f', ' µs')} "
                f"| {fmt(1e6 / us if us else None)} "
                f"| {fmt(v.get('kbPerIdleConnection'), '.1f', ' KiB')} ({fmt(v.get('idleConnections'))} held) |"
            )
    lines += [
        "",
        f"nginx: {p.get('BENCH_SERVER_THREADS') or 1} worker(s); sidecar: "
        f"OUTRIDER_WORKER_THREADS={p.get('BENCH_SERVER_THREADS') or 1}. RSS is VmRSS from /proc: the "
        "sidecar process; nginx master + worker(s) (per process in the results JSON). Two-hop paths "
        "(nginx-nginx, sidecar-sidecar) count both proxies: CPU per request and RSS are the sums.",
    ]
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--raw", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--echo-pid", type=int)
    c.add_argument("--clk-tck", type=int, default=100)
    c.set_defaults(func=cmd_collect)
    m = sub.add_parser("markdown")
    m.add_argument("results")
    m.set_defaults(func=cmd_markdown)
    sub.add_parser("line").set_defaults(func=cmd_line)
    sub.add_parser("background-busy").set_defaults(func=cmd_background_busy)
    cs = sub.add_parser("cpustat")
    cs.add_argument("cpus")
    cs.set_defaults(func=cmd_cpustat)
    h = sub.add_parser("has-revision")
    h.add_argument("revision")
    h.set_defaults(func=cmd_has_revision)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
