#!/usr/bin/env python3
"""The analytic throughput model of SPEC §7 for a given teacher latency.

With t_s the student latency, t_d one distillation step, t_t the teacher, t_n the network time of
one key frame (its bytes up and down at the link rate), the MIN_STRIDE frames after a key frame
with d steps take between max(MIN_STRIDE*t_s, t_n + t_t + d*t_d) (the edge fully concurrent)
and MIN_STRIDE*t_s + t_n + t_t + d*t_d (no concurrency); the other frames t_s each. Naive
offloading pays the frame up, the label map down and the teacher on every frame.

The key frames, the steps per key frame, the bytes and t_s, t_d come from `shadowtutor simulate`
JSON reports (one per mode); the teacher latency is given, e.g. measured by bench/bench_teacher
(the Mask R-CNN port) on the server's device, so the same run predicts the system's throughput
for teachers that were not run live:

    tools/analytic_model.py --simulate partial.json [--simulate full.json] \\
        --teacher recorded=2 --teacher maskrcnn-cpu=2100 [--rates 80,40,20,8] [--markdown]
"""
import argparse
import json
import sys

MIN_STRIDE = 8


def bounds(n, key_frames, steps, up, down, t_s, t_d, t_t, mbps):
    """(lo, hi) fps of SPEC §7: n frames, key_frames key frames with `steps` distillation steps
    each (a list; missing entries count 0), `up` + `down` bytes in all, at `mbps` Mbit/s."""
    k = max(1, key_frames)
    t_n = (up + down) / k * 8 / (mbps * 1e6)
    steps = list(steps) + [0] * max(0, key_frames - len(steps))
    lo_w = sum(max(MIN_STRIDE * t_s, t_n + t_t + d * t_d) for d in steps)
    hi_w = sum(MIN_STRIDE * t_s + t_n + t_t + d * t_d for d in steps)
    others = max(n - len(steps) * MIN_STRIDE, 0) * t_s
    return n / (others + hi_w), n / (others + lo_w)


def naive_fps(n, up, down, t_t, mbps):
    """Naive offloading: every frame up, its labels down, the teacher on each."""
    return 1.0 / ((up + down) / n * 8 / (mbps * 1e6) + t_t)


def load(path):
    with open(path) as f:
        j = json.load(f)
    hist = j["step_histogram"]
    steps = [d for d, count in enumerate(hist) for _ in range(count)]
    return {"mode": j["mode"], "n": j["frames"], "k": j["key_frames"], "steps": steps,
            "up": j["bytes"]["up_total"], "down": j["bytes"]["down_total"],
            "naive_up": j["bytes"]["naive_up_total"], "naive_down": j["bytes"]["naive_down_total"],
            "t_s": j["time_ms"]["student_inference_mean"] / 1e3,
            "t_d": j["time_ms"]["distillation_step_mean"] / 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulate", action="append", required=True, help="simulate JSON (partial/full)")
    ap.add_argument("--teacher", action="append", required=True, help="NAME=MS teacher latency")
    ap.add_argument("--rates", default="80,40,20,8", help="link rates, Mbit/s")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    a = ap.parse_args()
    runs = [load(p) for p in a.simulate]
    teachers = []
    for t in a.teacher:
        name, _, ms = t.partition("=")
        try:
            teachers.append((name, float(ms) / 1e3))
        except ValueError:
            sys.exit(f"analytic_model: --teacher wants NAME=MS, got {t!r}")
    rates = [float(r) for r in a.rates.split(",")]
    rows = []
    for name, t_t in teachers:
        for rate in rates:
            r0 = runs[0]
            nv = naive_fps(r0["n"], r0["naive_up"], r0["naive_down"], t_t, rate)
            row = [name, f"{t_t * 1e3:.0f}", f"{rate:g}", f"{nv:.2f}"]
            for r in runs:
                lo, hi = bounds(r["n"], r["k"], r["steps"], r["up"], r["down"], r["t_s"], r["t_d"], t_t, rate)
                row.append(f"{lo:.2f}–{hi:.2f} ({lo / nv:.1f}–{hi / nv:.1f}×)")
            rows.append(row)
    head = ["teacher", "t_t ms", "Mbit/s", "naive fps"] + [f"{r['mode']} fps (vs naive)" for r in runs]
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in [head] + rows:
            print("  ".join(f"{c:>18}" for c in row))
    r0 = runs[0]
    print(f"\n(from {', '.join(a.simulate)}: {r0['n']} frames, {r0['k']} key frames, student "
          f"{r0['t_s'] * 1e3:.1f} ms, step {r0['t_d'] * 1e3:.1f} ms)", file=sys.stderr)


if __name__ == "__main__":
    main()
