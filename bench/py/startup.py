#!/usr/bin/env python3
"""Time from exec to the first 200 on /readyz for `comments` on SQLite, several starts.

    startup.py COMMENTS_BIN WORK_DIR STARTS CPU

Each start gets a fresh SQLite file in WORK_DIR (so it includes creating the database and running
the migrations), then a second start on that same file (a restart). Method: t0 is taken right
before fork+exec (the child pins itself to CPU before exec, like `taskset`); a raw socket then
tries `GET /readyz` every millisecond (a refused connect returns at once) until the status line
says 200; t1 is when that line arrives. The process is then SIGKILLed. Prints two lines,
`fresh_ms=...` and `restart_ms=...`, each the list of the starts in milliseconds.
"""
import os
import signal
import socket
import subprocess
import sys
import time

TIMEOUT_S = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    """True when GET /readyz answers 200; False when refused, closed early or not 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one_start(binary, db_path, cpu):
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "COMMENTS_LISTEN": f"127.0.0.1:{port}",
        "COMMENTS_METRICS_LISTEN": "127.0.0.1:0",
        "COMMENTS_DATABASE_URL": f"sqlite://{db_path}",
    }
    t0 = time.monotonic()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        while not ready(port):
            if proc.poll() is not None:
                sys.exit(f"startup: comments exited with {proc.returncode} before it was ready")
            if time.monotonic() - t0 > TIMEOUT_S:
                sys.exit(f"startup: not ready within {TIMEOUT_S}s")
            time.sleep(0.001)
        return (time.monotonic() - t0) * 1000
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)


def main():
    binary, work, starts, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    fresh, restart = [], []
    for i in range(starts):
        db_path = os.path.join(work, f"startup-{i}", "comments.db")
        os.makedirs(os.path.dirname(db_path))
        fresh.append(one_start(binary, db_path, cpu))
        restart.append(one_start(binary, db_path, cpu))
    print("fresh_ms=" + ",".join(f"{ms:.1f}" for ms in fresh))
    print("restart_ms=" + ",".join(f"{ms:.1f}" for ms in restart))


if __name__ == "__main__":
    main()
