#!/usr/bin/python3
"""Generate golden reference files for the C++ ops from PyTorch.

Run from the repository root with Debian's torch:

    /usr/bin/python3 tools/make_golden.py            # (re)write tests/golden/*.safetensors
    /usr/bin/python3 tools/make_golden.py --check    # regenerate in memory, compare with files on disk

Format: one safetensors file per op family, written by hand (no safetensors
package): 8-byte little-endian u64 header length N, N bytes of JSON header
(padded with spaces to a multiple of 8), then the raw little-endian tensor
bytes packed in header order.  See tests/golden/README.md for the roles and
conventions.

Conventions:
  * inputs are generated in float32 and stored as F32;
  * outputs and gradients are computed by torch in float64 from those exact
    float32 inputs (x.double()) and stored as F64;
  * differentiable cases store the upstream gradient "gy" (F32) and the
    gradients of loss = sum(y * gy) w.r.t. each differentiable input as
    "g<role>" (F64);
  * integer tensors are I64;
  * metadata "<case>.params" is compact JSON of the case parameters.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

GENERATOR = "tools/make_golden.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "golden")

torch.set_num_threads(1)  # fixed reduction order -> byte-identical regeneration

DTYPES = {
    torch.float32: ("F32", "<f4"),
    torch.float64: ("F64", "<f8"),
    torch.int64: ("I64", "<i8"),
    torch.uint8: ("U8", "u1"),
}
NP_FROM_CODE = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U8": "u1"}


# ----------------------------------------------------------------------------
# safetensors writer / reader
# ----------------------------------------------------------------------------

def encode_safetensors(tensors, metadata):
    """tensors: list of (name, torch.Tensor) in packing order; metadata: dict str->str."""
    header = {"__metadata__": dict(metadata)}
    blobs = []
    offset = 0
    seen = set()
    for name, t in tensors:
        assert name not in seen, name
        seen.add(name)
        code, npdt = DTYPES[t.dtype]
        data = np.ascontiguousarray(t.detach().cpu().numpy()).astype(npdt, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    for k, v in metadata.items():
        assert isinstance(k, str) and isinstance(v, str), (k, v)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-len(hjson)) % 8
    hjson += b" " * pad
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs)


def decode_safetensors(buf):
    """Returns (dict name -> np.ndarray, metadata dict, ordered list of names)."""
    (n,) = struct.unpack("<Q", buf[:8])
    assert n % 8 == 0
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = buf[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    expect = 0
    names = list(header.keys())
    for name in names:
        info = header[name]
        b, e = info["data_offsets"]
        assert b == expect, (name, b, expect)  # packed contiguously in header order
        expect = e
        arr = np.frombuffer(data[b:e], dtype=NP_FROM_CODE[info["dtype"]])
        assert arr.size == int(np.prod(info["shape"], dtype=np.int64)), name
        out[name] = arr.reshape(info["shape"])
    assert expect == len(data), "trailing bytes"
    return out, meta, names


# ----------------------------------------------------------------------------
# case builders
# ----------------------------------------------------------------------------

class Family:
    def __init__(self, name, seed):
        self.name = name
        self.tensors = []   # (name, tensor)
        self.meta = {}
        self.cases = []
        torch.manual_seed(seed)

    def add_case(self, case, params, tensors):
        assert case not in self.cases and "." not in case, case
        self.cases.append(case)
        self.meta[case + ".params"] = json.dumps(params, separators=(",", ":"))
        for role, t in tensors:
            self.tensors.append((case + "." + role, t))

    def encode(self):
        meta = {"torch_version": str(torch.__version__), "generator": GENERATOR,
                "family": self.name,
                "cases": json.dumps(self.cases, separators=(",", ":"))}
        meta.update(self.meta)
        return encode_safetensors(self.tensors, meta)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def diff_case(fam, case, params, inputs, fn, grad_roles=None, extra=None):
    """inputs: list of (role, f32 tensor).  fn(**double tensors) -> y.
    Stores inputs (F32), y (F64), gy (F32), g<role> (F64) for grad_roles."""
    if grad_roles is None:
        grad_roles = [r for r, _ in inputs]
    dbl = {}
    for role, t in inputs:
        assert t.dtype == torch.float32, role
        d = t.double()
        if role in grad_roles:
            d.requires_grad_(True)
        dbl[role] = d
    y = fn(**dbl)
    gy = randn(*y.shape)
    (y * gy.double()).sum().backward()
    out = list(inputs) + [("y", y.detach()), ("gy", gy)]
    for role in grad_roles:
        g = dbl[role].grad
        assert g is not None, role
        out.append(("g" + role, g.detach()))
    fam.add_case(case, params, out)


def fwd_case(fam, case, params, inputs, fn):
    with torch.no_grad():
        y = fn(**{r: t.double() for r, t in inputs})
    fam.add_case(case, params, list(inputs) + [("y", y)])


def distinct(*shape, scale=0.01):
    """Float32 tensor of distinct values (a scaled random permutation, centred)."""
    n = int(np.prod(shape))
    p = torch.randperm(n).to(torch.float32)
    return ((p - n / 2.0) * scale).reshape(shape)


# ----------------------------------------------------------------------------
# families
# ----------------------------------------------------------------------------

def fam_conv2d():
    f = Family("conv2d", 1001)

    def case(name, N, Cin, H, W, Cout, kh, kw, stride, padding, groups=1, bias=True):
        params = {"stride": list(stride), "padding": list(padding), "groups": groups, "bias": bias}
        inputs = [("x", randn(N, Cin, H, W)), ("w", randn(Cout, Cin // groups, kh, kw))]
        if bias:
            inputs.append(("b", randn(Cout)))

        def fn(x, w, b=None):
            return F.conv2d(x, w, b, stride=tuple(stride), padding=tuple(padding), groups=groups)
        diff_case(f, name, params, inputs, fn)

    case("k3s1p1", 1, 3, 6, 5, 4, 3, 3, (1, 1), (1, 1))
    case("k3s2p1_odd", 1, 3, 9, 7, 4, 3, 3, (2, 2), (1, 1))
    case("k1x3p01", 1, 3, 5, 6, 2, 1, 3, (1, 1), (0, 1))
    case("k3x1p10", 1, 3, 5, 6, 2, 3, 1, (1, 1), (1, 0))
    case("k1s2", 1, 4, 7, 6, 3, 1, 1, (2, 2), (0, 0))
    case("k5s1p2", 1, 2, 7, 6, 3, 5, 5, (1, 1), (2, 2))
    case("groups2", 1, 4, 5, 5, 6, 3, 3, (1, 1), (1, 1), groups=2)
    case("depthwise", 1, 5, 6, 7, 5, 3, 3, (1, 1), (1, 1), groups=5)
    case("nobias", 1, 3, 5, 4, 4, 3, 3, (1, 1), (1, 1), bias=False)
    case("spatial1x1_k3p1", 2, 6, 1, 1, 4, 3, 3, (1, 1), (1, 1))
    case("n2", 2, 3, 5, 7, 4, 3, 3, (1, 2), (1, 1))
    return f


def fam_conv_transpose2d():
    f = Family("conv_transpose2d", 1002)

    def case(name, N, Cin, H, W, Cout, k, stride, padding, output_padding, groups=1):
        params = {"stride": [stride, stride], "padding": [padding, padding],
                  "output_padding": [output_padding, output_padding], "groups": groups}
        inputs = [("x", randn(N, Cin, H, W)), ("w", randn(Cin, Cout // groups, k, k)),
                  ("b", randn(Cout))]

        def fn(x, w, b):
            return F.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                                      output_padding=output_padding, groups=groups)
        fwd_case(f, name, params, inputs, fn)

    case("k2s2p0", 1, 4, 4, 5, 3, 2, 2, 0, 0)
    case("k3s2p1op1", 1, 3, 5, 4, 2, 3, 2, 1, 1)
    case("k4s2p1", 2, 2, 3, 5, 3, 4, 2, 1, 0)
    case("groups2", 1, 4, 3, 4, 6, 3, 2, 1, 0, groups=2)
    return f


def fam_batch_norm():
    f = Family("batch_norm", 1003)

    def train_case(name, N, C, H, W, eps):
        inputs = [("x", randn(N, C, H, W) * 2.0 + 0.5), ("weight", randn(C)), ("bias", randn(C))]

        def fn(x, weight, bias):
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
        diff_case(f, name, {"eps": eps}, inputs, fn)

    def frozen_case(name, N, C, H, W, eps):
        inputs = [("x", randn(N, C, H, W)), ("weight", randn(C)), ("bias", randn(C)),
                  ("mean", randn(C) * 0.5), ("var", torch.rand(C, dtype=torch.float32) + 0.5)]

        def fn(x, weight, bias, mean, var):
            return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
        diff_case(f, name, {"eps": eps, "frozen": True}, inputs, fn,
                  grad_roles=["x", "weight", "bias"])

    train_case("train_n2c5h7w3", 2, 5, 7, 3, 1e-5)
    train_case("train_n1c3h2w3", 1, 3, 2, 3, 1e-5)
    frozen_case("frozen_n2c4h3w5", 2, 4, 3, 5, 1e-5)
    return f


def fam_activation():
    f = Family("activation", 1004)
    x = randn(2, 3, 4, 5)
    x = torch.where(x >= 0, x + 2e-3, x - 2e-3)  # keep relu inputs away from 0
    assert x.abs().min().item() > 1e-3
    diff_case(f, "relu", {"op": "relu"}, [("x", x)], lambda x: F.relu(x))
    diff_case(f, "sigmoid", {"op": "sigmoid"}, [("x", randn(2, 3, 4, 5) * 3.0)],
              lambda x: torch.sigmoid(x))
    return f


def fam_binary():
    f = Family("binary", 1005)
    shapes = [("same", (2, 3, 4, 5), (2, 3, 4, 5)),
              ("chan", (2, 3, 4, 5), (1, 3, 1, 1)),
              ("trail", (2, 3, 4, 5), (5,)),
              ("both", (2, 1, 4, 1), (1, 3, 1, 5))]
    for op in ("add", "mul"):
        fn = (lambda a, b: a + b) if op == "add" else (lambda a, b: a * b)
        for tag, sa, sb in shapes:
            diff_case(f, op + "_" + tag, {"op": op}, [("a", randn(*sa)), ("b", randn(*sb))], fn)
    diff_case(f, "mul_scalar", {"op": "mul_scalar", "alpha": -1.5},
              [("x", randn(2, 3, 4))], lambda x: x * -1.5)
    diff_case(f, "add_scalar", {"op": "add_scalar", "alpha": 0.75},
              [("x", randn(2, 3, 4))], lambda x: x + 0.75)
    return f


def fam_concat():
    f = Family("concat", 1006)
    inputs = [("x0", randn(2, 2, 3, 5)), ("x1", randn(2, 3, 3, 5)), ("x2", randn(2, 1, 3, 5))]
    diff_case(f, "c231", {"dim": 1}, inputs, lambda x0, x1, x2: torch.cat([x0, x1, x2], dim=1))
    return f


def fam_subsample():
    f = Family("subsample", 1007)
    diff_case(f, "s2_7x9", {"step": 2}, [("x", randn(1, 2, 7, 9))], lambda x: x[:, :, ::2, ::2])
    diff_case(f, "s3_8x8", {"step": 3}, [("x", randn(2, 2, 8, 8))], lambda x: x[:, :, ::3, ::3])
    return f


def fam_resize():
    f = Family("resize", 1008)
    kinds = [("up_5x7_11x13", (5, 7), (11, 13)),
             ("down_11x13_5x6", (11, 13), (5, 6)),
             ("up2_4x4_8x8", (4, 4), (8, 8)),
             ("from1x1_3x5", (1, 1), (3, 5)),
             ("mixed_6x3_4x9", (6, 3), (4, 9))]
    for mode in ("bilinear", "nearest"):
        for tag, (ih, iw), (oh, ow) in kinds:
            kw = {"align_corners": False} if mode == "bilinear" else {}

            def fn(x, mode=mode, oh=oh, ow=ow, kw=kw):
                return F.interpolate(x, size=(oh, ow), mode=mode, **kw)
            diff_case(f, mode + "_" + tag, {"mode": mode, "size": [oh, ow]},
                      [("x", randn(1, 2, ih, iw))], fn)
    return f


def fam_max_pool2d():
    f = Family("max_pool2d", 1009)

    def case(name, N, C, H, W, k, s, p):
        params = {"kernel": [k, k], "stride": [s, s], "padding": [p, p]}
        diff_case(f, name, params, [("x", distinct(N, C, H, W))],
                  lambda x: F.max_pool2d(x, kernel_size=k, stride=s, padding=p))

    case("k3s2p1_9x7", 1, 2, 9, 7, 3, 2, 1)
    case("k2s2p0_7x9", 2, 2, 7, 9, 2, 2, 0)
    case("k3s1p1_5x7", 1, 3, 5, 7, 3, 1, 1)
    return f


def fam_softmax():
    f = Family("softmax", 1010)
    diff_case(f, "softmax", {"op": "softmax"}, [("x", randn(2, 5, 3, 4) * 2.0)],
              lambda x: F.softmax(x, dim=1))
    diff_case(f, "log_softmax", {"op": "log_softmax"}, [("x", randn(2, 5, 3, 4) * 2.0)],
              lambda x: F.log_softmax(x, dim=1))
    return f


def fam_weighted_ce():
    f = Family("weighted_ce", 1011)

    def case(name, N, C, H, W):
        logits = randn(N, C, H, W) * 2.0
        target = torch.randint(0, C, (N, H, W), dtype=torch.int64)
        weight = torch.where(torch.rand(N, H, W) < 0.3, 5.0, 1.0).to(torch.float32)
        ld = logits.double().requires_grad_(True)
        lsm = F.log_softmax(ld, dim=1)
        picked = lsm.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -(weight.double() * picked).mean()
        loss.backward()
        # cross-check against torch's own CE
        ref = (F.cross_entropy(logits.double(), target, reduction="none") * weight.double()).mean()
        assert torch.allclose(loss.detach(), ref, rtol=0, atol=1e-12)
        f.add_case(name, {"N": N, "C": C, "H": H, "W": W},
                   [("logits", logits), ("target", target), ("weight", weight),
                    ("loss", loss.detach().reshape(())), ("glogits", ld.grad.detach())])

    case("c9_n1_5x7", 1, 9, 5, 7)
    case("c3_n2_4x4", 2, 3, 4, 4)
    return f


def fam_argmax():
    f = Family("argmax", 1012)
    for name, shape in (("n1c9_5x7", (1, 9, 5, 7)), ("n2c4_3x3", (2, 4, 3, 3))):
        x = distinct(*shape)
        y = torch.argmax(x, dim=1).to(torch.int64)
        f.add_case(name, {"dim": 1}, [("x", x), ("y", y)])
    return f


def fam_matmul():
    f = Family("matmul", 1013)
    diff_case(f, "m3k5n7", {"op": "matmul"}, [("a", randn(3, 5)), ("b", randn(5, 7))],
              lambda a, b: a @ b)
    diff_case(f, "m1k4n1", {"op": "matmul"}, [("a", randn(1, 4)), ("b", randn(4, 1))],
              lambda a, b: a @ b)
    return f


def fam_linear():
    f = Family("linear", 1014)
    for name, N, fin, fout in (("n3_in5_out4", 3, 5, 4), ("n1_in7_out2", 1, 7, 2)):
        diff_case(f, name, {"op": "linear"},
                  [("x", randn(N, fin)), ("weight", randn(fout, fin)), ("bias", randn(fout))],
                  lambda x, weight, bias: F.linear(x, weight, bias))
    return f


def fam_adam():
    f = Family("adam", 1015)

    def case(name, lr, beta1, beta2, eps, steps=5):
        p0 = randn(3, 4)
        grads = [randn(3, 4) for _ in range(steps)]
        p = torch.nn.Parameter(p0.clone())
        opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0,
                               amsgrad=False, foreach=False, maximize=False)
        out = [("p0", p0)] + [("g%d" % (i + 1), g) for i, g in enumerate(grads)]
        ps = []
        for g in grads:
            opt.zero_grad(set_to_none=True)
            p.grad = g.clone()
            opt.step()
            ps.append(p.detach().clone())
        out += [("p%d" % (i + 1), t) for i, t in enumerate(ps)]
        st = opt.state[p]
        out += [("m%d" % steps, st["exp_avg"].detach().clone()),
                ("v%d" % steps, st["exp_avg_sq"].detach().clone())]
        f.add_case(name, {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}, out)

    case("default", 0.01, 0.9, 0.999, 1e-8)
    case("aggressive", 0.1, 0.5, 0.9, 1e-3)
    return f


FAMILIES = [fam_conv2d, fam_conv_transpose2d, fam_batch_norm, fam_activation, fam_binary,
            fam_concat, fam_subsample, fam_resize, fam_max_pool2d, fam_softmax,
            fam_weighted_ce, fam_argmax, fam_matmul, fam_linear, fam_adam]


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------

def verify_roundtrip(fam, buf):
    """Re-read the encoded bytes and check every tensor and metadata entry."""
    arrays, meta, names = decode_safetensors(buf)
    assert names == [n for n, _ in fam.tensors], fam.name
    for name, t in fam.tensors:
        a = arrays[name]
        ref = t.detach().cpu().numpy()
        assert a.shape == ref.shape and a.dtype == ref.dtype.newbyteorder("<"), name
        assert np.array_equal(a, ref), name
    assert meta["torch_version"] == str(torch.__version__)
    assert meta["generator"] == GENERATOR
    assert json.loads(meta["cases"]) == fam.cases
    for c in fam.cases:
        json.loads(meta[c + ".params"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory and compare with the files on disk")
    ap.add_argument("--out", default=OUT_DIR)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    total = 0
    bad = 0
    for make in FAMILIES:
        fam = make()
        buf = fam.encode()
        verify_roundtrip(fam, buf)
        path = os.path.join(args.out, fam.name + ".safetensors")
        if args.check:
            with open(path, "rb") as fh:
                ok = fh.read() == buf
            bad += not ok
            print("%-28s %s" % (fam.name, "ok" if ok else "DIFFERS"))
        else:
            with open(path, "wb") as fh:
                fh.write(buf)
            # re-read from disk too
            with open(path, "rb") as fh:
                verify_roundtrip(fam, fh.read())
            print("%-28s %7d bytes  %d cases" % (os.path.relpath(path, ROOT), len(buf), len(fam.cases)))
        total += len(buf)
    print("total %d bytes" % total)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
