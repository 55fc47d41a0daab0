#!/usr/bin/env python3
"""Runs every PromQL query of the Grafana dashboards against a real Prometheus.

1. Loads dashboards/*.json, checks their structure, and extracts every panel target's `expr`
   (rows included) and every query variable (`label_values(metric, label)`).
2. Checks that every SmartScale metric a query uses is declared in docs/interfaces.md, and every
   other metric is a known kube-state-metrics / node-exporter name.
3. Writes six hours of OpenMetrics history shaped like the series Prometheus scrapes in a real
   deployment (controller, agents, kube-state-metrics, node-exporter; label sets as documented),
   backfills it with `promtool tsdb create-blocks-from openmetrics`, and starts `prometheus` on a
   free 127.0.0.1 port with its own temporary data directory (readiness is polled, not slept on).
4. Backfills the cost recording rules (dashboards/rules/cost.yml.tpl with the sample prices of
   pulumi/scripts/render-samples.ts) over the same history with `promtool tsdb create-blocks-from
   rules`, and restarts Prometheus with those blocks.
5. Runs each query as an instant query at the end of the history, twice: with the template
   variables set to "All" and to one node group. Each must parse and return at least one sample.
6. Checks values, not just shapes: CPU and memory panels and the controller's worker signals
   (dashboards/signals/worker-signals.json) average over the workers only, never the K3s server;
   the Cost dashboard's hourly cost is every worker at its own price plus the server, disks and
   IPv4 addresses; the savings count spot prices.
7. Stops Prometheus by PID and removes the temporary directory.

Python standard library only. Exit status 0 when every check passes. The last line is
"N passed, N failed".
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = Path(os.environ.get("SMARTSCALE_DASHBOARDS_DIR", ROOT / "dashboards"))
INTERFACES = ROOT / "docs" / "interfaces.md"

HISTORY_SECONDS = 6 * 3600
STEP_SECONDS = 30
NODE_GROUP = "smartscale-demo-workers"

# Grafana's built-in variables, as Grafana would expand them for a 6 h range at 30 s resolution.
BUILTINS = {
    "$__range_s": str(HISTORY_SECONDS),
    "$__range_ms": str(HISTORY_SECONDS * 1000),
    "$__range": "6h",
    "$__rate_interval": "2m",
    "$__interval_ms": "30000",
    "$__interval": "30s",
}
# Dashboard variables: "All" (allValue .+: every worker, never a series without node_group) and
# one concrete value.
VARIABLE_SETS = {
    "all": {"node_group": ".+"},
    "one": {"node_group": NODE_GROUP},
}

# Real metric names of kube-state-metrics v2 and node_exporter that the dashboards may use.
KNOWN_EXTERNAL = {
    "kube_node_info", "kube_node_labels", "kube_node_status_condition", "kube_node_status_allocatable",
    "kube_node_spec_unschedulable", "kube_pod_status_phase", "kube_pod_status_unschedulable",
    "kube_pod_container_resource_requests", "kube_pod_info",
    "node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
    "ALERTS",  # Prometheus' own series of alerting rule states
}
RULES = ROOT / "dashboards" / "rules"
SIGNALS = ROOT / "dashboards" / "signals" / "worker-signals.json"
# The sample prices of pulumi/scripts/render-samples.ts (and dashboards/rules/cost.test.yml).
COST_VALUES = {
    "SERVER_HOURLY": 0.0416, "SERVER_INSTANCE_TYPE": "t3.medium", "SERVER_PRICE_SOURCE": "price_list",
    "SERVER_EBS_HOURLY": 30 * 0.08 / 730, "SERVER_VOLUME_GIB": 30, "EBS_PRICE_SOURCE": "price_list",
    "IPV4_HOURLY": 0.005, "IPV4_PRICE_SOURCE": "config", "WORKER_EBS_HOURLY": 20 * 0.08 / 730,
    "WORKER_VOLUME_GIB": 20, "WORKER_OVERHEAD_HOURLY": 20 * 0.08 / 730 + 0.005,
}
# Spot prices the controller reports per node (its zone's price); the on-demand node is left to the
# recording rule's fallback (its group's price for its type and lifecycle).
NODE_PRICES = {"ip-10-20-16-12": 0.0119, "ip-10-20-32-13": 0.0131, "ip-10-20-16-14": 0.0119}
PROMQL_WORDS = {
    "sum", "avg", "max", "min", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "rate", "increase", "irate", "histogram_quantile", "sum_over_time", "max_over_time", "avg_over_time",
    "min_over_time", "count_over_time", "vector", "scalar", "or", "and", "unless", "bool", "offset",
    "days_in_month", "day_of_month", "hour", "minute", "time", "label_values", "le", "topk", "bottomk",
    "abs", "clamp_min", "clamp_max", "round", "inf", "nan",
}

VERBOSE = os.environ.get("DASHBOARD_TEST_VERBOSE") == "1"

passed = 0
failed = 0


def check(name: str, ok: bool, detail: str = "") -> bool:
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok    {name}")
    else:
        failed += 1
        print(f"  FAIL  {name}{': ' + detail if detail else ''}")
    return ok


# --------------------------------------------------------------------------- dashboards


def iter_panels(panels):
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def load_queries():
    """[(dashboard, panel title, refId, expr)] plus [(dashboard, variable, query)]."""
    targets, variables = [], []
    files = sorted(DASHBOARDS.glob("*.json"))
    check("dashboards exist", len(files) >= 3, f"found {[f.name for f in files]}")
    uids = set()
    for f in files:
        d = json.loads(f.read_text())
        name = f.name
        problems = []
        if not d.get("uid") or d["uid"] in uids:
            problems.append("missing or duplicate uid")
        uids.add(d.get("uid"))
        for key in ("title", "schemaVersion", "panels", "templating", "time"):
            if key not in d:
                problems.append(f"no {key}")
        ids = [p.get("id") for p in iter_panels(d.get("panels", []))]
        if len(ids) != len(set(ids)) or None in ids:
            problems.append("panel ids missing or not unique")
        for p in iter_panels(d.get("panels", [])):
            if "gridPos" not in p:
                problems.append(f"panel {p.get('title')} has no gridPos")
            if p.get("type") == "row":
                continue
            if p.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"panel {p.get('title')} does not use the datasource variable")
            if not p.get("targets"):
                problems.append(f"panel {p.get('title')} has no targets")
            refs = [t.get("refId") for t in p.get("targets", [])]
            if len(refs) != len(set(refs)):
                problems.append(f"panel {p.get('title')} repeats a refId")
            for t in p.get("targets", []):
                if not t.get("expr"):
                    problems.append(f"panel {p.get('title')} target {t.get('refId')} has no expr")
                else:
                    targets.append((name, p["title"], t["refId"], t["expr"]))
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                q = v.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                variables.append((name, v["name"], q))
        check(f"{name}: structure", not problems, "; ".join(problems))
    return targets, variables


def substitute(expr: str, variables: dict) -> str:
    for k, v in BUILTINS.items():  # longest names first (dict order above)
        expr = expr.replace(k, v)
    for k, v in variables.items():
        expr = expr.replace("${" + k + "}", v).replace("$" + k, v)
    return expr


def label_values_to_promql(q: str) -> str:
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q)
    if not m:
        raise ValueError(f"unsupported variable query {q!r}")
    return f"group by ({m.group(2)}) ({m.group(1)})"


def documented_metrics() -> set[str]:
    text = INTERFACES.read_text()
    section = text[text.index("## Metrics"):]
    section = section[: section.index("\n## ", 3)]
    names = set()
    for line in section.splitlines():
        for name in re.findall(r"`(smartscale_[a-z_]+)", line):
            names.add(name)
            if "histogram" in line:
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def recorded_metrics() -> set[str]:
    return set(re.findall(r"^\s*- record: (\S+)", (RULES / "cost.yml.tpl").read_text(), re.M))


def render_cost_rules() -> str:
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731 (as toPrecision(6))
    return re.sub(r"@@([A-Z0-9_]+)@@", lambda m: fmt(COST_VALUES[m.group(1)]), (RULES / "cost.yml.tpl").read_text())


def metric_names(expr: str) -> set[str]:
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # drop matchers
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # drop ranges
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?|e\d*", w)}


# --------------------------------------------------------------------------- history

class OpenMetrics:
    """Collects series and writes them family by family, each series' samples in time order."""

    def __init__(self):
        self.families: dict[str, tuple[str, dict]] = {}

    def add(self, family: str, kind: str, sample_name: str, labels: dict, t: float, value: float):
        fam = self.families.setdefault(family, (kind, {}))[1]
        key = (sample_name, tuple(sorted(labels.items())))
        fam.setdefault(key, []).append((t, value))

    def write(self, path: Path):
        with path.open("w") as f:
            for family, (kind, series) in self.families.items():
                f.write(f"# TYPE {family} {kind}\n")
                if kind == "histogram":
                    # Group bucket/count/sum lines of one label set per timestamp (one MetricPoint).
                    groups: dict[tuple, dict[float, list]] = {}
                    for (sample, labels), points in series.items():
                        base = tuple(kv for kv in labels if kv[0] != "le")
                        for t, v in points:
                            groups.setdefault(base, {}).setdefault(t, []).append((sample, labels, v))
                    for base, by_t in groups.items():
                        for t in sorted(by_t):
                            lines = sorted(by_t[t], key=lambda x: (_suffix_order(x[0]), _le(x[1])))
                            for sample, labels, v in lines:
                                f.write(f"{sample}{_labels(labels)} {_num(v)} {t}\n")
                else:
                    for (sample, labels), points in series.items():
                        for t, v in points:
                            f.write(f"{sample}{_labels(labels)} {_num(v)} {t}\n")
            f.write("# EOF\n")


def _suffix_order(name):
    return 0 if name.endswith("_bucket") else 1 if name.endswith("_count") else 2


def _le(labels):
    le = dict(labels).get("le")
    return math.inf if le in (None, "+Inf") else float(le)


def _labels(items):
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"


def _num(v):
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def generate_history(path: Path, end: int) -> None:
    """Six hours of a 4-worker cluster that scales 2 -> 4 -> 3, with spot and on-demand workers."""
    rnd = random.Random(42)
    om = OpenMetrics()
    start = end - HISTORY_SECONDS
    H = 3600
    prices = {("t3.medium", "on-demand"): 0.0416, ("t3.medium", "spot"): 0.0125,
              ("t3a.medium", "on-demand"): 0.0376, ("t3a.medium", "spot"): 0.0113}
    server = {"node": "ip-10-20-0-10", "ip": "10.20.0.10", "zone": "eu-west-1a", "type": "t3.medium", "from": 0, "to": None}
    workers = [
        {"node": "ip-10-20-0-11", "ip": "10.20.0.11", "id": "i-0a11", "zone": "eu-west-1a", "type": "t3.medium", "cap": "on-demand", "from": 0, "to": None},
        {"node": "ip-10-20-16-12", "ip": "10.20.16.12", "id": "i-0b12", "zone": "eu-west-1b", "type": "t3a.medium", "cap": "spot", "from": 0, "to": None},
        {"node": "ip-10-20-32-13", "ip": "10.20.32.13", "id": "i-0c13", "zone": "eu-west-1c", "type": "t3.medium", "cap": "spot", "from": 1 * H, "to": 4 * H},
        {"node": "ip-10-20-16-14", "ip": "10.20.16.14", "id": "i-0b14", "zone": "eu-west-1b", "type": "t3a.medium", "cap": "spot", "from": 2 * H, "to": None},
    ]
    controller = {"job": "smartscale-controller", "instance": "127.0.0.1:8080"}
    ksm = {"job": "kubernetes-service-endpoints", "instance": "10.42.0.7:8080", "namespace": "monitoring", "service": "prometheus-kube-state-metrics"}

    def alive(n, off):
        return n["from"] <= off and (n["to"] is None or off < n["to"])

    cpu_counters = {}
    decisions = {a: 0.0 for a in ("scale_up", "scale_down", "none")}
    errors = {"prometheus": 0.0, "aws": 0.0}
    cycle_buckets = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    cycle = {"count": 0.0, "sum": 0.0, "b": [0.0] * len(cycle_buckets)}  # cumulative bucket counts
    agent = {}
    fencing = 3

    for i in range(HISTORY_SECONDS // STEP_SECONDS + 1):
        off = i * STEP_SECONDS
        t = start + off
        load = 0.45 + 0.3 * math.sin(off / H * math.pi / 3)  # 15%..75% over 6 h
        live = [w for w in workers if alive(w, off)]
        ready = [w for w in live if off - w["from"] >= 180 or w["from"] == 0]
        in_flight = len(live) - len(ready)
        pending = 3 if (H - 600 <= off < H + 180) or (2 * H - 600 <= off < 2 * H + 180) else 0

        # ---- kube-state-metrics and node-exporter, per node
        for n in [server] + live:
            is_server = n is server
            labels = {"label_topology_kubernetes_io_zone": n["zone"], "label_node_kubernetes_io_instance_type": n["type"]}
            if not is_server:
                labels.update({"label_smartscale_io_capacity_type": n["cap"], "label_smartscale_io_node_group": NODE_GROUP})
            om.add("kube_node_labels", "gauge", "kube_node_labels", {**ksm, "node": n["node"], **labels}, t, 1)
            om.add("kube_node_info", "gauge", "kube_node_info", {**ksm, "node": n["node"], "internal_ip": n["ip"],
                   "kubelet_version": "v1.33.4+k3s1", "os_image": "Ubuntu 24.04.1 LTS",
                   "provider_id": f"aws:///{n['zone']}/{n.get('id', 'i-0server')}"}, t, 1)
            is_ready = is_server or n in ready
            for status in ("true", "false", "unknown"):
                om.add("kube_node_status_condition", "gauge", "kube_node_status_condition",
                       {**ksm, "node": n["node"], "condition": "Ready", "status": status}, t, 1 if (status == "true") == is_ready and status != "unknown" else 0)
            om.add("kube_node_status_allocatable", "gauge", "kube_node_status_allocatable", {**ksm, "node": n["node"], "resource": "cpu", "unit": "core"}, t, 2)
            om.add("kube_node_status_allocatable", "gauge", "kube_node_status_allocatable", {**ksm, "node": n["node"], "resource": "memory", "unit": "byte"}, t, 3.8e9)
            # The chart's node-exporter job (userdata/manifests/smartscale.yaml): workers carry node_group.
            ne = {"job": "node-exporter", "instance": f"{n['ip']}:9100", "node": n["node"],
                  "node_role": "server" if is_server else "worker"}
            if not is_server:
                ne["node_group"] = NODE_GROUP
            node_load = 0.2 if is_server else min(0.95, max(0.05, load + rnd.uniform(-0.05, 0.05)))
            for cpu in ("0", "1"):
                for mode, share in (("idle", 1 - node_load), ("user", node_load * 0.8), ("system", node_load * 0.2)):
                    key = (n["node"], cpu, mode)
                    cpu_counters[key] = cpu_counters.get(key, 1000.0) + STEP_SECONDS * share
                    om.add("node_cpu_seconds", "counter", "node_cpu_seconds_total", {**ne, "cpu": cpu, "mode": mode}, t, round(cpu_counters[key], 3))
            om.add("node_memory_MemTotal_bytes", "gauge", "node_memory_MemTotal_bytes", ne, t, 4.0e9)
            om.add("node_memory_MemAvailable_bytes", "gauge", "node_memory_MemAvailable_bytes", ne, t, round(4.0e9 * (1 - node_load * 0.8)))

        # ---- pods (kube-state-metrics)
        for j, w in enumerate(ready):
            for k in range(2):
                pod = f"web-{j}{k}"
                pl = {**ksm, "namespace": "default", "pod": pod, "uid": f"uid-{pod}"}
                for phase in ("Pending", "Running", "Succeeded", "Failed", "Unknown"):
                    om.add("kube_pod_status_phase", "gauge", "kube_pod_status_phase", {**pl, "phase": phase}, t, 1 if phase == "Running" else 0)
                for res, unit, v in (("cpu", "core", 0.5), ("memory", "byte", 5.0e8)):
                    om.add("kube_pod_container_resource_requests", "gauge", "kube_pod_container_resource_requests",
                           {**pl, "container": "web", "node": w["node"], "resource": res, "unit": unit}, t, v)
        for k in range(pending):
            pl = {**ksm, "namespace": "default", "pod": f"batch-{k}", "uid": f"uid-batch-{k}"}
            om.add("kube_pod_status_phase", "gauge", "kube_pod_status_phase", {**pl, "phase": "Pending"}, t, 1)
            om.add("kube_pod_status_unschedulable", "gauge", "kube_pod_status_unschedulable", pl, t, 1)

        # ---- controller (docs/interfaces.md "Metrics")
        ng = {**controller, "node_group": NODE_GROUP}
        action = "scale_up" if off in (H - 540, 2 * H - 540) else "scale_down" if off == 4 * H - 600 else "none"
        decisions[action] += 1
        for a, v in decisions.items():
            om.add("smartscale_decisions", "counter", "smartscale_decisions_total", {**ng, "action": a, "dry_run": "false"}, t, v)
        desired = len(live)
        for state, v in (("current", len(live)), ("desired", desired), ("ready", len(ready)), ("in_flight", in_flight)):
            om.add("smartscale_nodes", "gauge", "smartscale_nodes", {**ng, "state": state}, t, v)
        om.add("smartscale_pending_pods", "gauge", "smartscale_pending_pods", controller, t, pending)
        for sig, v in (("cpu", round(load * 100, 2)), ("memory", round(load * 80, 2)), ("pending_pods", pending), ("nodes", len(ready) + 1)):
            om.add("smartscale_signal_value", "gauge", "smartscale_signal_value", {**controller, "signal": sig}, t, v)
        d = rnd.uniform(0.03, 0.4) if i % 50 else 1.7
        cycle["count"] += 1
        cycle["sum"] += d
        for bi, le in enumerate(cycle_buckets):
            if d <= le:
                cycle["b"][bi] += 1
        for bi, le in enumerate(cycle_buckets):
            om.add("smartscale_cycle_duration_seconds", "histogram", "smartscale_cycle_duration_seconds_bucket", {**controller, "le": str(le)}, t, cycle["b"][bi])
        om.add("smartscale_cycle_duration_seconds", "histogram", "smartscale_cycle_duration_seconds_bucket", {**controller, "le": "+Inf"}, t, cycle["count"])
        om.add("smartscale_cycle_duration_seconds", "histogram", "smartscale_cycle_duration_seconds_count", controller, t, cycle["count"])
        om.add("smartscale_cycle_duration_seconds", "histogram", "smartscale_cycle_duration_seconds_sum", controller, t, round(cycle["sum"], 4))
        if i % 97 == 13:
            errors["prometheus" if i % 2 else "aws"] += 1
        for kind, v in errors.items():
            om.add("smartscale_errors", "counter", "smartscale_errors_total", {**controller, "kind": kind}, t, v)
        if off == 3 * H:
            fencing += 1
        om.add("smartscale_lease_held", "gauge", "smartscale_lease_held", {**controller, "replica": "ip-10-20-0-10"}, t, 1)
        om.add("smartscale_lease_held", "gauge", "smartscale_lease_held", {"job": "smartscale-controller", "instance": "10.20.16.20:8080", "replica": "ip-10-20-16-20"}, t, 0)
        om.add("smartscale_fencing_token", "gauge", "smartscale_fencing_token", controller, t, fencing)
        cost = sum(prices[(w["type"], w["cap"])] for w in live)
        om.add("smartscale_estimated_hourly_cost_dollars", "gauge", "smartscale_estimated_hourly_cost_dollars", ng, t, round(cost, 4))
        for (itype, cap), price in prices.items():
            om.add("smartscale_node_hourly_price_dollars", "gauge", "smartscale_node_hourly_price_dollars",
                   {**ng, "instance_type": itype, "capacity_type": cap}, t, price)
        for w in live:
            node = {**ng, "node": w["node"], "instance_id": w["id"], "instance_type": w["type"], "capacity_type": w["cap"], "zone": w["zone"]}
            om.add("smartscale_node_info", "gauge", "smartscale_node_info", node, t, 1)
            if w["node"] in NODE_PRICES:
                om.add("smartscale_node_hourly_cost_dollars", "gauge", "smartscale_node_hourly_cost_dollars",
                       {**node, "price_source": "spot_price_history"}, t, NODE_PRICES[w["node"]])
        if off >= 5 * H:
            om.add("ALERTS", "gauge", "ALERTS", {"alertname": "SmartScaleNodeGroupBackoff", "alertstate": "firing",
                                                  "severity": "warning", "node_group": NODE_GROUP}, t, 1)

        # ---- agents (one per live worker; the one terminated at 4 h drained first)
        for w in live:
            a = agent.setdefault(w["node"], {"events": {}, "evicted": 0.0, "failed": 0.0, "hb": 0.0, "drain": None})
            al = {"job": "smartscale-agent", "instance": f"{w['ip']}:9102", "node": w["node"]}
            draining = w["to"] is not None and w["to"] - 300 <= off
            if draining and a["drain"] is None:
                a["drain"] = 240.0
                a["events"]["target_lifecycle"] = 1.0
                a["evicted"] += 2
            if draining:
                a["hb"] += 0.2
            for src in ("target_lifecycle", "spot_interruption", "rebalance", "manual"):
                om.add("smartscale_agent_events", "counter", "smartscale_agent_events_total", {**al, "source": src}, t, a["events"].get(src, 0.0))
            om.add("smartscale_agent_pods_evicted", "counter", "smartscale_agent_pods_evicted_total", al, t, a["evicted"])
            om.add("smartscale_agent_pods_eviction_failed", "counter", "smartscale_agent_pods_eviction_failed_total", al, t, a["failed"])
            om.add("smartscale_agent_heartbeats", "counter", "smartscale_agent_heartbeats_total", al, t, round(a["hb"], 1))
            n_drains = 1.0 if a["drain"] is not None else 0.0
            for le in ("30", "60", "120", "300", "600"):
                v = n_drains if a["drain"] is not None and a["drain"] <= float(le) else 0.0
                om.add("smartscale_agent_drain_duration_seconds", "histogram", "smartscale_agent_drain_duration_seconds_bucket", {**al, "le": le}, t, v)
            om.add("smartscale_agent_drain_duration_seconds", "histogram", "smartscale_agent_drain_duration_seconds_bucket", {**al, "le": "+Inf"}, t, n_drains)
            om.add("smartscale_agent_drain_duration_seconds", "histogram", "smartscale_agent_drain_duration_seconds_count", al, t, n_drains)
            om.add("smartscale_agent_drain_duration_seconds", "histogram", "smartscale_agent_drain_duration_seconds_sum", al, t, a["drain"] or 0.0)

    om.write(path)


# --------------------------------------------------------------------------- prometheus


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status, _ = http_get(f"{base}/-/ready", timeout=2)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)  # poll interval, not a wait for readiness
    raise RuntimeError(f"prometheus not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def instant_query(base: str, expr: str, at: int):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": str(at)})
    try:
        status, body = http_get(url)
    except urllib.error.HTTPError as e:
        body = e.read()
    data = json.loads(body)
    if data.get("status") != "success":
        return None, f"{data.get('errorType')}: {data.get('error')}"
    result = data["data"]["result"]
    if data["data"]["resultType"] == "scalar":
        result = [result]
    return result, None


def scalar(base: str, expr: str, at: int) -> float | None:
    result, err = instant_query(base, expr, at)
    if err or not result:
        return None
    return float(result[0]["value"][1])


def check_values(base: str, end: int, targets) -> None:
    """What the panels and signals compute, against what the history holds (generate_history)."""
    expr = {(d, t, r): substitute(e, VARIABLE_SETS["all"]) for d, t, r, e in targets}
    workers_now = "ip-10-20-0-11|ip-10-20-16-12|ip-10-20-16-14"  # alive at the end; ip-10-20-0-10 is the server
    only_workers = scalar(base, f'(1 - avg(rate(node_cpu_seconds_total{{mode="idle",node=~"{workers_now}"}}[2m]))) * 100', end)
    with_server = scalar(base, '(1 - avg(rate(node_cpu_seconds_total{mode="idle"}[2m]))) * 100', end)
    panel = scalar(base, expr[("cluster.json", "CPU utilisation", "A")], end)
    check("cluster / CPU utilisation is the workers' average, without the K3s server",
          None not in (panel, only_workers, with_server) and abs(panel - only_workers) < 0.01 and abs(with_server - only_workers) > 1,
          f"panel {panel}, workers {only_workers}, all node-exporter targets {with_server}")
    signals = json.loads(SIGNALS.read_text())
    cpu = scalar(base, signals["cpu"].replace("[5m]", "[2m]"), end)
    check("the controller's cpu signal (worker-signals.json) reads the workers only",
          cpu is not None and abs(cpu - only_workers) < 0.01, f"{cpu} vs {only_workers}")
    mem_workers = scalar(base, f'(1 - avg(node_memory_MemAvailable_bytes{{node=~"{workers_now}"}} / node_memory_MemTotal_bytes{{node=~"{workers_now}"}})) * 100', end)
    mem = scalar(base, signals["memory"], end)
    mem_all = scalar(base, '(1 - avg(node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100', end)
    check("the controller's memory signal reads the workers only",
          None not in (mem, mem_workers, mem_all) and abs(mem - mem_workers) < 0.01 and abs(mem_all - mem_workers) > 1, f"{mem} vs {mem_workers} (all {mem_all})")

    # At the end: ip-10-20-0-11 (t3.medium on demand, priced by its group: 0.0416), ip-10-20-16-12 and
    # ip-10-20-16-14 (t3a.medium spot, priced per node: 0.0119); 3 worker instances; the server.
    c = COST_VALUES
    workers = 0.0416 + 0.0119 + 0.0119
    infra = c["SERVER_HOURLY"] + float(f"{c['SERVER_EBS_HOURLY']:.6g}") + c["IPV4_HOURLY"] + 3 * (float(f"{c['WORKER_EBS_HOURLY']:.6g}") + c["IPV4_HOURLY"])
    now = scalar(base, expr[("cost.json", "Cost now (per hour)", "A")], end)
    check("cost / Cost now is every worker at its own price plus the server, the disks and the IPv4 addresses",
          now is not None and abs(now - (workers + infra)) < 1e-6, f"{now} vs {workers + infra}")
    spot = scalar(base, 'sum(smartscale:node_hourly_cost_dollars{capacity_type="spot"})', end)
    check("spot workers are priced at their own (zone's) spot price, not an on-demand price", spot is not None and abs(spot - 0.0238) < 1e-9, str(spot))
    static = scalar(base, expr[("cost.json", "Static peak-sized fleet in range", "A")], end)
    actual = scalar(base, expr[("cost.json", "Workers actually cost in range", "A")], end)
    on_demand = scalar(base, 'sum_over_time((sum(smartscale_node_info * on (instance_type) group_left max by (instance_type) '
                             '(smartscale_node_hourly_price_dollars{capacity_type="on-demand"})))[6h:1m]) / 60', end)
    check("savings: the autoscaled spot/on-demand workers cost less than the same node-hours on demand, which cost less than the static fleet",
          None not in (static, actual, on_demand) and actual < on_demand < static, f"actual {actual}, same hours on demand {on_demand}, static {static}")
    if VERBOSE:
        print(f"        cost now {now}, actual {actual}, on demand {on_demand}, static {static}, cpu {panel} vs {with_server}")


def main() -> int:
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            print(f"error: {tool} not found (Debian package 'prometheus')", file=sys.stderr)
            return 2

    targets, variables = load_queries()

    documented = documented_metrics()
    for dash, title, ref, expr in targets:
        names = metric_names(substitute(expr, VARIABLE_SETS["all"]))
        own = {n for n in names if n.startswith("smartscale_")}
        rules = {n for n in names if n.startswith("smartscale:")}
        unknown = sorted((own - documented) | (rules - recorded_metrics())
                         | {n for n in names - own - rules if n not in KNOWN_EXTERNAL})
        check(f"{dash} / {title} / {ref}: metric names are documented or known", not unknown, f"unknown {unknown}")

    work = Path(tempfile.mkdtemp(prefix="smartscale-dashboards-"))
    proc = None
    try:
        end = int(time.time()) // 60 * 60 - 120
        om_file = work / "history.om"
        t0 = time.monotonic()
        generate_history(om_file, end)
        data_dir = work / "data"
        r = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om_file), str(data_dir)],
                           capture_output=True, text=True)
        if not check("promtool backfill", r.returncode == 0, (r.stdout + r.stderr)[-2000:]):
            return 1
        print(f"  (history: {om_file.stat().st_size // 1024} KiB, backfilled in {time.monotonic() - t0:.1f}s)")

        config = work / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = work / "prometheus.log"

        def start():
            with log.open("a") as logf:
                p = subprocess.Popen(
                    ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
                     "--storage.tsdb.retention.time=3650d", f"--web.listen-address=127.0.0.1:{port}"],
                    stdout=logf, stderr=subprocess.STDOUT)
            wait_ready(base, p, log)
            return p

        proc = start()
        # The cost recording rules over the history, as Prometheus would have recorded them.
        rules_file = work / "recording_rules.yml"
        rules_file.write_text(render_cost_rules())
        t0 = time.monotonic()
        r = subprocess.run(["promtool", "tsdb", "create-blocks-from", "rules", "--start", str(end - HISTORY_SECONDS),
                            "--end", str(end + 1), "--url", base, "--eval-interval", "60s", "--output-dir", str(work / "rules"),
                            str(rules_file)], capture_output=True, text=True)
        if not check("promtool backfills the cost recording rules", r.returncode == 0, (r.stdout + r.stderr)[-2000:]):
            return 1
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        for block in (work / "rules").iterdir():
            if block.is_dir():
                shutil.move(str(block), str(data_dir / block.name))
        proc = start()
        print(f"  (recording rules backfilled in {time.monotonic() - t0:.1f}s; prometheus pid {proc.pid} ready on {base})")

        for set_name, values in VARIABLE_SETS.items():
            for dash, title, ref, expr in targets:
                q = substitute(expr, values)
                leftover = re.findall(r"\$\{?\w+", q)
                if not check(f"{dash} / {title} / {ref} [{set_name}]: variables substituted", not leftover, str(leftover)):
                    continue
                result, err = instant_query(base, q, end)
                check(f"{dash} / {title} / {ref} [{set_name}]: parses and returns data",
                      err is None and bool(result), err or f"empty result for {q}")
                if VERBOSE and result:
                    print("        " + "; ".join(f"{r.get('metric', {})} = {r.get('value', r)[-1]}" for r in result[:4]))
        for dash, var, q in variables:
            try:
                promql = label_values_to_promql(q)
            except ValueError as e:
                check(f"{dash} / variable {var}", False, str(e))
                continue
            result, err = instant_query(base, promql, end)
            values = sorted(r["metric"].get(promql.split("(")[1].split(")")[0], "") for r in result or [])
            check(f"{dash} / variable {var}: {q} returns values", err is None and NODE_GROUP in values, err or str(values))
        check_values(base, end, targets)
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
