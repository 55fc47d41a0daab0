#!/usr/bin/env python3
"""Convert public demand traces into the digital twin's CSV format (`time_s,cpu_cores`).

Standard library only and deterministic: the same source file and options give the same bytes.
traces/README.md says where each source comes from, its license and its sha256.

    python3 scripts/convert-traces.py --list
    python3 scripts/convert-traces.py PRESET SOURCE_FILE [-o OUT] [--start T] [--days D]
                                      [--peak CORES] [--floor CORES] [--bucket S]

PRESET is one of the traces below (it fixes the input format, the window and the output name);
`nab` and `events` are generic presets for any other NAB file or event log (they need -o).

Conversion:
  1. read the source; sort by time (stable, so the source's order breaks ties);
  2. `nab` format (`timestamp,value`, NAB's "%Y-%m-%d %H:%M:%S"): one row per sample;
     `events` format (one row per request, first column a timestamp with optional fractional
     seconds): requests are counted in fixed buckets of --bucket seconds from the first event;
     the last, incomplete bucket is dropped, empty buckets count 0;
  3. keep the window [start, start + days) with days <= 14 (start defaults to the first sample);
  4. time_s = seconds since the window's first sample (an integer: sources are whole seconds or
     bucketed); samples that land on the same second are averaged;
  5. cpu_cores = max(floor, value / max(value in window) * peak), rounded to 3 decimals
     (defaults: peak 36 cores = 90 % of the twin's 40 nodes x 2 CPU; floor 1 core, so the
     service never asks for nothing: an idle service still runs a couple of 0.5-CPU pods).

The summary (rows, window, how many rows the floor lifted, the source's sha256) goes to stderr.
--expect-sha256 (or the preset's recorded checksum) warns when the source is not the one
documented in traces/README.md.
"""

import argparse
import csv
import datetime as dt
import hashlib
import os
import sys

NAB_COMMIT = "ea702d75cc2258d9d7dd35ca8e5e2539d71f3140"
AZURE_COMMIT = "b469a113cedca53ddc3bdea71a143dc4b7d8700c"

# name -> how to convert it, and the source it was made from (see traces/README.md).
PRESETS = {
    "nab-elb-requests": {
        "format": "nab",
        "source": f"github numenta/NAB@{NAB_COMMIT}:data/realAWSCloudwatch/elb_request_count_8c0756.csv",
        "sha256": "74c26574a01ca9fb89dddb5021e2e13c3a93eb25dc640438a9acb1ceb00f1021",
    },
    "nab-ec2-cpu-fe7f93": {
        "format": "nab",
        "source": f"github numenta/NAB@{NAB_COMMIT}:data/realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv",
        "sha256": "f3433f8171f4dcea86c0c7af9996d0f166f812fa0f4567f1d5cd85d2d2cd69b4",
    },
    "nab-ec2-cpu-batch-77c1ca": {
        "format": "nab",
        "source": f"github numenta/NAB@{NAB_COMMIT}:data/realAWSCloudwatch/ec2_cpu_utilization_77c1ca.csv",
        "sha256": "90ceabd570b449241ee24ff8a116a793979b7671ce4490707311bfea0e0aae1f",
    },
    "nab-twitter-amzn": {
        "format": "nab",
        "source": f"github numenta/NAB@{NAB_COMMIT}:data/realTweets/Twitter_volume_AMZN.csv",
        "sha256": "234f5e63f19a62720dfb7ccfd6ecc8349b94d93b33ef8aafbdb17edda0b654f3",
        # Days 15-28 of the file: the first two weeks hold one 5-minute spike of 1673 tweets
        # (33x the median) that would scale every other sample to about 1 core.
        "start": "2015-03-12 21:42:53",
    },
    "nab-nyc-taxi": {
        "format": "nab",
        "source": f"github numenta/NAB@{NAB_COMMIT}:data/realKnownCause/nyc_taxi.csv",
        "sha256": "d8fa6f7f0734bf5c8be12c52a94e20a82664c397d9dec4449156bd453d32856d",
    },
    "azure-llm-code": {
        "format": "events",
        "bucket": 60,
        "source": f"github Azure/AzurePublicDataset@{AZURE_COMMIT}:data/AzureLLMInferenceTrace_code.csv",
        "sha256": "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
    },
    # Generic: any NAB-format file / any per-request event log (give -o).
    "nab": {"format": "nab"},
    "events": {"format": "events", "bucket": 60},
}

MAX_DAYS = 14


def parse_time(text):
    """`YYYY-MM-DD HH:MM:SS[.fraction]` (any number of fraction digits) -> (datetime, fraction)."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    t = dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    return t, float("0." + frac) if frac else 0.0


def read_nab(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["timestamp", "value"]:
        sys.exit(f"{path}: expected a NAB header `timestamp,value`")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if not r or not "".join(r).strip():
            continue
        t, frac = parse_time(r[0])
        out.append((t, frac, float(r[1])))
    return out


def read_events(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    out = []
    for r in rows[1:]:  # the first line is a header
        if not r or not r[0].strip():
            continue
        t, frac = parse_time(r[0])
        out.append((t, frac))
    return out


def seconds(t, frac, origin):
    return (t - origin).total_seconds() + frac


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", nargs="?", help="trace name (see --list)")
    ap.add_argument("source", nargs="?", help="the original file")
    ap.add_argument("-o", "--out", help="output CSV (default traces/<preset>.csv)")
    ap.add_argument("--start", help="window start, `YYYY-MM-DD HH:MM:SS` (default: the preset's, else the first sample)")
    ap.add_argument("--days", type=float, default=MAX_DAYS, help=f"window length in days, at most {MAX_DAYS} (default {MAX_DAYS})")
    ap.add_argument("--peak", type=float, default=36.0, help="cores at the window's maximum (default 36)")
    ap.add_argument("--floor", type=float, default=1.0, help="minimum cores (default 1)")
    ap.add_argument("--bucket", type=int, help="events format: bucket width in seconds (default 60)")
    ap.add_argument("--expect-sha256", help="warn if the source's sha256 differs (default: the preset's)")
    ap.add_argument("--list", action="store_true", help="list the presets and their sources")
    a = ap.parse_args()

    if a.list:
        for name, p in PRESETS.items():
            print(f"{name:26} {p.get('source', '(generic ' + p['format'] + ' format)')}")
        return
    if not a.preset or not a.source:
        ap.error("give PRESET and SOURCE_FILE (or --list)")
    if a.preset not in PRESETS:
        ap.error(f"unknown preset {a.preset!r}; one of: {', '.join(PRESETS)}")
    if not 0 < a.days <= MAX_DAYS:
        ap.error(f"--days must be in (0, {MAX_DAYS}]")
    p = PRESETS[a.preset]
    if "source" not in p and not a.out:
        ap.error(f"the generic preset {a.preset!r} needs -o OUT")
    out = a.out or os.path.join("traces", a.preset + ".csv")

    with open(a.source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    expect = a.expect_sha256 or p.get("sha256")
    if expect and digest != expect:
        print(f"warning: {a.source}: sha256 {digest} is not the documented {expect}", file=sys.stderr)

    if p["format"] == "nab":
        samples = read_nab(a.source)
        samples.sort(key=lambda s: s[0] + dt.timedelta(seconds=s[1]))
        origin = samples[0][0]
        points = [(seconds(t, fr, origin), v) for t, fr, v in samples]
    else:
        events = read_events(a.source)
        events.sort(key=lambda s: s[0] + dt.timedelta(seconds=s[1]))
        origin = events[0][0]
        bucket = a.bucket or p.get("bucket", 60)
        first = seconds(*events[0], origin)
        last = seconds(*events[-1], origin)
        nbuckets = int((last - first) // bucket)  # complete buckets only
        counts = [0] * nbuckets
        for t, fr in events:
            i = int((seconds(t, fr, origin) - first) // bucket)
            if i < nbuckets:
                counts[i] += 1
        points = [(first + i * bucket, float(c)) for i, c in enumerate(counts)]

    start = a.start or p.get("start")
    w0 = seconds(*parse_time(start), origin) if start else points[0][0]
    w1 = w0 + a.days * 86400
    window = [(s, v) for s, v in points if w0 <= s < w1]
    if not window:
        sys.exit("the window holds no samples")
    t0 = window[0][0]

    # Whole seconds since the window's first sample; samples on the same second are averaged.
    merged, dup = [], 0
    for s, v in window:
        ts = int(round(s - t0))
        if merged and merged[-1][0] == ts:
            merged[-1][1].append(v)
            dup += 1
        else:
            merged.append((ts, [v]))
    values = [(ts, sum(vs) / len(vs)) for ts, vs in merged]

    vmax = max(v for _, v in values)
    if vmax <= 0:
        sys.exit("the window's maximum is 0; nothing to scale")
    floored = 0
    lines = ["time_s,cpu_cores"]
    for ts, v in values:
        cores = v / vmax * a.peak
        if cores < a.floor:
            cores = a.floor
            floored += 1
        lines.append(f"{ts},{cores:.3f}")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")

    first_t = origin + dt.timedelta(seconds=t0)
    last_t = origin + dt.timedelta(seconds=t0 + values[-1][0])
    print(
        f"{out}: {len(values)} rows, {first_t} .. {last_t} ({values[-1][0] / 86400:.2f} d), "
        f"max value {vmax:g} -> {a.peak:g} cores, floor {a.floor:g} lifted {floored} rows, "
        f"{dup} same-second samples averaged, source sha256 {digest}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
