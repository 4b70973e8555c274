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

With a live teacher (--teacher-cmd, e.g. the demo's RVM) instead of recorded labels the teacher
labels the decoded key frames too, and --video may be given several times (NAME=PATH or PATH;
--frames applies to each): a table per clip, then one of each setting's mIoU difference to the
fp32/raw run of the same clip (mean, min, max over the clips). --pairs UPDATE/KEY,... runs those
settings instead of the whole product of --updates and --keys.

Usage:
  tools/bytes_sweep.py --video V (--labels L | --teacher-cmd CMD [--eval-every N]) [--weights W]
                       [--build build] [--out FILE] [--delays 1,8] [--updates fp32,int8+zstd,...]
                       [--keys raw,jpeg:90,...] [--pairs fp32/raw,int8+zstd/jpeg:90,...]
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


def clip_of(v):
    name, sep, path = v.partition("=")
    return (name, path) if sep else (os.path.splitext(os.path.basename(v.rstrip("/")))[0], v)


def simulate(a, clip, delay, update, key):
    name, video = clip
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [os.path.join(a.build, "shadowtutor"), "simulate", "--mode", "partial", "--video",
           video, "--delay", str(delay), "--quiet", "--out", out, "--key-encoding", key]
    cmd += ["--labels", a.labels] if a.labels else ["--teacher-cmd", a.teacher_cmd]
    if a.eval_every:
        cmd += ["--eval-every", str(a.eval_every)]
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
    return {"clip": name, "delay": delay, "update": update, "key": key, "mean_miou": r["mean_miou"],
            "key_frames": r["key_frames"], "frames": r["frames"],
            "up_per_key_frame": b["up_total"] / keys, "down_per_key_frame": b["down_total"] / keys,
            "traffic_vs_naive": b["total_vs_naive"], "command": " ".join(cmd[1:])}


def is_base(r):
    return r["update"] == "fp32" and r["key"] == "raw"


def clips_table(rows, tol):
    """Each setting's mean mIoU minus its clip's fp32/raw run, over the clips."""
    out = []
    order = {u: i for i, u in enumerate(UPDATES)}
    for delay in sorted({r["delay"] for r in rows}):
        rs = [r for r in rows if r["delay"] == delay]
        base = {r["clip"]: r for r in rs if is_base(r)}
        out.append("P-%d, %d clips: mean mIoU minus the same clip's fp32/raw run (points)\n" %
                   (delay, len(base)))
        out.append("| update | key frames as | mean | min | max | clips within %.1f | "
                   "traffic vs naive (mean) |" % tol)
        out.append("|---|---|---:|---:|---:|---:|---:|")
        settings = sorted({(r["update"], r["key"]) for r in rs if not is_base(r)},
                          key=lambda s: (s[1] != "raw", s[1], order.get(s[0], 99)))
        for u, k in settings:
            d = [100 * (r["mean_miou"] - base[r["clip"]]["mean_miou"]) for r in rs
                 if (r["update"], r["key"]) == (u, k) and r["clip"] in base]
            t = [r["traffic_vs_naive"] for r in rs if (r["update"], r["key"]) == (u, k)]
            if not d:
                continue
            out.append("| %s | %s | %+.2f | %+.2f | %+.2f | %d of %d | %.3f%% |" % (
                u, k, sum(d) / len(d), min(d), max(d), sum(x >= -tol for x in d), len(d),
                100 * sum(t) / len(t)))
        out.append("")
    return "\n".join(out)


def table(rows, tol):
    out = []
    clips = sorted({r.get("clip", "") for r in rows})
    if len(clips) > 1:
        return "\n".join("## %s\n\n%s" % (c, table([r for r in rows if r.get("clip", "") == c], tol))
                         for c in clips) + "\n" + clips_table(rows, tol)
    for delay in sorted({r["delay"] for r in rows}):
        rs = [r for r in rows if r["delay"] == delay]
        base = next((r for r in rs if is_base(r)), None)
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
    ap.add_argument("--video", action="append")
    ap.add_argument("--labels")
    ap.add_argument("--teacher-cmd")
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--pairs", help="UPDATE/KEY,... instead of --updates x --keys")
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
        if not a.video or bool(a.labels) == bool(a.teacher_cmd):
            ap.error("--video and one of --labels, --teacher-cmd are required (or --from-json)")
        pairs = ([tuple(p.split("/", 1)) for p in a.pairs.split(",")] if a.pairs else
                 [(u, k) for u in a.updates.split(",") for k in a.keys.split(",")])
        grid = [(clip_of(v), int(d), u, k) for v in a.video for d in a.delays.split(",")
                for u, k in pairs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as ex:
            rows = list(ex.map(lambda g: simulate(a, *g), grid))
        with open(a.out, "w") as f:
            json.dump({"videos": a.video, "labels": a.labels, "teacher_cmd": a.teacher_cmd,
                       "eval_every": a.eval_every, "frames": a.frames, "weights": a.weights,
                       "runs": rows}, f, indent=1)
    print(table(rows, a.tolerance))


if __name__ == "__main__":
    main()
