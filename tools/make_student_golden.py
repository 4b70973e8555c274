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
Run: /usr/bin/python3 tools/make_student_golden.py [--shared ../shared]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

FRAMES = ["000000", "000400"]
MEAN_BGR = [103.53, 116.28, 123.675]
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


def conv(w, x, name, stride=1):
    k = w[name + ".weight"]
    return F.conv2d(x, k, w[name + ".bias"], stride=stride, padding=(k.shape[2] // 2, k.shape[3] // 2))


def block(w, x, name, stride, same):
    p = F.relu(F.batch_norm(x, None, None, w[name + ".preact_path.0.weight"],
                            w[name + ".preact_path.0.bias"], training=True, eps=1e-5))
    short = x[:, :, ::stride, ::stride] if same else conv(w, p, name + ".short_path", stride)
    long = conv(w, F.relu(conv(w, p, name + ".long_path.0", stride)), name + ".long_path.2")
    long = conv(w, long, name + ".long_path.3")
    return short + long


def up(x, like):
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


def student(w, x):
    x1 = conv(w, x, "in_conv1", 2)
    x2 = conv(w, x1, "in_conv2", 2)
    e1 = block(w, x2, "enc1", 2, False)
    e2 = block(w, e1, "enc2", 2, True)
    e3 = block(w, e2, "enc3", 2, False)
    d1 = up(block(w, e3, "dec1", 1, False), e2)
    d2 = up(block(w, torch.cat([d1, e2], 1), "dec2", 1, False), e1)
    d3 = up(block(w, torch.cat([d2, e1], 1), "dec3", 1, False), x1)
    o = conv(w, conv(w, d3, "out_conv1"), "out_conv2")
    o = up(o, x)
    return conv(w, o, "out_conv3")


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
    tensors = []
    for fr in FRAMES:
        rgb = np.asarray(Image.open(os.path.join(args.shared, "data", "vtest", "frames", fr + ".png")).convert("RGB"))
        bgr = rgb[:, :, ::-1].astype(np.float64) - np.array(MEAN_BGR)
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            logits = student(w, x)[0]
        top2 = torch.topk(logits, 2, dim=0).values
        tensors += [
            (fr + ".argmax", logits.argmax(0).numpy().astype(np.uint8)),
            (fr + ".logits_s16", logits[:, ::16, ::16].numpy()),
            (fr + ".logit_mean", logits.mean(dim=(1, 2)).numpy()),
            (fr + ".logit_std", logits.std(dim=(1, 2), unbiased=False).numpy()),
            (fr + ".margin_min_s16", (top2[0] - top2[1])[::16, ::16].numpy()),
        ]
        print(fr, "classes present:", np.unique(logits.argmax(0).numpy()).tolist(), file=sys.stderr)
    meta = {"torch_version": torch.__version__, "generator": "tools/make_student_golden.py",
            "frames": json.dumps(FRAMES), "model": "student_lvs9_pretrained.safetensors",
            "precision": "float64 reference from float32 weights"}
    write_safetensors(args.out, tensors, meta)
    print("wrote", args.out, os.path.getsize(args.out), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
