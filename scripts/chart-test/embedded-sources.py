"""Checks that a render embeds the monitoring sources as they are: the PrometheusRule's spec is the
rule file (same YAML data), and the dashboard ConfigMap's comments.json is the dashboard file, byte
for byte. Usage: python embedded-sources.py RENDERED.yaml RULES.yaml DASHBOARD.json"""

import sys

import yaml

rendered, rules_file, dashboard_file = sys.argv[1:4]
objects = [o for o in yaml.safe_load_all(open(rendered)) if o]
rules = [o for o in objects if o["kind"] == "PrometheusRule"]
dashboards = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]

failed = False
if len(rules) != 1 or rules[0]["spec"] != yaml.safe_load(open(rules_file)):
    print(f"FAIL the PrometheusRule's spec is not {rules_file}")
    failed = True
if len(dashboards) != 1 or dashboards[0]["data"].get("comments.json") != open(dashboard_file).read():
    print(f"FAIL the dashboard ConfigMap's comments.json is not {dashboard_file}")
    failed = True
if not failed:
    print(f"ok   {rendered}: PrometheusRule spec = {rules_file}, dashboard comments.json = {dashboard_file}")
sys.exit(1 if failed else 0)
