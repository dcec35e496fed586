"""What the chart promises, asserted on its rendered objects (schemas and checkov only prove the
objects are well formed and hardened; this proves they behave as the chart's docs say).

Usage: python behaviour.py CHART   (helm on PATH)

- embedded SQLite (the default values): one replica, Recreate, the data on a PVC;
- PostgreSQL (ci/postgres-values.yaml): RollingUpdate with maxUnavailable 0, HPA on the
  Deployment, PDB, spread over nodes and zones, no PVC, secrets mounted as files;
- both: probes on /readyz and /livez over the `http` port, the grace period longer than the
  shutdown delay plus drain, the ServiceMonitor on the `metrics` port with the chart name as job,
  the NetworkPolicy letting `metrics` in from the monitoring namespace only;
- a change of configuration rolls the pods (the checksum annotation changes), and only then.
"""

import subprocess
import sys

import yaml

CHART = sys.argv[1]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def render(*args):
    out = subprocess.run(["helm", "template", "comments", CHART, "--namespace", "comments", *args],
                         check=True, capture_output=True, text=True).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def only(objects, kind):
    found = [o for (k, _), o in objects.items() if k == kind]
    return found[0] if len(found) == 1 else None


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(objects):
    """The container's environment, its ConfigMap included."""
    env = {}
    config = only(objects, "ConfigMap")
    for source in container(only(objects, "Deployment")).get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        for (kind, cm_name), obj in objects.items():
            if kind == "ConfigMap" and cm_name == name:
                env.update(obj.get("data", {}))
    for item in container(only(objects, "Deployment")).get("env", []):
        env[item["name"]] = item.get("value")
    return env, config


def seconds(value):
    return float(value.rstrip("s"))


def common(objects, mode):
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    check(set(ports) == {"http", "metrics"}, f"{mode}: container ports are http and metrics: {ports}")
    for probe, path in [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")]:
        get = main.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == "http", f"{mode}: {probe} is GET {path} on http: {get}")
    check("lifecycle" not in main, f"{mode}: no preStop hook (the binary delays its own shutdown)")
    env, _ = env_of(objects)
    delay, drain = seconds(env["COMMENTS_SHUTDOWN_DELAY"]), seconds(env["COMMENTS_SHUTDOWN_TIMEOUT"])
    check(pod["terminationGracePeriodSeconds"] > delay + drain,
          f"{mode}: grace {pod['terminationGracePeriodSeconds']}s > delay {delay}s + drain {drain}s")
    check(pod.get("automountServiceAccountToken") is False, f"{mode}: no service account token")
    check("checksum/config" in deployment["spec"]["template"]["metadata"].get("annotations", {}),
          f"{mode}: the pod template carries the config checksum")

    service = only(objects, "Service")
    check({p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "metrics": "metrics"},
          f"{mode}: Service ports http and metrics")

    policy = objects.get(("NetworkPolicy", "comments"))
    check(policy is not None, f"{mode}: a NetworkPolicy for the pods")
    if policy:
        rules = policy["spec"]["ingress"]
        metrics = [r for r in rules if any(p["port"] == "metrics" for p in r["ports"])]
        check(len(metrics) == 1 and all("namespaceSelector" in peer for peer in metrics[0].get("from", [])) and metrics[0].get("from"),
              f"{mode}: metrics only from a namespace selector: {metrics}")
        check(all(p["port"] in ("http", "metrics") for r in rules for p in r["ports"]), f"{mode}: no other port opened")
    return deployment


sqlite = render()
deployment = common(sqlite, "sqlite")
check(deployment["spec"].get("replicas") == 1, "sqlite: one replica")
check(deployment["spec"]["strategy"]["type"] == "Recreate", "sqlite: Recreate (the volume is ReadWriteOnce)")
claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
check(claims and ("PersistentVolumeClaim", claims[0]) in sqlite, f"sqlite: the data volume is the chart's PVC: {claims}")
check(only(sqlite, "HorizontalPodAutoscaler") is None, "sqlite: no HPA")
env, _ = env_of(sqlite)
check(env.get("COMMENTS_DATABASE_URL", "").startswith("sqlite:///"), f"sqlite: database URL {env.get('COMMENTS_DATABASE_URL')}")

pg = render("-f", f"{CHART}/ci/postgres-values.yaml")
deployment = common(pg, "postgres")
strategy = deployment["spec"]["strategy"]
check(strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0,
      f"postgres: rolling update never below the wanted replicas: {strategy}")
check("replicas" not in deployment["spec"], "postgres: replicas left to the HPA")
hpa = only(pg, "HorizontalPodAutoscaler")
check(hpa is not None and hpa["apiVersion"] == "autoscaling/v2"
      and hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]},
      f"postgres: autoscaling/v2 HPA on the Deployment: {hpa and hpa['spec']}")
pdb = only(pg, "PodDisruptionBudget")
check(pdb is not None and pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"],
      "postgres: the PDB selects the Deployment's pods")
keys = {c["topologyKey"] for c in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", [])}
check(keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, f"postgres: spread over nodes and zones: {keys}")
check(only(pg, "PersistentVolumeClaim") is None, "postgres: no PVC")
env, _ = env_of(pg)
check(env.get("COMMENTS_DATABASE_URL_FILE") and "COMMENTS_DATABASE_URL" not in env,
      "postgres: the URL comes from the mounted Secret, never from the environment")
monitor = only(pg, "ServiceMonitor")
check(monitor is not None and monitor["spec"].get("jobLabel") == "app.kubernetes.io/name"
      and [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
      and monitor["metadata"]["labels"].get("release") == "kube-prometheus-stack",
      f"postgres: ServiceMonitor on metrics, job from the chart name, release label: {monitor and monitor['spec']}")
service = only(pg, "Service")
check(service["metadata"]["labels"]["app.kubernetes.io/name"] == "comments", "the job label the dashboards select (job=comments)")
ingress = only(pg, "Ingress")
backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] if ingress else {}
check(backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}, f"postgres: Ingress to the http port: {backend}")

# A configuration change rolls the pods; the same configuration does not.
def checksum(*args):
    return only(render(*args), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


check(checksum() == checksum(), "the checksum is stable for the same values")
check(checksum() != checksum("--set", "shutdown.delay=7"), "a config change changes the checksum")

for failure in failures:
    print("chart behaviour:", failure)
print(f"chart behaviour: {'FAILED' if failures else 'ok'} ({len(failures)} failed)")
sys.exit(1 if failures else 0)
