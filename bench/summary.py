#!/usr/bin/env python3
"""Summarise bench/api.sh's JSON lines (one per measurement, each with a "tag") as a
Markdown table with corral/etcd ratios and the goals from the API performance issue."""
import json
import sys


def load(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                d = json.loads(line)
                out[d["tag"]] = d
    return out


def best(r, prefix):
    runs = [v for k, v in r.items() if k.startswith(prefix)]
    return max(runs, key=lambda d: d.get("per_sec", 0)) if runs else None


def fmt(x, unit=""):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        x = f"{x:,.1f}" if abs(x) < 100 else f"{x:,.0f}"
    elif isinstance(x, int):
        x = f"{x:,}"
    return f"{x}{unit}"


def ratio(a, b):
    try:
        return f"{a / b:.2f}"
    except (TypeError, ZeroDivisionError):
        return "n/a"


def main():
    r = load(sys.argv[1])
    g = r.get
    rows = []

    def row(metric, c, e=None, rat=None, goal="", met=None):
        rows.append((metric, c, e, rat, goal, "" if met is None else ("yes" if met else "**no**")))

    cr, er = g("corral-ready-fresh"), g("etcd-ready-fresh")
    if cr:
        row("ready: spawn to /readyz 200 (fresh data dir)", fmt(cr["ms"], " ms"), er and fmt(er["ms"], " ms (/health)"),
            ratio(cr["ms"], er and er["ms"]), "< 1 s", cr["ms"] < 1000)
    rr = g("corral-ready-restart")
    if rr:
        row("ready after restart with the run's data (all objects created by the run)", fmt(rr["ms"], " ms"), None, None, "< 1 s", rr["ms"] < 1000)
    ci, ei = g("corral-idle"), g("etcd-idle")
    if ci:
        row("idle RSS (5 s after ready)", fmt(ci["rss_mb"], " MB"), ei and fmt(ei["rss_mb"], " MB"),
            ratio(ci["rss_mb"], ei and ei["rss_mb"]), "< 50 MB", ci["rss_mb"] < 50)
        row("idle CPU (utime+stime over 10 s)", fmt(ci["cpu_ms_per_10s"], " ms"),
            ei and fmt(ei["cpu_ms_per_10s"], " ms"), ratio(ci["cpu_ms_per_10s"], ei and ei["cpu_ms_per_10s"]))
    ri = g("corral-restart-idle")
    if ri:
        row("RSS 5 s after restart with the run's data", fmt(ri["rss_mb"], " MB"))

    c1, e1 = best(r, "corral-creates-h1"), best(r, "etcd-puts")
    if c1:
        row(f"creates/s, {c1['concurrency']} clients, HTTP/1.1 (best of 2; etcd: raw KV put)",
            fmt(c1["per_sec"]), e1 and fmt(e1["per_sec"]), ratio(c1["per_sec"], e1 and e1["per_sec"]),
            ">= 5,000/s", c1["per_sec"] >= 5000)
        row("  create latency p50 / p99 / max",
            f"{c1['p50_ms']} / {c1['p99_ms']} / {c1['max_ms']} ms",
            e1 and f"{e1['p50_ms']} / {e1['p99_ms']} / {e1['max_ms']} ms",
            ratio(c1["p99_ms"], e1 and e1["p99_ms"]) + " (p99)", "p99 < 20 ms", c1["p99_ms"] < 20)
        errs = sum(v.get("errors", 0) for k, v in r.items() if k.startswith(("corral-creates", "etcd-puts")))
        row("  non-201/200 answers in all create/put runs", fmt(errs))
    for tag, label in (("corral-creates-h2", "creates/s, one HTTP/2 connection multiplexed"),
                       ("corral-creates-token", "creates/s, bearer token instead of client cert")):
        c = g(tag)
        if c:
            row(label, f"{fmt(c['per_sec'])} (p99 {c['p99_ms']} ms)", None, ratio(c["per_sec"], e1 and e1["per_sec"]))

    for ctag, etag in (("corral-watch-h1", "etcd-watch"), ("corral-watch-h2", "etcd-watch"),
                       ("corral-watch-small", "etcd-watch-small")):
        c, e = g(ctag), g(etag)
        if not c:
            continue
        name = f"watch {c['watchers']} watchers x {c['target_rate']} writes/s, {c['seconds']} s, {c['connections']} conns ({c['proto']})"
        goal = "p99 < 50 ms" if ctag != "corral-watch-small" else ""
        row(name + ": delivery p50 / p99 / max",
            f"{c['p50_ms']} / {c['p99_ms']} / {c['max_ms']} ms",
            e and f"{e['p50_ms']} / {e['p99_ms']} / {e['max_ms']} ms (gateway)",
            ratio(c["p99_ms"], e and e["p99_ms"]) + " (p99)", goal,
            (c["p99_ms"] < 50 and c["all_exact"]) if goal else None)
        row("  writes accepted/s (offered " + fmt(c["target_rate"]) + "), write p99",
            f"{fmt(c['achieved_rate'])}, p99 {c['write_latency']['p99_ms']} ms",
            e and f"{fmt(e['achieved_rate'])}, p99 {e['write_latency']['p99_ms']} ms",
            ratio(c["achieved_rate"], e and e["achieved_rate"]))
        cs, es = c["seconds"], e and e["seconds"]
        row("  events delivered/s (all watchers); every watcher exact & in order?",
            f"{fmt(round(c['events_delivered'] / cs))}; {'yes' if c['watchers_exact_in_order'] == c['watchers'] and c['events_delivered'] == c['events_expected'] else 'no'}"
            f" ({c['watchers_exact_in_order']}/{c['watchers']} exact, missing {c['missing']}, dup {c['duplicates']}, reordered {c['out_of_order']})",
            e and f"{fmt(round(e['events_delivered'] / es))}; {e['watchers_exact_in_order']}/{e['watchers']} exact, missing {e['missing']}",
            ratio(c["events_delivered"], e and e["events_delivered"]))

    cl, el = g("corral-list"), g("etcd-list")
    if cl:
        n = cl["count"]
        s = cl["setup"]
        row(f"list setup: {fmt(n)} creates ({s['proto']}, {s['concurrency']} clients)",
            f"{fmt(s['per_sec'])}/s, {s['seconds']} s, {s['errors']} errors",
            el and f"{fmt(el['setup']['per_sec'])}/s, {el['setup']['seconds']} s",
            ratio(s["per_sec"], el and el["setup"]["per_sec"]))
        f = cl["full_list"]
        ef = el and el["full_list"]
        row(f"LIST {fmt(n)} ConfigMaps, no limit (median of 3)",
            f"{fmt(f['median_ms'], ' ms')} ({f['bytes'] / 1e6:.0f} MB, {fmt(f['items'])} items)",
            ef and (f"{fmt(ef['median_ms'], ' ms')} ({ef['bytes'] / 1e6:.0f} MB)" if ef.get("median_ms") else f"failed: {ef.get('error')}"),
            ratio(f["median_ms"], ef and ef.get("median_ms")), "report")
        p = cl["paged_list"]
        ep = el and el["paged_list"]
        row(f"LIST limit={p['limit']}, whole walk ({p['pages']} pages, median of 3)",
            f"{fmt(p['walk_median_ms'], ' ms')}, page p50/p99 {p['page_latency']['p50_ms']}/{p['page_latency']['p99_ms']} ms",
            ep and f"{fmt(ep['walk_median_ms'], ' ms')}, page p50/p99 {ep['page_latency']['p50_ms']}/{ep['page_latency']['p99_ms']} ms",
            ratio(p["walk_median_ms"], ep and ep["walk_median_ms"]), "report")
        m = cl["memory"]
        em = el and el["memory"]
        row(f"RSS with {fmt(n)} objects: after creates / after lists / peak",
            f"{m['after_create']['rss_mb']} / {m['after_paged_lists']['rss_mb']} / {m['after_paged_lists']['hwm_mb']} MB",
            em and f"{em['after_create']['rss_mb']} / {em['after_lists']['rss_mb']} / {em['after_lists']['hwm_mb']} MB",
            ratio(m["after_paged_lists"]["rss_mb"], em and em["after_lists"]["rss_mb"]), "report")
        row("  every list returned all items", "yes" if cl["items_ok"] else "**no**")
    sd = g("corral-shutdown")
    if sd:
        row("shutdown on SIGTERM", fmt(sd["ms"], " ms"))

    print()
    print("| metric | corral | etcd (peer) | corral/etcd | goal | met |")
    print("|---|---|---|---|---|---|")
    for m, c, e, rt, goal, met in rows:
        print(f"| {m} | {c} | {e or ''} | {rt or ''} | {goal} | {met} |")


if __name__ == "__main__":
    main()
