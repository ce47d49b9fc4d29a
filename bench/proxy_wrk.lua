-- wrk script for bench/proxy.sh: optional pacing and one machine-readable result line.
--
-- WRK_DELAY_MS=N makes each connection wait N ms after a response before sending the next
-- request (wrk's delay() hook; wrk starts the latency clock when the request is written,
-- after the wait, so the pause is not counted as latency). wrk2's fixed-rate mode is not
-- in Debian; one connection with a 1 ms pause is how the script offers "about 1,000 req/s".
-- done() prints the exact percentiles (wrk keeps a per-microsecond histogram) as JSON.

local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")

if delay_ms > 0 then
    function delay()
        return delay_ms
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"lat_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, latency.mean))
end
