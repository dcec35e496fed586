#!/usr/bin/env python3
"""Seeds one server through its HTTP API and saves what it answers, before any load.

    seed.py BASE_URL OUT_DIR [--v1]

Posts 20 comments to content 1 (the list scenario), 20 to content 3 (the mix) and, with --v1,
100 to content 2 (the pagination scenario); the same comments on every server, so the list
bodies can be compared across servers. Saves the bodies of GET /health-check, GET
/api/comment/list/1 and, with --v1, the first v1 page to OUT_DIR, and prints the first page's
cursor (URL-encoded) for the pagination scenario. Exits 1 when an answer is not what the contract
says, so the benchmark never measures a server that answers wrongly.
"""
import http.client
import json
import sys
import urllib.parse

LIST, V1, MIX = 1, 2, 3


def fail(message):
    print(f"seed: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    base, out_dir = sys.argv[1], sys.argv[2]
    with_v1 = "--v1" in sys.argv[3:]
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)

    def call(method, path, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        # A fresh connection when the server closes each one (gunicorn's sync worker does).
        for attempt in (1, 2):
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                if attempt == 2:
                    raise

    def post(content_id, i):
        body = json.dumps({"email": f"seed{i}@example.com", "comment": f"seed comment {i} of {content_id}",
                           "content_id": content_id})
        status, answer = call("POST", "/api/comment/new", body)
        expected = f"comment created and associated with content_id {content_id}"
        if status != 200 or json.loads(answer).get("message") != expected:
            fail(f"POST {body} -> {status} {answer!r}")

    items = [(LIST, 20), (MIX, 20)] + ([(V1, 100)] if with_v1 else [])
    for content_id, count in items:
        for i in range(count):
            post(content_id, i)

    status, health = call("GET", "/health-check")
    if status != 200 or json.loads(health) != {"status": "SUCCESS", "message": "its ok!"}:
        fail(f"GET /health-check -> {status} {health!r}")
    status, listed = call("GET", f"/api/comment/list/{LIST}")
    if status != 200 or len(json.loads(listed)) != 20:
        fail(f"GET /api/comment/list/{LIST} -> {status}, expected 20 comments: {listed[:200]!r}")
    with open(f"{out_dir}/health.body", "wb") as f:
        f.write(health)
    with open(f"{out_dir}/list.body", "wb") as f:
        f.write(listed)

    if with_v1:
        status, page = call("GET", f"/api/v1/contents/{V1}/comments?limit=20")
        parsed = json.loads(page) if status == 200 else {}
        if len(parsed.get("items", [])) != 20 or not parsed.get("next"):
            fail(f"GET /api/v1/contents/{V1}/comments?limit=20 -> {status}, expected 20 items and a "
                 f"cursor: {page[:200]!r}")
        with open(f"{out_dir}/v1.body", "wb") as f:
            f.write(page)
        print(urllib.parse.quote(str(parsed["next"]), safe=""))
    conn.close()


if __name__ == "__main__":
    main()
