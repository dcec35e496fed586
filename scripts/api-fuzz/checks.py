"""Checks schemathesis runs on every response besides its own (loaded by scripts/test-api-fuzz.sh
through SCHEMATHESIS_HOOKS). They hold the parts of the contract an OpenAPI document cannot say.

Environment, set by the script for each run:
  FUZZ_RUN     admin (the right token is sent), no-token, wrong-token, or deleting-off (the
               server has no admin token)
  FUZZ_SECRET  the server's admin token, which no response may contain
"""

import json
import os

import schemathesis

RUN = os.environ["FUZZ_RUN"]
SECRET = os.environ["FUZZ_SECRET"].encode()
DELETE = "DELETE /api/v1/comments/{id}"


def header(response, name):
    values = response.headers.get(name.lower()) or []
    return values[0] if values else None


@schemathesis.check
def security_headers(ctx, response, case):
    """Every response, errors included, forbids sniffing and rendering (src/http/mod.rs)."""
    if header(response, "X-Content-Type-Options") != "nosniff":
        raise AssertionError("X-Content-Type-Options: nosniff is missing")
    csp = header(response, "Content-Security-Policy") or ""
    if "default-src 'none'" not in csp or "frame-ancestors 'none'" not in csp:
        raise AssertionError(f"Content-Security-Policy is not restrictive: {csp!r}")


@schemathesis.check
def json_errors(ctx, response, case):
    """Every error, on documented routes or not (405, 404), is the one JSON shape of DESIGN.md,
    401 says how to authenticate, and 503 and 429 say when to come back."""
    status = response.status_code
    if status < 400:
        return
    content_type = header(response, "Content-Type") or ""
    if not content_type.startswith("application/json"):
        raise AssertionError(f"{status} is not JSON: Content-Type {content_type!r}")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{status} body is not JSON: {response.content[:200]!r}") from None
    if not (isinstance(body, dict) and isinstance(body.get("status"), str)
            and isinstance(body.get("message"), str)):
        raise AssertionError(f'{status} body is not {{"status","message"}}: {body!r}')
    if status == 401 and not (header(response, "WWW-Authenticate") or "").startswith("Bearer"):
        raise AssertionError("401 without WWW-Authenticate: Bearer")
    if status in (429, 503) and header(response, "Retry-After") is None:
        raise AssertionError(f"{status} without Retry-After")


@schemathesis.check
def no_secret_in_responses(ctx, response, case):
    """The admin token is never echoed, in a body or a header."""
    if SECRET in response.content:
        raise AssertionError("the admin token appears in the response body")
    for name, values in response.headers.items():
        if any(SECRET in value.encode() for value in values):
            raise AssertionError(f"the admin token appears in the {name} header")


@schemathesis.check
def delete_needs_the_token(ctx, response, case):
    """Only the admin run may delete; the others must be refused, whatever else they send."""
    if RUN != "admin" and case.operation.label == DELETE and response.status_code < 300:
        raise AssertionError(f"deleted in the {RUN} run ({response.status_code})")


@schemathesis.check
class every_operation_succeeds_once:
    """In the admin run each operation answers 2xx at least once, so the run tested more than
    the ways to get an error (a 204 on DELETE proves the token was sent and accepted)."""

    def __init__(self):
        self.tested = set()
        self.succeeded = set()

    def after_response(self, ctx, response, case):
        self.tested.add(case.operation.label)
        if 200 <= response.status_code < 300:
            self.succeeded.add(case.operation.label)

    def after_run(self, ctx):
        never = self.tested - self.succeeded
        if RUN == "admin" and never:
            raise AssertionError("never answered 2xx: " + ", ".join(sorted(never)))
