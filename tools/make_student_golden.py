#!/usr/bin/python3
"""Golden files for the student network (SPEC §2), from Debian's PyTorch 1.13.

Builds the student in PyTorch exactly as SPEC §2 describes (in the original operator order:
the 1x1 out_conv3 AFTER the final upsample), loads ../shared/models/student_lvs9_pretrained.safetensors,
runs it in float64 on ../shared/data/vtest/frames/{000000,000400}.png, and writes
tests/golden/student.safetensors with, per frame:
  <frame>.argmax      U8  (H, W)        argmax over the 9 classes at every pixel
  <frame>.logits_s16  F64 (9, H/16, W/16) logits at every 16th pixel (rows and columns 0, 16, ...)
  <frame>.logit_mean  F64 (9,)          per-class mean of the logits over all pixels
  <frame>.logit_std   F64 (9,)          per-class standard deviation
  <frame>.margin_min_s16 F64 (H/16, W/16) top1-top2 logit margin at the same sampled pixels
  <frame>.logits_s16_sigma F64 (9, H/16, W/16) bound on the standard deviation of a float32
                                forward's error at those logits (Monte Carlo: class Perturbed)
  <frame>.argmax_uncertain I64 (K,)      the pixels (flat indices) whose argmax does not hold against
                                         every other class by more than LAMBDA times the sum of
                                         their sigmas (a float32 forward may pick another class)
  <frame>.sigma_mean, .sigma_rms F64 (9,) per class, the mean and root mean square of sigma
torch's own float32 forward is checked against the bound (the generator stops if it breaks it).
Run: /usr/bin/python3 tools/make_student_golden.py [--shared ../shared]
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

FRAMES = ["000000", "000400"]
MEAN_BGR = [103.53, 116.28, 123.675]
U32 = 2.0 ** -24
LAMBDA = 8.0  # the tests allow LAMBDA * sigma (tests/README.md)
RUNS = 32     # Monte Carlo runs per frame
DTYPES = {"F32": np.float32, "F64": np.float64, "U8": np.uint8, "I64": np.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[base + b:base + e], dtype=DTYPES[info["dtype"]])
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
              np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}[arr.dtype]
        raw = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class Exact:
    """The student's operations in float64 (the reference)."""

    def input(self, x):
        return x

    def conv(self, x, k, b, stride, padding):
        return F.conv2d(x, k, b, stride=stride, padding=padding)

    def bn(self, x, gamma, beta):
        return F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)

    def add(self, a, b):
        return a + b

    def up(self, x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Perturbed(Exact):
    """The same operations with every float32 rounding error replaced by a random sign times its
    bound (Monte Carlo arithmetic, first order): the spread of the logits over such runs estimates
    the Hoeffding scale sigma of a float32 forward's error at every logit, with the correlations of
    shared errors (a channel's batch statistics, an upsampling row's coordinate) carried as they
    are. The bounds, per operation, for any summation order (tests/README.md):
      * a convolution output of K = Cin*kh*kw products plus a bias: u * sqrt(K + 2) * sum|terms|;
      * batch statistics over P pixels: the mean u * sqrt(P + 1) * mean|x|, the variance (as
        E[x^2] - mean^2, the worse of the usual two ways) 2u * sqrt(P + 2) * (E[x^2] + mean^2),
        its reciprocal square root 3u relative, all shared by the channel; applying it, 4 roundings;
      * bilinear upsampling: source coordinates off by up to 4u * (input size) pixels (shared by a
        row or column), 8 roundings in the weighted sum;
      * a residual add, the input's mean subtraction: one rounding."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def sign(self, shape):
        return torch.randint(0, 2, shape, generator=self.g, dtype=torch.float64) * 2 - 1

    def input(self, x):
        return x + U32 * x.abs() * self.sign(x.shape)

    def conv(self, x, k, b, stride, padding):
        y = F.conv2d(x, k, b, stride=stride, padding=padding)
        A = F.conv2d(x.abs(), k.abs(), b.abs(), stride=stride, padding=padding)
        K = k.shape[1] * k.shape[2] * k.shape[3] + 1
        return y + U32 * math.sqrt(K + 1) * A * self.sign(y.shape)

    def bn(self, x, gamma, beta):
        P = x.shape[0] * x.shape[2] * x.shape[3]
        C = x.shape[1]
        dims = (0, 2, 3)
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dims, keepdim=True)
        ex2 = (x * x).mean(dims, keepdim=True)
        mu_p = mu + U32 * math.sqrt(P + 1) * x.abs().mean(dims, keepdim=True) * self.sign((1, C, 1, 1))
        var_p = var + 2 * U32 * math.sqrt(P + 2) * (ex2 + mu * mu) * self.sign((1, C, 1, 1))
        r = (var_p + 1e-5).rsqrt() * (1 + 3 * U32 * self.sign((1, C, 1, 1)))
        g, bt = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)
        y = (x - mu_p) * r * g + bt
        M = (x.abs() + mu.abs()) * r * g.abs() + bt.abs()
        return y + 2 * U32 * M * self.sign(y.shape)

    def add(self, a, b):
        y = a + b
        return y + U32 * (a.abs() + b.abs()) * self.sign(y.shape)

    def _taps(self, n_in, n_out):
        """torch's bilinear source taps (align_corners=False) with the coordinate perturbed."""
        dst = torch.arange(n_out, dtype=torch.float64)
        src = (dst + 0.5) * (n_in / n_out) - 0.5
        src = src + 4 * U32 * n_in * self.sign((n_out,))
        src = src.clamp_min(0)
        i0 = src.floor().long().clamp_max(n_in - 1)
        i1 = (i0 + 1).clamp_max(n_in - 1)
        l1 = src - i0.double()
        return i0, i1, 1 - l1, l1

    def up(self, x, size):
        (h0, h1, wh0, wh1), (v0, v1, wv0, wv1) = self._taps(x.shape[2], size[0]), self._taps(x.shape[3], size[1])
        def interp(t):
            t = t[:, :, h0, :] * wh0.reshape(1, 1, -1, 1) + t[:, :, h1, :] * wh1.reshape(1, 1, -1, 1)
            return t[:, :, :, v0] * wv0 + t[:, :, :, v1] * wv1
        y = interp(x)
        return y + U32 * math.sqrt(8) * interp(x.abs()) * self.sign(y.shape)


EXACT = Exact()


def conv(w, x, name, stride=1, ops=EXACT):
    k = w[name + ".weight"]
    return ops.conv(x, k, w[name + ".bias"], stride, (k.shape[2] // 2, k.shape[3] // 2))


def block(w, x, name, stride, same, ops=EXACT):
    p = F.relu(ops.bn(x, w[name + ".preact_path.0.weight"], w[name + ".preact_path.0.bias"]))
    short = x[:, :, ::stride, ::stride] if same else conv(w, p, name + ".short_path", stride, ops)
    long = conv(w, F.relu(conv(w, p, name + ".long_path.0", stride, ops)), name + ".long_path.2", 1, ops)
    long = conv(w, long, name + ".long_path.3", 1, ops)
    return ops.add(short, long)


def up(x, like, ops=EXACT):
    return ops.up(x, like.shape[2:])


def student(w, x, ops=EXACT):
    x = ops.input(x)
    x1 = conv(w, x, "in_conv1", 2, ops)
    x2 = conv(w, x1, "in_conv2", 2, ops)
    e1 = block(w, x2, "enc1", 2, False, ops)
    e2 = block(w, e1, "enc2", 2, True, ops)
    e3 = block(w, e2, "enc3", 2, False, ops)
    d1 = up(block(w, e3, "dec1", 1, False, ops), e2, ops)
    d2 = up(block(w, torch.cat([d1, e2], 1), "dec2", 1, False, ops), e1, ops)
    d3 = up(block(w, torch.cat([d2, e1], 1), "dec3", 1, False, ops), x1, ops)
    o = conv(w, conv(w, d3, "out_conv1", 1, ops), "out_conv2", 1, ops)
    o = up(o, x, ops)
    return conv(w, o, "out_conv3", 1, ops)


def main():
    from PIL import Image  # only the generator reads frames (bench/student_peer.py imports us)

    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "golden", "student.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    w = {k: v.double() for k, v in read_safetensors(
        os.path.join(args.shared, "models", "student_lvs9_pretrained.safetensors")).items()}
    w32 = {k: v.float() for k, v in w.items()}
    tensors, worst = [], {}
    for fr in FRAMES:
        rgb = np.asarray(Image.open(os.path.join(args.shared, "data", "vtest", "frames", fr + ".png")).convert("RGB"))
        bgr = rgb[:, :, ::-1].astype(np.float64) - np.array(MEAN_BGR)
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            logits = student(w, x)[0]
            sq = torch.zeros_like(logits)
            for run in range(RUNS):
                sq += (student(w, x, Perturbed(1000 * FRAMES.index(fr) + run))[0] - logits) ** 2
            sigma = (sq / RUNS).sqrt()
            # torch's own float32 forward must lie within the bound (a check of the model).
            t32 = student(w32, x.float())[0].double()
        ratio = ((t32 - logits).abs() / sigma.clamp_min(1e-300)).max().item()
        if ratio > LAMBDA:
            raise SystemExit("make_student_golden: torch's float32 logits break the bound (ratio %g)" % ratio)
        worst[fr] = ratio
        # A pixel's argmax is certain when the top class beats every other by more than the sum of
        # their bounds; only those must agree.
        top = logits.argmax(0, keepdim=True)
        lead = logits.gather(0, top) - logits - LAMBDA * (sigma.gather(0, top) + sigma)
        lead.scatter_(0, top, float("inf"))
        sure = lead.min(0).values > 0
        top2 = torch.topk(logits, 2, dim=0).values
        tensors += [
            (fr + ".argmax", logits.argmax(0).numpy().astype(np.uint8)),
            (fr + ".argmax_uncertain", (~sure).flatten().nonzero().flatten().numpy().astype(np.int64)),
            (fr + ".logits_s16", logits[:, ::16, ::16].numpy()),
            (fr + ".logits_s16_sigma", sigma[:, ::16, ::16].numpy()),
            (fr + ".logit_mean", logits.mean(dim=(1, 2)).numpy()),
            (fr + ".logit_std", logits.std(dim=(1, 2), unbiased=False).numpy()),
            # Per class: the mean of sigma bounds the error of the mean of the logits, the root
            # mean square of sigma that of their standard deviation (Minkowski).
            (fr + ".sigma_mean", sigma.mean(dim=(1, 2)).numpy()),
            (fr + ".sigma_rms", (sigma ** 2).mean(dim=(1, 2)).sqrt().numpy()),
            (fr + ".margin_min_s16", (top2[0] - top2[1])[::16, ::16].numpy()),
        ]
        print(fr, "classes present:", np.unique(logits.argmax(0).numpy()).tolist(),
              "sigma median %.3g max %.3g" % (sigma.median().item(), sigma.max().item()),
              "certain argmax %.5f" % sure.double().mean().item(),
              "torch f32 worst |err|/sigma %.3f" % ratio, file=sys.stderr)
    meta = {"torch_version": torch.__version__, "generator": "tools/make_student_golden.py",
            "frames": json.dumps(FRAMES), "model": "student_lvs9_pretrained.safetensors",
            "precision": "float64 reference from float32 weights",
            "error_model": "Monte Carlo, first order, %d runs (see Perturbed)" % RUNS,
            "error_model_lambda": repr(LAMBDA), "torch_f32_worst_ratio": json.dumps(worst)}
    write_safetensors(args.out, tensors, meta)
    print("wrote", args.out, os.path.getsize(args.out), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
