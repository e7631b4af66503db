#!/usr/bin/env python3
"""Check the provisioned Grafana dashboard against a real Prometheus.

Static checks first (exit 2 on failure): the dashboard is valid JSON, panel
ids are unique, every panel other than a row has a gridPos and at least one
target, every datasource reference names the uid of the provisioned
Prometheus datasource, every target has a non-empty `expr`, and every metric
it names is one the host registers (host/src/telemetry.rs). --static-only
stops there.

Then every target's query is sent to Prometheus as an instant query, with
Grafana's macros replaced: `$__rate_interval` and `$__interval` by
--rate-interval, `$__range` by --range, and the template variables by their
saved defaults (`job`: lambda-host; `instance`: its "All" value, `.*`). A target passes when Prometheus answers
`success` with at least one sample that is not NaN and, unless it only reads
metrics that are rightly zero (ZERO_ALLOWED), one that is not zero: the
host exports its counters at zero from the start, so "some series" alone
would prove nothing. Failing targets are retried for up to --wait seconds in
total (scrapes lag behind the load).

Exit status: 0 when every query returned data, 1 when some did not, 2 when a
static check failed or Prometheus could not be asked at all.

Standard library only.
"""

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DASHBOARD = os.path.join(HERE, "grafana", "dashboards", "lambda.json")
DEFAULT_DATASOURCE = os.path.join(HERE, "grafana", "provisioning", "datasources", "prometheus.yml")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090",
                        help="Prometheus base URL (default %(default)s)")
    parser.add_argument("--dashboard", default=DEFAULT_DASHBOARD,
                        help="dashboard JSON file (default deploy/grafana/dashboards/lambda.json)")
    parser.add_argument("--datasource-file", default=DEFAULT_DATASOURCE,
                        help="provisioned datasource YAML whose uid the dashboard must use")
    parser.add_argument("--range", default="15m",
                        help="value substituted for $__range (default %(default)s)")
    parser.add_argument("--rate-interval", default="1m",
                        help="value substituted for $__rate_interval and $__interval "
                             "(default %(default)s)")
    parser.add_argument("--wait", type=float, default=60,
                        help="seconds to keep retrying queries that return nothing "
                             "(default %(default)s)")
    parser.add_argument("--timeout", type=float, default=10,
                        help="per-query HTTP timeout in seconds (default %(default)s)")
    parser.add_argument("--static-only", action="store_true",
                        help="only the static checks, no Prometheus (just check-deploy)")
    return parser.parse_args()


def exported_metrics():
    """The metric names the host registers, read from its source."""
    source = os.path.join(HERE, "..", "host", "src", "telemetry.rs")
    with open(source, encoding="utf-8") as f:
        return set(re.findall(r'"(lambda_[a-z_]+)"', f.read()))


def metric_names(expr):
    """The host's metric names a PromQL expression reads."""
    return set(re.findall(r"\b(lambda_[a-z_]+)", expr))


def unknown_metrics(dashboard):
    """Metric names in the dashboard's queries that the host does not export:
    a renamed metric would leave a panel silently empty."""
    known = exported_metrics()
    problems = []
    for panel in all_panels(dashboard.get("panels") or []):
        for target in panel.get("targets", []) or []:
            for name in sorted(metric_names(target.get("expr", ""))):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name not in known and base not in known:
                    problems.append(f"panel {panel.get('title')!r}: {name} is not a metric of the host")
    return problems


# --------------------------------------------------------------------------
# Static checks
# --------------------------------------------------------------------------

def provisioned_datasource_uid(path):
    """The `uid:` of the first datasource of a provisioning file.

    The file is simple YAML; a line-based reading is enough: the first
    `uid:` key (optionally after a list dash) below `datasources:`.
    """
    uid = None
    in_datasources = False
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            if re.match(r"^datasources\s*:", line):
                in_datasources = True
                continue
            if in_datasources and re.match(r"^\S", line):
                in_datasources = False
            m = re.match(r"^\s*(?:-\s+)?uid\s*:\s*(.+?)\s*$", line)
            if in_datasources and m:
                uid = m.group(1).strip().strip("'\"")
                break
    return uid


def all_panels(panels):
    """Panels in order, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        for nested in panel.get("panels", []) or []:
            yield nested


def static_checks(dashboard, ds_uid):
    errors = []

    def check_ds(where, ds):
        if ds is None:
            errors.append(f"{where}: no datasource")
        elif not isinstance(ds, dict):
            errors.append(f"{where}: datasource {ds!r} is not an object with a uid")
        elif ds.get("uid") != ds_uid:
            errors.append(f"{where}: datasource uid {ds.get('uid')!r} is not the provisioned {ds_uid!r}")
        elif ds.get("type") != "prometheus":
            errors.append(f"{where}: datasource type {ds.get('type')!r} is not 'prometheus'")

    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        errors.append("dashboard has no panels")
        return errors
    seen = {}
    for panel in all_panels(panels):
        title = panel.get("title", "<untitled>")
        pid = panel.get("id")
        where = f"panel {pid} {title!r}"
        if pid is None:
            errors.append(f"{where}: no id")
        elif pid in seen:
            errors.append(f"{where}: id also used by {seen[pid]!r}")
        else:
            seen[pid] = title
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(k in grid for k in ("h", "w", "x", "y")):
            errors.append(f"{where}: missing or incomplete gridPos")
        if panel.get("type") == "row":
            if "datasource" in panel and panel["datasource"] is not None:
                check_ds(where, panel["datasource"])
            continue
        check_ds(where, panel.get("datasource"))
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        refs = set()
        for t in targets:
            ref = t.get("refId", "?")
            if ref in refs:
                errors.append(f"{where} target {ref}: duplicate refId")
            refs.add(ref)
            check_ds(f"{where} target {ref}", t.get("datasource"))
            if not str(t.get("expr", "")).strip():
                errors.append(f"{where} target {ref}: empty expr")
    for var in (dashboard.get("templating") or {}).get("list", []) or []:
        if var.get("type") == "query":
            check_ds(f"template variable {var.get('name')!r}", var.get("datasource"))
    return errors


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------

def substitute(expr, rng, rate_interval, variables):
    out = expr
    for name, value in (("__rate_interval", rate_interval), ("__interval", rate_interval),
                        ("__range", rng)):
        out = out.replace("${" + name + "}", value)
        out = re.sub(r"\$" + name + r"(?![A-Za-z0-9_])", value, out)
    for name, value in variables.items():
        out = re.sub(r"\$\{" + re.escape(name) + r"(?::[a-z]+)?\}", value, out)
        out = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", value, out)
        out = out.replace("[[" + name + "]]", value)
    return out


def query(base, expr, timeout):
    """(ok, series_count, largest_finite_value, message)."""
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except Exception:
            return False, 0, None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"cannot reach Prometheus at {base}: {e}") from e
    if body.get("status") != "success":
        return False, 0, None, f"{body.get('errorType', 'error')}: {body.get('error', '?')}"
    data = body.get("data", {})
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" or kind == "string":
        samples = [result[1]] if result else []
        count = len(samples)
    elif kind == "vector":
        samples = [s["value"][1] for s in result]
        count = len(result)
    elif kind == "matrix":
        samples = [v[1] for s in result for v in s.get("values", [])]
        count = len(result)
    else:
        return False, 0, None, f"unexpected result type {kind!r}"
    finite = []
    for s in samples:
        try:
            v = float(s)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            finite.append(v)
    if not count:
        return False, 0, None, "empty result"
    if not finite:
        return False, count, None, "only NaN values"
    # The largest value: a panel whose every series is zero shows nothing
    # happened, which after the load means the query is wrong.
    return True, count, max(finite), ""


# Metrics that may rightly be zero after the load: records are dropped only
# while PostgreSQL is down, and executions last milliseconds, so a scrape
# rarely finds one running.
ZERO_ALLOWED = {"lambda_log_records_dropped_total", "lambda_instances_in_use"}


def zero_allowed(expr):
    names = metric_names(expr)
    return bool(names) and names <= ZERO_ALLOWED


def fmt(value):
    if value is None:
        return "-"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def main():
    args = parse_args()

    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"STATIC ERROR: {args.dashboard}: {e}")
        return 2
    try:
        ds_uid = provisioned_datasource_uid(args.datasource_file)
    except OSError as e:
        print(f"STATIC ERROR: {args.datasource_file}: {e}")
        return 2
    if not ds_uid:
        print(f"STATIC ERROR: no datasource uid found in {args.datasource_file}")
        return 2
    errors = static_checks(dashboard, ds_uid) + unknown_metrics(dashboard)
    if errors:
        for e in errors:
            print(f"STATIC ERROR: {e}")
        print(f"{len(errors)} static check error(s)")
        return 2
    print(f"static checks passed: {args.dashboard} (datasource uid {ds_uid!r}, "
          f"every metric exported by the host)")
    if args.static_only:
        return 0

    # Each template variable takes its default: the current value saved in
    # the dashboard (the scrape job `lambda-host`), or "All" as a regex.
    variables = {}
    for var in (dashboard.get("templating") or {}).get("list", []) or []:
        if not var.get("name"):
            continue
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = current[0] if len(current) == 1 else None
        if not current or current == "$__all":
            current = var.get("allValue") or ".*"
        variables[var["name"]] = current

    checks = []
    for panel in all_panels(dashboard["panels"]):
        if panel.get("type") == "row":
            continue
        for t in panel.get("targets", []):
            label = t.get("legendFormat") or ""
            name = f"{t.get('refId', '?')}" + (f" {label}" if label else "")
            expr = substitute(t["expr"], args.range, args.rate_interval, variables)
            checks.append({"panel": panel.get("title", ""), "name": name, "expr": expr,
                           "ok": False, "count": 0, "value": None, "msg": "not run"})

    deadline = time.monotonic() + args.wait
    pending = list(checks)
    while True:
        for c in pending:
            try:
                c["ok"], c["count"], c["value"], c["msg"] = query(args.prometheus, c["expr"], args.timeout)
                if c["ok"] and c["value"] == 0 and not zero_allowed(c["expr"]):
                    c["ok"], c["msg"] = False, "every series is zero"
            except ConnectionError as e:
                print(f"ERROR: {e}")
                return 2
        pending = [c for c in pending if not c["ok"]]
        if not pending or time.monotonic() >= deadline:
            break
        print(f"{len(pending)} quer{'y' if len(pending) == 1 else 'ies'} without data yet, "
              f"retrying ({max(0, int(deadline - time.monotonic()))} s left)", flush=True)
        time.sleep(min(5.0, max(0.5, deadline - time.monotonic())))

    width = max(len(c["panel"]) for c in checks)
    for c in checks:
        status = "PASS" if c["ok"] else "FAIL"
        line = (f"{status}  {c['panel']:<{width}}  {c['name']:<28}  series={c['count']:<3} "
                f"max={fmt(c['value'])}")
        if not c["ok"]:
            line += f"  ({c['msg']})\n      query: {c['expr']}"
        print(line)
    passed = sum(1 for c in checks if c["ok"])
    print(f"{passed} of {len(checks)} queries returned data")
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
