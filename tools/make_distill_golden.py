#!/usr/bin/python3
"""Golden file for one partial-distillation step (SPEC §3, §4) on a real frame, from Debian's
PyTorch 1.13.

The student is tools/make_student_golden.py's (imported, not repeated), with the published
weights ../shared/models/student_lvs9_pretrained.safetensors. On vtest frame FRAME and its teacher
label map (../shared/data/vtest/labels), in float64:
  target  = the label map; weight = 1, and 5 inside every 8-connected component's box (Detectron2
            mask box: far edge = last pixel + 1) expanded by 7.5% of its width/height on each side,
            truncated by int(), clamped to the image, far edge inclusive (SPEC §3, written here from
            the SPEC, not from nn/distill.cpp);
  loss    = -mean over all pixels of weight * log_softmax(logits)[target] (a plain mean);
  backward through the trained tensors only (dec2, dec3, out_conv1..3: partial distillation;
            batch-statistics BN everywhere, as the project trains);
  one torch.optim.Adam step, lr 0.01, betas (0.9, 0.999), eps 1e-8, no weight decay (SPEC §4).
Written to tests/golden/distill_step.safetensors:
  loss, loss_sigma                      F64 (1,)
  target.fives, target.persons          I64 (1,)  pixels of weight 5 / of class 0 (person)
  acc_before, acc_after                 F64 (1,)  the frame mIoU before and after the step (argmax)
  <name>.index                          I64 (K,)  the flat indices sampled: all of a tensor of at
                                                  most FULL elements, else SAMPLES fixed ones
  <name>.grad, <name>.grad_sigma        F64 (K,)  d loss / d tensor at those indices, and sigma
  <name>.param, <name>.param_sigma      F64 (K,)  the tensor after the Adam step, and sigma
  <name>.grad_norm, .grad_norm_sigma    F64 (1,)  the whole gradient's 2-norm, and sigma
  <name>.grad_sum, .grad_sum_sigma      F64 (1,)  the whole gradient's sum, and sigma
for the 26 trained tensors <name>. sigma bounds the standard deviation of a float32 step's rounding
error (tests/README.md rule 4), estimated as make_student_golden.py does, by Monte Carlo arithmetic
carried on through the backward pass and the Adam step (class Step below); the gradients that are
plain sums over pixels also carry their worst case (class Sums). Where |grad| is within
LAMBDA sigma of 0 the sign of a float32 gradient is not certain, and Adam's first step (about
lr * sign(grad)) may go either way: the test allows such entries the whole range, 2 lr.
torch's own float32 step is checked against the bound (the generator stops if it breaks it).
Run: /usr/bin/python3 tools/make_distill_golden.py [--shared ../shared]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_student_golden as sg  # noqa: E402  (the student, the safetensors reader and writer)

FRAME = "000400"
TRAINED = ("dec2.", "dec3.", "out_conv1.", "out_conv2.", "out_conv3.")
LR, BETAS, EPS = 0.01, (0.9, 0.999), 1e-8
U32 = sg.U32
LAMBDA = sg.LAMBDA
RUNS = 12      # Monte Carlo runs (each a float64 forward, backward and Adam step)
FULL = 512     # tensors of at most this many elements are stored whole
SAMPLES = 256  # else this many fixed entries


# ---------------------------------------------------------------- target (SPEC §3)
def component_boxes(labels):
    """Boxes (x1, y1, x2, y2), far edge = last pixel + 1, of the 8-connected components of the
    non-background pixels, in raster order of their first pixel."""
    h, w = labels.shape
    fg = labels != 8
    seen = np.zeros_like(fg)
    boxes = []
    for start in np.flatnonzero(fg):
        if seen.flat[start]:
            continue
        seen.flat[start] = True
        stack, ys, xs = [start], [], []
        while stack:
            p = stack.pop()
            y, x = divmod(int(p), w)
            ys.append(y)
            xs.append(x)
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append(ny * w + nx)
        boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return boxes


def weight_map(boxes, h, w):
    weight = np.ones((h, w))
    for x1, y1, x2, y2 in boxes:
        bw, bh = x2 - x1, y2 - y1
        c = lambda v, hi: min(max(int(v), 0), hi - 1)  # int() truncates toward zero, then clamp
        a, b = c(x1 - 0.075 * bw, w), c(x2 + 0.075 * bw, w)
        d, e = c(y1 - 0.075 * bh, h), c(y2 + 0.075 * bh, h)
        weight[d:e + 1, a:b + 1] = 5.0
    return weight


def loss_fn(logits, target, weight):
    return -(weight * F.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]).mean()


def miou(pred, target, classes=9):
    ious = []
    for c in range(classes):
        p, t = pred == c, target == c
        u = (p | t).sum().item()
        if u:
            ious.append((p & t).sum().item() / u)
    return sum(ious) / len(ious)


# ---------------------------------------------------------------- the float32 error model
class Step(sg.Exact):
    """make_student_golden.Perturbed carried on through the backward pass: every operation of
    the step, forward and backward, has each float32 rounding replaced by its bound times a random
    sign (first order). Forward bounds as in sg.Perturbed (the same formulas); backward, for any
    summation order (tests/README.md):
      * convolution, input gradient: K = Cout * ceil(kh/s) * ceil(kw/s) products, u sqrt(K+1)
        times conv_transpose(|gy|, |k|); weight gradient: K = N*OH*OW, u sqrt(K+1) times
        corr(|x|, |gy|); bias gradient: u sqrt(P+1) sum|gy|;
      * batch norm (batch statistics): gamma's and beta's gradients sums over P pixels,
        u sqrt(P+2) sum|gy xhat| and u sqrt(P+1) sum|gy|; the input gradient
        g r (gy - mean gy - xhat mean(gy xhat)), 4 roundings of its terms' magnitudes;
      * bilinear upsampling: the adjoint with the run's perturbed taps, plus u sqrt(K+1) times the
        adjoint of |gy|, K = (2 ceil(out/in) + 2)^2 contributions per input element;
      * weighted cross-entropy: lse = max + log(sum exp(l - max)) to u sqrt(C+6) (|lse| + max|l -
        max| + 4) (exp and log count 2 ulp), each pixel's term one rounding more, the mean over
        P pixels u sqrt(P+1) sum|terms| / P; the gradient w/P (softmax - onehot) to
        u sqrt(C+8) w/P (softmax (|l| + |lse| + 8) + onehot);
      * Adam (torch 1.13's order): one rounding per operation, the constants (1 - beta, the bias
        corrections, lr / bc1) one each, shared by the tensor, the new parameter one more.
    Magnitudes use the exact (unperturbed) operands: the difference is second order."""

    def __init__(self, seed, cache):
        self.g = torch.Generator().manual_seed(seed)
        self.cache, self.calls = cache, {"f": 0, "b": 0}

    def magnitude(self, kind, compute):
        """The convolutions' magnitudes, computed in the first run and reused (first order: they
        do not depend on the perturbation), keyed by call order, which is the same in every run."""
        key = (kind, self.calls[kind])
        self.calls[kind] += 1
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def sign(self, shape):
        return torch.randint(0, 2, tuple(shape), generator=self.g, dtype=torch.float64) * 2 - 1

    def noisy(self, v, mag):
        return v + U32 * mag * self.sign(v.shape)

    # forward: as sg.Perturbed, with the backward attached
    def input(self, x):
        """The float32 input: pixel - mean, the mean itself rounded to float32 (a shared error per
        channel, as the project's preprocessing holds it in a float) and the difference rounded."""
        mean = torch.tensor(sg.MEAN_BGR, dtype=torch.float64).reshape(1, 3, 1, 1)
        return self.noisy(x, x.abs()) + U32 * mean * self.sign((1, 3, 1, 1))

    def conv(self, x, k, b, stride, padding):
        return _Conv.apply(x, k, b, stride, padding, self)

    def bn(self, x, gamma, beta):
        return _BN.apply(x, gamma, beta, self)

    def add(self, a, b):
        return a + b + (U32 * (a.abs() + b.abs()) * self.sign(a.shape)).detach()

    def up(self, x, size):
        return _Up.apply(x, tuple(size), self)

    def loss(self, logits, target, weight):
        return _CE.apply(logits, target, weight, self)

    def adam(self, p, g):
        """torch 1.13 single-tensor Adam, step 1, from zero state, every rounding perturbed."""
        b1, b2 = BETAS
        r = lambda v: self.noisy(v, v.abs())
        c = lambda v: v * (1 + U32 * self.sign(()).item())  # a constant, rounded once
        m = r(g * c(1 - b1))
        v = r(r(g * g) * c(1 - b2))
        bc1, bc2 = 1 - b1, 1 - b2
        denom = r(r(r(v.sqrt()) / c(math.sqrt(bc2))) + EPS)
        upd = r(r(m / denom) * c(LR / bc1))
        return r(p - upd)


def _interp_taps(ops, n_in, n_out):
    dst = torch.arange(n_out, dtype=torch.float64)
    src = (dst + 0.5) * (n_in / n_out) - 0.5
    src = src + 4 * U32 * n_in * ops.sign((n_out,))
    src = src.clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    l1 = src - i0.double()
    return i0, i1, 1 - l1, l1


def _interp(t, th, tw):
    (h0, h1, wh0, wh1), (v0, v1, wv0, wv1) = th, tw
    t = t[:, :, h0, :] * wh0.reshape(1, 1, -1, 1) + t[:, :, h1, :] * wh1.reshape(1, 1, -1, 1)
    return t[:, :, :, v0] * wv0 + t[:, :, :, v1] * wv1


class _Up(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, ops):
        th, tw = _interp_taps(ops, x.shape[2], size[0]), _interp_taps(ops, x.shape[3], size[1])
        ctx.conf = (th, tw, x.shape, size, ops)
        y = _interp(x, th, tw)
        return y + U32 * math.sqrt(8) * _interp(x.abs(), th, tw) * ops.sign(y.shape)

    @staticmethod
    def backward(ctx, gy):
        th, tw, shape, size, ops = ctx.conf
        with torch.enable_grad():
            z = torch.zeros(shape, dtype=gy.dtype, requires_grad=True)
            gx, = torch.autograd.grad(_interp(z, th, tw), z, gy)
            z2 = torch.zeros(shape, dtype=gy.dtype, requires_grad=True)
            ax, = torch.autograd.grad(_interp(z2, th, tw), z2, gy.abs())
        K = (2 * math.ceil(size[0] / shape[2]) + 2) * (2 * math.ceil(size[1] / shape[3]) + 2)
        return gx + U32 * math.sqrt(K + 1) * ax * ops.sign(gx.shape), None, None


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, b, stride, padding, ops):
        ctx.save_for_backward(x, k)
        ctx.conf = (stride, padding, ops)
        y = F.conv2d(x, k, b, stride=stride, padding=padding)
        A = ops.magnitude("f", lambda: F.conv2d(x.abs(), k.abs(), b.abs(), stride=stride, padding=padding))
        K = k.shape[1] * k.shape[2] * k.shape[3] + 1
        return y + U32 * math.sqrt(K + 1) * A * ops.sign(y.shape)

    @staticmethod
    def backward(ctx, gy):
        x, k = ctx.saved_tensors
        stride, padding, ops = ctx.conf
        gx = gk = gb = None
        s = lambda v, mag, K: v + U32 * math.sqrt(K + 1) * mag * ops.sign(v.shape)
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        bw = lambda a, b, c: torch.ops.aten.convolution_backward(
            a, b, c, None, [stride] * 2, list(padding), [1, 1], False, [0, 0], 1, need)
        ex = bw(gy, x, k)
        ax = ops.magnitude("b", lambda: bw(gy.abs(), x.abs(), k.abs()))
        P = gy.shape[0] * gy.shape[2] * gy.shape[3]
        if need[0]:
            K = k.shape[0] * math.ceil(k.shape[2] / stride) * math.ceil(k.shape[3] / stride)
            gx = s(ex[0], ax[0], K)
        if need[1]:
            gk = s(ex[1], ax[1], P)
        if ctx.needs_input_grad[2]:
            gb = s(gy.sum((0, 2, 3)), gy.abs().sum((0, 2, 3)), P)
        return gx, gk, gb, None, None, None


class _BN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, ops):
        P = x.shape[0] * x.shape[2] * x.shape[3]
        C = x.shape[1]
        dims = (0, 2, 3)
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dims, keepdim=True)
        ex2 = (x * x).mean(dims, keepdim=True)
        mu_p = mu + U32 * math.sqrt(P + 1) * x.abs().mean(dims, keepdim=True) * ops.sign((1, C, 1, 1))
        var_p = var + 2 * U32 * math.sqrt(P + 2) * (ex2 + mu * mu) * ops.sign((1, C, 1, 1))
        r = (var_p + 1e-5).rsqrt() * (1 + 3 * U32 * ops.sign((1, C, 1, 1)))
        g, bt = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)
        xhat = (x - mu_p) * r
        y = xhat * g + bt
        M = (x.abs() + mu.abs()) * r * g.abs() + bt.abs()
        ctx.save_for_backward(xhat, r, g)
        ctx.ops = ops
        return y + 2 * U32 * M * ops.sign(y.shape)

    @staticmethod
    def backward(ctx, gy):
        xhat, r, g = ctx.saved_tensors
        ops = ctx.ops
        dims = (0, 2, 3)
        P = gy.shape[0] * gy.shape[2] * gy.shape[3]
        C = gy.shape[1]
        sgy = ops.noisy(gy.sum(dims, keepdim=True), math.sqrt(P + 1) * gy.abs().sum(dims, keepdim=True))
        sgx = ops.noisy((gy * xhat).sum(dims, keepdim=True),
                        math.sqrt(P + 2) * (gy * xhat).abs().sum(dims, keepdim=True))
        gx = None
        if ctx.needs_input_grad[0]:
            gx = g * r * (gy - sgy / P - xhat * sgx / P)
            gx = ops.noisy(gx, 4 * (g * r).abs() * (gy.abs() + sgy.abs() / P + xhat.abs() * sgx.abs() / P))
        return gx, sgx.reshape(C), sgy.reshape(C), None


class _CE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, ops):
        C = logits.shape[1]
        P = target.numel()
        mx = logits.max(1, keepdim=True).values
        lse = torch.logsumexp(logits, 1, keepdim=True)
        lse_p = ops.noisy(lse, math.sqrt(C + 6) * (lse.abs() + (logits - mx).abs().max(1, keepdim=True).values + 4))
        lt = logits.gather(1, target[:, None])
        terms = weight[:, None] * (lse_p - lt)
        terms = ops.noisy(terms, weight[:, None] * (lse.abs() + lt.abs()))
        loss = ops.noisy(terms.sum() / P, math.sqrt(P + 1) * terms.abs().sum() / P)
        ctx.save_for_backward(logits, target, weight, lse)
        ctx.ops = ops
        return loss

    @staticmethod
    def backward(ctx, gl):
        logits, target, weight, lse = ctx.saved_tensors
        ops = ctx.ops
        C = logits.shape[1]
        P = target.numel()
        sm = (logits - lse).exp()
        onehot = F.one_hot(target, C).permute(0, 3, 1, 2).double()
        scale = gl * weight[:, None] / P
        g = scale * (sm - onehot)
        g = ops.noisy(g, math.sqrt(C + 8) * scale.abs() * (sm * (logits.abs() + lse.abs() + 8) + onehot))
        return g, None, None, None


class Sums(sg.Exact):
    """The exact operations, recording for every plain sum over pixels among the gradients (the
    convolutions' bias gradients, the batch norms' beta gradients) the worst-case bound of its
    float32 rounding in any order, gamma_{P-1} sum|gy| (Higham §3.1). The probabilistic model
    (sqrt(P) u) assumes independent roundings; a sum of P near-equal terms (a class's
    softmax - onehot over the background) rounds the same way again and again, and torch's own
    float32 bias gradient of out_conv3 (P = 442,368) is off by about ten times that sigma. So for
    these sums sigma also carries the worst case (an independent term, added in quadrature)."""

    def __init__(self, params):
        self.ids = {id(t): n for n, t in params.items()}
        self.worst = {}

    def _record(self, y, b):
        if b.requires_grad:
            name, P = self.ids[id(b)], y.shape[0] * y.shape[2] * y.shape[3]
            gam = (P - 1) * U32 / (1 - (P - 1) * U32)
            y.register_hook(lambda g: self.worst.__setitem__(name, gam * g.detach().abs().sum((0, 2, 3))))

    def conv(self, x, k, b, stride, padding):
        y = super().conv(x, k, b, stride, padding)
        self._record(y, b)
        return y

    def bn(self, x, gamma, beta):
        y = super().bn(x, gamma, beta)
        self._record(y, beta)
        return y


# ---------------------------------------------------------------- one step
def step(w, x, target, weight, names, ops=None, worst=None):
    """Loss, gradients of the trained tensors and the tensors after one Adam step. ops None:
    the exact step, torch's own operators and torch.optim.Adam, in the dtype of w."""
    params = {k: v.clone().requires_grad_(k in names) for k, v in w.items()}
    sums = Sums(params)
    logits = sg.student(params, x, ops or sums)
    loss = ops.loss(logits, target, weight) if ops else loss_fn(logits, target, weight)
    loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in names}
    if ops:
        new = {n: ops.adam(params[n].detach(), grads[n]) for n in names}
    else:
        opt = torch.optim.Adam([params[n] for n in names], lr=LR, betas=BETAS, eps=EPS, weight_decay=0)
        opt.step()
        new = {n: params[n].detach().clone() for n in names}
    if worst is not None:
        worst.update(sums.worst)
    return loss.detach(), grads, new, logits.detach()


def main():
    from PIL import Image

    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "golden", "distill_step.safetensors"))
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--resume", help="a file that keeps the Monte Carlo sums after every run, so that an "
                    "interrupted generation goes on where it stopped")
    args = ap.parse_args()
    torch.set_num_threads(2)
    w = {k: v.double() for k, v in sg.read_safetensors(
        os.path.join(args.shared, "models", "student_lvs9_pretrained.safetensors")).items()}
    names = [k for k in w if k.startswith(TRAINED)]
    assert len(names) == 26 and sum(w[n].numel() for n in names) == 103465, "not the SPEC's split"
    vt = os.path.join(args.shared, "data", "vtest")
    rgb = np.asarray(Image.open(os.path.join(vt, "frames", FRAME + ".png")).convert("RGB"))
    bgr = rgb[:, :, ::-1].astype(np.float64) - np.array(sg.MEAN_BGR)
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]
    labels = np.asarray(Image.open(os.path.join(vt, "labels", FRAME + ".png")))
    assert labels.ndim == 2 and labels.max() <= 8
    h, wd = labels.shape
    weight_np = weight_map(component_boxes(labels), h, wd)
    target = torch.from_numpy(labels.astype(np.int64))[None]
    weight = torch.from_numpy(weight_np)[None]

    worst_sums = {}
    loss, grads, new, logits = step(w, x, target, weight, names, worst=worst_sums)
    assert len(worst_sums) == 13, sorted(worst_sums)  # dec2, dec3: 4 conv biases and a BN beta each; out_conv1..3
    with torch.no_grad():
        after = sg.student({**w, **new}, x)
    acc_before = miou(logits.argmax(1), target)
    acc_after = miou(after.argmax(1), target)
    print("loss %.6f  mIoU before %.4f after %.4f" % (loss.item(), acc_before, acc_after), file=sys.stderr)

    rng = np.random.RandomState(20)
    index = {n: (np.arange(w[n].numel()) if w[n].numel() <= FULL
                 else np.sort(rng.choice(w[n].numel(), SAMPLES, replace=False))) for n in names}
    idx_t = {n: torch.from_numpy(index[n]) for n in names}
    pick = lambda t, n: t.flatten()[idx_t[n]]

    # Monte Carlo: the spread of perturbed steps around the exact one.
    sq = {"loss": 0.0}
    cache = {}
    done = 0
    if args.resume and os.path.exists(args.resume):
        done, sq = torch.load(args.resume)
    for run in range(done, args.runs):
        l_p, g_p, n_p, _ = step(w, x, target, weight, names, Step(777 + run, cache))
        sq["loss"] += (l_p - loss).item() ** 2
        for n in names:
            for key, a, b in ((".grad", pick(g_p[n], n), pick(grads[n], n)),
                              (".param", pick(n_p[n], n), pick(new[n], n)),
                              (".grad_norm", g_p[n].norm(), grads[n].norm()),
                              (".grad_sum", g_p[n].sum(), grads[n].sum())):
                sq[n + key] = sq.get(n + key, 0) + (a - b) ** 2
        print("run", run, "loss deviation %.3g" % (l_p - loss).item(), file=sys.stderr)
        if args.resume:
            torch.save((run + 1, sq), args.resume)
    sigma = {k: (torch.as_tensor(v) / args.runs).sqrt() for k, v in sq.items()}
    for n, e in worst_sums.items():  # (class Sums) tensors stored whole: index = all
        assert index[n].size == e.numel()
        sigma[n + ".grad"] = (sigma[n + ".grad"] ** 2 + e ** 2).sqrt()
        sigma[n + ".grad_sum"] = (sigma[n + ".grad_sum"] ** 2 + e.sum() ** 2).sqrt()
        sigma[n + ".grad_norm"] = (sigma[n + ".grad_norm"] ** 2 + e.norm() ** 2).sqrt()

    # torch's own float32 step must lie within LAMBDA sigma (entries whose gradient sign is not
    # certain may take Adam's whole range, 2 lr).
    w32 = {k: v.float() for k, v in w.items()}
    l32, g32, n32, _ = step(w32, x.float(), target, weight.float(), names)
    worst = {}
    def ratio(key, a, ref, sig, allow=None):
        r = (a.double() - ref).abs() / (LAMBDA * sig).clamp_min(1e-300)
        if allow is not None:
            r = torch.where(allow, (a.double() - ref).abs() / (2 * LR * (1 + 1e-6)), r)
        if r.max().item() > worst.get(key, 0.0):
            i = r.flatten().argmax().item()
            print("  worst %s so far: ratio %.3g, ref %.6g, f32 %.6g, sigma %.3g" % (
                key, r.flatten()[i].item(), ref.flatten()[i].item(), a.flatten()[i].item(),
                sig.flatten()[i].item()), file=sys.stderr)
        worst[key] = max(worst.get(key, 0.0), r.max().item())
    ratio("loss", l32, loss, sigma["loss"])
    for n in names:
        g_ref, g_sig = pick(grads[n], n), sigma[n + ".grad"]
        ratio("grad", pick(g32[n], n), g_ref, g_sig)
        ratio("param", pick(n32[n], n), pick(new[n], n), sigma[n + ".param"], g_ref.abs() <= LAMBDA * g_sig)
        ratio("grad_norm", g32[n].double().norm(), grads[n].norm(), sigma[n + ".grad_norm"])
        ratio("grad_sum", g32[n].double().sum(), grads[n].sum(), sigma[n + ".grad_sum"])
    print("torch f32 worst |err| / (lambda sigma):", worst, file=sys.stderr)
    if max(worst.values()) > 1:
        raise SystemExit("make_distill_golden: torch's float32 step breaks the bound")

    one = lambda v: np.array([float(v)])
    tensors = [("loss", one(loss.item())), ("loss_sigma", one(sigma["loss"].item())),
               ("target.fives", np.array([int((weight_np == 5).sum())], dtype=np.int64)),
               ("target.persons", np.array([int((labels == 0).sum())], dtype=np.int64)),
               ("acc_before", one(acc_before)), ("acc_after", one(acc_after))]
    uncertain = 0
    for n in names:
        uncertain += int((pick(grads[n], n).abs() <= LAMBDA * sigma[n + ".grad"]).sum())
        tensors += [(n + ".index", index[n].astype(np.int64)),
                    (n + ".grad", pick(grads[n], n).numpy()), (n + ".grad_sigma", sigma[n + ".grad"].numpy()),
                    (n + ".param", pick(new[n], n).numpy()), (n + ".param_sigma", sigma[n + ".param"].numpy()),
                    (n + ".grad_norm", one(grads[n].norm())), (n + ".grad_norm_sigma", one(sigma[n + ".grad_norm"])),
                    (n + ".grad_sum", one(grads[n].sum())), (n + ".grad_sum_sigma", one(sigma[n + ".grad_sum"]))]
    meta = {"torch_version": torch.__version__, "generator": "tools/make_distill_golden.py",
            "frame": FRAME, "model": "student_lvs9_pretrained.safetensors",
            "trained": json.dumps(names), "adam": json.dumps({"lr": LR, "betas": BETAS, "eps": EPS}),
            "precision": "float64 reference from float32 weights",
            "error_model": "Monte Carlo, first order, forward, backward and Adam, %d runs (see Step); "
                            "plain sums over pixels with their worst case (see Sums)" % args.runs,
            "error_model_lambda": repr(LAMBDA), "torch_f32_worst_ratio": json.dumps(worst),
            "sign_uncertain_entries": str(uncertain)}
    sg.write_safetensors(args.out, tensors, meta)
    print("wrote", args.out, os.path.getsize(args.out), "bytes;", uncertain, "sampled entries of uncertain sign",
          file=sys.stderr)


if __name__ == "__main__":
    main()
