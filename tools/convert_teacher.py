#!/usr/bin/env python3
"""Converts Mask R-CNN R50-FPN weights to the teacher port's file (MASKRCNN.md §8): safetensors,
float32, Detectron2 names, Detectron2's class layout (80 classes + background last; box rows per
class; 80 mask channels). Run it on your own machine:

    python3 tools/convert_teacher.py d2 model_final_f10217.pkl teacher.safetensors   # numpy only
    python3 tools/convert_teacher.py tv maskrcnn_resnet50_fpn_coco.pth tv.safetensors  # needs torch

Detectron2 .pkl: {"model": {name: ndarray}, "__author__": ...}; cell_anchors, pixel_mean/std and
num_batches_tracked are dropped. torchvision .pth: names mapped per MASKRCNN.md §8.3, the 91-class
rows re-ordered to Detectron2's (the 11 "N/A" classes dropped). Note that torchvision's weights are
only meaningful with torchvision's conventions (MaskRcnnOptions::torchvision()), even under these
names. BN running statistics are kept; the C++ side folds FrozenBN at load time.
"""
import json
import pickle
import struct
import sys

import numpy as np

# COCO category ids of Detectron2's 80 contiguous classes, in order (= torchvision label ids).
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49,
            50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74,
            75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]

HEADS = {"rpn.head.conv.0.0.": "proposal_generator.rpn_head.conv.",
         "rpn.head.cls_logits.": "proposal_generator.rpn_head.objectness_logits.",
         "rpn.head.bbox_pred.": "proposal_generator.rpn_head.anchor_deltas.",
         "roi_heads.box_head.fc6.": "roi_heads.box_head.fc1.",
         "roi_heads.box_head.fc7.": "roi_heads.box_head.fc2.",
         "roi_heads.box_predictor.": "roi_heads.box_predictor.",
         "roi_heads.mask_predictor.conv5_mask.": "roi_heads.mask_head.deconv.",
         "roi_heads.mask_predictor.mask_fcn_logits.": "roi_heads.mask_head.predictor."}
for _k in range(4):
    HEADS["roi_heads.mask_head.%d.0." % _k] = "roi_heads.mask_head.mask_fcn%d." % (_k + 1)


def backbone_name(tv):
    """torchvision 'backbone.…' name -> Detectron2 name."""
    n = tv[len("backbone."):]
    n = n.replace("body.conv1.", "bottom_up.stem.conv1.").replace("body.bn1.", "bottom_up.stem.conv1.norm.")
    for layer in range(1, 5):
        n = n.replace("body.layer%d." % layer, "bottom_up.res%d." % (layer + 1))
    for k in (1, 2, 3):
        n = n.replace(".bn%d." % k, ".conv%d.norm." % k)
    n = n.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    for j in range(4):
        n = n.replace("fpn.inner_blocks.%d.0." % j, "fpn_lateral%d." % (j + 2))
        n = n.replace("fpn.layer_blocks.%d.0." % j, "fpn_output%d." % (j + 2))
    return "backbone." + n


def tv_to_d2(state, reorder_classes=True):
    """torchvision state dict (name -> ndarray) -> Detectron2 names; with reorder_classes the
    91-class (or 81-class) rows become Detectron2's 80 + background-last layout."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith("backbone."):
            out[backbone_name(k)] = v
            continue
        for a, b in HEADS.items():
            if k.startswith(a):
                out[b + k[len(a):]] = v
                break
        else:
            raise SystemExit("convert_teacher: unexpected torchvision tensor %s" % k)
    if reorder_classes:
        cls_w = out["roi_heads.box_predictor.cls_score.weight"]
        rows = COCO_IDS if cls_w.shape[0] == 91 else list(range(1, 81))
        if cls_w.shape[0] not in (91, 81):
            raise SystemExit("convert_teacher: cls_score has %d rows, expected 91 or 81" % cls_w.shape[0])
        for part in ("weight", "bias"):
            c = out["roi_heads.box_predictor.cls_score." + part]
            out["roi_heads.box_predictor.cls_score." + part] = np.concatenate([c[rows], c[[0]]], 0)
            b = out["roi_heads.box_predictor.bbox_pred." + part]
            idx = [4 * r + q for r in rows for q in range(4)]
            out["roi_heads.box_predictor.bbox_pred." + part] = b[idx]
            m = out["roi_heads.mask_head.predictor." + part]
            out["roi_heads.mask_head.predictor." + part] = m[rows]
    return out


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, off = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        data = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def main(argv):
    if len(argv) != 4 or argv[1] not in ("d2", "tv"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, src, dst = argv[1:]
    if kind == "d2":
        with open(src, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        model = data["model"] if isinstance(data, dict) and "model" in data else data
        tensors = {k: np.asarray(v) for k, v in model.items()
                   if not (k.startswith("proposal_generator.anchor_generator") or k in ("pixel_mean", "pixel_std")
                           or k.endswith("num_batches_tracked"))}
    else:
        import torch
        state = torch.load(src, map_location="cpu")
        tensors = tv_to_d2({k: v.numpy() for k, v in state.items()})
    write_safetensors(dst, tensors, {"converter": "tools/convert_teacher.py", "source": kind})
    print("convert_teacher: %d tensors -> %s" % (len(tensors), dst))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
