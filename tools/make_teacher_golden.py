#!/usr/bin/python3
"""Stage-by-stage golden data for the Mask R-CNN teacher port (MASKRCNN.md §10.2), generated at
test time (the weights are ~110 MB, never committed) from a seeded model, with Debian's
torchvision 0.14 (/usr/bin/python3).

Builds torchvision's ResNet-50 + FPN backbone (FrozenBN) with a fixed seed; --mode d2 applies
Detectron2's stride placement (stride on each block's first 1x1 conv). FrozenBN affine values are
randomised and the running statistics calibrated on the test input, layer by layer, so random
weights give O(1) activations. Writes to OUT_DIR:
  weights.safetensors   the backbone under Detectron2 names (MASKRCNN.md §8.3), float32
  stages.safetensors    x (1, 3, H, W), c2..c5 and p2..p6 from torchvision's own forward in
                        float32, the same network in float64 (c2_f64, ...) and the bound on the
                        standard deviation of a float32 forward's error (c2_sigma, ...; see
                        tools/error_model.py), against which torch's float32 is checked here

    /usr/bin/python3 tools/make_teacher_golden.py OUT_DIR [--mode d2|tv|heads] [--size 64x96] [--seed 1]

--mode heads: the heads of torchvision's maskrcnn_resnet50_fpn (seeded; 91-class layout, weights
under Detectron2 names), teacher-forced on the model's own P2..P6 and on given boxes:
heads_weights.safetensors and heads_io.safetensors (RPN objectness/deltas per level, box-head
class logits and box regression for 40 proposals, mask logits for 12 boxes).
"""
import argparse
import copy
import functools
import importlib.util
import json
import os

import torch
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

HERE = os.path.dirname(os.path.abspath(__file__))


def writer():
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(HERE, "make_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.encode_safetensors


@functools.lru_cache(maxsize=None)
def error_model():
    """tools/error_model.py: float64 references with float32 error bounds."""
    spec = importlib.util.spec_from_file_location("error_model", os.path.join(HERE, "error_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(maxsize=None)
def converter():
    """tools/convert_teacher.py as a module: the torchvision -> Detectron2 name mapping."""
    spec = importlib.util.spec_from_file_location("convert_teacher", os.path.join(HERE, "convert_teacher.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def d2_name(tv):
    """torchvision backbone state-dict name (without 'backbone.') -> Detectron2 name."""
    return converter().backbone_name("backbone." + tv)

def tracked(module, x):
    """A torchvision head module (Sequential of Conv2d / ConvTranspose2d / Linear / ReLU) run on
    an error_model.T: the float64 value and its float32 error bound."""
    em = error_model()
    if isinstance(module, torch.nn.Sequential):
        for m in module:
            x = tracked(m, x)
        return x
    if isinstance(module, torch.nn.Conv2d):
        return em.conv2d(x, module.weight, module.bias, module.stride, module.padding,
                         module.dilation, module.groups)
    if isinstance(module, torch.nn.ConvTranspose2d):
        return em.conv_transpose2d(x, module.weight, module.bias, module.stride, module.padding,
                                   module.output_padding, module.groups)
    if isinstance(module, torch.nn.Linear):
        return em.linear(x, module.weight, module.bias)
    if isinstance(module, torch.nn.ReLU):
        return em.relu(x)
    if isinstance(module, FrozenBatchNorm2d):
        return em.frozen_bn(x, module.weight, module.bias, module.running_mean,
                            module.running_var, module.eps)
    raise SystemExit("make_teacher_golden: no error model for %s" % type(module).__name__)


def tracked_pool(feats, boxes, size, image_hw):
    """torchvision's MultiScaleRoIAlign (P2..P5, sampling ratio 2, unaligned) on tracked maps.
    The level of each box must not sit at a rounding edge of its formula: a float32 and a float64
    evaluation must pick the same level."""
    em = error_model()
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double()
    raw = 4 + torch.log2(area.sqrt() / 224) + 1e-6
    inside = (raw > 2) & (raw < 6)
    margin = (raw - raw.round()).abs()
    if bool(((margin < 1e-4) & inside).any()):
        raise SystemExit("make_teacher_golden: a box's FPN level is within 1e-4 of a rounding edge")
    lvl = raw.floor().clamp(2, 5).long()
    out = None
    for l in range(2, 6):
        idx = (lvl == l).nonzero().flatten()
        if idx.numel() == 0:
            continue
        rois = torch.cat([torch.zeros(idx.numel(), 1), boxes[idx].float()], 1)
        part = em.roi_align(feats[l - 2], rois, size, 1.0 / (1 << l), 2, False)
        if out is None:
            out = em.T(torch.zeros((boxes.shape[0],) + part.v.shape[1:], dtype=torch.float64))
        out.v[idx] = part.v
        out.var[idx] = part.var
    return out


def tracked_backbone(bb, x):
    """torchvision's resnet_fpn_backbone (body + FPN + LastLevelMaxPool) on an error_model.T:
    C2..C5 and P2..P6 in float64 with their float32 error bounds."""
    em = error_model()
    body = bb.body
    t = em.relu(tracked(torch.nn.Sequential(body.conv1, body.bn1), x))
    t = em.max_pool2d(t, 3, 2, 1)
    cs = []
    for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
        for blk in layer:
            o = em.relu(tracked(torch.nn.Sequential(blk.conv1, blk.bn1), t))
            o = em.relu(tracked(torch.nn.Sequential(blk.conv2, blk.bn2), o))
            o = tracked(torch.nn.Sequential(blk.conv3, blk.bn3), o)
            identity = tracked(blk.downsample, t) if blk.downsample is not None else t
            t = em.relu(em.add(o, identity))
        cs.append(t)
    fpn = bb.fpn
    last = tracked(fpn.inner_blocks[-1], cs[-1])
    ps = [tracked(fpn.layer_blocks[-1], last)]
    for i in range(len(cs) - 2, -1, -1):
        lateral = tracked(fpn.inner_blocks[i], cs[i])
        last = em.add(lateral, em.upsample_nearest(last, lateral.v.shape[-2:]))
        ps.insert(0, tracked(fpn.layer_blocks[i], last))
    ps.append(em.max_pool2d(ps[-1], 1, 2, 0))
    return cs, ps


def heads(out, h, w):
    """The heads of torchvision's maskrcnn_resnet50_fpn (seeded), teacher-forced: RPN head on
    the model's own P2..P6, box head on given proposals, mask head on given boxes. Each output
    also in float64 with its float32 error bound (tools/error_model.py): <name>_f64, <name>_sigma;
    torch's own float32 outputs are checked against that bound here."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    em = error_model()
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, h, w, generator=g)
    weights = [(k, torch.from_numpy(v)) for k, v in converter().tv_to_d2(
        {k: v.numpy() for k, v in model.state_dict().items()}, reorder_classes=False).items()
        if not k.startswith("backbone.")]
    with torch.no_grad():
        feats = model.backbone(x)
        levels = list(feats.values())  # P2..P6 ('0'..'3', 'pool')
        obj, deltas = model.rpn.head(levels)
        shapes = [(h, w)]
        R, D = 40, 12
        def boxes(n):
            x0 = torch.rand(n, generator=g) * (w - 8)
            y0 = torch.rand(n, generator=g) * (h - 8)
            bw = torch.rand(n, generator=g) * (w - x0 - 2) + 2
            bh = torch.rand(n, generator=g) * (h - y0 - 2) + 2
            return torch.stack([x0, y0, x0 + bw, y0 + bh], 1)
        props, dets = boxes(R), boxes(D)
        bf = model.roi_heads.box_roi_pool(feats, [props], shapes)
        cls, reg = model.roi_heads.box_predictor(model.roi_heads.box_head(bf))
        mf = model.roi_heads.mask_roi_pool(feats, [dets], shapes)
        ml = model.roi_heads.mask_predictor(model.roi_heads.mask_head(mf))
        # The same heads in float64 on the same (exact) float32 inputs, with error bounds.
        exact = [em.T(p) for p in levels]
        rpn = model.rpn.head
        bounded = []
        for i, p in enumerate(exact):
            t = tracked(rpn.conv, p)
            bounded += [("rpn_obj%d" % (i + 2), obj[i], tracked(rpn.cls_logits, t)),
                        ("rpn_deltas%d" % (i + 2), deltas[i], tracked(rpn.bbox_pred, t))]
        bh, bp = model.roi_heads.box_head, model.roi_heads.box_predictor
        t = tracked_pool(exact[:4], props, 7, (h, w))
        t = em.relu(tracked(bh.fc6, t.reshape(R, -1)))
        t = em.relu(tracked(bh.fc7, t))
        bounded += [("class_logits", cls, tracked(bp.cls_score, t)),
                    ("box_regression", reg, tracked(bp.bbox_pred, t))]
        t = tracked_pool(exact[:4], dets, 14, (h, w))
        t = tracked(model.roi_heads.mask_head, t)
        bounded += [("mask_logits", ml, tracked(model.roi_heads.mask_predictor, t))]
    io = [("p%d" % (i + 2), t) for i, t in enumerate(levels)]
    io += [("proposals", props), ("mask_boxes", dets)]
    worst = {}
    for name, t32, ref in bounded:
        worst[name] = em.check(name, t32, ref)
        io += [(name, t32), (name + "_f64", ref.v), (name + "_sigma", ref.sigma())]
    encode = writer()
    meta = {"generator": "tools/make_teacher_golden.py", "mode": "heads", "torch_version": torch.__version__,
            "error_model_lambda": repr(em.LAMBDA),
            "torch_f32_worst_ratio": json.dumps(worst)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "heads_weights.safetensors"), "wb") as f:
        f.write(encode(weights, meta))
    with open(os.path.join(out, "heads_io.safetensors"), "wb") as f:
        f.write(encode(io, meta))


def seeded_e2e(h, w, min_size=None, max_size=None):
    """torchvision's maskrcnn_resnet50_fpn, seeded and BN-calibrated, and a random BGR frame
    (h, w). min_size / max_size are the model's resize settings; by default (h, w) the input is
    used at its own size. Returns (model, bgr uint8 (h, w, 3), img float RGB 0..1 (3, h, w))."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size or h,
                                  max_size=max_size or w).eval()
    g = torch.Generator().manual_seed(11)
    bgr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    img = bgr.flip(2).permute(2, 0, 1).float() / 255  # RGB 0..1, as torchvision expects
    bns = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        images, _ = model.transform([img])
        for m in bns:
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape))
        for m in bns:
            seen = {}
            hook = m.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
            model.backbone.body(images.tensors)
            hook.remove()
            v = seen["x"]
            m.running_mean.copy_(v.mean((0, 2, 3)))
            m.running_var.copy_(v.var((0, 2, 3), unbiased=False) + 0.25)
        # A random box predictor spreads its softmax over 91 classes (all scores < 0.05): lift a
        # few classes so that detections exist and per-class NMS has work to do.
        model.roi_heads.box_predictor.cls_score.bias[torch.tensor([1, 3, 18])] += torch.tensor([7.0, 4.5, 4.0])
    return model, bgr, img


def write_e2e_weights(out, model):
    """The model's weights under Detectron2 names: e2e_weights.safetensors (torchvision's 91-class
    layout) and e2e_weights_d2layout.safetensors (converted like a user's .pth by
    tools/convert_teacher.py tv: Detectron2's class layout, for the Detectron2-convention teacher)."""
    conv = converter()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    weights = [(k, torch.from_numpy(v)) for k, v in conv.tv_to_d2(state, reorder_classes=False).items()]
    meta = {"generator": "tools/make_teacher_golden.py", "mode": "e2e", "torch_version": torch.__version__}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "e2e_weights.safetensors"), "wb") as f:
        f.write(writer()(weights, meta))
    conv.write_safetensors(os.path.join(out, "e2e_weights_d2layout.safetensors"), conv.tv_to_d2(state),
                           {"converter": "tools/convert_teacher.py", "source": "tv"})


def e2e(out, h, w, resize=None):
    """torchvision's model([img]) end to end on the seeded model (seeded_e2e); resize = (min_size,
    max_size) makes torchvision resize the input (else it is used at its own size). Writes the
    weights (write_e2e_weights) and e2e_io.safetensors: the BGR frame, the network's input (the
    normalised, resized, padded (1, 3, H, W) tensor), the detections (boxes in input pixels,
    scores, labels) and the pasted masks thresholded at 0.5 (D, h, w) uint8."""
    model, bgr, img = seeded_e2e(h, w, *(resize or (None, None)))
    with torch.no_grad():
        det = model([img])[0]
        net_input = model.transform([img])[0].tensors
        # The test matches detections as sets with fixed tolerances (scores 1e-3, boxes 0.1 px, 95%
        # of them; tests/README.md says why). They must hold at least twice torch's own float32
        # error on this model and input (ours and torch's each that far from the exact result),
        # measured against its float64 run over the detections both runs share (same label, IoU
        # > 0.9), and the two runs must share 90% of them: checked here, on every machine.
        d64 = copy.deepcopy(model).double()([img.double()])[0]
        from torchvision.ops import box_iou
        iou = box_iou(det["boxes"].double(), d64["boxes"]) * (det["labels"][:, None] == d64["labels"][None, :])
        best, j = iou.max(1)
        same = best > 0.9
        dev_s = float((det["scores"].double()[same] - d64["scores"][j[same]]).abs().max())
        dev_b = float((det["boxes"].double()[same] - d64["boxes"][j[same]]).abs().max())
        if int(same.sum()) < det["boxes"].shape[0] * 9 // 10 or dev_s > 1e-3 / 2 or dev_b > 0.1 / 2:
            raise SystemExit("make_teacher_golden: torch's float32 run is further from its float64 run "
                             "than the e2e test's tolerances allow for (%d of %d shared, score %.3g, box "
                             "%.3g px)" % (int(same.sum()), det["boxes"].shape[0], dev_s, dev_b))
    write_e2e_weights(out, model)
    meta = {"generator": "tools/make_teacher_golden.py", "mode": "e2e", "torch_version": torch.__version__,
            "min_size": str(model.transform.min_size[0]), "max_size": str(model.transform.max_size),
            "torch_f32_vs_f64": json.dumps({"shared": int(same.sum()), "of": det["boxes"].shape[0],
                                            "score": dev_s, "box_px": dev_b})}
    io = [("bgr", bgr), ("boxes", det["boxes"]), ("scores", det["scores"]), ("labels", det["labels"]),
          ("masks", (det["masks"][:, 0] > 0.5).to(torch.uint8)), ("input", net_input)]
    with open(os.path.join(out, "e2e_io.safetensors"), "wb") as f:
        f.write(writer()(io, meta))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mode", choices=["d2", "tv", "heads", "e2e"], default="d2")
    ap.add_argument("--size", default="64x96")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resize", default=None, help="e2e: torchvision's min_size,max_size (default: none)")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    if a.mode == "heads":
        heads(a.out, h, w)
        return
    if a.mode == "e2e":
        e2e(a.out, h, w, tuple(int(v) for v in a.resize.split(",")) if a.resize else None)
        return
    bb = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5).eval()
    if a.mode == "d2":  # Detectron2 (MSRA): the stride sits on the block's first 1x1 conv
        for layer in (bb.body.layer2, bb.body.layer3, bb.body.layer4):
            blk = layer[0]
            blk.conv1.stride, blk.conv2.stride = blk.conv2.stride, (1, 1)
    x = torch.randn(1, 3, h, w)
    bns = [m for m in bb.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape))
        for m in bns:  # calibrate in order: each BN normalises what it actually receives
            seen = {}
            hook = m.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
            bb.body(x)
            hook.remove()
            v = seen["x"]
            m.running_mean.copy_(v.mean((0, 2, 3)))
            # + 0.25 keeps every scale gamma / sqrt(var) below ~2: near-dead channels (var ~ 0)
            # would otherwise amplify rounding differences chaotically through 50 layers.
            m.running_var.copy_(v.var((0, 2, 3), unbiased=False) + 0.25)
        c = bb.body(x)
        p = bb.fpn(c)
        # The same network in float64 on the same input: the reference, with the float32 error
        # bound of every output (tools/error_model.py); torch's float32 must lie within it.
        cd, pd = tracked_backbone(bb, error_model().T(x))
    encode = writer()
    os.makedirs(a.out, exist_ok=True)
    sd = [(d2_name(k), v.float()) for k, v in bb.state_dict().items()
          if not k.endswith("num_batches_tracked")]
    meta = {"generator": "tools/make_teacher_golden.py", "mode": a.mode, "seed": str(a.seed),
            "torch_version": torch.__version__}
    with open(os.path.join(a.out, "weights.safetensors"), "wb") as f:
        f.write(encode(sd, meta))
    stages = [("x", x)]
    worst = {}
    for tag, f32, f64 in (("c", c, cd), ("p", p, pd)):
        for i, (t32, t64) in enumerate(zip(f32.values(), f64)):
            name = "%s%d" % (tag, i + 2)
            worst[name] = error_model().check(name, t32, t64)
            stages += [(name, t32), (name + "_f64", t64.v), (name + "_sigma", t64.sigma())]
    meta["error_model_lambda"] = repr(error_model().LAMBDA)
    meta["torch_f32_worst_ratio"] = json.dumps(worst)
    with open(os.path.join(a.out, "stages.safetensors"), "wb") as f:
        f.write(encode(stages, meta))


if __name__ == "__main__":
    main()
