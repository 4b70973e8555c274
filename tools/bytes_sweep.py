#!/usr/bin/env python3
"""Bytes against accuracy: `shadowtutor simulate` for every update codec and key-frame encoding.

For each delay (P-1, P-8, ...), each update codec (--update: fp32, fp16, int8, int8:top10,
int8:top1, each with and without +zstd) and each key-frame encoding (--key-encoding raw, png,
jpeg:Q) it runs simulate in partial mode on one clip and records mean mIoU, key frames, bytes up
and down per key frame and total traffic against naive offloading (raw frames up, label maps
down). It writes

  <out>.json   every run's numbers (and the command line that made them)
  and a Markdown table on stdout, per delay, the fp32/raw row first (docs/results.md quotes it),
  with each row's mean mIoU relative to that row and whether it is within --tolerance points.

Usage:
  tools/bytes_sweep.py --video V --labels L [--weights W] [--build build] [--out FILE]
                       [--delays 1,8] [--updates fp32,int8+zstd,...] [--keys raw,jpeg:90,...]
                       [--frames N] [--jobs 2] [--tolerance 0.5]
  tools/bytes_sweep.py --from-json FILE [--tolerance 0.5]      (the table again)
Only the Python standard library is used.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

UPDATES = ["fp32", "fp32+zstd", "fp16", "fp16+zstd", "int8", "int8+zstd", "int8:top10",
           "int8:top10+zstd", "int8:top1", "int8:top1+zstd"]
KEYS = ["raw", "jpeg:90"]


def simulate(a, delay, update, key):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [os.path.join(a.build, "shadowtutor"), "simulate", "--mode", "partial", "--video",
           a.video, "--labels", a.labels, "--delay", str(delay), "--quiet", "--out", out,
           "--key-encoding", key]
    # fp32 and fp16 without zstd are the plain blobs every version of the protocol carries.
    cmd += ["--encoding", update] if update in ("fp32", "fp16") else ["--update", update]
    if a.weights:
        cmd += ["--weights", a.weights]
    if a.frames:
        cmd += ["--frames", str(a.frames)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("bytes_sweep: %s failed (%d):\n%s" % (" ".join(cmd), p.returncode, p.stderr[-2000:]))
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    b = r["bytes"]
    keys = max(1, r["key_frames"])
    return {"delay": delay, "update": update, "key": key, "mean_miou": r["mean_miou"],
            "key_frames": r["key_frames"], "frames": r["frames"],
            "up_per_key_frame": b["up_total"] / keys, "down_per_key_frame": b["down_total"] / keys,
            "traffic_vs_naive": b["total_vs_naive"], "command": " ".join(cmd[1:])}


def table(rows, tol):
    out = []
    for delay in sorted({r["delay"] for r in rows}):
        rs = [r for r in rows if r["delay"] == delay]
        base = next((r for r in rs if r["update"] == "fp32" and r["key"] == "raw"), None)
        out.append("P-%d%s\n" % (delay, "" if base else " (no fp32/raw row: no reference)"))
        out.append("| update | key frames as | mean mIoU | vs fp32/raw | key frames | up / key frame | "
                   "down / key frame | traffic vs naive |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|")
        order = {u: i for i, u in enumerate(UPDATES)}
        for r in sorted(rs, key=lambda r: (r["key"] != "raw", r["key"], order.get(r["update"], 99))):
            d = 100 * (r["mean_miou"] - base["mean_miou"]) if base else None
            mark = "" if d is None else (" " if d >= -tol else " ✗")
            out.append("| %s | %s | %.2f%% | %s | %d | %s | %s | %.3f%%%s |" % (
                r["update"], r["key"], 100 * r["mean_miou"],
                "—" if d is None else "%+.2f%s" % (d, mark), r["key_frames"],
                size(r["up_per_key_frame"]), size(r["down_per_key_frame"]),
                100 * r["traffic_vs_naive"], ""))
        ok = [r for r in rs if base and 100 * (r["mean_miou"] - base["mean_miou"]) >= -tol]
        if ok:
            best = min(ok, key=lambda r: r["traffic_vs_naive"])
            out.append("\nLeast traffic within %.1f points of fp32/raw: %s with %s key frames, %.3f%% "
                       "of naive." % (tol, best["update"], best["key"], 100 * best["traffic_vs_naive"]))
        out.append("")
    return "\n".join(out)


def size(n):
    return "%.0f B" % n if n < 10000 else "%.1f KB" % (n / 1000) if n < 1e6 else "%.2f MB" % (n / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video")
    ap.add_argument("--labels")
    ap.add_argument("--weights")
    ap.add_argument("--build", default="build")
    ap.add_argument("--out", default="bytes_sweep.json")
    ap.add_argument("--delays", default="1,8")
    ap.add_argument("--updates", default=",".join(UPDATES))
    ap.add_argument("--keys", default=",".join(KEYS))
    ap.add_argument("--frames", type=int)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=0.5, help="points of mean mIoU")
    ap.add_argument("--from-json")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            rows = json.load(f)["runs"]
    else:
        if not a.video or not a.labels:
            ap.error("--video and --labels are required (or --from-json)")
        grid = [(int(d), u, k) for d in a.delays.split(",") for u in a.updates.split(",")
                for k in a.keys.split(",")]
        with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as ex:
            rows = list(ex.map(lambda g: simulate(a, *g), grid))
        with open(a.out, "w") as f:
            json.dump({"video": a.video, "labels": a.labels, "weights": a.weights, "runs": rows}, f,
                      indent=1)
    print(table(rows, a.tolerance))


if __name__ == "__main__":
    main()
