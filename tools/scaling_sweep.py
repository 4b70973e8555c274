#!/usr/bin/env python3
"""Sessions against update latency and key frames per second: shadowtutor-server with a recorded
teacher, shadowtutor-loadgen with 1, 2, 4, ... sessions, one run per count, on loopback.

For each session count it starts a fresh server (recorded labels, --labels-loop, the given
--jobs / --threads-per-job, or the server's defaults), runs the load generator for --duration
seconds with the clip's first frame as every key frame (raw BGR unless --key-encoding), and reads
its JSON report. Writes

  <out>.json   every run (loadgen report, server flags, machine)
  <out>_latency.svg, <out>_throughput.svg   p50 / p99 latency and answers per second
               against sessions
  and a Markdown table on stdout (docs/scaling.md quotes it).

Usage:
  tools/scaling_sweep.py --labels DIR --video V [--build build] [--sessions 1,2,4,8,16]
                         [--duration 20] [--fps 30] [--key-interval S] [--jobs N]
                         [--threads-per-job T] [--server-args "..."] [--out scaling]
                         [--backends N [--haproxy-port P]]   (HAProxy in front of N servers)
Only the Python standard library is used (and tools/report.py's SVG plot).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import svg_plot  # noqa: E402


def run_point(a, sessions, token_file):
    args = ["--token-file", token_file, "--labels", a.labels, "--labels-loop", "--quiet"]
    if a.jobs:
        args += ["--jobs", str(a.jobs)]
    if a.threads_per_job:
        args += ["--threads-per-job", str(a.threads_per_job)]
    args += a.server_args.split()
    if a.backends:  # HAProxy in front of that many servers (tools/deploy_loopback.sh)
        server_cmd = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy_loopback.sh"),
                      "--backends", str(a.backends), "--port", str(a.haproxy_port), "--build",
                      a.build, "--"] + args
    else:
        server_cmd = [os.path.join(a.build, "shadowtutor-server"), "--port", "0"] + args
    srv = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if "listening on" not in line and "ready on" not in line:
            sys.exit("scaling_sweep: the server did not start: %s %s" % (line, srv.stderr.read()))
        port = line.split(" (")[0].strip().rsplit(":", 1)[1]
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [os.path.join(a.build, "shadowtutor-loadgen"), "--server", "127.0.0.1:" + port,
               "--token-file", token_file, "--sessions", str(sessions), "--video", a.video,
               "--duration", str(a.duration), "--fps", str(a.fps), "--json", out,
               "--key-encoding", a.key_encoding]
        if a.key_interval:
            cmd += ["--key-interval", str(a.key_interval)]
        extra = a.server_args.split()
        if "--weights" in extra:  # the sessions name the server's base: none sends its weights
            cmd += ["--weights", extra[extra.index("--weights") + 1]]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode not in (0, 2):  # 2: the run had errors, which the report lists
            sys.exit("scaling_sweep: %s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr))
        with open(out) as f:
            r = json.load(f)
        os.unlink(out)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    r["server_command"] = " ".join(server_cmd[1:])
    r["loadgen_command"] = " ".join(cmd[1:])
    return r


def table(runs):
    out = ["| sessions | answers/s | p50 ms | p95 ms | p99 ms | max ms | mean stride | errors |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lat = r["latency_ms"]
        out.append("| %d | %.2f | %.0f | %.0f | %.0f | %.0f | %.1f | %d |" % (
            r["sessions"], r["answers_per_s"], lat["p50"], lat["p95"], lat["p99"], lat["max"],
            r["mean_stride"], r["errors"]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--build", default="build")
    ap.add_argument("--sessions", default="1,2,4,8,16")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--key-interval", type=float)
    ap.add_argument("--key-encoding", default="raw")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--threads-per-job", type=int)
    ap.add_argument("--server-args", default="")
    ap.add_argument("--backends", type=int, default=0,
                    help="> 0: that many servers behind HAProxy (tools/deploy_loopback.sh)")
    ap.add_argument("--haproxy-port", type=int, default=17070)
    ap.add_argument("--out", default="scaling")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        token = os.path.join(d, "token")
        with open(token, "w") as f:
            f.write("scaling-sweep\n")
        os.chmod(token, 0o600)
        runs = []
        for n in [int(x) for x in a.sessions.split(",")]:
            t0 = time.time()
            runs.append(run_point(a, n, token))
            print("sessions %d: %.1f answers/s, p99 %.0f ms (%.0f s)" % (
                n, runs[-1]["answers_per_s"], runs[-1]["latency_ms"]["p99"], time.time() - t0),
                file=sys.stderr)
    machine = "%s, %d CPUs, %s" % (platform.machine(), os.cpu_count(), platform.platform())
    with open(a.out + ".json", "w") as f:
        json.dump({"machine": machine, "args": vars(a), "runs": runs}, f, indent=1)
    xs = [r["sessions"] for r in runs]
    lat = svg_plot([("p50", "#1f77b4", xs, [r["latency_ms"]["p50"] for r in runs], False),
                    ("p99", "#d62728", xs, [r["latency_ms"]["p99"] for r in runs], False)],
                   "concurrent sessions", "update latency (ms)", 0)
    thr = svg_plot([("answers/s", "#2ca02c", xs, [r["answers_per_s"] for r in runs], False)],
                   "concurrent sessions", "key frames answered per second", 0)
    for name, svg in (("latency", lat), ("throughput", thr)):
        with open("%s_%s.svg" % (a.out, name), "w") as f:
            f.write(svg + "\n")
    print(table(runs))


if __name__ == "__main__":
    main()
