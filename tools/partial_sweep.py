#!/usr/bin/env python3
"""Sweep of partial-distillation choices: where the student is split, and what trains there.

For every split (--train-from in_conv2 .. out_conv3) and variant (--train all | bias) it runs
`shadowtutor simulate --mode partial` on a clip (mean mIoU, key frames, downlink bytes per key
frame, trained parameters) and `bench_student --modes step-partial` at one frame size (the
server's step time); full distillation is added as a reference row. It writes:

  <out-dir>/partial_sweep.json   every run's numbers
  <out-dir>/partial_sweep.svg    mean mIoU against downlink bytes per key frame (log scale), the
                                 marker's area the step time, Pareto-optimal points outlined,
                                 the paper's split (dec2, all) labelled
  and a Markdown table on stdout (docs/partial_backward.md quotes it).

Usage:
  tools/partial_sweep.py --video V --labels L [--weights W] [--build build] [--out-dir DIR]
                         [--size 768x576] [--reps 3] [--splits dec2,dec3] [--variants all,bias]
                         [--no-bench] [--frames N]
  tools/partial_sweep.py --from-json DIR/partial_sweep.json [--out-dir DIR]   (table and plot
                         again from a previous run's numbers)
Only the Python standard library is used.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

BLOCKS = ["in_conv2", "enc1", "enc2", "enc3", "dec1", "dec2", "dec3",
          "out_conv1", "out_conv2", "out_conv3"]
PAPER = ("dec2", "all")


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("partial_sweep: %s failed (%d):\n%s" % (" ".join(cmd), p.returncode, p.stderr[-2000:]))
    return p.stdout


def simulate(a, extra):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [os.path.join(a.build, "shadowtutor"), "simulate", "--video", a.video, "--labels", a.labels,
           "--delay", "1", "--quiet", "--out", out] + extra
    if a.weights:
        cmd += ["--weights", a.weights]
    if a.frames:
        cmd += ["--frames", str(a.frames)]
    run(cmd)
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    return r


def step_ms(a, extra, mode):
    if a.no_bench:
        return None
    out = run([os.path.join(a.build, "bench_student"), "--no-peer", "--no-rss", "--sizes", a.size,
               "--reps", str(a.reps), "--modes", mode] + extra)
    m = re.search(r"^\s+\S+\s+%s\s+([0-9.]+) ms" % re.escape(mode), out, re.M)
    if not m:
        sys.exit("partial_sweep: no %s time in bench_student's output:\n%s" % (mode, out))
    return float(m.group(1))


def row_of(r, split, variant, ms):
    keys = max(1, r["key_frames"])
    return {
        "split": split, "variant": variant, "mean_miou": r["mean_miou"], "key_frames": r["key_frames"],
        "down_bytes_per_key_frame": r["bytes"]["down_total"] / keys,
        "trained_tensors": r["trained"]["tensors"], "trained_parameters": r["trained"]["parameters"],
        "trained_share": r["trained"]["share"], "step_ms": ms,
        "traffic_vs_naive": (r["bytes"]["up_total"] + r["bytes"]["down_total"]) /
                            max(1, r["bytes"]["naive_up_total"] + r["bytes"]["naive_down_total"])
        if "naive_up_total" in r["bytes"] else None,
    }


def pareto(rows):
    """Rows no other row beats on every objective (mIoU up, bytes down, step time down)."""
    def better_or_equal(b, a):
        ok = b["mean_miou"] >= a["mean_miou"] and b["down_bytes_per_key_frame"] <= a["down_bytes_per_key_frame"]
        if a["step_ms"] is not None and b["step_ms"] is not None:
            ok = ok and b["step_ms"] <= a["step_ms"]
        return ok
    out = []
    for a in rows:
        dominated = any(b is not a and better_or_equal(b, a) and
                        (b["mean_miou"], -b["down_bytes_per_key_frame"], -(b["step_ms"] or 0)) !=
                        (a["mean_miou"], -a["down_bytes_per_key_frame"], -(a["step_ms"] or 0))
                        for b in rows)
        out.append(not dominated)
    return out


def svg(rows, front, path, title):
    W, H, L, R, T, B = 760, 480, 70, 20, 40, 60
    xs = [math.log10(max(1.0, r["down_bytes_per_key_frame"])) for r in rows]
    ys = [100 * r["mean_miou"] for r in rows]
    x0, x1 = math.floor(min(xs)), math.ceil(max(xs))
    if x1 == x0:
        x1 += 1
    y0, y1 = math.floor(min(ys) / 5) * 5, math.ceil(max(ys) / 5) * 5
    if y1 == y0:
        y1 += 5
    px = lambda v: L + (v - x0) / (x1 - x0) * (W - L - R)
    py = lambda v: H - B - (v - y0) / (y1 - y0) * (H - T - B)
    ms = [r["step_ms"] for r in rows if r["step_ms"]]
    mmax = max(ms) if ms else 1
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="14">%s</text>' % (L, title)]
    for e in range(x0, x1 + 1):
        o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (px(e), T, px(e), H - B))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">1e%d</text>' % (px(e), H - B + 16, e))
    for v in range(int(y0), int(y1) + 1, 5):
        o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (L, py(v), W - R, py(v)))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%d%%</text>' % (L - 6, py(v) + 4, v))
    o.append('<text x="%d" y="%d" text-anchor="middle">downlink bytes per key frame (log scale)</text>' % ((L + W - R) // 2, H - 20))
    o.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">mean mIoU</text>' % ((T + H - B) // 2, (T + H - B) // 2))
    for r, x, y, f in zip(rows, xs, ys, front):
        rad = 4 + 10 * math.sqrt((r["step_ms"] or 0) / mmax)
        color = "#1f77b4" if r["variant"] == "all" else ("#d62728" if r["variant"] == "bias" else "#2ca02c")
        o.append('<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s" fill-opacity="0.45" stroke="%s" stroke-width="%s"/>'
                 % (px(x), py(y), rad, color, "black" if f else color, "2" if f else "1"))
        label = r["split"] + ("" if r["variant"] == "all" else "/" + r["variant"])
        if (r["split"], r["variant"]) == PAPER:
            label += " (paper)"
        o.append('<text x="%.1f" y="%.1f" font-size="10">%s</text>' % (px(x) + rad + 2, py(y) + 3, label))
    o.append('<text x="%d" y="%d" font-size="10">blue: every tensor of the blocks trained; red: biases and BN affine only; '
             'green: full distillation; area: server step time; black outline: Pareto-optimal</text>' % (L, T - 6))
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video")
    ap.add_argument("--labels")
    ap.add_argument("--from-json", default="")
    ap.add_argument("--weights", default="")
    ap.add_argument("--build", default="build")
    ap.add_argument("--out-dir", default="docs")
    ap.add_argument("--size", default="768x576")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--splits", default=",".join(BLOCKS))
    ap.add_argument("--variants", default="all,bias")
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--no-bench", action="store_true")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            d = json.load(f)
        report(a, d["rows"], d["video"], d["size"])
        return
    if not a.video or not a.labels:
        sys.exit("partial_sweep: --video and --labels are required (or --from-json)")
    splits = [s for s in a.splits.split(",") if s]
    for s in splits:
        if s not in BLOCKS:
            sys.exit("partial_sweep: unknown split %r (in_conv2 .. out_conv3)" % s)
    variants = [v for v in a.variants.split(",") if v]
    for v in variants:
        if v not in ("all", "bias"):
            sys.exit("partial_sweep: --variants takes all and/or bias")

    rows = []
    for s in splits:
        for v in variants:
            extra = ["--train-from", s, "--train", v]
            r = simulate(a, ["--mode", "partial"] + extra)
            rows.append(row_of(r, s, v, step_ms(a, extra, "step-partial")))
            print("partial_sweep: %s/%s done" % (s, v), file=sys.stderr)
    r = simulate(a, ["--mode", "full"])
    rows.append(row_of(r, "in_conv1", "full", step_ms(a, [], "step-full")))
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "partial_sweep.json"), "w") as f:
        json.dump({"video": a.video, "size": a.size, "rows": rows}, f, indent=1)
    report(a, rows, a.video, a.size)


def report(a, rows, video, size):
    front = pareto(rows)
    os.makedirs(a.out_dir, exist_ok=True)
    svg(rows, front, os.path.join(a.out_dir, "partial_sweep.svg"),
        "Partial distillation: where to split, what to train (%s)" % os.path.basename(video))
    print("| trains from | what | tensors | parameters (share) | mean mIoU | key frames | down KB / key frame | traffic vs naive | step ms (%s) | Pareto |" % size)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r, f in zip(rows, front):
        what = {"all": "every tensor", "bias": "biases + BN affine", "full": "full distillation"}[r["variant"]]
        mark = " **(paper)**" if (r["split"], r["variant"]) == PAPER else ""
        print("| %s%s | %s | %d | %d (%.1f%%) | %.2f%% | %d | %.1f | %s | %s | %s |" % (
            r["split"], mark, what, r["trained_tensors"], r["trained_parameters"], 100 * r["trained_share"],
            100 * r["mean_miou"], r["key_frames"], r["down_bytes_per_key_frame"] / 1e3,
            "%.2f%%" % (100 * r["traffic_vs_naive"]) if r.get("traffic_vs_naive") is not None else "–",
            "%.1f" % r["step_ms"] if r["step_ms"] is not None else "–", "yes" if f else ""))


if __name__ == "__main__":
    main()
