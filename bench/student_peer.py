#!/usr/bin/python3
"""PyTorch peer timings for bench/bench_student.cpp.

Times the ShadowTutor student (SPEC §2) with Debian's torch (float32, N=1, 2 threads), with the
same policy as the C++ bench (one warm-up, then the median of --reps repetitions):
  forward       student forward under torch.no_grad();
  step-partial  the frozen front precomputed under no_grad (outside the timed region), then
                [back forward with grad, weighted CE loss, backward, torch.optim.Adam step over
                the 26 back tensors];
  step-full     [full forward with grad, loss, backward, Adam over all 68 tensors].
The network is tools/make_student_golden.py's (imported, not duplicated): `student` for the
forward and full step, its `conv`/`block`/`up` composed into the front/back split for the
partial step (checked against `student` once). Reference operator order: out_conv3 after the
final upsample. Weights: <shared>/models/student_lvs9_pretrained.safetensors when present, else
random weights of the right shapes. Input: randn * 50; target: a person rectangle (columns
40%..60%, rows 25%..90%) on background, loss weight 5 inside the box expanded by 7.5% per side.

    /usr/bin/python3 bench/student_peer.py [--shared DIR] [--sizes 1280x720,768x576] [--reps 3]
    /usr/bin/python3 bench/student_peer.py --rss forward|step-partial|step-full 1280x720

Output: JSON lines on stdout:
    {"peer": "torch", "version": "1.13.0", "threads": 2, "weights": "pretrained"}
    {"size": "1280x720", "what": "forward", "ms": 250.0, "fwd_ms": ..., "bwd_ms": ..., "adam_ms": ...,
     "cores": 1.98}                        (cores = CPU time / wall time over the timed reps)
    {"rss_mode": "forward", "size": "1280x720", "hwm_kb": 400000, "base_kb": 300000}   (--rss)
or a single {"error": "..."} line (exit status 0) when torch cannot be used.
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ["forward", "step-partial", "step-full"]
BACK_PREFIXES = ("dec2.", "dec3.", "out_conv1.", "out_conv2.", "out_conv3.")


def emit(obj):
    print(json.dumps(obj), flush=True)


def load_reference():
    """tools/make_student_golden.py as a module (it needs torch, numpy and PIL)."""
    path = os.path.join(HERE, "..", "tools", "make_student_golden.py")
    spec = importlib.util.spec_from_file_location("make_student_golden", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def param_shapes():
    """Name -> shape of the 68 student tensors (SPEC §2), in model order."""
    shapes = {}

    def conv(name, ci, co, kh, kw):
        shapes[name + ".weight"] = (co, ci, kh, kw)
        shapes[name + ".bias"] = (co,)

    def block(name, ci, co, same):
        shapes[name + ".preact_path.0.weight"] = (ci,)
        shapes[name + ".preact_path.0.bias"] = (ci,)
        if not same:
            conv(name + ".short_path", ci, co, 1, 1)
        conv(name + ".long_path.0", ci, co, 3, 3)
        conv(name + ".long_path.2", co, co, 1, 3)
        conv(name + ".long_path.3", co, co, 3, 1)

    conv("in_conv1", 3, 8, 3, 3)
    conv("in_conv2", 8, 8, 3, 3)
    block("enc1", 8, 64, False)
    block("enc2", 64, 64, True)
    block("enc3", 64, 128, False)
    block("dec1", 128, 64, False)
    block("dec2", 128, 32, False)
    block("dec3", 96, 32, False)
    conv("out_conv1", 32, 32, 3, 3)
    conv("out_conv2", 32, 32, 3, 3)
    conv("out_conv3", 32, 9, 1, 1)
    return shapes


def load_weights(torch, ref, shared):
    path = os.path.join(shared, "models", "student_lvs9_pretrained.safetensors")
    if os.path.exists(path):
        return {k: v.float().contiguous() for k, v in ref.read_safetensors(path).items()}, "pretrained"
    # PyTorch's default conv init (U(-1/sqrt(fan_in), +)); BN weight 1, bias 0.
    g = torch.Generator().manual_seed(0)
    w = {}
    for name, shape in param_shapes().items():
        if ".preact_path." in name:
            w[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        else:
            wshape = shape if len(shape) == 4 else None
            fan_in = None
            if wshape is None:  # a bias: fan_in from its weight
                wshape = param_shapes()[name[:-len("bias")] + "weight"]
            fan_in = wshape[1] * wshape[2] * wshape[3]
            bound = 1.0 / fan_in ** 0.5
            w[name] = (torch.rand(shape, generator=g) * 2 - 1) * bound
    return w, "random"


def front(ref, w, x):
    """The frozen part (in_conv1 .. dec1), as in make_student_golden.student."""
    x1 = ref.conv(w, x, "in_conv1", 2)
    x2 = ref.conv(w, x1, "in_conv2", 2)
    e1 = ref.block(w, x2, "enc1", 2, False)
    e2 = ref.block(w, e1, "enc2", 2, True)
    e3 = ref.block(w, e2, "enc3", 2, False)
    d1 = ref.up(ref.block(w, e3, "dec1", 1, False), e2)
    return {"x": x, "x1": x1, "e1": e1, "e2": e2, "d1": d1}


def back(torch, ref, w, f):
    """The trained part (dec2 .. out_conv3), as in make_student_golden.student."""
    d2 = ref.up(ref.block(w, torch.cat([f["d1"], f["e2"]], 1), "dec2", 1, False), f["e1"])
    d3 = ref.up(ref.block(w, torch.cat([d2, f["e1"]], 1), "dec3", 1, False), f["x1"])
    o = ref.conv(w, ref.conv(w, d3, "out_conv1"), "out_conv2")
    o = ref.up(o, f["x"])
    return ref.conv(w, o, "out_conv3")


def make_target(torch, h, w):
    labels = torch.full((1, h, w), 8, dtype=torch.int64)
    y0, y1, x0, x1 = h * 25 // 100, h * 90 // 100, w * 40 // 100, w * 60 // 100
    labels[:, y0:y1, x0:x1] = 0
    # SPEC §3 weight: the component's box (pixel edges x0..x1, y0..y1) expanded by 7.5% per side,
    # truncated, clamped, inclusive of the far edge.
    bw, bh = x1 - x0, y1 - y0
    ex0, ey0 = max(int(x0 - 0.075 * bw), 0), max(int(y0 - 0.075 * bh), 0)
    ex1, ey1 = min(int(x1 + 0.075 * bw), w - 1), min(int(y1 + 0.075 * bh), h - 1)
    weight = torch.ones((1, h, w))
    weight[:, ey0:ey1 + 1, ex0:ex1 + 1] = 5.0
    return labels, weight


class Workload:
    def __init__(self, torch, ref, weights, mode, h, w, device="cpu"):
        import torch.nn.functional as F
        self.torch, self.ref, self.F, self.mode = torch, ref, F, mode
        self.dev = device
        self.w = {k: v.clone().to(device) for k, v in weights.items()}
        g = torch.Generator().manual_seed(12345)
        self.x = (torch.randn((1, 3, h, w), generator=g) * 50).to(device)
        self.labels, self.weight = (t.to(device) for t in make_target(torch, h, w))
        if mode == "forward":
            return
        names = [n for n in self.w if mode == "step-full" or n.startswith(BACK_PREFIXES)]
        for n in names:
            self.w[n].requires_grad_(True)
        self.opt = torch.optim.Adam([self.w[n] for n in names], lr=0.01, betas=(0.9, 0.999),
                                    eps=1e-8)
        self.trained = len(names)
        if mode == "step-partial":
            with torch.no_grad():
                self.front = front(ref, self.w, self.x)

    def sync(self):
        if self.dev != "cpu":
            self.torch.cuda.synchronize()

    def run(self):
        torch, ref = self.torch, self.ref
        t0 = time.perf_counter()
        if self.mode == "forward":
            with torch.no_grad():
                ref.student(self.w, self.x)
            self.sync()
            return time.perf_counter() - t0, 0.0, 0.0
        self.opt.zero_grad(set_to_none=True)
        if self.mode == "step-partial":
            logits = back(torch, ref, self.w, self.front)
        else:
            logits = ref.student(self.w, self.x)
        self.sync()
        t1 = time.perf_counter()
        # SPEC §3 loss: -mean(weight * log_softmax(logits)[target])
        loss = (self.F.cross_entropy(logits, self.labels, reduction="none") * self.weight).mean()
        loss.backward()
        del logits, loss
        self.sync()
        t2 = time.perf_counter()
        self.opt.step()
        self.sync()
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def hwm_kb(field="VmHWM"):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def parse_size(s):
    w, h = s.lower().split("x")
    return int(w), int(h)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.environ.get("ST_SHARED_DIR",
                                                       os.path.join(HERE, "..", "..", "shared")))
    ap.add_argument("--sizes", default="1280x720,768x576")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rss", nargs=2, metavar=("MODE", "WxH"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    try:
        import torch
        ref = load_reference()
    except Exception as e:  # noqa: BLE001 - report any import problem to the bench
        emit({"error": "cannot import torch or tools/make_student_golden.py: %s" % (e,)})
        return 0
    torch.set_num_threads(2)
    weights, kind = load_weights(torch, ref, args.shared)

    if args.rss:
        mode, (w, h) = args.rss[0], parse_size(args.rss[1])
        if mode not in MODES:
            emit({"error": "unknown mode %s" % mode})
            return 0
        work = Workload(torch, ref, weights, mode, h, w)
        base = hwm_kb("VmRSS")
        work.run()
        work.run()
        emit({"rss_mode": mode, "size": "%dx%d" % (w, h), "hwm_kb": hwm_kb(), "base_kb": base})
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        emit({"error": "torch has no usable CUDA device"})
        return 0
    emit({"peer": "torch" if args.device == "cpu" else
          "torch eager cuDNN on " + torch.cuda.get_device_name(0),
          "version": torch.__version__, "threads": torch.get_num_threads(), "weights": kind})
    # The front/back split must reproduce the reference forward.
    with torch.no_grad():
        xs = torch.randn(1, 3, 64, 96) * 50
        a = ref.student(weights, xs)
        b = back(torch, ref, weights, front(ref, weights, xs))
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-4):
            emit({"error": "front/back split differs from make_student_golden.student"})
            return 0
    for size in args.sizes.split(","):
        w, h = parse_size(size)
        for mode in MODES:
            work = Workload(torch, ref, weights, mode, h, w, args.device)
            work.run()  # warm-up
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            reps = [work.run() for _ in range(max(1, args.reps))]
            cores = (cpu_seconds() - cpu0) / max(1e-9, time.perf_counter() - wall0)
            tot = [sum(r) for r in reps]
            emit({"size": "%dx%d" % (w, h), "what": mode,
                  "ms": statistics.median(tot) * 1e3,
                  "fwd_ms": statistics.median(r[0] for r in reps) * 1e3,
                  "bwd_ms": statistics.median(r[1] for r in reps) * 1e3,
                  "adam_ms": statistics.median(r[2] for r in reps) * 1e3,
                  "cores": round(cores, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
