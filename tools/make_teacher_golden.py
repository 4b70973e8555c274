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
                        float32, and the same from the float64 copy of the model (c2_f64, ...)

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
def converter():
    """tools/convert_teacher.py as a module: the torchvision -> Detectron2 name mapping."""
    spec = importlib.util.spec_from_file_location("convert_teacher", os.path.join(HERE, "convert_teacher.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def d2_name(tv):
    """torchvision backbone state-dict name (without 'backbone.') -> Detectron2 name."""
    return converter().backbone_name("backbone." + tv)

def heads(out, h, w):
    """The heads of torchvision's maskrcnn_resnet50_fpn (seeded), teacher-forced: RPN head on
    the model's own P2..P6, box head on given proposals, mask head on given boxes."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn
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
    io = [("p%d" % (i + 2), t) for i, t in enumerate(levels)]
    io += [("rpn_obj%d" % (i + 2), t) for i, t in enumerate(obj)]
    io += [("rpn_deltas%d" % (i + 2), t) for i, t in enumerate(deltas)]
    io += [("proposals", props), ("class_logits", cls), ("box_regression", reg),
           ("mask_boxes", dets), ("mask_logits", ml)]
    encode = writer()
    meta = {"generator": "tools/make_teacher_golden.py", "mode": "heads", "torch_version": torch.__version__}
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
    write_e2e_weights(out, model)
    meta = {"generator": "tools/make_teacher_golden.py", "mode": "e2e", "torch_version": torch.__version__,
            "min_size": str(model.transform.min_size[0]), "max_size": str(model.transform.max_size)}
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
        # The same network in float64: the reference; torch's own float32 error against it is the
        # yardstick for ours (random calibrated networks amplify rounding with depth).
        bd = copy.deepcopy(bb).double()
        cd = bd.body(x.double())
        pd = bd.fpn(cd)
    encode = writer()
    os.makedirs(a.out, exist_ok=True)
    sd = [(d2_name(k), v.float()) for k, v in bb.state_dict().items()
          if not k.endswith("num_batches_tracked")]
    meta = {"generator": "tools/make_teacher_golden.py", "mode": a.mode, "seed": str(a.seed),
            "torch_version": torch.__version__}
    with open(os.path.join(a.out, "weights.safetensors"), "wb") as f:
        f.write(encode(sd, meta))
    stages = [("x", x)]
    for tag, f32, f64 in (("c", c, cd), ("p", p, pd)):
        for i, (t32, t64) in enumerate(zip(f32.values(), f64.values())):
            stages += [("%s%d" % (tag, i + 2), t32), ("%s%d_f64" % (tag, i + 2), t64)]
    with open(os.path.join(a.out, "stages.safetensors"), "wb") as f:
        f.write(encode(stages, meta))


if __name__ == "__main__":
    main()
