#!/usr/bin/env python3
"""Render a Helm chart the way `helm template` does, with Helm's real engine.

Uses helm-python-sdk (libhelm_c: Helm's official Go SDK behind a C ABI), so templates, sprig
functions, `include`/`tpl`/`required`/`fail`, values coalescing and `--set` parsing are Helm's own
code. Only the output assembly is done here, following `helm template`: documents split on `---`,
empty ones dropped, sorted by template path and then (stable) by Helm's install order of kinds,
each printed as `---\\n# Source: <path>\\n<doc>`. NOTES.txt and partials are not printed.

  render.py template CHART --name N --namespace NS [--set K=V]... [-f VALUES]... [--namespace-object]
  render.py lint CHART [--set K=V]... [-f VALUES]...      (helm lint --strict; exit 1 on findings)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import helm_python as helm

# releaseutil.InstallOrder (Helm v3/v4).
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]
ORDER = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
SEP = re.compile(r"(?:^|\s*\n)---\s*")  # releaseutil.SplitManifests
KIND = re.compile(r"^kind:\s*['\"]?([A-Za-z0-9]+)", re.M)


def deep_merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def user_values(args: argparse.Namespace) -> dict:
    """-f files first, then --set in order (as the helm CLI does)."""
    values: dict = {}
    for f in args.values or []:
        deep_merge(values, helm.values_from_yaml(Path(f).read_text()))
    for expr in args.set or []:
        deep_merge(values, helm.parse_set_string(expr))
    return values


def sort_key_kind(kind: str) -> tuple:
    # Known kinds by install order; unknown kinds last, alphabetically (lessByKind).
    return (0, ORDER[kind], "") if kind in ORDER else (1, 0, kind)


def template(args: argparse.Namespace) -> int:
    with helm.Chart.load(args.chart) as chart:
        rendered = chart.render(
            user_values(args), name=args.name, namespace=args.namespace, is_install=True
        )
    docs = []
    for path in sorted(rendered):
        base = path.rsplit("/", 1)[-1]
        if base == "NOTES.txt" or base.startswith("_"):
            continue
        for doc in SEP.split(rendered[path]):
            doc = doc.strip()
            if not doc:
                continue
            m = KIND.search(doc)
            docs.append((m.group(1) if m else "", path, doc))
    docs.sort(key=lambda d: sort_key_kind(d[0]))  # stable: path order kept within a kind
    out = []
    if args.namespace_object:
        out.append(f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {args.namespace}\n")
    for _kind, path, doc in docs:
        out.append(f"---\n# Source: {path}\n{doc}\n")
    sys.stdout.write("".join(out))
    return 0


def lint(args: argparse.Namespace) -> int:
    report = helm.lint(args.chart, user_values(args) or None, strict=True, namespace=args.namespace)
    names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    worst = 0
    for msg in report.get("messages") or []:
        sev = int(msg.get("severity", 0))
        worst = max(worst, sev)
        print(f"[{names.get(sev, sev)}] {msg.get('path', '')}: {msg.get('error', '')}")
    for err in report.get("errors") or []:
        worst = 3
        print(f"[ERROR] {err}")
    print(f"lint: {report.get('total_charts_linted', 0)} chart(s) linted, "
          f"{'failed' if worst >= 2 else 'ok'} (helm SDK {helm.helm_sdk_version()}, strict)")
    return 1 if worst >= 2 else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("template", "lint"):
        s = sub.add_parser(name)
        s.add_argument("chart")
        s.add_argument("--set", action="append", metavar="K=V")
        s.add_argument("-f", "--values", action="append", metavar="FILE")
        s.add_argument("-n", "--namespace", default="default")
        if name == "template":
            s.add_argument("--name", default="release-name")
            s.add_argument("--namespace-object", action="store_true",
                           help="print a Namespace object for --namespace first")
    p.add_argument("--version", action="version",
                   version=f"helm SDK {helm.helm_sdk_version()} (helm-c {helm.helm_c_version()})")
    args = p.parse_args()
    helm.disable_logging()  # the library's own log lines (e.g. "funcMap fail") would repeat errors
    try:
        return template(args) if args.cmd == "template" else lint(args)
    except helm.HelmError as e:
        print(f"chart-render: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
