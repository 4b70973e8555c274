#!/usr/bin/env python3
"""The demo's HTML report (tools/demo.sh): one self-contained page, standard library only.

Reads DIR/{naive,partial,full}.json (shadowtutor-edge --json), DIR/*.jsonl (--frame-log),
DIR/overlays_<mode>/*.png, and writes inline-SVG plots of per-frame mIoU (key frames marked),
the key-frame stride, cumulative bytes against naive offloading, a few overlays, and the
summary table.

  tools/report.py --dir demo_out --out demo_out/report.html [--frames N] [--link-mbps R]
                  [--teacher TEXT] [--video TEXT] [--weights FILE]
"""
import argparse
import base64
import html
import json
import math
import os
import platform
import sys

MODES = ["naive", "partial", "full"]
COLORS = {"naive": "#888888", "partial": "#1f77b4", "full": "#d62728"}


def load(dirname, mode):
    js = os.path.join(dirname, mode + ".json")
    jl = os.path.join(dirname, mode + ".jsonl")
    if not os.path.exists(js) or not os.path.exists(jl):
        return None
    with open(js) as f:
        summary = json.load(f)
    frames = []
    with open(jl) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    frames.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"report: {jl}:{n}: not JSON ({e})")
    return {"summary": summary, "frames": frames}


def esc(s):
    return html.escape(str(s))


def svg_plot(series, xlabel, ylabel, ymin=None, ymax=None, log=False, ticks=(), w=860, h=260):
    """series: [(name, color, xs, ys, step)]; ticks: [(x, color, row)] marks under the plot."""
    ml, mr, mt, mb = 64, 16, 12, 44 + 10 * (max([t[2] for t in ticks], default=-1) + 1)
    xs_all = [x for s in series for x in s[2]]
    ys_all = [y for s in series for y in s[3] if (y > 0 or not log)]
    if not xs_all or not ys_all:
        return "<p>(no data)</p>"
    x0, x1 = min(xs_all), max(xs_all)
    if x1 == x0:
        x1 = x0 + 1
    y0 = ymin if ymin is not None else min(ys_all)
    y1 = ymax if ymax is not None else max(ys_all)
    if log:
        y0, y1 = math.log10(max(y0, 1e-12)), math.log10(max(y1, 1e-12))
        y0, y1 = math.floor(y0), math.ceil(y1)
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = w - ml - mr, h - mt - mb

    def X(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def Y(y):
        if log:
            y = math.log10(max(y, 1e-12))
        return mt + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    # y grid
    if log:
        yt = [10 ** e for e in range(int(y0), int(y1) + 1)]
    else:  # "nice" steps: 1, 2 or 5 times a power of ten
        raw = (y1 - y0) / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw - 1e-12)
        yt = []
        y = math.ceil(y0 / step - 1e-9) * step
        while y <= y1 + 1e-9:
            yt.append(y)
            y += step
    for y in yt:
        yy = Y(y)
        lab = f"{y:.0e}" if log else f"{y:g}"
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{ml - 4}" y="{yy + 4:.1f}" text-anchor="end">{esc(lab)}</text>')
    # x ticks
    span = x1 - x0
    xstep = 10 ** math.floor(math.log10(max(span, 1)))
    if span / xstep < 4:
        xstep /= 2
    x = math.ceil(x0 / xstep) * xstep
    while x <= x1:
        out.append(f'<text x="{X(x):.1f}" y="{mt + ph + 14}" text-anchor="middle">{x:g}</text>')
        x += xstep
    out.append(f'<text x="{ml + pw / 2}" y="{h - 4}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(12,{mt + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{esc(ylabel)}</text>')
    for name, color, xs, ys, step, *style in series:
        dash = f' stroke-dasharray="{style[0]}"' if style and style[0] else ""
        pts = []
        for i, (a, b) in enumerate(zip(xs, ys)):
            if log and b <= 0:
                continue
            if step and pts:
                pts.append(f"{X(a):.1f},{float(pts[-1].split(',')[1]):.1f}")
            pts.append(f"{X(a):.1f},{Y(b):.1f}")
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} '
                   f'points="{" ".join(pts)}"><title>{esc(name)}</title></polyline>')
        if len(xs) <= 16:  # few points: mark them
            for a_, b_ in zip(xs, ys):
                if not (log and b_ <= 0):
                    out.append(f'<circle cx="{X(a_):.1f}" cy="{Y(b_):.1f}" r="2.5" fill="{color}"/>')
    for x, color, row in ticks:
        ty = mt + ph + 22 + 10 * row
        out.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{ty}" y2="{ty + 7}" '
                   f'stroke="{color}" stroke-width="1.5"/>')
    # legend
    lx, ly = ml + 8, mt + 6
    for name, color, *_ in series:
        width = 16 + 6 * len(name) + 14
        if lx + width > ml + pw:
            lx, ly = ml + 8, ly + 13
        out.append(f'<rect x="{lx}" y="{ly}" width="12" height="3" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly + 5}">{esc(name)}</text>')
        lx += width
    out.append("</svg>")
    return "\n".join(out)


def fmt_bytes(b):
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= k:
            return f"{b / k:.2f} {unit}"
    return f"{b:.0f} B"


def img_tag(path, alt):
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    mime = "image/jpeg" if path.endswith((".jpg", ".jpeg")) else "image/png"
    return f'<img alt="{esc(alt)}" src="data:{mime};base64,{data}"/>'


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", default="")
    ap.add_argument("--link-mbps", default="")
    ap.add_argument("--teacher", default="external command")
    ap.add_argument("--teacher-rule", default="a pixel is <i>person</i> where the predicted alpha &gt; 0.5, else background",
                    help="how the teacher's output becomes labels (HTML)")
    ap.add_argument("--video", default="")
    ap.add_argument("--weights", default="")
    a = ap.parse_args()

    runs = {m: load(a.dir, m) for m in MODES}
    if not any(runs.values()):
        sys.exit(f"report: no runs found in {a.dir} (expected naive/partial/full .json and .jsonl)")
    naive = runs["naive"]["summary"] if runs["naive"] else None

    # ---- summary table ----
    rows = []
    for m in MODES:
        r = runs[m]
        if not r:
            continue
        s = r["summary"]
        n = max(1, s["frames"])
        up, down = s["bytes"]["up_total"], s["bytes"]["down_total"]
        k = max(1, s["key_frames"])
        vs = ""
        speed = ""
        if naive:
            nt = naive["bytes"]["up_total"] + naive["bytes"]["down_total"]
            vs = f"{100.0 * (up + down) / max(1, nt):.1f}%"
            speed = f"{s['fps'] / max(1e-9, naive['fps']):.2f}x"
        miou = "1 (is the reference)" if m == "naive" else (
            f"{100 * s['miou_mean']:.1f}%" if "miou_mean" in s else "n/a")
        rows.append([m, s["frames"], f"{s['fps']:.2f}", speed,
                     f"{s['key_frames']} ({100.0 * s['key_frames'] / n:.1f}%)",
                     s.get("key_encoding", "?"), miou,
                     fmt_bytes(up), fmt_bytes(down), fmt_bytes(up / k), fmt_bytes(down / k),
                     fmt_bytes((up + down) / n), vs, f"{s['blocked_s']:.1f}",
                     s["distillation_steps"] if m != "naive" else "-"])
    head = ["mode", "frames", "throughput (fps)", "vs naive", "key frames", "key frames as",
            "mean mIoU vs teacher",
            "bytes up", "bytes down", "up / key frame", "down / key frame", "bytes / frame",
            "traffic vs naive", "edge blocked (s)", "distillation steps"]
    table = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        table.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    table.append("</table>")

    # ---- plots ----
    series, ticks = [], []
    for row, m in enumerate(("partial", "full")):
        r = runs[m]
        if not r:
            continue
        fr = [f for f in r["frames"] if "miou" in f]
        series.append((f"{m} (mean {100 * r['summary'].get('miou_mean', 0):.1f}%)", COLORS[m],
                       [f["frame"] for f in fr], [f["miou"] for f in fr], False))
        ticks += [(f["frame"], COLORS[m], row) for f in r["frames"] if f.get("key")]
    miou_svg = svg_plot(series, "frame (ticks below: key frames sent; top row partial, bottom full)",
                        "mIoU vs teacher", 0.0, 1.0, ticks=ticks)
    series = []
    for m in ("partial", "full"):
        r = runs[m]
        if r:
            series.append((m, COLORS[m], [f["frame"] for f in r["frames"]],
                           [f["stride"] for f in r["frames"]], True))
    stride_svg = svg_plot(series, "frame", "key-frame stride (frames)", 0, None)
    series = []
    for m in MODES:
        r = runs[m]
        if r:
            series.append((m, COLORS[m], [f["frame"] for f in r["frames"]],
                           [f["up"] + f["down"] for f in r["frames"]], False))
    bytes_svg = svg_plot(series, "frame", "cumulative bytes up + down (log)", log=True)

    # ---- overlays ----
    ov_dirs = {m: os.path.join(a.dir, f"overlays_{m}") for m in MODES}
    names = sorted(os.listdir(ov_dirs["naive"])) if os.path.isdir(ov_dirs["naive"]) else []
    ov = []
    for name in names[:6]:
        cells = []
        for m, label in (("naive", "teacher (naive offloading)"), ("partial", "student, partial"),
                         ("full", "student, full")):
            p = os.path.join(ov_dirs[m], name)
            if os.path.exists(p):
                cells.append(f"<figure>{img_tag(p, m + ' ' + name)}<figcaption>frame "
                             f"{int(name.split('.')[0])}: {esc(label)}</figcaption></figure>")
        ov.append('<div class="row">' + "".join(cells) + "</div>")

    # ---- partial vs full from this start ----
    choice = ""
    p, f = runs["partial"], runs["full"]
    if p and f and "miou_mean" in p["summary"] and "miou_mean" in f["summary"]:
        pm, fm = p["summary"]["miou_mean"], f["summary"]["miou_mean"]
        better = "partial" if pm >= fm else "full"
        choice = (f"<p>On this run, partial distillation reached a mean mIoU of "
                  f"<b>{100 * pm:.1f}%</b> and full distillation <b>{100 * fm:.1f}%</b> "
                  f"({better} is ahead here). ")
    start = (f"the weights in <code>{esc(a.weights)}</code>" if a.weights else
             "a <b>random initialisation</b> (seeded; the published pretrained student is not ours "
             "to ship — pass <code>WEIGHTS=file.safetensors</code> to start from it)")
    choice += (
        "With a random start the frozen front of partial distillation is random too. Measured on "
        "the whole vtest clip (795 frames) with the recorded teacher labels of ../shared/data/vtest (RVM, person only) "
        "(<code>shadowtutor simulate</code>, P-1, docs/results.md): partial 79.6% mean mIoU with "
        "6.5% key frames, full 77.6% with 5.4% key frames (full collapses for ~200 frames "
        "mid-clip). A random front carries enough for this scene, so the demo's default is "
        "ShadowTutor's own: <b>partial</b>.</p>")

    log_tail = ""
    lp = os.path.join(a.dir, "server.log")
    if os.path.exists(lp):
        with open(lp, errors="replace") as fh:
            lines = fh.read().splitlines()
        log_tail = "\n".join(lines[-25:])

    css = """body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td:first-child{text-align:left;font-weight:bold}
.row{display:flex;gap:6px;margin-bottom:6px}figure{margin:0}img{width:100%;max-width:450px}
figcaption{font-size:12px;color:#555}pre{background:#f6f6f6;padding:6px;font-size:11px;overflow:auto}"""
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ShadowTutor demo report</title><style>{css}</style></head>
<body>
<h1>ShadowTutor — demo report</h1>
<p>Server (<code>shadowtutor-server</code>, teacher + distillation) and edge
(<code>shadowtutor-edge</code>, the student on every frame) ran as two processes talking over TCP
on loopback{f", the edge's link limited to {esc(a.link_mbps)} Mbit/s per direction" if a.link_mbps not in ("", "0") else ""}.
Bytes are measured at the edge's socket.</p>
<ul>
<li>Video: {esc(a.video or "(not given)")}{f", first {esc(a.frames)} frames" if a.frames not in ("", "0") else ""}</li>
<li>Teacher: {esc(a.teacher)}; {a.teacher_rule}. The teacher's label on every frame (the naive run) is the reference for mIoU.</li>
<li>Student: started from {start}.</li>
<li>Machine: {esc(machine())}; server and edge share it.</li>
</ul>
<h2>Summary</h2>
{"".join(table)}
<p>Naive offloading sends every frame and waits for its label map; ShadowTutor sends key frames
only and gets back the trained part of the student (partial: 26 tensors, 413,884 B in fp32; full:
all 68). Throughput is frames per second at the edge, teacher and training included.</p>
<h2>Partial or full distillation from this start</h2>
{choice}
<h2>Per-frame mIoU against the teacher</h2>
{miou_svg}
<h2>Key-frame stride</h2>
{stride_svg}
<h2>Traffic</h2>
{bytes_svg}
<h2>Overlays</h2>
{"".join(ov) if ov else "<p>(no overlays)</p>"}
<h2>Server log (tail)</h2>
<pre>{esc(log_tail)}</pre>
</body></html>
"""
    with open(a.out, "w") as fh:
        fh.write(page)


if __name__ == "__main__":
    main()
