#!/usr/bin/env python3
"""Checks the rendered server manifest (userdata/manifests/smartscale.yaml + dashboards ConfigMap).

    python3 userdata/check_manifest.py RENDERED_MANIFEST

- With PyYAML available: every document parses, has the expected kinds and names, each HelmChart's
  valuesContent parses, and the dashboards ConfigMap holds every dashboards/*.json as valid JSON.
  Without PyYAML these checks are skipped with a message.
- The Prometheus chart's extraScrapeConfigs pass `promtool check config`; Debian's Prometheus is
  built without Kubernetes service discovery, so kubernetes_sd_configs are swapped for file_sd
  targets carrying the labels Kubernetes node discovery gives a worker and the K3s server. A real
  Prometheus then runs that config and its /api/v1/targets shows what the relabelling made of them:
  every worker's node-exporter target carries node_group, the server's does not (finding 8).
- The alerting and recording rules in serverFiles pass `promtool check rules` and their unit tests
  (dashboards/rules/alerts.test.yml, cost.test.yml) pass `promtool test rules` as rendered here.

Python standard library plus PyYAML. Last line: "N passed, N failed".
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
passed = failed = 0


def check(name: str, ok: bool, detail: str = "") -> bool:
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok    {name}")
    else:
        failed += 1
        print(f"  FAIL  {name}{': ' + detail if detail else ''}")
    return ok


def main() -> int:
    manifest = Path(sys.argv[1])
    text = manifest.read_text()

    try:
        import yaml  # type: ignore
    except ImportError:
        print("  skip  manifest checks: PyYAML is not installed (pip install pyyaml)")
        print("0 passed, 0 failed")
        return 0

    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    expected = sorted([
        "Namespace/monitoring", "ServiceAccount/smartscale-controller", "Secret/smartscale-controller-token",
        "ClusterRole/smartscale-controller", "ClusterRoleBinding/smartscale-controller",
        "HelmChart/prometheus", "HelmChart/grafana", "ConfigMap/smartscale-dashboards",
    ])
    check("manifest documents", kinds == expected, f"{kinds}")
    check("namespace comes first", docs[0]["kind"] == "Namespace")
    for d in docs:
        if d["kind"] == "HelmChart":
            spec = d["spec"]
            values = yaml.safe_load(spec["valuesContent"])
            check(f"HelmChart {d['metadata']['name']}: pinned chart version and parsable values",
                  bool(spec.get("version")) and isinstance(values, dict), str(spec.get("version")))
        if d["kind"] == "ConfigMap":
            want = sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
            got = sorted(d["data"])
            check("dashboards ConfigMap holds every dashboard", got == want, f"{got} != {want}")
            for name, body in d["data"].items():
                try:
                    uid = json.loads(body)["uid"]
                    check(f"dashboard {name} is valid JSON (uid {uid})", True)
                except (ValueError, KeyError) as e:
                    check(f"dashboard {name} is valid JSON", False, str(e))

    prom = next(d for d in docs if d["kind"] == "HelmChart" and d["metadata"]["name"] == "prometheus")
    values = yaml.safe_load(prom["spec"]["valuesContent"])
    check("node-exporter is not also scraped through its service annotation (no series without node_group)",
          values["prometheus-node-exporter"]["service"]["annotations"]["prometheus.io/scrape"] == "false")
    reload = values["configmapReload"]["prometheus"]
    check("the config reloader is on (rule updates apply) and off the controller's port 8080",
          reload["enabled"] is True and reload["containerPort"] != 8080, str(reload))
    jobs = yaml.safe_load(values["extraScrapeConfigs"])
    with tempfile.TemporaryDirectory() as tmp:
        check_rules(yaml, values["serverFiles"], Path(tmp))
        check_relabelling(yaml, jobs, Path(tmp))

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


# What Kubernetes node discovery gives Prometheus for a worker and for the K3s server.
NODES = {
    "worker": {"__meta_kubernetes_node_name": "ip-10-20-16-12", "__meta_kubernetes_node_address_InternalIP": "10.20.16.12",
               "__meta_kubernetes_node_label_smartscale_io_node_group": "smartscale-demo-workers",
               "__meta_kubernetes_node_label_smartscale_io_capacity_type": "spot"},
    "server": {"__meta_kubernetes_node_name": "ip-10-20-0-10", "__meta_kubernetes_node_address_InternalIP": "10.20.0.10",
               "__meta_kubernetes_node_label_node_role_kubernetes_io_control_plane": "true"},
}


def check_rules(yaml, server_files: dict, tmp: Path) -> None:
    rules_dir = ROOT / "dashboards" / "rules"
    for name, test in (("alerting_rules.yml", "alerts.test.yml"), ("recording_rules.yml", "cost.test.yml")):
        path = tmp / name
        path.write_text(yaml.safe_dump(server_files[name], sort_keys=False))
        r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
        check(f"serverFiles {name} passes promtool check rules", r.returncode == 0, (r.stdout + r.stderr).strip())
        # The unit tests name their rule file; run them against the rendered one.
        text = (rules_dir / test).read_text().replace("  - alerts.yml", f"  - {name}")
        (tmp / test).write_text(text)
        r = subprocess.run(["promtool", "test", "rules", str(tmp / test)], capture_output=True, text=True, cwd=tmp)
        check(f"serverFiles {name} passes promtool test rules {test}", r.returncode == 0, (r.stdout + r.stderr).strip()[-3000:])


def check_relabelling(yaml, jobs: list, tmp: Path) -> None:
    import json as _json
    import socket
    import time
    import urllib.request

    targets = tmp / "nodes.json"
    targets.write_text(_json.dumps([{"targets": [f"{labels['__meta_kubernetes_node_address_InternalIP']}:10250"], "labels": labels}
                                    for labels in NODES.values()]))
    for job in jobs:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": [str(targets)]}]
    cfg = tmp / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "30s"}, "scrape_configs": jobs}))
    r = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True)
    if not check("extraScrapeConfigs pass promtool check config", r.returncode == 0, (r.stdout + r.stderr).strip()):
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(active) < 3:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2) as resp:
                    active = _json.load(resp)["data"]["activeTargets"]
            except OSError:
                pass
            time.sleep(0.1)
        by = {(t["labels"]["job"], t["labels"].get("node")): t["labels"] for t in active}
        worker = by.get(("node-exporter", "ip-10-20-16-12"), {})
        server = by.get(("node-exporter", "ip-10-20-0-10"), {})
        check("node-exporter: the worker's target carries node_group and node_role=worker, on port 9100",
              worker.get("node_group") == "smartscale-demo-workers" and worker.get("node_role") == "worker"
              and worker.get("instance") == "10.20.16.12:9100", str(worker))
        check("node-exporter: the server's target has no node_group and node_role=server",
              bool(server) and "node_group" not in server and server.get("node_role") == "server", str(server))
        agents = [labels for (job, _), labels in by.items() if job == "smartscale-agent"]
        check("smartscale-agent: only workers are scraped, on 9102, with node and node_group",
              len(agents) == 1 and agents[0].get("instance") == "10.20.16.12:9102"
              and agents[0].get("node_group") == "smartscale-demo-workers", str(agents))
        interval = next(j.get("scrape_interval") for j in jobs if j["job_name"] == "smartscale-agent")
        check("smartscale-agent is scraped every 10 s (metrics_flush_wait is twice that)", interval == "10s", str(interval))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
