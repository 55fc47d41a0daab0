#!/usr/bin/env python3
"""Checks the rendered server manifest (userdata/manifests/smartscale.yaml + dashboards ConfigMap).

    python3 userdata/check_manifest.py RENDERED_MANIFEST

- With PyYAML available: every document parses, has the expected kinds and names, each HelmChart's
  valuesContent parses, and the dashboards ConfigMap holds every dashboards/*.json as valid JSON.
  Without PyYAML this part is skipped with a message.
  The Prometheus chart's extraScrapeConfigs are checked by `promtool check config`; Debian's
  Prometheus is built without Kubernetes service discovery, so kubernetes_sd_configs are swapped for
  a static target first (relabelling and the rest are checked as written).
- Without PyYAML these checks are skipped with a message.

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


def check(name: str, ok: bool, detail: str = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok    {name}")
    else:
        failed += 1
        print(f"  FAIL  {name}{': ' + detail if detail else ''}")


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
    jobs = yaml.safe_load(yaml.safe_load(prom["spec"]["valuesContent"])["extraScrapeConfigs"])
    for job in jobs:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "30s"}, "scrape_configs": jobs}))
        r = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True)
        check("extraScrapeConfigs pass promtool check config", r.returncode == 0, (r.stdout + r.stderr).strip())

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
