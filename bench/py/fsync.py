"""The disk's own fsync latency: the floor under every durable write's.

Usage: python3 fsync.py DIR SECONDS

For SECONDS, appends a group commit's worth of WAL frames (40 frames of 4 KiB + a 24-byte header)
to a file in DIR, reusing 64 MiB written beforehand (as SQLite reuses its WAL), and fdatasyncs
after each batch. Prints key=value lines for report.py: the median, p99 and longest sync, and the
share of the time spent in syncs longer than 5 ms. That share matters for the p99 targets: wrk
corrects for coordinated omission, so a stall of S ms counts as about S / (64 / req/s) late
requests, and a write path that must wait for the disk cannot have a p99 under 5 ms while the disk
itself stalls for more than about 1% of the run.
"""

import os
import statistics
import sys
import time

directory, seconds = sys.argv[1], float(sys.argv[2])
FRAME = 4096 + 24
SPAN = 64 << 20
path = os.path.join(directory, "fsync-probe")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    chunk = b"\0" * (1 << 20)
    for offset in range(0, SPAN, len(chunk)):
        os.pwrite(fd, chunk, offset)
    os.fsync(fd)
    frame, offset, took = b"x" * FRAME, 0, []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(40):
            os.pwrite(fd, frame, offset)
            offset = (offset + FRAME) % (SPAN - FRAME)
        t0 = time.perf_counter()
        os.fdatasync(fd)
        took.append((time.perf_counter() - t0) * 1000)
    elapsed_ms = (time.perf_counter() - started) * 1000
finally:
    os.close(fd)
    os.unlink(path)

took.sort()
stalled = sum(ms for ms in took if ms > 5)
print(f"fsync_count={len(took)}")
print(f"fsync_ms_p50={statistics.median(took):.3f}")
print(f"fsync_ms_p99={took[int(len(took) * 0.99) - 1]:.3f}")
print(f"fsync_ms_max={took[-1]:.1f}")
print(f"fsync_stalled_pct={100 * stalled / elapsed_ms:.1f}")
print(f"fsync_seconds={seconds:g}")
