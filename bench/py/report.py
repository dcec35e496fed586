#!/usr/bin/env python3
"""Turns the raw output of bench/run.sh into the results page, and prints it.

    report.py WORK_DIR RESULTS_MD

Reads WORK_DIR/run.info (key=value lines about the run and the machine) and, for every run,
WORK_DIR/raw/SCENARIO.SERVER.ROUND.{wrk,stats} (round 0 is the warm-up, left out). Per server and
scenario: medians over rounds of req/s, p50, p99 and CPU; errors summed; RSS the largest seen
after a round. Writes RESULTS_MD only when every run had successful requests; exits 1 otherwise.
"""
import glob
import os
import re
import statistics
import sys

SERVERS = {
    "sqlite": "comments (SQLite)",
    "postgres": "comments (PostgreSQL)",
    "baseline": "baseline (bare axum)",
    "flask": "Flask (gunicorn)",
}
SCENARIOS = {
    "health": "GET /health-check",
    "list": "GET /api/comment/list/1 (20 comments)",
    "post": "POST /api/comment/new",
    "v1": "GET /api/v1/contents/2/comments?limit=20, first page and the next (100 comments)",
    "mix": "90% GET /api/comment/list/3 (20 comments), 10% POST /api/comment/new",
}
RATIOS = [
    ("sqlite", "baseline", "comments (SQLite) / baseline"),
    ("sqlite", "flask", "comments (SQLite) / Flask"),
    ("postgres", "baseline", "comments (PostgreSQL) / baseline"),
]


def read_kv(path):
    values, lines = {}, {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            lines.setdefault(key, []).append(value)
            values[key] = value
    return values, lines


def load_runs(work):
    """{(scenario, server): [run, ...]} for rounds >= 1; raises on a run without success."""
    runs, failures = {}, []
    for wrk_path in sorted(glob.glob(f"{work}/raw/*.wrk")):
        scenario, server, round_ = os.path.basename(wrk_path)[:-4].split(".")
        with open(wrk_path) as f:
            match = re.search(r"^BENCH (.*)$", f.read(), re.M)
        run = {k: int(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
        stats, stat_lines = read_kv(wrk_path[:-4] + ".stats")
        run["cmd"] = stats["cmd"]
        for key in ("wall_ns", "cpu_ticks", "db_cpu_ticks", "busy_ticks", "rss_kib", "log_problems"):
            run[key] = int(stats[key])
        run["client_cpu_s"] = float(stats["client_cpu_s"])
        run["log_lines"] = stat_lines.get("log_line", [])
        metrics = wrk_path[:-4] + ".metrics"
        if os.path.exists(metrics + "0") and os.path.exists(metrics + "1"):
            run["within_5ms"] = within_5ms(metrics + "0", metrics + "1")
        run["ok"] = run["requests"] - run["status_errors"]
        run["errors"] = sum(run[k] for k in ("status_errors", "connect_errors", "read_errors",
                                             "write_errors", "timeouts"))
        if run["ok"] <= 0:
            failures.append(f"{scenario} on {server}, round {round_}: no successful request "
                            f"({run['requests']} requests, {run['errors']} errors)")
        if round_ != "0":
            runs.setdefault((scenario, server), []).append(run)
    return runs, failures


def within_5ms(metrics0, metrics1):
    """The share of the requests comments answered during a run within 5 ms, by its own
    http_request_duration_seconds histogram (all routes), from a scrape before and after."""
    def totals(path):
        bucket = count = 0.0
        buckets_seen = False
        with open(path) as f:
            for line in f:
                if line.startswith("http_request_duration_seconds_bucket{") and 'le="0.005"' in line:
                    bucket += float(line.split()[-1])
                    buckets_seen = True
                elif line.startswith("http_request_duration_seconds_count"):
                    count += float(line.split()[-1])
        if count and not buckets_seen:
            sys.exit(f"report: {path} has no le=\"0.005\" bucket (were the latency buckets changed?)")
        return bucket, count
    (bucket0, count0), (bucket1, count1) = totals(metrics0), totals(metrics1)
    return (bucket1 - bucket0) / (count1 - count0) if count1 > count0 else None


def summarise(runs, clk_tck):
    rps = [r["ok"] / (r["duration_us"] / 1e6) for r in runs]
    wall = [r["wall_ns"] / 1e9 for r in runs]
    shares = [r["within_5ms"] for r in runs if r.get("within_5ms") is not None]
    return {
        "rps": statistics.median(rps),
        "p50": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99": statistics.median(r["p99_us"] for r in runs) / 1000,
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "rss": max(r["rss_kib"] for r in runs) / 1024,
        "cpu": statistics.median(r["cpu_ticks"] / clk_tck / w for r, w in zip(runs, wall)),
        "db_cpu": statistics.median(r["db_cpu_ticks"] / clk_tck / w for r, w in zip(runs, wall)),
        "client_cpu": statistics.median(r["client_cpu_s"] / w for r, w in zip(runs, wall)),
        # Everything else the machine ran meanwhile (other users' builds...): the noise.
        "other_cpu": statistics.median(
            max(0.0, (r["busy_ticks"] - r["cpu_ticks"] - r["db_cpu_ticks"]) / clk_tck - r["client_cpu_s"]) / w
            for r, w in zip(runs, wall)),
        "log_problems": sum(r["log_problems"] for r in runs),
        "log_lines": [line for r in runs for line in r["log_lines"]][:3],
        "cmd": runs[0]["cmd"],
        # comments only: the share answered within 5 ms by its own histogram (no correction).
        "within_5ms": statistics.median(shares) if shares else None,
    }


def ratio(table, a, b):
    if a in table and b in table and table[b]["rps"] > 0:
        return table[a]["rps"] / table[b]["rps"]
    return None


def fmt_ratio(value):
    return "n/a" if value is None else f"{value:.2f}x"


def main():
    work, results_path = sys.argv[1], sys.argv[2]
    info, info_lines = read_kv(f"{work}/run.info")
    clk_tck = int(info["clk_tck"])
    runs, failures = load_runs(work)
    if failures:
        sys.exit("report: " + "; ".join(failures))
    tables = {}
    for (scenario, server), server_runs in runs.items():
        tables.setdefault(scenario, {})[server] = summarise(server_runs, clk_tck)
    missing = [s for s in SCENARIOS if s not in tables or "sqlite" not in tables[s]]
    if missing:
        sys.exit(f"report: no runs for {', '.join(missing)}")

    fresh = [float(x) for x in info["fresh_ms"].split(",")]
    restart = [float(x) for x in info["restart_ms"].split(",")]
    quick = info["mode"] == "quick"
    out = []
    w = out.append

    w(f"# Benchmark results ({info['mode']} run)")
    w("")
    if quick:
        w("Quick mode: one short round, to prove the harness works. The numbers are indicative only;")
        w("`bench/RESULTS.md` holds the results of a full run.")
        w("")
    w(f"- Date: {info['date']}; commit {info['commit']}")
    w(f"- Binary: {info['binary']}")
    w(f"- Machine: {info['nproc']} CPUs, {info['cpu']}, {info['kernel']}; load average {info['loadavg']}")
    w(f"- Peers: PostgreSQL {info['postgres']} (local, shared, not pinned), Flask {info['flask']}")
    w(f"- Load: {info['wrk']}, 1 thread, {info['connections']} connections, {info['duration_s']} s per run "
      f"after a {info['warmup_s']} s warm-up per server and scenario (discarded), {info['rounds']} "
      f"round(s) interleaved between servers; servers pinned to CPU {info['server_cpu']}, wrk to CPU "
      f"{info['client_cpu']} (`taskset`)")
    w("- Per cell: the median over rounds (req/s counts 2xx/3xx answers only); errors = non-2xx/3xx "
      "answers + socket errors + timeouts, summed over rounds; RSS = VmRSS after a round, the largest "
      "(gunicorn: master + worker); CPU = utime + stime of the server over the run, in cores (PostgreSQL "
      "backends of the run's database in brackets); CPU µs/req = the server's CPU per answered request "
      "(less sensitive to the noise than req/s); wrk CPU = the load generator's own, in cores (near "
      "1.00 means the client, not the server, was the limit); other CPU = what the rest of the machine "
      "used meanwhile, in cores (the noise: near 0 on a quiet machine)")
    w("")

    # Targets of issue 7, judged on this run.
    t = tables
    rss_max = max(t[s]["sqlite"]["rss"] for s in t)
    fresh_ms, restart_ms = statistics.median(fresh), statistics.median(restart)
    checks = [
        ("GET list on SQLite >= 0.8x baseline (req/s)", ratio(t["list"], "sqlite", "baseline"), 0.8, ">=", fmt_ratio),
        ("GET list on SQLite >= 30x Flask (req/s)", ratio(t["list"], "sqlite", "flask"), 30, ">=", fmt_ratio),
        ("POST on SQLite >= 0.25x baseline (req/s)", ratio(t["post"], "sqlite", "baseline"), 0.25, ">=", fmt_ratio),
        ("RSS under load < 32 MiB (SQLite, largest of all scenarios)", rss_max, 32, "<", lambda v: f"{v:.1f} MiB"),
        ("ready < 100 ms after exec (SQLite, fresh database, median)", fresh_ms, 100, "<", lambda v: f"{v:.1f} ms"),
    ]
    for scenario, label in (("list", "GET list"), ("v1", "GET v1 page"), ("post", "POST"), ("mix", "90/10 mix")):
        checks.append((f"p99 < 5 ms at 64 connections, {label} on SQLite", t[scenario]["sqlite"]["p99"], 5, "<",
                       lambda v: f"{v:.2f} ms"))
    w("## Targets (issue 7)" + (" — quick mode, indicative only" if quick else ""))
    w("")
    w("| target | measured | result |")
    w("|---|---|---|")
    for name, value, limit, op, show in checks:
        passed = value is not None and (value >= limit if op == ">=" else value < limit)
        w(f"| {name} | {show(value) if value is not None else 'n/a'} | {'pass' if passed else 'FAIL'} |")
    w("")
    ceiling = ratio(t["list"], "baseline", "flask")
    if ceiling:
        w(f"For the Flask target: the bare baseline itself served GET list at **{ceiling:.1f}x** Flask "
          f"in this run, so 30x Flask needed comments at {30 / ceiling:.2f}x the baseline here. How "
          "far the baseline is ahead of Flask depends on the host (bench/README.md, stop 28).")
        w("")
    base = tables["list"].get("baseline"), tables["post"].get("baseline")
    if all(base):
        w(f"For the p99 targets: the bare baseline's own p99 in the same rounds is {base[0]['p99']:.2f} ms "
          f"(GET list) and {base[1]['p99']:.2f} ms (POST). With 64 connections a server's latency is about "
          "64 / its req/s plus whatever else runs on its core, so when the baseline is above 5 ms the machine, "
          "not comments, sets the floor of that run. wrk corrects its percentiles for coordinated omission "
          "(a response S ms late also counts the requests the connection would have sent meanwhile, about "
          "S / (64 / req/s) of them), so p99 is roughly the share of the run the server was stalled.")
        w("")
    shares = [(label, t[s]["sqlite"]["within_5ms"]) for s, label in
              (("list", "GET list"), ("v1", "GET v1 page"), ("post", "POST"), ("mix", "90/10 mix"))]
    if all(share is not None for _, share in shares):
        w("As comments (SQLite) measured them itself (`http_request_duration_seconds`, scraped before "
          "and after each run; the time from the request head to the response, without wrk's "
          "correction and without the time a request waited to be read): "
          + ", ".join(f"{label} **{100 * share:.2f}%**" for label, share in shares)
          + " answered within 5 ms (median over rounds). A p99 under 5 ms by that measure needs 99%.")
        w("")
    w(f"The disk under the SQLite file, probed alone before the servers start (`bench/py/fsync.py`: "
      f"{info['fsync_seconds']} s of 40-frame WAL-sized appends, each followed by fdatasync, "
      f"{info['fsync_count']} syncs): median **{float(info['fsync_ms_p50']):.2f} ms**, p99 "
      f"{float(info['fsync_ms_p99']):.2f} ms, longest **{info['fsync_ms_max']} ms**; "
      f"**{info['fsync_stalled_pct']}%** of the probe's time went to syncs longer than 5 ms. A POST is "
      "acknowledged only after its batch's fsync, so while the disk stalls every write waits; with the "
      "correction above, a write p99 under 5 ms needs that share well under 1%.")
    w("")

    w("## Start-up and image")
    w("")
    w(f"- Ready after exec, comments on SQLite: median **{fresh_ms:.1f} ms** on a fresh database "
      f"(creates the file, runs the migrations; starts: {', '.join(f'{x:.1f}' for x in fresh)} ms), "
      f"{restart_ms:.1f} ms on a restart over the same file (starts: {', '.join(f'{x:.1f}' for x in restart)} ms).")
    w("  Method: `bench/py/startup.py` takes t0 just before fork+exec (pinned to the server CPU), then "
      "sends a raw `GET /readyz` every 1 ms until a `200` status line arrives.")
    if info.get("image_size"):
        w(f"- Image size: {info['image_size']} (as `scripts/test-image.sh` measured it, or BENCH_IMAGE_SIZE).")
    else:
        size = int(re.search(r", (\d+) bytes", info["binary"]).group(1))
        w(f"- Image size: n/a here (no image is built by the benchmark). The image is `FROM scratch` with "
          f"only this binary and an empty `/data`, so about {size / 2**20:.1f} MiB uncompressed; "
          "`scripts/test-image.sh` prints the exact size (`image size:`), and "
          "`BENCH_IMAGE_SIZE=... bench/run.sh` puts it here.")
    w("")
    w("## Scrape cost")
    w("")
    w(f"- `GET /metrics` of comments (SQLite) after every load above and a spread of methods, routes "
      f"and bad inputs: **{info['scrape_series']} series**, {int(info['scrape_bytes']) / 1024:.1f} KiB, "
      f"answered in **{float(info['scrape_ms_p50']):.2f} ms** (median; p99 {float(info['scrape_ms_p99']):.2f} ms) "
      f"over {info['scrape_count']} scrapes on one keep-alive connection (`bench/py/scrape.py`). "
      "At a 15 s scrape interval that is well under 0.1% of a core.")
    w("")

    for scenario, title in SCENARIOS.items():
        table = tables[scenario]
        w(f"## {title}")
        w("")
        w("| server | req/s | p50 ms | p99 ms | errors | RSS MiB | CPU cores | CPU µs/req | wrk CPU | other CPU |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for server, label in SERVERS.items():
            if server not in table:
                w(f"| {label} | n/a | | | | | | | | |")
                continue
            r = table[server]
            cpu = f"{r['cpu']:.2f}" + (f" (+{r['db_cpu']:.2f})" if server == "postgres" else "")
            per_request = r["cpu"] / r["rps"] * 1e6 if r["rps"] else 0
            w(f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | "
              f"{r['rss']:.1f} | {cpu} | {per_request:.0f} | {r['client_cpu']:.2f} | {r['other_cpu']:.2f} |")
        w("")
        w("Ratios of req/s: " + ", ".join(
            f"{label} = **{fmt_ratio(ratio(table, a, b))}**" for a, b, label in RATIOS))
        if scenario == "v1":
            w("")
            w("Flask has no v1 API (n/a). The baseline serves an equivalent page over its map (same JSON "
              "shape, cursor = last id), so the ratio to it is a like-for-like ceiling.")
        w("")

    w("## Server logs during the load")
    w("")
    problems = [(scenario, server, r) for scenario, table in tables.items() for server, r in table.items()
                if r["log_problems"]]
    if not problems:
        w("No warning or error lines in any server's log during the measured runs.")
    for scenario, server, r in problems:
        w(f"- {SERVERS[server]}, {scenario}: {r['log_problems']} warning/error lines, first: "
          + "; ".join(f"`{line}`" for line in r["log_lines"]))
    w("")

    w("## wrk command lines (first round; the URL's port changes from run to run)")
    w("")
    w("```")
    for scenario in SCENARIOS:
        for server in SERVERS:
            if server in tables[scenario]:
                w(tables[scenario][server]["cmd"])
    w("```")

    text = "\n".join(out) + "\n"
    print(text)
    with open(results_path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
