#!/usr/bin/python3
"""Golden file for the Mask R-CNN teacher's detection ops (teacher_port/detect_ops.h), from
Debian's torchvision 0.14 (run with /usr/bin/python3):

  roi_align    torchvision.ops.roi_align on float32 features, three settings (Detectron2's
               aligned + adaptive sampling at the box and mask pooler sizes, and torchvision's
               unaligned sampling 2), with boxes partly or fully outside, tiny and empty ones;
  nms          torchvision.ops.nms at IoU 0.5 and 0.7 on clustered boxes (unique scores);
  batched_nms  torchvision's exact per-group variant (_batched_nms_vanilla), 4 groups;
  decode       torchvision's BoxCoder.decode_single, weights (1,1,1,1) and (10,10,5,5),
               clamp log(1000/16) (some dw/dh above it);
  anchors      torchvision's AnchorGenerator (rounded cells, a grid) and Detectron2's formula;
  levels       torchvision's LevelMapper and Detectron2's assign_boxes_to_levels formula;
  paste        Detectron2's grid_sample mask paste and ShadowTutor's label-map painting;
  rpn          proposal selection: torchvision's RegionProposalNetwork.filter_proposals and
               Detectron2's find_top_rpn_proposals rules (exact per-level NMS), 5 levels;
  boxinf       box-head inference: torchvision's RoIHeads.postprocess_detections (91 classes,
               threshold 0.05) and Detectron2's fast_rcnn_inference_single_image rules (80 + bg
               last, ShadowTutor's threshold 0.5).

Writes tests/golden/teacher_ops.safetensors (seeded; byte-identical on rerun).
    /usr/bin/python3 tools/make_teacher_ops_golden.py
"""
import importlib.util
import json
import math
import os

import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import boxes as box_ops

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "golden", "teacher_ops.safetensors")


def load_writer():
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(HERE, "make_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.encode_safetensors


def random_boxes(g, n, lo, hi, min_wh=0.0, max_wh=30.0):
    x0 = torch.rand(n, generator=g) * (hi - lo) + lo
    y0 = torch.rand(n, generator=g) * (hi - lo) + lo
    w = torch.rand(n, generator=g) * (max_wh - min_wh) + min_wh
    h = torch.rand(n, generator=g) * (max_wh - min_wh) + min_wh
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def main():
    torch.set_num_threads(1)
    encode = load_writer()
    g = torch.Generator().manual_seed(20261126)
    tensors, cases = [], {}

    # ---- roi_align ----
    x = torch.randn(2, 3, 13, 17, generator=g)
    special = torch.tensor([
        [0, -20.0, -20.0, -10.0, -10.0],  # fully outside (top-left)
        [1, 60.0, 40.0, 60.0, 40.0],      # empty
        [0, 10.0, 10.0, 10.5, 11.0],      # tiny
        [1, -8.0, -8.0, 80.0, 60.0],      # covers everything and more
        [0, 50.0, 30.0, 75.0, 58.0],      # past the bottom-right edge
    ])
    for name, (oh, ow, scale, sr, aligned, seed_boxes) in {
        "roi_box": (7, 7, 0.25, 0, True, 20),
        "roi_mask": (14, 14, 0.125, 0, True, 12),
        "roi_tv": (5, 4, 0.5, 2, False, 16),
    }.items():
        b = random_boxes(g, seed_boxes, -10.0, 70.0, 0.5, 40.0)
        idx = (torch.rand(seed_boxes, generator=g) < 0.5).float().unsqueeze(1)
        rois = torch.cat([torch.cat([idx, b], 1), special], 0)
        y = torchvision.ops.roi_align(x, rois, (oh, ow), spatial_scale=scale, sampling_ratio=sr,
                                      aligned=aligned)
        tensors += [(name + ".rois", rois), (name + ".y", y)]
        cases[name] = {"out_h": oh, "out_w": ow, "scale": scale, "sampling_ratio": sr,
                       "aligned": aligned}
    tensors.append(("roi.x", x))

    # ---- nms / batched_nms ----
    centers = torch.rand(8, 2, generator=g) * 80
    pick = torch.randint(0, 8, (80,), generator=g)
    c = centers[pick] + torch.randn(80, 2, generator=g) * 4
    wh = torch.rand(80, 2, generator=g) * 20 + 6
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    scores = torch.randperm(80, generator=g).float() / 80 + torch.rand(80, generator=g) * 1e-3
    groups = torch.randint(0, 4, (80,), generator=g)
    tensors += [("nms.boxes", boxes), ("nms.scores", scores), ("nms.groups", groups)]
    for thr in (0.5, 0.7):
        tag = str(thr).replace(".", "")
        tensors.append(("nms.keep" + tag, torchvision.ops.nms(boxes, scores, thr)))
        tensors.append(("nms.bkeep" + tag,
                        box_ops._batched_nms_vanilla(boxes, scores, groups, thr)))

    # ---- decode ----
    anchors = random_boxes(g, 50, -20.0, 100.0, 1.0, 60.0)
    deltas = torch.randn(50, 4, generator=g) * 0.5
    deltas[::7, 2] = 30.0   # beyond the clamp after the /5 of the box-head weights
    deltas[3::7, 3] = 25.0
    tensors += [("decode.anchors", anchors), ("decode.deltas", deltas)]
    clip = math.log(1000.0 / 16)
    for tag, w in (("w1", (1.0, 1.0, 1.0, 1.0)), ("w10", (10.0, 10.0, 5.0, 5.0))):
        coder = BoxCoder(w, bbox_xform_clip=clip)
        tensors.append(("decode." + tag, coder.decode_single(deltas, anchors)))

    # ---- anchors: torchvision's (rounded) and Detectron2's formula (unrounded) ----
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.poolers import LevelMapper
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    gen = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=(ratios,) * len(sizes))
    for s, cell in zip(sizes, gen.cell_anchors):
        tensors.append(("anchors.tv%d" % s, cell))
        rows = []
        for r in ratios:  # detectron2 DefaultAnchorGenerator.generate_cell_anchors
            w = math.sqrt(s * s / r)
            h = r * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        tensors.append(("anchors.d2%d" % s, torch.tensor(rows)))
    one = AnchorGenerator(sizes=((64,),), aspect_ratios=(ratios,))
    tensors.append(("anchors.grid_tv64_5x7_s16",
                     one.grid_anchors([[5, 7]], [[torch.tensor(16), torch.tensor(16)]])[0]))

    # ---- FPN level of each box ----
    lb = random_boxes(g, 300, 0.0, 800.0, 1.0, 900.0)
    tensors.append(("levels.boxes", lb))
    tensors.append(("levels.tv", LevelMapper(2, 5)([lb]) + 2))
    area = (lb[:, 2] - lb[:, 0]) * (lb[:, 3] - lb[:, 1])  # detectron2 poolers.assign_boxes_to_levels
    d2 = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-8))
    tensors.append(("levels.d2", torch.clamp(d2, min=2, max=5).to(torch.int64)))

    # ---- Detectron2 mask paste (grid_sample) and the ShadowTutor label map ----
    H, W = 40, 56
    pm = torch.rand(7, 28, 28, generator=g)
    pb = random_boxes(g, 7, -8.0, 45.0, 4.0, 30.0)
    pasted = []
    for i in range(7):
        x0, y0, x1, y1 = pb[i].tolist()
        img_y = (torch.arange(0, H, dtype=torch.float32) + 0.5 - pb[i, 1]) / (pb[i, 3] - pb[i, 1]) * 2 - 1
        img_x = (torch.arange(0, W, dtype=torch.float32) + 0.5 - pb[i, 0]) / (pb[i, 2] - pb[i, 0]) * 2 - 1
        gx = img_x[None, None, :].expand(1, H, W)
        gy = img_y[None, :, None].expand(1, H, W)
        grid = torch.stack([gx, gy], dim=3)
        img = torch.nn.functional.grid_sample(pm[i][None, None], grid, align_corners=False)
        pasted.append((img[0, 0] >= 0.5).to(torch.uint8))
    pasted = torch.stack(pasted)
    classes = torch.tensor([0, 2, 5, 16, 3, 0, 23])
    order = [[0], [1], [2, 5, 7], [14], [16], [17], [20], [23]]
    label = torch.full((H, W), 8, dtype=torch.uint8)
    for ci, ids in enumerate(order):  # dod_server.py sem_seg_label
        sel = torch.zeros(len(classes), dtype=torch.bool)
        for c in ids:
            sel |= classes == c
        if sel.any():
            label[pasted[sel].any(0).bool()] = ci
    tensors += [("paste.masks", pm), ("paste.boxes", pb), ("paste.out", pasted),
                ("paste.classes", classes), ("paste.label", label)]

    # ---- RPN proposal selection: torchvision's filter_proposals and Detectron2's rules ----
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
    img_h, img_w = 250, 330
    grids = [(16, 21, 16, 32), (8, 11, 32, 64), (4, 6, 64, 128), (2, 3, 128, 256), (1, 2, 256, 512)]
    logits, deltas, anchors, counts = [], [], [], []
    for gh, gw, stride, size in grids:
        one = AnchorGenerator(sizes=((size,),), aspect_ratios=(ratios,))
        a = one.grid_anchors([[gh, gw]], [[torch.tensor(stride), torch.tensor(stride)]])[0]
        n = a.shape[0]
        logits.append(torch.randn(n, generator=g) * 3)
        deltas.append(torch.randn(n, 4, generator=g) * 0.3)
        anchors.append(a)
        counts.append(n)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=clip)
    rpn = RegionProposalNetwork(AnchorGenerator(), RPNHead(8, 3), 0.7, 0.3, 256, 0.5,
                                dict(training=2000, testing=1000), dict(training=2000, testing=1000),
                                0.7).eval()
    all_logits, all_deltas, all_anchors = torch.cat(logits), torch.cat(deltas), torch.cat(anchors)
    props = coder.decode(all_deltas, [all_anchors]).view(1, -1, 4)
    tvb, tvs = rpn.filter_proposals(props, all_logits.view(1, -1), [(img_h, img_w)], counts)
    # Detectron2 find_top_rpn_proposals (test mode), with exact per-level NMS
    cb, cs, cl = [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
        top = lg.topk(min(1000, lg.shape[0])).indices
        cb.append(coder.decode_single(dl[top], an[top]))
        cs.append(lg[top])
        cl.append(torch.full((top.shape[0],), lvl, dtype=torch.int64))
    b, sc, lv = torch.cat(cb), torch.cat(cs), torch.cat(cl)
    b[:, 0::2] = b[:, 0::2].clamp(min=0, max=img_w)
    b[:, 1::2] = b[:, 1::2].clamp(min=0, max=img_h)
    ok = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
    b, sc, lv = b[ok], sc[ok], lv[ok]
    keep = box_ops._batched_nms_vanilla(b, sc, lv, 0.7)[:1000]
    tensors += [("rpn.logits", all_logits), ("rpn.deltas", all_deltas),
                ("rpn.counts", torch.tensor(counts)), ("rpn.tv_boxes", tvb[0]), ("rpn.tv_scores", tvs[0]),
                ("rpn.d2_boxes", b[keep]), ("rpn.d2_scores", sc[keep])]
    cases["rpn"] = {"img_h": img_h, "img_w": img_w, "grids": grids}

    # ---- box-head inference: torchvision postprocess_detections, Detectron2's rules ----
    from torchvision.models.detection.roi_heads import RoIHeads
    R, img_h, img_w = 64, 240, 320
    prop = random_boxes(g, R, -10.0, 300.0, 8.0, 120.0)
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    for tag, classes in (("tv", 91), ("d2", 81)):
        lg = torch.randn(R, classes, generator=g)
        boost = torch.randint(0, classes, (R, 3), generator=g)
        lg.scatter_add_(1, boost, torch.rand(R, 3, generator=g) * 3 + 3)
        reg = classes if tag == "tv" else classes - 1
        dl = torch.randn(R, reg * 4, generator=g) * 0.5
        tensors += [("boxinf.%s_logits" % tag, lg), ("boxinf.%s_deltas" % tag, dl)]
        if tag == "tv":
            b, sc, lab = heads.postprocess_detections(lg, dl, [prop], [(img_h, img_w)])
            b, sc, lab = b[0], sc[0], lab[0]
        else:  # fast_rcnn_inference_single_image, ShadowTutor's score threshold 0.5
            coder10 = BoxCoder((10.0, 10.0, 5.0, 5.0), bbox_xform_clip=clip)
            boxes = torch.stack([coder10.decode_single(dl[:, 4 * j:4 * j + 4], prop)
                                 for j in range(reg)], 1)
            boxes[..., 0::2] = boxes[..., 0::2].clamp(min=0, max=img_w)
            boxes[..., 1::2] = boxes[..., 1::2].clamp(min=0, max=img_h)
            scores = torch.softmax(lg, -1)[:, :-1]
            mask = scores > 0.5
            inds = mask.nonzero()
            bb, ss = boxes[mask], scores[mask]
            keep = box_ops._batched_nms_vanilla(bb, ss, inds[:, 1], 0.5)[:100]
            b, sc, lab = bb[keep], ss[keep], inds[keep, 1]
        tensors += [("boxinf.%s_boxes" % tag, b), ("boxinf.%s_scores" % tag, sc),
                    ("boxinf.%s_classes" % tag, lab)]
    tensors.append(("boxinf.proposals", prop))
    cases["boxinf"] = {"img_h": img_h, "img_w": img_w}

    meta = {"generator": "tools/make_teacher_ops_golden.py", "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__, "cases": json.dumps(cases)}
    with open(OUT, "wb") as f:
        f.write(encode(tensors, meta))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
