"""The chart <-> binary contract: runs the real binary exactly as the rendered chart would run it.

Reads a `helm template` output and, from its Deployment's container, builds the process the kubelet
would start: the env (envFrom ConfigMaps, env values with $(VAR) expansion, downward API, Secret
refs), the args, and the volume mounts. What only a cluster has is replaced by local stand-ins:
Secrets by the values given with --secret, volumes by temporary directories (paths in env values
are rewritten to them), the pod's name and namespace by fixed strings, and the listen addresses by
127.0.0.1:0 (the binary logs the ports it bound). Then it checks, with the real binary:

- the listen ports in the env are the container ports named `http` and `metrics`, on 0.0.0.0;
- the startup, readiness and liveness probes answer as the kubelet wants (2xx/3xx in time), on the
  port each probe names;
- the ServiceMonitor's endpoint, followed through the Service's port to the container port, serves
  Prometheus text that parses;
- the `helm test` pod's script passes against it (curl, through the Service's http port);
- the NOTES' `kubectl port-forward` lines name the Service's ports, and their curls work through
  them (--notes, the NOTES of `helm install --dry-run`);
- with an admin token Secret, DELETE works with the token from the mounted file;
- SIGTERM: /readyz fails at once, the process exits 0 within terminationGracePeriodSeconds.

Usage: python contract.py --binary PATH --rendered FILE [--notes FILE] [--secret NAME/KEY=VALUE]...
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

# The binary's interface: which env var holds the listen address of which named container port.
LISTEN_ENV = {"COMMENTS_LISTEN": "http", "COMMENTS_METRICS_LISTEN": "metrics"}
# Stand-ins for the downward API.
POD_FIELDS = {"metadata.name": "comments-contract-0", "metadata.namespace": "contract"}

failures = []


def check(condition, message):
    print(("ok   " if condition else "FAIL ") + message, flush=True)
    if not condition:
        failures.append(message)
    return condition


def die(message):
    print("FAIL " + message, flush=True)
    sys.exit(1)


def only(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    if len(found) != 1:
        die(f"expected one {kind} in the render, found {len(found)}")
    return found[0]


def expand(value, env):
    """Kubernetes' $(VAR) expansion of env values: defined vars expand, $$ escapes, others stay."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def http_get(url, timeout, headers=None, method="GET"):
    """(status, headers, body, seconds); a refused connection is status 0."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode(), time.monotonic() - started
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, "", time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--rendered", required=True, help="output of helm template")
    parser.add_argument("--notes", help="NOTES printed by helm install --dry-run")
    parser.add_argument("--secret", action="append", default=[], help="NAME/KEY=VALUE stand-in for a Secret key")
    options = parser.parse_args()

    secrets = {}
    for item in options.secret:
        ref, value = item.split("=", 1)
        name, key = ref.split("/", 1)
        secrets.setdefault(name, {})[key] = value

    objects = [o for o in yaml.safe_load_all(Path(options.rendered).read_text()) if o]
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]
    containers = [c for c in pod["spec"]["containers"] if c["name"] == "comments"]
    len(containers) == 1 or die(f"expected one container named comments, found {len(containers)}")
    container = containers[0]
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}

    def secret_value(name, key):
        if key not in secrets.get(name, {}):
            die(f"the pod reads Secret {name} key {key}: give a stand-in with --secret {name}/{key}=...")
        return secrets[name][key]

    work = Path(tempfile.mkdtemp(prefix="comments-contract-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)

    # Volumes -> local directories, filled the way the kubelet fills them.
    local_dirs = {}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"]) or die(f"volumeMount {mount['name']} has no volume")
        local = work / "volumes" / mount["name"]
        local.mkdir(parents=True)
        if "secret" in volume:
            source = volume["secret"]
            items = source.get("items") or [{"key": k, "path": k} for k in secrets.get(source["secretName"], {})]
            for item in items:
                path = local / item["path"]
                path.write_text(secret_value(source["secretName"], item["key"]))
                path.chmod(source.get("defaultMode", 0o644))
        elif not ({"persistentVolumeClaim", "emptyDir"} & volume.keys()):
            die(f"volume {mount['name']}: no local stand-in for {sorted(volume)}")
        local_dirs[mount["mountPath"]] = str(local)

    def localize(value):
        """Rewrites paths under a mount (/data/comments.db) to the local directory."""
        for mount_path in sorted(local_dirs, key=len, reverse=True):
            value = re.sub(r"(?<![\w.-])" + re.escape(mount_path) + r"(?=/|$)", local_dirs[mount_path], value)
        return value

    # The env, in the kubelet's order: envFrom first, then env (later entries win).
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            name in config_maps or die(f"envFrom ConfigMap {name} is not in the render")
            env.update({source.get("prefix", "") + k: v for k, v in config_maps[name].items()})
        else:
            name = source["secretRef"]["name"]
            env.update({source.get("prefix", "") + k: v for k, v in secrets.get(name, {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = POD_FIELDS[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_value(ref["name"], ref["key"])
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            die(f"env {var['name']}: no local stand-in for {var['valueFrom']}")
    env = {k: localize(v) for k, v in env.items()}

    # Ports: the env must listen where the container ports say, on every interface.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(sorted(ports) == ["http", "metrics"], f"container ports are http and metrics: {ports}")
    for var, port_name in LISTEN_ENV.items():
        check(env.get(var) == f"0.0.0.0:{ports.get(port_name)}",
              f"{var}={env.get(var)} listens on all interfaces at containerPort {port_name}={ports.get(port_name)}")
        env[var] = "127.0.0.1:0"
    if failures:
        sys.exit(1)

    # Start the binary as the kubelet would: the image's entrypoint (the binary), the rendered args.
    "command" not in container or die("the container overrides the image's command; this test runs the entrypoint")
    argv = [str(Path(options.binary).resolve()), *container.get("args", [])]
    log_path = work / "stdout.log"
    print(f"start {' '.join(argv)} with {json.dumps(env, sort_keys=True)}", flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        run_checks(process, log_path, objects, deployment, container, ports, env, options.notes)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if failures:
            tail = log_path.read_text().splitlines()[-8:]
            print("--- last lines of the binary's output\n" + "\n".join(tail))
    print(f"contract: {'FAILED: ' + str(len(failures)) if failures else 'all checks passed'}")
    sys.exit(1 if failures else 0)


def run_checks(process, log_path, objects, deployment, container, ports, env, notes):
    # The "serving" log line names the addresses actually bound.
    deadline = time.monotonic() + 20
    bound = None
    while bound is None and time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text().splitlines():
            if '"message":"serving"' in line:
                bound = json.loads(line)
        time.sleep(0.05)
    if not bound:
        die(f"the binary did not log 'serving' within 20s (exit {process.poll()}):\n{log_path.read_text()}")
    local = {"http": bound["api"], "metrics": bound["metrics"]}
    by_number = {number: local[name] for name, number in ports.items()}

    def address_of(port):
        """A probe's or Service's port (a name or a number) -> the local address serving it."""
        address = local.get(port) if isinstance(port, str) else by_number.get(port)
        if address is None:
            die(f"port {port!r} is none of the container's ports {ports}")
        return address

    # Probes, the kubelet's way: an HTTP GET, success is 200 <= status < 400 within timeoutSeconds.
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        url = f"{probe.get('scheme', 'HTTP').lower()}://{address_of(probe['port'])}{probe['path']}"
        headers = {h["name"]: h["value"] for h in probe.get("httpHeaders", [])}
        timeout = container[kind].get("timeoutSeconds", 1)
        until = time.monotonic() + (budget if kind == "startupProbe" else 0)
        while True:
            status, _, body, took = http_get(url, timeout, headers)
            if 200 <= status < 400 or time.monotonic() >= until:
                break
            time.sleep(container[kind].get("periodSeconds", 10) / 10)
        check(200 <= status < 400 and took < timeout,
              f"{kind} GET {probe['path']} on port {probe['port']!r}: {status} in {took:.3f}s (timeout {timeout}s) {body}")

    # The Service and the ServiceMonitor point at the pod's ports by name.
    service = only(objects, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    check(service["spec"]["selector"].items() <= labels.items(), "the Service selects the Deployment's pods")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    monitor = only(objects, "ServiceMonitor")
    check(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(),
          "the ServiceMonitor selects the Service")

    # Traffic first, so the request metrics have samples.
    api = f"http://{address_of(service_ports['http']['targetPort'])}"
    status, _, body, _ = http_get(api + "/health-check", 2)
    check((status, body) == (200, '{"status":"SUCCESS","message":"its ok!"}'), f"GET /health-check via the Service's http port: {status} {body}")

    for endpoint in monitor["spec"]["endpoints"]:
        target = service_ports.get(endpoint["port"])
        if not check(target is not None, f"ServiceMonitor port {endpoint['port']!r} is a Service port"):
            continue
        url = f"{endpoint.get('scheme', 'http')}://{address_of(target['targetPort'])}{endpoint.get('path', '/metrics')}"
        status, headers, body, took = http_get(url, 5)
        check(status == 200 and headers.get("Content-Type", "").startswith("text/plain"),
              f"scrape {url} (ServiceMonitor port {endpoint['port']} -> targetPort {target['targetPort']}): {status} {headers.get('Content-Type')}")
        try:
            samples = {s.name for family in text_string_to_metric_families(body) for s in family.samples}
        except ValueError as error:
            samples = set()
            check(False, f"the scrape parses as Prometheus text: {error}")
        for name in ("comments_build_info", "http_requests_total", "http_request_duration_seconds_bucket", "process_start_time_seconds"):
            check(name in samples, f"the scrape has {name}")

    # The `helm test` pod's own script, run here against the binary through the Service's port.
    test_pod = only(objects, "Pod")
    test = test_pod["spec"]["containers"][0]
    test_env = {v["name"]: v["value"] for v in test.get("env", [])}
    service_url = test_env.get("COMMENTS_URL", "")
    check(re.fullmatch(rf"http://{service['metadata']['name']}\.[a-z0-9-]+\.svc:{service_ports['http']['port']}", service_url) is not None,
          f"the helm test calls the Service's http port: {service_url}")
    test_env["COMMENTS_URL"] = api
    shell = ["sh" if test["command"][0] == "/bin/sh" else test["command"][0], *test["command"][1:], *test.get("args", [])]
    result = subprocess.run(shell, env={"PATH": os.environ["PATH"], **test_env}, capture_output=True, text=True, timeout=60)
    check(result.returncode == 0, f"the helm test script passes (exit {result.returncode}):\n{result.stdout}{result.stderr}")

    # NOTES: each port-forward maps a local port to a Service port; run its curls through them.
    if notes:
        text = Path(notes).read_text().replace("\\\n", " ")
        forwards = re.findall(r"kubectl --namespace \S+ port-forward service/(\S+) (\d+):(\d+)", text)
        check(len(forwards) == 2, f"NOTES has two port-forward lines: {forwards}")
        local_of = {}
        for name, local_port, service_port in forwards:
            target = next((p for p in service_ports.values() if p["port"] == int(service_port)), None)
            if check(name == service["metadata"]["name"] and target is not None,
                     f"NOTES forwards {local_port} to port {service_port} of Service {name}"):
                local_of[local_port] = address_of(target["targetPort"])
        for line in [l.strip() for l in text.splitlines() if l.strip().startswith("curl ")]:
            command = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: local_of.get(m.group(1), m.group(0)), line)
            result = subprocess.run(["sh", "-ec", command], capture_output=True, text=True, timeout=10)
            check(result.returncode == 0 and result.stdout.strip() != "",
                  f"NOTES: {line[:70]}... -> {result.stdout.strip()[:80]}")

    # With an admin token Secret mounted, deleting works with that token (read from the file).
    if "COMMENTS_ADMIN_TOKEN_FILE" in env:
        token = Path(env["COMMENTS_ADMIN_TOKEN_FILE"]).read_text().strip()
        request = urllib.request.Request(api + "/api/v1/contents/contract/comments", method="POST",
                                         data=b'{"email":"c@example.com","comment":"to delete"}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            comment_id = json.loads(response.read())["id"]
        unauthorized, *_ = http_get(f"{api}/api/v1/comments/{comment_id}", 5, {"Authorization": "Bearer wrong"}, "DELETE")
        deleted, *_ = http_get(f"{api}/api/v1/comments/{comment_id}", 5, {"Authorization": f"Bearer {token}"}, "DELETE")
        check((unauthorized, deleted) == (401, 204), f"DELETE with a wrong token -> {unauthorized}, with the mounted token -> {deleted}")

    # Shutdown as the kubelet does it: SIGTERM, then SIGKILL after terminationGracePeriodSeconds.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    delay = float(env["COMMENTS_SHUTDOWN_DELAY"].rstrip("s"))
    drain = float(env["COMMENTS_SHUTDOWN_TIMEOUT"].rstrip("s"))
    check(grace > delay + drain, f"terminationGracePeriodSeconds {grace} > shutdown delay {delay} + drain {drain}")
    readiness = container["readinessProbe"]["httpGet"]
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    status, *_ = http_get(f"http://{address_of(readiness['port'])}{readiness['path']}", 2)
    check(status == 503, f"right after SIGTERM the readiness probe fails: {status}")
    try:
        code = process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - stopped_at
    check(code == 0 and delay <= took < grace, f"after SIGTERM the binary exits 0 (got {code}) after the delay, within the grace period: {took:.1f}s")


if __name__ == "__main__":
    main()
