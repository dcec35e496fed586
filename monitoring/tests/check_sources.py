"""Static contract checks of the dashboard and the rules (no services needed):

- the dashboard: unique panel ids, a layout inside the 24-column grid without overlaps, the
  datasource / namespace / pod variables, the ${datasource} variable on every panel, target and
  annotation, every query parses as PromQL and filters our series by job and $namespace (and
  $pod where the series have pods);
- the rules: every selector of our series filters job="comments", every alert has a severity
  (page, ticket or warning), a summary, a description and a runbook_url pointing at its section
  of monitoring/README.md, under the repository named in Cargo.toml; both SLOs have the four
  burn-rate window pairs of the SRE workbook.

Whether each metric name really exists on the service's /metrics is checked by live_test.py.
Run: python check_sources.py (from the tools venv, which has PyYAML).
"""

import re
import sys
import tomllib

import sources

failures = []
passed = 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL {what}")


def check_dashboard(dashboard, recorded):
    all_panels = list(sources.panels(dashboard))
    ids = [p["id"] for p in all_panels]
    check(len(ids) == len(set(ids)), f"panel ids are unique: {sorted(ids)}")

    # Layout: inside the grid, no two panels on the same cells.
    cells, overlaps = {}, set()
    for p in all_panels:
        g = p["gridPos"]
        check(g["x"] >= 0 and g["x"] + g["w"] <= 24, f'panel {p["id"]} fits in 24 columns: {g}')
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                other = cells.setdefault((x, y), p["id"])
                if other != p["id"]:
                    overlaps.add((other, p["id"]))
    check(not overlaps, f"no two panels overlap: {sorted(overlaps)}")

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          "a `datasource` variable of type datasource, query prometheus")
    for name in ("namespace", "pod"):
        v = variables.get(name, {})
        check(v.get("type") == "query" and v.get("datasource") == sources.PROMETHEUS_DATASOURCE,
              f"a `{name}` query variable on ${{datasource}}")

    for p in all_panels:
        if p["type"] == "row":
            check(not p.get("targets"), f'row {p["id"]} has no queries')
            continue
        check(p.get("datasource") == sources.PROMETHEUS_DATASOURCE, f'panel {p["id"]} uses ${{datasource}}')
        targets = p.get("targets", [])
        check(len(targets) > 0, f'panel {p["id"]} has queries')
        check(len({t["refId"] for t in targets}) == len(targets), f'panel {p["id"]} refIds are unique')
        for t in targets:
            check(t.get("datasource") == sources.PROMETHEUS_DATASOURCE,
                  f'panel {p["id"]} target {t["refId"]} uses ${{datasource}}')
    deploys = [a for a in dashboard["annotations"]["list"] if a.get("datasource") == sources.PROMETHEUS_DATASOURCE]
    check(any("comments_build_info" in a["target"]["expr"] for a in deploys),
          "an annotation on ${datasource} that marks new builds (comments_build_info)")

    queries = list(sources.dashboard_queries(dashboard))
    exprs = [sources.with_intervals(q["expr"]) if kind != "variable" else sources.variable_query(q["expr"])[0]
             for _, kind, q in queries]
    for (where, kind, _), (error, selectors) in zip(queries, sources.parse_selectors(exprs)):
        check(error is None, f"{where} parses as PromQL ({error})")
        for metric, matchers in selectors:
            ours = metric not in sources.EXTERNAL_SERIES and metric not in recorded
            if ours:
                check(matchers.get("job") == ("=", sources.JOB), f'{where}: {metric} filters job="{sources.JOB}"')
            # Everything but the $namespace variable itself looks at the chosen namespace only.
            if where != "variable $namespace":
                check(matchers.get("namespace") == ("=~", "$namespace"), f'{where}: {metric} filters namespace=~"$namespace"')
            if ours and kind == "panel":
                check(matchers.get("pod") == ("=~", "$pod"), f'{where}: {metric} filters pod=~"$pod"')


def check_rules(rule_file, readme, repository):
    headings = {sources.github_anchor(h): h for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    recorded = sources.recording_rule_names(rule_file)
    for name in recorded:
        check(name.count(":") == 2, f"recording rule {name} is named level:metric:operations")

    alerts = list(sources.rules_of(rule_file, "alert"))
    for _, rule in alerts:
        name = rule["alert"]
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        check(labels.get("severity") in {"page", "ticket", "warning"}, f"{name}: severity page|ticket|warning")
        for key in ("summary", "description", "runbook_url"):
            check(bool(annotations.get(key)), f"{name}: has a {key} annotation")
        url = annotations.get("runbook_url", "")
        base = f"{repository}/blob/main/monitoring/README.md#"
        check(url.startswith(base), f"{name}: runbook_url starts with {base}")
        anchor = url.removeprefix(base)
        check(headings.get(anchor) == name, f"{name}: monitoring/README.md has a heading `{name}` (#{anchor})")

    # The SRE workbook's multiwindow, multi-burn-rate pairs, for both SLOs.
    workbook = {("page", "1h", "5m"), ("page", "6h", "30m"), ("ticket", "1d", "2h"), ("ticket", "3d", "6h")}
    for slo in ("CommentsAvailabilityBudgetBurn", "CommentsLatencyBudgetBurn"):
        pairs = {(r["labels"]["severity"], r["labels"]["long_window"], r["labels"]["short_window"])
                 for _, r in alerts if r["alert"] == slo}
        check(pairs == workbook, f"{slo}: window pairs {sorted(pairs)}")

    rules = [(r.get("record") or r.get("alert"), r["expr"]) for g in rule_file["groups"] for r in g["rules"]]
    for (name, _), (error, selectors) in zip(rules, sources.parse_selectors([e for _, e in rules])):
        check(error is None, f"rule {name} parses as PromQL ({error})")
        for metric, matchers in selectors:
            if metric not in sources.EXTERNAL_SERIES and metric not in recorded:
                check(matchers.get("job") == ("=", sources.JOB), f'rule {name}: {metric} filters job="{sources.JOB}"')
            if metric == "up":
                check(matchers.get("job") == ("=", sources.JOB), f'rule {name}: up filters job="{sources.JOB}"')
    return recorded


def main():
    rule_file = sources.load_rules()
    repository = tomllib.loads((sources.ROOT / "Cargo.toml").read_text())["package"]["repository"]
    recorded = check_rules(rule_file, sources.README.read_text(), repository)
    check_dashboard(sources.load_dashboard(), recorded)
    print(f"check_sources: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
