-- Shared by every scenario (loaded with dofile): at the end of a run, one machine-readable line
-- for bench/py/report.py. Latencies in microseconds; errors split as wrk counts them
-- (status = responses outside 2xx/3xx; the others are socket errors).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
