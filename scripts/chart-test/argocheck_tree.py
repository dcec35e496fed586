"""Renders the ArgoCD app of apps end to end with argocheck, the way its CLI does, and checks the tree.

argocheck resolves each Application's sources as ArgoCD would (git clone of repoURL at
targetRevision, `$values` refs, Helm repositories) and renders them with helm, recursing into the
Applications it finds. This driver runs the same walk as `argocheck ROOT`, prints the same tree,
then asserts what the CLI's exit code cannot say:

- the root renders the AppProject and the comments and monitoring Applications;
- the comments Application renders the chart with the monitoring objects wired in;
- the monitoring Application's `$values` source resolves and holds its values file;
- the monitoring Application's chart, from a remote Helm repository, either renders, or fails only
  because that repository cannot be reached (this machine has no internet: argocheck always runs
  `helm repo add` + `helm pull` for such a source and has no option to skip it).

Each app's rendered objects are written to OUT_DIR/<app>.yaml for the schema validators.
Usage: python argocheck_tree.py ROOT_APPLICATION.yaml OUT_DIR
"""

import re
import sys
import tempfile
from pathlib import Path

import yaml
from argocheck.display import render_tree
from argocheck.helm import HelmError, check_helm
from argocheck.parser import load_yaml_file, parse_application
from argocheck.resolver import configure_ssh_handling, resolve_ref_map
from argocheck.walker import walk

# What helm says when a chart repository cannot be reached (DNS, refused, offline).
UNREACHABLE = re.compile(r"cannot be reached|no such host|dial tcp|connection refused|network is unreachable")

failures = []


def check(condition, message):
    print(("ok   " if condition else "FAIL ") + message, flush=True)
    if not condition:
        failures.append(message)
    return condition


def kinds(node):
    return sorted(m.get("kind") for m in node.manifests)


def main():
    root_file, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_ssh_handling(interactive=False)
    print(f"argocheck with {check_helm()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="argocheck-") as tmp:
        root = walk(parse_application(load_yaml_file(root_file)), tmp_dir=Path(tmp),
                    _parent_chart_dir=root_file.resolve().parent)
        render_tree(root)
        apps = {child.name: child for child in root.children}

        check(root.error is None, f"root {root.name} renders: {root.error or kinds(root)}")
        check(kinds(root) == ["AppProject"], f"root renders the AppProject besides the Applications: {kinds(root)}")
        check(sorted(apps) == ["comments", "monitoring"], f"root renders the comments and monitoring Applications: {sorted(apps)}")

        comments = apps.get("comments")
        if comments:
            want = {"ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceAccount", "ServiceMonitor", "PrometheusRule"}
            check(comments.error is None and want <= set(kinds(comments)),
                  f"comments renders charts/comments with its monitoring objects: {comments.error or kinds(comments)}")
            monitor = next((m for m in comments.manifests if m["kind"] == "ServiceMonitor"), {})
            check(monitor.get("metadata", {}).get("labels", {}).get("release") == "kube-prometheus-stack",
                  "the ServiceMonitor carries the monitoring release's label")

        monitoring = apps.get("monitoring")
        if monitoring:
            # The `$values` source, resolved by argocheck's own resolver: a clone of repoURL.
            refs = resolve_ref_map(monitoring.sources, tmp_dir=Path(tmp))
            chart = next(s for s in monitoring.sources if s.chart)
            for value_file in chart.value_files:
                ref, _, path = value_file.lstrip("$").partition("/")
                local = refs.get(ref, Path("/nonexistent")) / path
                if check(local.is_file(), f"monitoring's value file {value_file} exists at targetRevision"):
                    check(isinstance(yaml.safe_load(local.read_text()), dict), f"{value_file} is a YAML mapping")
            error = monitoring.error
            if error is None:
                check("Prometheus" in kinds(monitoring), f"monitoring renders {chart.chart} {chart.target_revision}")
            else:
                offline = isinstance(error, HelmError) and error.cmd[:2] in (["helm", "repo"], ["helm", "pull"]) \
                    and chart.repo_url in " ".join(error.cmd) and UNREACHABLE.search(error.stderr or str(error))
                check(bool(offline), f"monitoring fails only on fetching {chart.repo_url} (no network here): {error}")
                if offline:
                    print(f"note {chart.chart} {chart.target_revision} itself is not rendered: {chart.repo_url} is unreachable here")

        for node in [root, *root.children]:
            documents = node.manifests + [c.app_manifest for c in node.children if c.app_manifest]
            (out_dir / f"{node.name}.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))

    print(f"argocheck tree: {'FAILED: ' + str(len(failures)) if failures else 'all checks passed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
