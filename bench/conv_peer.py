#!/usr/bin/python3
"""PyTorch peer timings for bench/bench_conv.cpp.

Times conv2d forward, backward-data and backward-weight (float32, NCHW, 2 threads) for the shapes
given on the command line, with the same policy as the C++ bench (one warm-up call, then at least 7
repetitions, more while under 0.3 s, at most 21; the median and the best are reported). Meant to be run by the bench with Debian's torch (/usr/bin/python3), but
also works by hand:

    /usr/bin/python3 bench/conv_peer.py out_conv,1,32,32,360,640,3,3,1,1,1,1

Each argument is  name,N,C,K,H,W,R,S,stride_h,stride_w,pad_h,pad_w  (groups = 1); --fwd-only
times the forward only.
Output: JSON lines on stdout, one per measurement:
    {"peer": "torch", "version": "1.13.0", "threads": 2}
    {"shape": "out_conv", "dir": "fwd", "ms": 35.1, "best": 33.9}   (ms = median)
    ...                                     dir is one of fwd, bwd_data, bwd_weight
or a single {"error": "..."} line (exit status 0) when torch cannot be used.
"""
import json
import statistics
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def timed(fn, min_reps=7, max_reps=21, min_total_s=0.3):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_total_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"ms": statistics.median(times) * 1e3, "best": min(times) * 1e3}


def main(argv):
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - report any import problem to the bench
        emit({"error": "cannot import torch: %s" % (e,)})
        return 0
    torch.set_num_threads(2)
    torch.manual_seed(0)
    emit({"peer": "torch", "version": torch.__version__, "threads": torch.get_num_threads()})
    fwd_only = "--fwd-only" in argv
    for spec in [a for a in argv if a != "--fwd-only"]:
        f = spec.split(",")
        name = f[0]
        n, c, k, h, w, r, s, sh, sw, ph, pw = (int(v) for v in f[1:12])
        x = torch.randn(n, c, h, w)
        wt = torch.randn(k, c, r, s)
        b = torch.randn(k)
        stride, padding, dilation = (sh, sw), (ph, pw), (1, 1)
        with torch.no_grad():
            y = F.conv2d(x, wt, b, stride, padding)
            gy = torch.randn_like(y)
            emit({"shape": name, "dir": "fwd", **timed(lambda: F.conv2d(x, wt, b, stride, padding))})
            if fwd_only:
                continue
            # The same op autograd runs for conv2d's backward, one gradient at a time.
            bwd = torch.ops.aten.convolution_backward
            emit({"shape": name, "dir": "bwd_data",
                  **timed(lambda: bwd(gy, x, wt, None, stride, padding, dilation, False,
                                      [0, 0], 1, (True, False, False)))})
            emit({"shape": name, "dir": "bwd_weight",
                  **timed(lambda: bwd(gy, x, wt, None, stride, padding, dilation, False,
                                      [0, 0], 1, (False, True, False)))})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
