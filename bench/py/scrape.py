"""The cost of a Prometheus scrape of comments, with many label combinations present.

Usage: python3 scrape.py API_URL METRICS_URL SCRAPES

First sends every route a spread of methods and bad inputs (so http_requests_total and the
latency histogram hold a series for most (method, route, status) a real pod sees: 200, 201, 204,
400, 401/403, 404, 405, 413, 415, 422), then times SCRAPES scrapes of /metrics over one
keep-alive connection, as Prometheus makes them. Prints key=value lines for report.py.
"""

import http.client
import statistics
import sys
import time
import urllib.parse

api, metrics, scrapes = sys.argv[1], sys.argv[2], int(sys.argv[3])


def connection(url):
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


def send(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response.status


JSON = {"Content-Type": "application/json"}
GOOD = b'{"email":"scrape@example.com","comment":"scrape","content_id":"scrape"}'
requests = [
    ("GET", "/health-check", None, None),
    ("GET", "/livez", None, None),
    ("GET", "/readyz", None, None),
    ("GET", "/version", None, None),
    ("GET", "/openapi.json", None, None),
    ("GET", "/api/comment/list/scrape", None, None),
    ("GET", "/api/comment/list/nothing-here", None, None),
    ("GET", "/api/comment/list/bad%20id", None, None),
    ("POST", "/api/comment/new", GOOD, JSON),
    ("POST", "/api/comment/new", b"{not json", JSON),
    ("POST", "/api/comment/new", b'{"email":"x","comment":"","content_id":1}', JSON),
    ("POST", "/api/comment/new", GOOD, {"Content-Type": "text/plain"}),
    ("POST", "/api/comment/new", b"x" * 200_000, JSON),
    ("POST", "/api/v1/contents/scrape/comments", b'{"email":"s@example.com","comment":"v1"}', JSON),
    ("GET", "/api/v1/contents/scrape/comments?limit=2", None, None),
    ("GET", "/api/v1/contents/scrape/comments?limit=0", None, None),
    ("GET", "/api/v1/comments/1", None, None),
    ("GET", "/api/v1/comments/999999999", None, None),
    ("DELETE", "/api/v1/comments/1", None, None),
    ("GET", "/no/such/route", None, None),
]
for method in ("PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
    requests += [(method, "/api/comment/new", None, None), (method, "/health-check", None, None)]

for method, path, body, headers in requests:
    conn = connection(api)  # a fresh connection each: a 413 or 415 may close it
    send(conn, method, path, body, headers)
    conn.close()

conn = connection(metrics)
send(conn, "GET", "/metrics")  # the first scrape warms up, and is not counted
took, size, series = [], 0, 0
for _ in range(scrapes):
    started = time.perf_counter()
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    took.append((time.perf_counter() - started) * 1000)
    size = len(body)
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
took.sort()
print(f"scrape_count={scrapes}")
print(f"scrape_series={series}")
print(f"scrape_bytes={size}")
print(f"scrape_ms_p50={statistics.median(took):.3f}")
print(f"scrape_ms_p99={took[int(len(took) * 0.99) - 1]:.3f}")
