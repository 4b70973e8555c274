// The Mask R-CNN R50-FPN teacher end to end (MASKRCNN.md): preprocessing and padding, backbone,
// RPN, proposal selection, box head and inference, mask head, paste, the 9-class label map.
// Detectron2 conventions by default (what ShadowTutor ran: BGR 0..255, no resize, score 0.5);
// MaskRcnnOptions::torchvision() gives the switches that reproduce torchvision's forward,
// including its resize (shorter side to min_size unless the longer exceeds max_size) and its
// interpolating mask paste.
#pragma once
#include <array>
#include <vector>

#include "teacher_port/backbone.h"
#include "teacher_port/box_inference.h"
#include "teacher_port/heads.h"

namespace st::teacher {

struct MaskRcnnOptions {
  Convention convention = Convention::Detectron2;
  bool stride_in_1x1 = true;
  double bn_eps = 1e-5;
  bool bgr255 = true;  // input as BGR 0..255 (Detectron2); else RGB 0..1 (torchvision)
  std::array<float, 3> mean{103.530f, 116.280f, 123.675f};  // in the input's channel order
  std::array<float, 3> std{1.0f, 1.0f, 1.0f};
  double score_thresh = 0.5;  // ShadowTutor's teacher; Detectron2's default is 0.05
  double mask_thresh = 0.5;
  // Resize before the network (torchvision's GeneralizedRCNNTransform: bilinear, scale =
  // min(min_size / shorter side, max_size / longer side)); 0 = use the input at its own size.
  // Boxes and masks are returned in the input's pixels either way.
  int64_t min_size = 0, max_size = 0;
  static MaskRcnnOptions detectron2() { return {}; }
  static MaskRcnnOptions torchvision();
};

class MaskRcnn {
 public:
  MaskRcnn(const safetensors::File& weights, MaskRcnnOptions o = {});
  void to(Device d);

  struct Result {
    Detections detections;                    // boxes in input pixels, scores, classes
    Tensor mask_probs;                        // (D, 28, 28) of each detection's class
    std::vector<std::vector<uint8_t>> masks;  // pasted binary masks, H*W each (the convention's paste)
    std::vector<uint8_t> label_map;           // ShadowTutor's 9-class map (H*W; Detectron2 classes)
    // Wall time of each stage (ms; the device is synchronised at each boundary): preprocess,
    // backbone, RPN head + proposal selection, box head + inference, mask head, paste + label map.
    struct Timings {
      double preprocess = 0, backbone = 0, rpn = 0, box = 0, mask = 0, paste = 0;
      double total() const { return preprocess + backbone + rpn + box + mask + paste; }
    } ms;
  };
  // One BGR frame (interleaved, h x w).
  Result run(const uint8_t* bgr, int64_t h, int64_t w) const;
  // The normalised, resized (if the options say so), zero-padded (to /32) input tensor
  // (1, 3, H', W') on the model's device.
  Tensor preprocess(const uint8_t* bgr, int64_t h, int64_t w) const;
  // The size the network sees an h x w input at (before padding): {h, w} without resize.
  std::array<int64_t, 2> network_size(int64_t h, int64_t w) const;
  Device device() const { return device_; }
  const MaskRcnnOptions& options() const { return opt_; }

 private:
  MaskRcnnOptions opt_;
  Backbone backbone_;
  RpnHead rpn_;
  BoxHead box_;
  MaskHead mask_;
  Device device_ = Device::cpu();
};

}  // namespace st::teacher
