"""Loads the monitoring sources the tests check: the dashboard and the rules, straight from the
chart's files (their single source), and the PromQL inside them.

Shared by check_sources.py (static contract checks) and live_test.py (checks against a real
Prometheus that scraped the real service).
"""

import json
import pathlib
import re
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/comments/files/dashboard.json"
RULES = ROOT / "charts/comments/files/rules.yaml"
README = ROOT / "monitoring/README.md"
TOOLS_NODE = ROOT / ".tools/node"

# The job label of our service's series (see monitoring/README.md, "Which series are ours").
JOB = "comments"

# Series the dashboard and rules use that the service does not export: Prometheus's own `up`, and
# kube-state-metrics' Deployment series (README: "Series from outside the service").
EXTERNAL_SERIES = {
    "up",
    "kube_deployment_labels",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
}

PROMETHEUS_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")


def load_dashboard():
    return json.loads(DASHBOARD.read_text())


def load_rules():
    return yaml.safe_load(RULES.read_text())


def panels(dashboard):
    """Every panel, rows included, with the panels nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard):
    """(where, kind, query) for every query in the dashboard. kind: "panel" (a target's PromQL),
    "annotation" (PromQL), or "variable" (a label_values(selector, label) variable query)."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            where = f'panel {panel["id"]} "{panel.get("title")}" target {target.get("refId")}'
            yield where, "panel", target
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "target" in annotation:
            yield f'annotation "{annotation["name"]}"', "annotation", annotation["target"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            yield f'variable ${variable["name"]}', "variable", {"expr": variable["query"]}


def with_intervals(expr, interval="1m"):
    """Grafana's interval variables replaced by a duration, so the expression is plain PromQL
    ($namespace and $pod sit inside label values, where PromQL takes them as they are)."""
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, interval)
    return expr


def variable_query(query):
    """label_values(selector, label) -> (selector, label)."""
    match = LABEL_VALUES.match(query.strip())
    if not match:
        raise ValueError(f"not a label_values(selector, label) query: {query}")
    return match["selector"], match["label"]


def rules_of(rule_file, kind):
    """Every rule of a kind ("record" or "alert"), with its group name."""
    for group in rule_file["groups"]:
        for rule in group["rules"]:
            if kind in rule:
                yield group["name"], rule


def recording_rule_names(rule_file):
    return {rule["record"] for _, rule in rules_of(rule_file, "record")}


def parse_selectors(exprs):
    """Parses PromQL with Prometheus's grammar (promql_selectors.mjs): for each expression, its
    parse error (None if it parses) and its selectors as (metric, {label: (op, value)})."""
    out = subprocess.run(
        ["node", str(pathlib.Path(__file__).with_name("promql_selectors.mjs")), str(TOOLS_NODE)],
        input=json.dumps(list(exprs)), capture_output=True, text=True, check=True,
    ).stdout
    return [
        (entry["error"], [(s["metric"], {m[0]: (m[1], m[2]) for m in s["matchers"]}) for s in entry["selectors"]])
        for entry in json.loads(out)
    ]


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")
