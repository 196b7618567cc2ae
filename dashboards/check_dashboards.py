#!/usr/bin/env python3
"""Checks the fleetwire Grafana dashboards (python3, standard library only).

    check_dashboards.py [FILE.json ...]            # lint (default: every *.json next to this script)
    check_dashboards.py --list-exprs [--set V=X]   # one JSON object per panel target, on stdout
    check_dashboards.py --eval http://localhost:9090 [--set device=7] [--set __rate_interval=1m]
                                                   # evaluate every target, fail on an empty result

Lint rules, for every dashboard:
  * the file is JSON; `uid` is set and unique across the files; panel ids are unique;
  * a templating variable `datasource` of type `datasource` with query `prometheus`;
  * every `datasource` anywhere in the file is `${datasource}` (no hard-coded uid);
  * every panel, including panels nested in rows (row containers themselves are
    exempt), has datasource {"type": "prometheus", "uid": "${datasource}"}, a
    non-empty fieldConfig.defaults.unit, a non-empty description and at least
    one target;
  * every target has a non-empty `expr`, the panel's datasource, a refId
    unique in its panel;
  * every rate()/irate()/increase() takes exactly `[$__rate_interval]`, and no
    other range or subquery selector appears in an expression;
  * every `$variable` used in an expression is defined in the templating list
    (or is a Grafana built-in such as $__rate_interval).

--list-exprs prints, per target:
  {"dashboard": uid, "file": ..., "panel": title, "panel_id": n, "type": panel type,
   "refId": "A", "expr": ..., "instant": bool, "format": "time_series"|"table",
   "vars": [variables used], "expanded": expr with --set values substituted (only with --set)}

--eval substitutes variables (--set NAME=VALUE wins; otherwise a variable with
includeAll uses its allValue, a `label_values(metric, label)` variable its
first value found in Prometheus, $__rate_interval defaults to 1m) and runs
each target as an instant query (instant targets) or a range query over the
last --range seconds; any error or empty result fails.
"""

import argparse
import glob
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DS_REFS = ("${datasource}", "$datasource")
BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
            "__range_ms", "__from", "__to", "__dashboard", "__org", "__user", "__name"}
RANGE_FUNCS = ("rate", "irate", "increase")
VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def walk_panels(panels, parent=None):
    """Yields (panel, containing row title or None), rows' nested panels included."""
    for p in panels or []:
        yield p, parent
        if p.get("type") == "row":
            yield from walk_panels(p.get("panels"), p.get("title", ""))


def strip_strings(expr):
    """The expression with the contents of string literals blanked out."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def matching_paren(s, i):
    """Index of the parenthesis closing the one at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "(":
            depth += 1
        elif s[j] == ")":
            depth -= 1
            if depth == 0:
                return j
    return -1


def range_problems(expr):
    problems = []
    code = strip_strings(expr)
    for m in re.finditer(r"\b(%s)\s*\(" % "|".join(RANGE_FUNCS), code):
        open_at = m.end() - 1
        close_at = matching_paren(code, open_at)
        if close_at < 0:
            problems.append(f"{m.group(1)}(: unbalanced parentheses")
            continue
        ranges = re.findall(r"\[([^\]]*)\]", code[open_at:close_at])
        if not ranges:
            problems.append(f"{m.group(1)}() without a range selector")
        for r in ranges:
            if r.strip() != "$__rate_interval":
                problems.append(f"{m.group(1)}() over [{r}] instead of [$__rate_interval]")
    for r in re.findall(r"\[([^\]]*)\]", code):
        if r.strip() != "$__rate_interval" and not any(r in p for p in problems):
            problems.append(f"range/subquery selector [{r}] (use [$__rate_interval])")
    return problems


def variables_in(expr):
    return sorted({next(g for g in m.groups() if g) for m in VAR_RE.finditer(expr)})


def ds_ok(ds):
    if isinstance(ds, dict):
        return ds.get("uid") in DS_REFS
    return ds in DS_REFS


def check_datasource_refs(node, path, errors):
    """Every `datasource` value anywhere must point at the variable."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource" and v is not None and not ds_ok(v):
                errors.append(f"{path}.datasource = {json.dumps(v)}: not ${{datasource}}")
            check_datasource_refs(v, f"{path}.{k}", errors)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_datasource_refs(v, f"{path}[{i}]", errors)


def load(paths):
    dashboards, errors = [], []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                dashboards.append((path, json.load(f)))
        except (OSError, ValueError) as e:
            errors.append(f"{path}: {e}")
    return dashboards, errors


def lint(dashboards):
    errors = []
    uids = {}
    for path, d in dashboards:
        name = os.path.basename(path)
        err = lambda msg: errors.append(f"{name}: {msg}")  # noqa: E731
        uid = d.get("uid")
        if not uid:
            err("no uid")
        elif uid in uids:
            err(f"uid {uid!r} already used by {uids[uid]}")
        else:
            uids[uid] = name
        if not d.get("title"):
            err("no title")
        if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
            err(f"schemaVersion {d.get('schemaVersion')!r} < 36")
        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        dsv = variables.get("datasource")
        if not dsv or dsv.get("type") != "datasource" or dsv.get("query") != "prometheus":
            err("no templating variable `datasource` of type datasource with query prometheus")
        check_datasource_refs(d, name, errors)
        ids = set()
        panels = list(walk_panels(d.get("panels")))
        if not panels:
            err("no panels")
        for p, row in panels:
            title = p.get("title") or f"id {p.get('id')}"
            perr = lambda msg: err(f"panel {title!r}: {msg}")  # noqa: E731
            if p.get("id") in ids:
                perr(f"duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                continue
            ds = p.get("datasource")
            if not isinstance(ds, dict) or ds.get("type") != "prometheus" or ds.get("uid") not in DS_REFS:
                perr(f"datasource {json.dumps(ds)} is not {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}")
            unit = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
            if not isinstance(unit, str) or not unit.strip():
                perr("no fieldConfig.defaults.unit")
            if not isinstance(p.get("description"), str) or not p["description"].strip():
                perr("no description")
            targets = p.get("targets") or []
            if not targets and p.get("type") not in ("text", "news", "dashlist"):
                perr("no targets")
            refids = set()
            for t in targets:
                ref = t.get("refId")
                if not ref:
                    perr("target without refId")
                elif ref in refids:
                    perr(f"duplicate refId {ref}")
                refids.add(ref)
                tds = t.get("datasource")
                if not isinstance(tds, dict) or tds.get("uid") not in DS_REFS:
                    perr(f"target {ref}: datasource {json.dumps(tds)} is not ${{datasource}}")
                expr = t.get("expr")
                if not isinstance(expr, str) or not expr.strip():
                    perr(f"target {ref}: no expr")
                    continue
                for prob in range_problems(expr):
                    perr(f"target {ref}: {prob}")
                for v in variables_in(expr):
                    if v not in variables and v not in BUILTINS:
                        perr(f"target {ref}: undefined variable ${v}")
                if t.get("instant") and t.get("range"):
                    perr(f"target {ref}: both instant and range")
    return errors


def targets_of(dashboards):
    for path, d in dashboards:
        for p, _row in walk_panels(d.get("panels")):
            if p.get("type") == "row":
                continue
            for t in p.get("targets") or []:
                expr = t.get("expr", "")
                yield {
                    "dashboard": d.get("uid"),
                    "file": os.path.basename(path),
                    "panel": p.get("title"),
                    "panel_id": p.get("id"),
                    "type": p.get("type"),
                    "refId": t.get("refId"),
                    "expr": expr,
                    "instant": bool(t.get("instant")) and not t.get("range"),
                    "format": t.get("format", "time_series"),
                    "vars": variables_in(expr),
                }


def substitute(expr, values):
    def repl(m):
        name = next(g for g in m.groups() if g)
        return values.get(name, m.group(0))
    return VAR_RE.sub(repl, expr)


# ------------------------------------------------------------------ --eval
def api(base, path, params):
    url = base.rstrip("/") + path + "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"], None


def natural(v):
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def resolve_variables(base, dashboards, given, range_s):
    """Values for every variable of every dashboard: given > allValue > label_values."""
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": f"{range_s}s"}
    values.update(given)
    now = time.time()
    for _path, d in dashboards:
        for v in d.get("templating", {}).get("list", []):
            name = v.get("name")
            if name in values or v.get("type") == "datasource":
                continue
            if v.get("includeAll") and v.get("allValue"):
                values[name] = v["allValue"]
                continue
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q or "")
            if not m:
                continue
            data, e = api(base, f"/api/v1/label/{m.group(2)}/values",
                          {"match[]": substitute(m.group(1), values),
                           "start": now - range_s, "end": now})
            if e or not data:
                print(f"warning: variable ${name}: no value from {q} ({e or 'empty'})", file=sys.stderr)
                continue
            values[name] = sorted(data, key=natural)[0]
    return values


def evaluate(base, dashboards, given, range_s):
    values = resolve_variables(base, dashboards, given, range_s)
    print("variables: " + json.dumps({k: v for k, v in values.items()}), file=sys.stderr)
    failures = 0
    now = time.time()
    for t in targets_of(dashboards):
        q = substitute(t["expr"], values)
        if t["instant"]:
            data, e = api(base, "/api/v1/query", {"query": q, "time": now})
        else:
            data, e = api(base, "/api/v1/query_range",
                          {"query": q, "start": now - range_s, "end": now, "step": 15})
        n = len(data["result"]) if data else 0
        ok = e is None and n > 0
        failures += not ok
        status = "ok   " if ok else "FAIL "
        print(f"{status} {t['dashboard']} / {t['panel']} / {t['refId']}: "
              f"{n} series{'' if e is None else ' error ' + e}" + ("" if ok else f"\n      {q}"))
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="dashboard JSON files (default: *.json next to this script)")
    ap.add_argument("--list-exprs", action="store_true", help="print every target as a JSON line")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="variable value for --list-exprs (adds `expanded`) and --eval")
    ap.add_argument("--eval", metavar="PROMETHEUS_URL", help="evaluate every target there")
    ap.add_argument("--range", type=int, default=600, help="seconds of range queries for --eval")
    args = ap.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    files = args.files or sorted(glob.glob(os.path.join(here, "*.json")))
    given = {}
    for s in args.set:
        name, sep, value = s.partition("=")
        if not sep:
            ap.error(f"--set {s!r}: expected NAME=VALUE")
        given[name.lstrip("$")] = value

    dashboards, errors = load(files)
    if not files:
        errors.append(f"no dashboard JSON files in {here}")
    errors += lint(dashboards)

    if args.list_exprs:
        for t in targets_of(dashboards):
            if given:
                t["expanded"] = substitute(t["expr"], given)
            print(json.dumps(t))
    for e in errors:
        print("error: " + e, file=sys.stderr)
    if errors:
        return 1
    if args.eval:
        failures = evaluate(args.eval, dashboards, given, args.range)
        if failures:
            print(f"{failures} target(s) failed", file=sys.stderr)
            return 1
    if not args.list_exprs:
        n = sum(1 for _ in targets_of(dashboards))
        panels = sum(1 for _p, d in dashboards for p, _r in walk_panels(d.get("panels")) if p.get("type") != "row")
        print(f"ok: {len(dashboards)} dashboards, {panels} panels, {n} targets")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        sys.exit(1)
