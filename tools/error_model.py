"""Rounding-error bounds for float32 networks, computed in float64 alongside the reference.

A float32 implementation of a network (ours, torch's, any summation order, with or without fused
multiply-adds) differs from the exact result by the rounding errors of every operation, carried
through the rest of the network. This module runs the network in float64 and, next to each
value y, keeps sigma^2, a bound on the variance of the float32 error of y under the standard
probabilistic model of rounding (Higham & Mary, "A new approach to probabilistic rounding error
analysis", SISC 2019): each rounding multiplies by (1 + delta) with delta independent, mean
zero, |delta| <= u = 2^-24. The tests then require |ours - y| <= LAMBDA * sigma per element.

The rules, per operation (A = the sum of |terms| of an output, computed from |x| and |w|):
  * a dot product of K terms in ANY order (conv, linear, deconv, the bias counted as a term):
    its error is sum_n delta_n * s_n over the K-1 partial sums s_n plus one rounding per product,
    each |s_n| <= A, so sigma_local^2 = u^2 * (K + 1) * A^2 (one more term: a weight rounded
    when a batch norm is folded into it);
  * the error already in the inputs is carried linearly: sigma_out^2 += conv(sigma_in^2, w*w)
    (errors of distinct inputs taken as uncorrelated: exact for independent roundings, and the
    networks tested here have random weights, so no path adds coherently);
  * frozen batch norm (x * s + t per channel, applied or folded into the convolution): its
    roundings, plus the rounding of s and t themselves (the same for a whole channel: counted
    as a deterministic bound); add: its rounding; both plus the carried error;
  * ReLU passes the error, except where the exact input is below -LAMBDA*sigma (output 0 for
    sure); max-pooling takes the largest sigma of its window; nearest upsampling repeats it;
  * ROIAlign: the carried error through the bilinear weights (sum w^2 <= sum w, weights <= 1),
    the rounding of its sums, and the rounding of its sample coordinates (each computed in a
    handful of float operations on values <= M, so off by at most 16 u M pixels), which moves
    a sample by at most that distance along the local slope of the feature map (bounded by
    ROIAlign of the 3x3 maximum of |finite differences|).

For a sum of independent bounded terms Hoeffding's inequality gives
P(|error| >= LAMBDA * sigma) <= 2 exp(-LAMBDA^2 / 2): 2.5e-14 per element for LAMBDA = 8.
Every generator that uses this module also checks torch's own float32 output against the same
bound, so a model that failed to cover real float32 arithmetic would stop the generator.
"""
import torch
import torch.nn.functional as F

U32 = 2.0 ** -24
LAMBDA = 8.0


class T:
    """A float64 value and the variance bound (sigma^2) of its float32 error."""

    def __init__(self, v, var=None):
        self.v = v.double()
        self.var = torch.zeros_like(self.v) if var is None else var

    @staticmethod
    def rounded(v64):
        """An exact value that the float32 computation holds rounded to float32."""
        v64 = v64.double()
        return T(v64, (U32 * v64.abs()) ** 2)

    def sigma(self):
        return self.var.sqrt()

    def reshape(self, *shape):
        return T(self.v.reshape(*shape), self.var.reshape(*shape))


def _local(A, K):
    return (U32 ** 2) * (K + 1) * A * A


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, extra_terms=1):
    w = weight.double()
    b = None if bias is None else bias.double()
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = F.conv2d(x.v, w, b, **kw)
    A = F.conv2d(x.v.abs(), w.abs(), None if b is None else b.abs(), **kw)
    K = w.shape[1] * w.shape[2] * w.shape[3] + (b is not None) + extra_terms
    var = F.conv2d(x.var, w * w, None, **kw) + _local(A, K)
    return T(y, var)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1):
    w = weight.double()
    b = None if bias is None else bias.double()
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups)
    y = F.conv_transpose2d(x.v, w, b, **kw)
    A = F.conv_transpose2d(x.v.abs(), w.abs(), None if b is None else b.abs(), **kw)
    K = w.shape[0] // groups * w.shape[2] * w.shape[3] + (b is not None)
    var = F.conv_transpose2d(x.var, w * w, None, **kw) + _local(A, K)
    return T(y, var)


def linear(x, weight, bias=None):
    w = weight.double()
    b = None if bias is None else bias.double()
    y = F.linear(x.v, w, b)
    A = F.linear(x.v.abs(), w.abs(), None if b is None else b.abs())
    K = w.shape[1] + (b is not None) + 1
    var = F.linear(x.var, w * w) + _local(A, K)
    return T(y, var)


def frozen_bn(x, weight, bias, running_mean, running_var, eps):
    """A frozen batch norm: x * s + t per channel (dim 1), s = weight / sqrt(var + eps),
    t = bias - mean * s. A float32 implementation computes s and t in float32 too, applied as
    such or folded into the convolution before it: s is off by at most 4 roundings (add, square
    root, division or reciprocal, product), t by the error of mean * s and two more roundings;
    these are the same for every element of a channel, so they are counted as a deterministic
    bound B (variance <= B^2), next to the two roundings of x * s + t."""
    w, b = weight.double(), bias.double()
    rm, rv = running_mean.double(), running_var.double()
    s = w / (rv + eps).sqrt()
    t = b - rm * s
    shape = (1, -1, 1, 1)
    s4, t4, rms4 = s.reshape(shape), t.reshape(shape), (rm * s).abs().reshape(shape)
    xs = (x.v * s4).abs()
    y = x.v * s4 + t4
    B = U32 * (4 * xs + 5 * rms4 + b.abs().reshape(shape) + 2 * t4.abs())
    return T(y, x.var * s4 * s4 + 2 * (U32 ** 2) * (xs + t4.abs()) ** 2 + B * B)


def add(a, b):
    y = a.v + b.v
    return T(y, a.var + b.var + (U32 ** 2) * (a.v.abs() + b.v.abs()) ** 2)


def relu(x):
    certain_zero = x.v < -LAMBDA * x.sigma()
    return T(F.relu(x.v), torch.where(certain_zero, torch.zeros_like(x.var), x.var))


def max_pool2d(x, kernel_size, stride, padding=0):
    return T(F.max_pool2d(x.v, kernel_size, stride, padding),
             F.max_pool2d(x.var, kernel_size, stride, padding))


def upsample_nearest(x, size):
    return T(F.interpolate(x.v, size=size, mode="nearest"),
             F.interpolate(x.var, size=size, mode="nearest"))


def roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """torchvision.ops.roi_align on a tracked (1, C, H, W) map; rois (R, 5) in image pixels."""
    from torchvision.ops import roi_align as ra
    r = rois.double()
    kw = dict(output_size=output_size, spatial_scale=spatial_scale,
              sampling_ratio=sampling_ratio, aligned=aligned)
    y = ra(x.v, r, **kw)
    A = ra(x.v.abs(), r, **kw)
    # Samples per output: fixed with a sampling ratio; adaptive ones count at least one.
    count = sampling_ratio * sampling_ratio if sampling_ratio > 0 else 1
    carried = ra(x.var, r, **kw) / count
    # Each sample: 4 products and 4 sums, 3 roundings in each weight, one in the final division.
    local = (U32 ** 2) * (8 * count + 4 * count + 2) * A * A
    # Sample coordinates: magnitudes up to M feature pixels, a handful of roundings each.
    H, W = x.v.shape[-2:]
    M = max(float(r[:, 1:].abs().max()) * spatial_scale, float(H), float(W)) + 1.0
    delta = 16 * U32 * M
    gx = (x.v[..., :, 1:] - x.v[..., :, :-1]).abs()
    gy = (x.v[..., 1:, :] - x.v[..., :-1, :]).abs()
    gx = F.pad(gx, (0, 1, 0, 0))
    gy = F.pad(gy, (0, 0, 0, 1))
    slope = F.max_pool2d(gx, 3, 1, 1) + F.max_pool2d(gy, 3, 1, 1)
    coord = delta * ra(slope, r, **kw)
    return T(y, carried + local + coord * coord)


def check(name, t32, ref, lam=LAMBDA):
    """torch's own float32 result must lie within the bound: returns the largest |err| / sigma."""
    err = (t32.double() - ref.v).abs()
    sig = ref.sigma()
    ratio = torch.where(err > 0, err / sig.clamp_min(1e-300), torch.zeros_like(err))
    worst = float(ratio.max()) if ratio.numel() else 0.0
    if worst > lam:
        i = int(ratio.flatten().argmax())
        raise SystemExit("error_model: torch's float32 %s breaks the bound: |err| = %g, sigma = %g "
                         "(ratio %.2f > %g) at index %d" % (name, float(err.flatten()[i]),
                                                           float(sig.flatten()[i]), worst, lam, i))
    return worst
