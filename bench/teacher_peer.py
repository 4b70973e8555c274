#!/usr/bin/python3
"""torchvision peer for bench/bench_teacher.cpp: Mask R-CNN R50-FPN inference at the same input
size on the same machine.

Builds tools/make_teacher_golden.py's seeded, BN-calibrated maskrcnn_resnet50_fpn (imported, not
duplicated; calibrated on a small frame, then run at the benchmark size with min_size = H and
max_size = W, so torchvision does not resize), writes its weights (Detectron2 names, both class
layouts) and a random BGR frame to OUT_DIR for the C++ side, and times model([img]) under
torch.no_grad() (float32, 2 threads): one warm-up, then the median of --reps repetitions; the
backbone alone is timed the same way.

    /usr/bin/python3 bench/teacher_peer.py OUT_DIR [--size 720x1280] [--reps 3] [--device cpu|cuda]

Output: JSON lines on stdout:
    {"peer": "torchvision", "version": "0.14.1", "torch": "1.13.0", "threads": 2, "device": "cpu"}
    {"what": "total", "ms": 9000.0, "detections": 100}
    {"what": "backbone", "ms": 3000.0}
or a single {"error": "..."} line (exit status 0) when torch or torchvision cannot be used.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def emit(obj):
    print(json.dumps(obj), flush=True)


def golden_module():
    path = os.path.join(HERE, "..", "tools", "make_teacher_golden.py")
    spec = importlib.util.spec_from_file_location("make_teacher_golden", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def median_ms(fn, reps, sync):
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", default="720x1280", help="HxW")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.size.split("x"))
    try:
        import torch
        import torchvision
        gold = golden_module()
    except Exception as e:  # noqa: BLE001 - report any import problem to the bench
        emit({"error": "cannot import torch/torchvision or tools/make_teacher_golden.py: %s" % (e,)})
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        emit({"error": "torch has no usable CUDA device"})
        return 0
    torch.manual_seed(1)
    torch.set_num_threads(2)
    model, _, _ = gold.seeded_e2e(96, 128)
    gold.write_e2e_weights(a.out, model)
    model.transform.min_size = (h,)
    model.transform.max_size = w
    g = torch.Generator().manual_seed(5)
    bgr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    with open(os.path.join(a.out, "frame.safetensors"), "wb") as f:
        f.write(gold.writer()([("bgr", bgr)], {"generator": "bench/teacher_peer.py"}))
    torch.set_num_threads(2)  # again: the safetensors writer's module pins torch to 1 thread
    dev = torch.device(a.device)
    model = model.to(dev)
    img = (bgr.flip(2).permute(2, 0, 1).float() / 255).to(dev)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    emit({"peer": "torchvision", "version": torchvision.__version__, "torch": torch.__version__,
          "threads": torch.get_num_threads(),
          "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(0)})
    with torch.no_grad():
        ms, det = median_ms(lambda: model([img])[0], a.reps, sync)
        emit({"what": "total", "ms": ms, "detections": int(det["boxes"].shape[0])})
        x = model.transform([img])[0].tensors
        ms, _ = median_ms(lambda: model.backbone(x), a.reps, sync)
        emit({"what": "backbone", "ms": ms})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
