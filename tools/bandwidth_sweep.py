#!/usr/bin/env python3
"""Throughput and traffic across link rates (the paper's Figure 4), measured over TCP.

Starts shadowtutor-server with the recorded-label teacher, then runs shadowtutor-edge for naive,
partial and full at each link rate (the edge's token bucket, per direction; bytes measured at
the socket), and compares each measured throughput with the analytic bounds of SPEC §7 computed
from measured component times (student latency, one distillation step, teacher; from
`shadowtutor simulate` on the same machine) and each run's own key frames, steps and bytes.

  tools/bandwidth_sweep.py --video ../shared/data/vtest/vtest.avi \\
      --labels ../shared/data/vtest/labels \\
      --weights ../shared/models/student_lvs9_pretrained.safetensors --out sweep/

Writes OUT/sweep.json, OUT/bandwidth.svg and prints a markdown table. Standard library only.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analytic_model import bounds as model_bounds, naive_fps  # noqa: E402
from report import svg_plot  # noqa: E402

COLORS = {"naive": "#888888", "partial": "#1f77b4", "full": "#d62728"}


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"bandwidth_sweep: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def component_times(a, out):
    """Student, step and teacher times (s) from simulate runs (partial and full)."""
    t = {}
    for mode in ("partial", "full"):
        path = os.path.join(out, f"simulate_{mode}.json")
        cmd = [os.path.join(a.build, "shadowtutor"), "simulate", "--video", a.video, "--labels",
               a.labels, "--mode", mode, "--frames", str(a.frames), "--out", path, "--quiet"]
        if a.weights:
            cmd += ["--weights", a.weights]
        run(cmd)
        with open(path) as f:
            j = json.load(f)["time_ms"]
        t["student"] = j["student_inference_mean"] / 1e3 if mode == "partial" else t["student"]
        t[f"step_{mode}"] = j["distillation_step_mean"] / 1e3
        t["teacher"] = j["teacher_mean"] / 1e3
    return t


def edge_run(a, port, token, mode, rate, out):
    name = f"{mode}_{rate:g}"
    js, jl = os.path.join(out, name + ".json"), os.path.join(out, name + ".jsonl")
    frames = a.naive_frames if mode == "naive" else a.frames
    cmd = [os.path.join(a.build, "shadowtutor-edge"), "--server", f"127.0.0.1:{port}", "--token",
           token, "--mode", mode, "--video", a.video, "--frames", str(frames), "--link-mbps",
           f"{rate:g}", "--wait-server", "30", "--update-timeout", "600",
           # the paper's edge: it blocks for a due update (the analytic model assumes it)
           "--max-wait", "inf", "--json", js,
           "--frame-log", jl, "--quiet"]
    if a.weights:
        cmd += ["--weights", a.weights]
    run(cmd)
    with open(js) as f:
        r = json.load(f)
    steps = []
    with open(jl) as f:
        for line in f:
            j = json.loads(line)
            if j.get("applied"):
                steps.append(j.get("steps", 0))
    r["_steps_per_update"] = steps
    return r


def bounds(r, t, rate):
    """(lo, hi) fps of SPEC §7 for this run's key frames, steps and bytes at `rate` Mbit/s."""
    n, up, down = r["frames"], r["bytes"]["up_total"], r["bytes"]["down_total"]
    if r["mode"] == "naive":
        fps = naive_fps(n, up, down, t["teacher"], rate)
        return fps, fps
    return model_bounds(n, r["key_frames"], r["_steps_per_update"], up, down, t["student"],
                        t[f"step_{r['mode']}"], t["teacher"], rate)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--video", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--weights", default="")
    ap.add_argument("--rates", default="90,80,60,40,20,12,8")
    ap.add_argument("--frames", type=int, default=300, help="frames per partial/full run")
    ap.add_argument("--naive-frames", type=int, default=40, help="frames per naive run")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",")]
    os.makedirs(a.out, exist_ok=True)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    os.environ.update(env)

    print("component times (simulate) ...", file=sys.stderr)
    t = component_times(a, a.out)
    print(f"  student {t['student'] * 1e3:.1f} ms, partial step {t['step_partial'] * 1e3:.1f} ms, "
          f"full step {t['step_full'] * 1e3:.1f} ms, teacher {t['teacher'] * 1e3:.1f} ms",
          file=sys.stderr)

    token = f"sweep{os.getpid()}"
    cmd = [os.path.join(a.build, "shadowtutor-server"), "--port", "0", "--token", token,
           "--labels", a.labels]
    if a.weights:
        cmd += ["--weights", a.weights]
    log = open(os.path.join(a.out, "server.log"), "w")
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = srv.stdout.readline()
        m = re.search(r":(\d+)$", line.strip())
        if not m:
            sys.exit(f"bandwidth_sweep: the server did not start: {line!r}")
        port = int(m.group(1))
        results = []
        for rate in rates:
            for mode in ("naive", "partial", "full"):
                t0 = time.time()
                r = edge_run(a, port, token, mode, rate, a.out)
                lo, hi = bounds(r, t, rate)
                results.append({"rate_mbps": rate, "mode": mode, "frames": r["frames"],
                                "fps": r["fps"], "key_frames": r["key_frames"],
                                "steps": r["distillation_steps"],
                                "bytes_up": r["bytes"]["up_total"],
                                "bytes_down": r["bytes"]["down_total"],
                                "bytes_per_frame": (r["bytes"]["up_total"] +
                                                    r["bytes"]["down_total"]) / r["frames"],
                                "analytic_fps_lo": lo, "analytic_fps_hi": hi})
                print(f"  {rate:>4g} Mbps {mode:>7}: {r['fps']:6.2f} fps (model {lo:.2f}-{hi:.2f}), "
                      f"{r['key_frames']} key frames, {time.time() - t0:.0f} s", file=sys.stderr)
    finally:
        srv.terminate()
        srv.wait()
        log.close()

    with open(os.path.join(a.out, "sweep.json"), "w") as f:
        json.dump({"component_times_s": t, "frames": a.frames, "naive_frames": a.naive_frames,
                   "weights": a.weights or "random init", "results": results}, f, indent=1)

    series = []
    for mode in ("naive", "partial", "full"):
        rs = sorted((x for x in results if x["mode"] == mode), key=lambda x: x["rate_mbps"])
        xs = [x["rate_mbps"] for x in rs]
        series.append((f"{mode} measured", COLORS[mode], xs, [x["fps"] for x in rs], False))
        series.append((f"{mode} model max", COLORS[mode], xs, [x["analytic_fps_hi"] for x in rs],
                       False, "5,3"))
        if mode != "naive":
            series.append((f"{mode} model min", COLORS[mode], xs,
                           [x["analytic_fps_lo"] for x in rs], False, "1,3"))
    svg = svg_plot(series, "link rate (Mbit/s per direction)", "throughput (frames/s)", 0, None,
                   w=760, h=340)
    with open(os.path.join(a.out, "bandwidth.svg"), "w") as f:
        f.write(svg)

    print("| Mbit/s | mode | fps measured | model min–max | key frames | bytes / frame |")
    print("|---:|---|---:|---:|---:|---:|")
    for x in results:
        print(f"| {x['rate_mbps']:g} | {x['mode']} | {x['fps']:.2f} | "
              f"{x['analytic_fps_lo']:.2f}–{x['analytic_fps_hi']:.2f} | "
              f"{x['key_frames']}/{x['frames']} | {x['bytes_per_frame'] / 1e3:.1f} kB |")


if __name__ == "__main__":
    main()
