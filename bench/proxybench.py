#!/usr/bin/env python3
"""Node proxy benchmark: corral's Service proxy against HAProxy. Driven by bench/proxy.sh,
which starts the backends, HAProxy and the corral server and creates the Services; this
measures and prints one JSON line per measurement, then a Markdown summary.

Paths, each a wrk target (HTTP/1.1 keep-alive GET of a 128-byte static file):
  direct       one nginx backend itself (127.0.0.2)
  haproxy-l7   HAProxy `mode http`, both backends round robin
  haproxy-l4   HAProxy `mode tcp`, both backends round robin (per connection)
  corral-l7    the cluster IP of a Service whose port is named `http` (per request, with a
               DestinationRule asking for ROUND_ROBIN like HAProxy's)
  corral-l4    the cluster IP of a Service whose port is named `tcp` (per connection)

Runs (wrk -t1, DURATION seconds each; CPU of both proxies sampled around every run):
  paced  one connection, 1 ms pause after each response (wrk's delay() hook): about 1,000
         req/s less the latency; wrk2's fixed rate mode is not in Debian
  mid    MID_CONNS connections back to back: the CPU cost at a moderate fixed concurrency
  max    CONNS connections back to back, ROUNDS times alternating between paths, best kept

Then the VirtualService change: the `bench-route` Service's VirtualService sends everything
to `bench-a` (backend a); a merge PATCH turns it to `bench-b`, and back, FLIPS times; a
client sends requests back to back on one keep-alive connection to the cluster IP and notes
when the first answer from the new backend arrives. Python 3 standard library only.
"""

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from podbench import Kube  # noqa: E402  (the admin client-certificate HTTPS client)

CLK = os.sysconf("SC_CLK_TCK")
PATHS = ["direct", "haproxy-l7", "corral-l7", "haproxy-l4", "corral-l4"]


def log(*a):
    print(f"[proxybench {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


def cpu_seconds(pid):
    """utime + stime of the whole process (every thread, also those that exited)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def get(addr, timeout=2):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_answering(name, addr, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            st, body = get(addr)
            if st == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} ({addr}) does not answer 200 after {timeout} s")
        time.sleep(0.05)


class Sampler:
    """CPU seconds of the proxies around a run."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.cpu = {k: cpu_seconds(p) - self.c0[k] for k, p in self.pids.items()}


def wrk(args, addr, conns, delay_ms=0):
    env = dict(os.environ, WRK_DELAY_MS=str(delay_ms))
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{args.duration}s", "--timeout", "5s", "--latency",
           "-s", args.lua, f"http://{addr}/"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"^WRK_JSON (.*)$", out, re.M)
    if not m:
        raise SystemExit(f"no result from wrk:\n{out}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors_total"] = sum(r["errors"].values())
    return r


def measure(args, path, kind, conns, delay_ms, idle, pids, rnd=0):
    with Sampler(pids) as s:
        r = wrk(args, args.addr[path], conns, delay_ms)
    r.update(path=path, run=kind, conns=conns, delay_ms=delay_ms, round=rnd,
             wall_s=round(s.wall, 3), load1=float(open("/proc/loadavg").read().split()[0]))
    proxy = path.split("-")[0]
    if proxy in pids:
        busy = max(s.cpu[proxy] - idle[proxy] * s.wall, 0.0)
        r["proxy_cpu_s"] = round(busy, 3)
        r["proxy_cores"] = round(busy / s.wall, 4)
        r["cores_per_1k_rps"] = round(busy / s.wall / (r["rps"] / 1000), 5) if r["rps"] else None
    emit(r)
    log(f"{kind:6} {path:11} c={conns:<3} {r['rps']:9.0f} req/s  p50 {r['lat_us']['p50']:6} us"
        f"  p99 {r['lat_us']['p99']:6} us  errors {r['errors_total']}"
        + (f"  proxy {r['proxy_cores']:.3f} cores" if "proxy_cores" in r else ""))
    return r


# ---------------------------------------------------------------- VirtualService change

class Prober(threading.Thread):
    """Back-to-back GETs on one keep-alive connection; keeps (sent, received, backend)."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.log = []
        self.errors = 0
        self.stop = False
        self.lock = threading.Lock()

    def run(self):
        c = None
        while not self.stop:
            try:
                if c is None:
                    c = http.client.HTTPConnection(self.host, self.port, timeout=5)
                t0 = time.monotonic()
                c.request("GET", "/")
                r = c.getresponse()
                body = r.read()
                t1 = time.monotonic()
                with self.lock:
                    if r.status == 200:
                        self.log.append((t0, t1, body[:1].decode()))
                    else:
                        self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.001)

    def first_from(self, backend, since):
        with self.lock:
            for t0, t1, b in self.log:
                if t0 >= since and b == backend:
                    return t1
        return None

    def strays(self, backend, since, until):
        """Answers from another backend after the first from `backend` (flapping)."""
        first = self.first_from(backend, since)
        if first is None:
            return 0
        with self.lock:
            return sum(1 for t0, t1, b in self.log if t0 > first and t1 < until and b != backend)


def vs_flips(args):
    kube = Kube(args.kubeconfig, args.tmp)
    path = f"/apis/networking.istio.io/v1/namespaces/{args.namespace}/virtualservices/bench-route"
    prober = Prober(args.addr["route"])
    prober.start()
    deadline = time.monotonic() + 10
    while prober.first_from("a", 0) is None:
        if time.monotonic() > deadline:
            raise SystemExit("bench-route does not answer from backend a")
        time.sleep(0.01)
    conn = kube.conn()
    results = []
    want = "a"
    for i in range(args.flips):
        want = "b" if want == "a" else "a"
        body = json.dumps({"spec": {"http": [{"route": [{"destination": {"host": f"bench-{want}"}}]}]}})
        time.sleep(0.3 + random.random() * 0.2)
        t_send = time.monotonic()
        conn.request("PATCH", path, body=body, headers={"Content-Type": "application/merge-patch+json"})
        r = conn.getresponse()
        r.read()
        t_ack = time.monotonic()
        if r.status != 200:
            raise SystemExit(f"PATCH VirtualService: {r.status}")
        while (t_first := prober.first_from(want, t_send)) is None:
            if time.monotonic() > t_send + 10:
                raise SystemExit(f"traffic did not follow the change to bench-{want} in 10 s")
            time.sleep(0.0005)
        time.sleep(0.2)
        res = {"flip": i, "to": want, "api_ms": round((t_ack - t_send) * 1000, 2),
               "from_send_ms": round((t_first - t_send) * 1000, 2),
               "from_ack_ms": round((t_first - t_ack) * 1000, 2),
               "strays": prober.strays(want, t_send, time.monotonic())}
        results.append(res)
        emit(dict(res, run="vs-change"))
    prober.stop = True
    prober.join(timeout=6)
    with prober.lock:
        n = len(prober.log)
    return results, prober.errors, n


# ---------------------------------------------------------------- summary

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def ms(us):
    return f"{us / 1000:.3f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--lua", required=True)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--corral-pid", type=int, required=True)
    ap.add_argument("--noproxy-pid", type=int, required=True)
    ap.add_argument("--haproxy-pid", type=int, required=True)
    ap.add_argument("--haproxy-threads", type=int, required=True)
    for p in PATHS + ["route"]:
        ap.add_argument(f"--{p}", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--mid-conns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flips", type=int, default=10)
    args = ap.parse_args()
    args.addr = {p: getattr(args, p.replace("-", "_")) for p in PATHS + ["route"]}
    pids = {"corral": args.corral_pid, "haproxy": args.haproxy_pid}

    for p in PATHS + ["route"]:
        wait_answering(p, args.addr[p])
    # Bodies must come from both backends through every proxy (round robin works).
    for p in PATHS[1:]:
        seen = set()
        for _ in range(8):
            seen.add(get(args.addr[p])[1][:1])
        if seen != {b"a", b"b"}:
            raise SystemExit(f"{p} answered only from {seen}")

    # Idle: CPU over one run's duration, RSS at the end of it.
    time.sleep(2)
    with Sampler(pids) as s:
        time.sleep(args.duration)
    idle = {k: s.cpu[k] / s.wall for k in pids}
    rss_idle = {k: status_kib(p, "VmRSS") for k, p in pids.items()}
    rss_idle["noproxy"] = status_kib(args.noproxy_pid, "VmRSS")
    emit({"run": "idle", "wall_s": round(s.wall, 3), "cpu_s": s.cpu, "rss_kib": rss_idle})
    log(f"idle: corral {idle['corral']:.4f} cores, {rss_idle['corral'] / 1024:.1f} MiB RSS"
        f" (same server without proxy: {rss_idle['noproxy'] / 1024:.1f} MiB);"
        f" haproxy {idle['haproxy']:.4f} cores, {rss_idle['haproxy'] / 1024:.1f} MiB RSS")

    # Paced and max runs ROUNDS times, the paths alternating (reversed order every other
    # round) so all see the same machine load; each path's median round is kept (by p99
    # paced, by req/s max): on a shared machine one round's tail is often another
    # tenant's burst, and the median of an odd count drops it whichever path it hit.
    runs = {}
    for rnd in range(args.rounds):
        order = PATHS if rnd % 2 == 0 else PATHS[::-1]
        for p in order:
            runs.setdefault((p, "paced"), []).append(measure(args, p, "paced", 1, 1, idle, pids, rnd))
        for p in order:
            runs.setdefault((p, "max"), []).append(measure(args, p, "max", args.conns, 0, idle, pids, rnd))
    res = {}
    for (p, kind), rs in runs.items():
        key = (lambda r: r["lat_us"]["p99"]) if kind == "paced" else (lambda r: r["rps"])
        res[(p, kind)] = sorted(rs, key=key)[(len(rs) - 1) // 2]
    for p in PATHS:
        res[(p, "mid")] = measure(args, p, "mid", args.mid_conns, 0, idle, pids)
    errors = sum(r["errors_total"] for rs in runs.values() for r in rs)

    flips, probe_errors, probes = vs_flips(args)
    rss_after = {k: status_kib(p, "VmRSS") for k, p in pids.items()}
    hwm = {k: status_kib(p, "VmHWM") for k, p in pids.items()}
    emit({"run": "rss-after", "rss_kib": rss_after, "hwm_kib": hwm})

    # ------------------------------------------------------------ table
    L = lambda p, k: res[(p, k)]["lat_us"]  # noqa: E731
    rows = []

    def row(metric, h, c, rat, goal="", met=""):
        rows.append(f"| {metric} | {h} | {c} | {rat} | {goal} | {met} |")

    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    d = res[("direct", "paced")]
    rows.append(f"Direct to one backend, paced (1 connection, 1 ms pause): {d['rps']:.0f} req/s,"
                f" p50 {ms(d['lat_us']['p50'])} ms, p90 {ms(d['lat_us']['p90'])} ms,"
                f" p99 {ms(d['lat_us']['p99'])} ms."
                f" Direct, {args.conns} connections: {res[('direct', 'max')]['rps']:,.0f} req/s.")
    rows.append("")
    rows.append("| metric | HAProxy | corral | corral/HAProxy | goal | met |")
    rows.append("|---|---|---|---|---|---|")
    for layer in ("l7", "l4"):
        h, c = f"haproxy-{layer}", f"corral-{layer}"
        name = "L7 (http)" if layer == "l7" else "L4 (tcp)"
        hp, cp = res[(h, "paced")], res[(c, "paced")]
        row(f"{name} paced: req/s achieved", f"{hp['rps']:.0f}", f"{cp['rps']:.0f}", "")
        row(f"{name} paced: latency p50 / p90 / p99 ms",
            f"{ms(L(h, 'paced')['p50'])} / {ms(L(h, 'paced')['p90'])} / {ms(L(h, 'paced')['p99'])}",
            f"{ms(L(c, 'paced')['p50'])} / {ms(L(c, 'paced')['p90'])} / {ms(L(c, 'paced')['p99'])}",
            ratio(L(c, "paced")["p99"], L(h, "paced")["p99"]) + " (p99)")
        dh = L(h, "paced")["p99"] - L("direct", "paced")["p99"]
        dc = L(c, "paced")["p99"] - L("direct", "paced")["p99"]
        d50h = L(h, "paced")["p50"] - L("direct", "paced")["p50"]
        d50c = L(c, "paced")["p50"] - L("direct", "paced")["p50"]
        d90h = L(h, "paced")["p90"] - L("direct", "paced")["p90"]
        d90c = L(c, "paced")["p90"] - L("direct", "paced")["p90"]
        # A negative difference means the direct run's tail was the machine's noise, not
        # the path's: no verdict then.
        row(f"{name} added latency over direct, p50 / p90 / p99 ms",
            f"{ms(d50h)} / {ms(d90h)} / {ms(dh)}", f"{ms(d50c)} / {ms(d90c)} / {ms(dc)}", ratio(dc, dh) + " (p99)" if dh > 0 and dc > 0 else "",
            "p99 < 0.3 ms" if layer == "l7" else "",
            ("?" if dc < 0 else yes(dc < 300)) if layer == "l7" else "")
        hm, cm = res[(h, "max")], res[(c, "max")]
        row(f"{name} max throughput, {args.conns} conns (median of {args.rounds}): req/s",
            f"{hm['rps']:,.0f}", f"{cm['rps']:,.0f}", ratio(cm["rps"], hm["rps"]),
            ">= HAProxy", yes(cm["rps"] >= hm["rps"]))
        row(f"{name} max: latency p50 / p99 ms",
            f"{ms(L(h, 'max')['p50'])} / {ms(L(h, 'max')['p99'])}",
            f"{ms(L(c, 'max')['p50'])} / {ms(L(c, 'max')['p99'])}",
            ratio(L(c, "max")["p99"], L(h, "max")["p99"]) + " (p99)")
        for kind, label in (("paced", "paced"), ("mid", f"{args.mid_conns} conns"),
                            ("max", f"{args.conns} conns")):
            hr, cr = res[(h, kind)], res[(c, kind)]
            row(f"{name} proxy CPU, cores per 1,000 req/s ({label}: {hr['rps']:,.0f} / {cr['rps']:,.0f} req/s)",
                f"{hr['cores_per_1k_rps']:.4f}", f"{cr['cores_per_1k_rps']:.4f}",
                ratio(cr["cores_per_1k_rps"], hr["cores_per_1k_rps"]), "< 0.03",
                yes(cr["cores_per_1k_rps"] < 0.03))
    row("idle RSS (corral: the whole server, API + store + controllers + agent + proxy)",
        f"{rss_idle['haproxy'] / 1024:.1f} MiB", f"{rss_idle['corral'] / 1024:.1f} MiB",
        ratio(rss_idle["corral"], rss_idle["haproxy"]))
    own = rss_idle["corral"] - rss_idle["noproxy"]
    row("idle RSS of the proxy: the server minus the same server with --disable-proxy"
        f" ({rss_idle['noproxy'] / 1024:.1f} MiB), same objects",
        f"{rss_idle['haproxy'] / 1024:.1f} MiB", f"{own / 1024:.1f} MiB",
        ratio(own, rss_idle["haproxy"]), "< 15 MB", yes(own * 1024 < 15e6))
    row("RSS after the runs / peak (VmHWM)",
        f"{rss_after['haproxy'] / 1024:.1f} / {hwm['haproxy'] / 1024:.1f} MiB",
        f"{rss_after['corral'] / 1024:.1f} / {hwm['corral'] / 1024:.1f} MiB", "")
    row("idle CPU (cores, over one run's duration)", f"{idle['haproxy']:.4f}", f"{idle['corral']:.4f}", "")
    fs = [f["from_send_ms"] for f in flips]
    fa = [f["from_ack_ms"] for f in flips]
    api = [f["api_ms"] for f in flips]
    # From the PATCH sent: the API's durable write (fsync) included; from its response:
    # the watch, the proxy's rebuild and one request's round trip.
    row(f"VirtualService change -> traffic follows, {len(flips)} changes: p50 / max ms from PATCH sent",
        "(no peer)", f"{pct(fs, 50):.1f} / {max(fs):.1f}", "", "< 100 ms", yes(max(fs) < 100))
    row("  same, from the PATCH's response; PATCH itself p50 / max ms", "",
        f"{pct(fa, 50):.1f} / {max(fa):.1f}; {pct(api, 50):.1f} / {max(api):.1f}", "")
    row("  answers from the old backend after the first from the new one; failed requests"
        f" ({probes} requests during the changes)", "", f"{sum(f['strays'] for f in flips)}; {probe_errors}", "")
    row("wrk socket errors / non-2xx in all runs (both proxies and direct)", "", str(errors), "")
    print()
    print(f"HAProxy: nbthread {args.haproxy_threads} (one thread per core, as corral's tokio runtime"
          f" has one worker per core; both may use the whole machine). Latency (\"paced\") runs:"
          f" wrk -t1 -c1 with a 1 ms pause after each response (wrk's delay() hook; wrk2's fixed"
          f" rate is not in Debian), so the rate is about 1,000 req/s less the latency, as"
          f" printed; the round with the median p99 of {args.rounds}. Max runs: wrk -t1"
          f" -c{args.conns}, the round with the median req/s of {args.rounds}; every round's"
          f" numbers are in the JSON lines above. Each run {args.duration} s. Proxy CPU = utime+stime over the run minus"
          f" the idle rate; corral's counts the whole server process (API, controllers and agent"
          f" idle along). RSS of one process cannot separate the proxy from the rest of the"
          f" server, so a second server with the same objects and --disable-proxy idles"
          f" beside it and the difference is reported (allocator noise: about 1 MiB). Ratios are corral / HAProxy.")
    print()
    print("\n".join(rows))
    print()
    print("Every round (paced p99 ms; max req/s):")
    for p in PATHS:
        print(f"- {p}: " + ", ".join(ms(r["lat_us"]["p99"]) for r in runs[(p, "paced")])
              + " (load " + ", ".join(f"{r['load1']:.1f}" for r in runs[(p, "paced")]) + ")"
              + "; " + ", ".join(f"{r['rps']:,.0f}" for r in runs[(p, "max")]))


if __name__ == "__main__":
    main()
