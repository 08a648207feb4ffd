#!/usr/bin/env python3
"""Print every PromQL expression of meshlite's Grafana dashboards.

The dashboards (deploy/grafana/dashboards/*.json) are the only place the queries are written;
this script reads them so a test can run each query against a Prometheus that scrapes a real
mesh. Python 3 standard library only.

Output, one query per line, tab-separated:

    dashboard-file <TAB> panel title <TAB> refId <TAB> expr

With --variables, the dashboards' template-variable queries are printed too, with the panel
title column reading `$name` and refId `variable` (they are Grafana's `label_values(...)`
calls, not PromQL). With --json, a JSON list of objects with the same fields.

Template variables are left as written (`$service`, `$namespace`, `$workload`) unless given
with --var NAME=VALUE (repeatable), which replaces `$NAME`, `${NAME}` and `[[NAME]]`. A
variable that is still present after substitution is reported on stderr with --strict, which
then exits 1.

Examples:

    python3 deploy/grafana/extract_queries.py
    python3 deploy/grafana/extract_queries.py --var service=reviews.default.svc.cluster.local \\
        --var namespace=default --var workload=reviews-v1 --strict --json
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "dashboards")

# `$name`, `${name}`, `${name:format}` and `[[name]]`, Grafana's variable syntaxes. Grafana's
# built-ins ($__rate_interval, ...) match too, so --strict also catches those.
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def panels(items):
    """Every panel, rows' nested panels included, in dashboard order."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(path, with_variables):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    name = os.path.basename(path)
    if with_variables:
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            yield {"dashboard": name, "panel": "$" + var["name"], "refId": "variable",
                   "expr": query}
    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                yield {"dashboard": name, "panel": panel.get("title", ""),
                       "refId": target.get("refId", ""), "expr": expr}


def substitute(expr, values):
    def replace(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))

    return VARIABLE.sub(replace, expr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*",
                        help="dashboard JSON files (default: every *.json in %(prog)s's dashboards/)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="substitute a template variable (repeatable)")
    parser.add_argument("--variables", action="store_true",
                        help="also print the template variables' queries")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if a query still holds a variable after substitution")
    args = parser.parse_args()

    values = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--var wants NAME=VALUE, got {item!r}")
        values[name] = value

    files = args.files or sorted(
        os.path.join(DEFAULT_DIR, f) for f in os.listdir(DEFAULT_DIR) if f.endswith(".json"))
    rows = []
    for path in files:
        for row in queries(path, args.variables):
            # One line per query: a newline inside an expression is just whitespace to PromQL.
            row["expr"] = " ".join(substitute(row["expr"], values).split())
            rows.append(row)

    left = [r for r in rows if VARIABLE.search(r["expr"])]
    if args.strict and left:
        for r in left:
            print(f"{r['dashboard']}: {r['panel']} ({r['refId']}): unsubstituted variable in "
                  f"{r['expr']}", file=sys.stderr)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        for r in rows:
            print("\t".join((r["dashboard"], r["panel"], r["refId"], r["expr"])))
    return 1 if args.strict and left else 0


if __name__ == "__main__":
    sys.exit(main())
