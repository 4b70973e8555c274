#!/usr/bin/env python3
"""Turns `shadowtutor simulate` JSON reports into the markdown tables of docs/results.md.

usage: tools/results_table.py RUN.json [RUN.json ...] [--link-mbps 80] [--teacher-ms T]

Columns follow the paper's Tables 2-6 for one clip: distillation step latency and mean steps
(Table 2), throughput from the analytic model of SPEC §7 (Table 3), bytes per key frame
(Table 4), key-frame ratio and traffic (Table 5), mean mIoU vs the teacher (Table 6).
The analytic model uses the component times measured in the same run (student t_s,
distillation step t_d), the teacher time given with --teacher-ms (the recorded-label teacher
costs ~1 ms; the paper's Mask R-CNN on its server was much slower), and the link rate.
"""
import argparse
import json
import sys


def load(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            j = json.load(f)
        j["_path"] = p
        runs.append(j)
    return runs


def label(r):
    m = r["mode"]
    if m in ("partial", "full"):
        enc = " fp16" if "fp16" in r["_path"] else ""
        return f"{m} P-{r['delay']}{enc}" if m == "partial" else f"full F-{r['delay']}{enc}"
    return m


def analytic(r, link_bps, teacher_s, min_stride=8):
    """Throughput bounds (fps) from SPEC §7 for a ShadowTutor run, or the naive rate."""
    n = r["frames"]
    t_s = r["time_ms"]["student_inference_mean"] / 1e3
    t_d = r["time_ms"]["distillation_step_mean"] / 1e3
    b = r["bytes"]
    if r["mode"] == "naive":
        per_frame = (b["naive_up_total"] + b["naive_down_total"]) / n * 8 / link_bps + teacher_s
        return n / (n * per_frame), n / (n * per_frame)
    if r["mode"] == "wild":
        return 1 / t_s, 1 / t_s
    k = r["key_frames"]
    t_n = (b["up_per_key_frame"] + b["down_per_key_frame"]) * 8 / link_bps
    hist = r["step_histogram"]
    windows_lo = windows_hi = 0.0
    for d, count in enumerate(hist):
        windows_lo += count * max(min_stride * t_s, t_n + teacher_s + d * t_d)
        windows_hi += count * (min_stride * t_s + t_n + teacher_s + d * t_d)
    others = max(n - k * min_stride, 0) * t_s
    return n / (others + windows_hi), n / (others + windows_lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--link-mbps", type=float, default=80.0)
    ap.add_argument("--teacher-ms", type=float, default=None,
                    help="teacher latency per key frame (default: as measured in each run)")
    ap.add_argument("--student-ms", type=float, default=None,
                    help="student latency for the model (default: as measured in each run)")
    ap.add_argument("--step-ms-partial", type=float, default=None)
    ap.add_argument("--step-ms-full", type=float, default=None)
    a = ap.parse_args()
    runs = load(a.runs)
    # Timings measured on a quiet machine (benchmarks) may replace the runs' own.
    for r in runs:
        t = r["time_ms"]
        if a.student_ms is not None and r["mode"] != "naive":
            t["student_inference_mean"] = a.student_ms
        if a.step_ms_partial is not None and r["mode"] == "partial":
            t["distillation_step_mean"] = a.step_ms_partial
        if a.step_ms_full is not None and r["mode"] == "full":
            t["distillation_step_mean"] = a.step_ms_full
    link = a.link_mbps * 1e6
    out = []
    out.append("| run | mean mIoU | key frames | key-frame ratio | mean steps / key frame "
               "| step ms | student ms | up MB / key frame | down MB / key frame "
               f"| traffic vs naive | model fps @ {a.link_mbps:g} Mbps (min–max) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        hist = r["step_histogram"]
        k = sum(hist)
        mean_steps = sum(i * c for i, c in enumerate(hist)) / k if k else 0.0
        b = r["bytes"]
        teacher = (a.teacher_ms if a.teacher_ms is not None else r["time_ms"]["teacher_mean"]) / 1e3
        lo, hi = analytic(r, link, teacher)
        if r["mode"] == "naive":
            up = b["naive_up_total"] / r["frames"] / 1e6
            down = b["naive_down_total"] / r["frames"] / 1e6
        else:
            up = b["up_per_key_frame"] / 1e6
            down = b["down_per_key_frame"] / 1e6
        step = r["time_ms"]["distillation_step_mean"]
        out.append(
            f"| {label(r)} | {100 * r['mean_miou']:.2f}% | {r['key_frames']} | "
            f"{100 * r['key_frame_ratio']:.2f}% | {mean_steps:.2f} | "
            f"{step:.0f} | {r['time_ms']['student_inference_mean']:.0f} | {up:.3f} | {down:.3f} | "
            f"{100 * b['total_vs_naive']:.2f}% | {lo:.2f}–{hi:.2f} |")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
