"""What the rules and the dashboard assume of the deployment, checked on the real renders:
argocd/ rendered with helm as ArgoCD would, then charts/comments rendered with the release name,
namespace and values of its `comments` Application.

- The PrometheusRule's spec is rules.yaml and the dashboard ConfigMap holds dashboard.json, as
  they are, the ConfigMap labelled for Grafana's sidecar (grafana_dashboard: "1").
- The ServiceMonitor scrapes the Service's `metrics` port, and the job label it gives (the
  Service's name, or the Service label named by jobLabel) is the one the rules select.
- The Deployment carries app.kubernetes.io/name=comments, which the replica rules look for.
- The `monitoring` Application installs kube-prometheus-stack with monitoring/'s values file.

Run: python chart_contract.py HELM (from the tools venv).
"""

import json
import subprocess
import sys
import tempfile

import yaml

import sources

failures = []
passed = 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
        print(f"ok   {what}")
    else:
        failures.append(what)
        print(f"FAIL {what}")


def render(helm, *args):
    out = subprocess.run([helm, "template", *args], capture_output=True, text=True, check=True, cwd=sources.ROOT).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs, kind, what):
    found = [d for d in docs if d["kind"] == kind]
    check(len(found) == 1, f"one {kind} ({what}): {len(found)}")
    return found[0] if found else {}


def main():
    helm = sys.argv[1]
    apps = {d["metadata"]["name"]: d for d in render(helm, "comments-apps", "argocd", "--namespace", "argocd")
            if d["kind"] == "Application"}
    monitoring = apps["monitoring"]["spec"]["sources"]
    check(any(s.get("chart") == "kube-prometheus-stack" and
              "$values/monitoring/kube-prometheus-stack/values.yaml" in s.get("helm", {}).get("valueFiles", [])
              for s in monitoring),
          "the monitoring Application installs kube-prometheus-stack with monitoring/kube-prometheus-stack/values.yaml")

    app = apps["comments"]["spec"]
    release, namespace = app["source"]["helm"]["releaseName"], app["destination"]["namespace"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        yaml.safe_dump(app["source"]["helm"].get("valuesObject", {}), values)
        values.flush()
        docs = render(helm, release, "charts/comments", "--namespace", namespace, "--values", values.name)
    print(f"rendered charts/comments as ArgoCD's comments Application does: release {release}, namespace {namespace}")

    rule = one(docs, "PrometheusRule", "the rules")
    check(rule.get("spec") == sources.load_rules(), "the PrometheusRule's spec is charts/comments/files/rules.yaml")
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    check(len(dashboards) == 1 and [json.loads(v) for v in dashboards[0]["data"].values()] == [sources.load_dashboard()],
          'one ConfigMap labelled grafana_dashboard: "1" holds charts/comments/files/dashboard.json')

    monitor = one(docs, "ServiceMonitor", "the scrape")
    service = one(docs, "Service", "the API and metrics")
    selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
    labels = service.get("metadata", {}).get("labels", {})
    check(selector.items() <= labels.items(), f"the ServiceMonitor selects the Service: {selector}")
    ports = {p["name"] for p in service.get("spec", {}).get("ports", [])}
    check({e.get("port") for e in monitor.get("spec", {}).get("endpoints", [])} == {"metrics"} and "metrics" in ports,
          "the ServiceMonitor scrapes the Service's metrics port")
    job_label = monitor.get("spec", {}).get("jobLabel")
    job = labels.get(job_label) if job_label else service.get("metadata", {}).get("name")
    check(job == sources.JOB, f'the job label Prometheus gives the targets is "{sources.JOB}": {job!r} '
          f'({"Service label " + job_label if job_label else "the Service name"})')

    deployment = one(docs, "Deployment", "the pods")
    check(deployment.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name") == "comments",
          "the Deployment is labelled app.kubernetes.io/name=comments (kube_deployment_labels)")

    print(f"chart_contract: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
