// One-process ShadowTutor: the edge runs the student on every frame; at key frames the server
// half distils its own copy on the recorded teacher's label map and the update is applied on
// the edge after `delay` frames (P-1 ... P-8 in the paper).
#include "edge/simulate.h"

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "io/frame_decoder.h"
#include "io/frame_encoder.h"
#include "io/video.h"
#include "nn/key_frame.h"
#include "teacher/teacher.h"
#include "teacher_port/maskrcnn.h"
#include "tensor/autograd.h"

namespace st::edge {

using Clock = std::chrono::steady_clock;
static double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

namespace {
std::vector<uint8_t> to_u8(const Tensor& labels) {
  auto v = labels.to_vector<int64_t>();
  return std::vector<uint8_t>(v.begin(), v.end());
}
}  // namespace

SimResult simulate(const SimOptions& opt) {
  ST_CHECK(opt.delay >= 1 && opt.delay <= opt.distill.min_stride, "simulate: delay ", opt.delay,
           " must be within 1..MIN_STRIDE (", opt.distill.min_stride, ")");
  ST_CHECK(int(!opt.labels.empty()) + int(!opt.maskrcnn.empty()) + int(!opt.teacher_cmd.empty()) == 1,
           "simulate: give exactly one teacher (recorded labels, Mask R-CNN weights or a teacher "
           "command)");
  ST_CHECK(opt.eval_every >= 1, "simulate: eval_every must be >= 1, got ", opt.eval_every);
  ST_CHECK(opt.jpeg_quality >= 1 && opt.jpeg_quality <= 100, "simulate: JPEG quality ",
           opt.jpeg_quality, " is not within 1..100");
  auto source = io::open_video(opt.video);
  std::unique_ptr<teachers::Teacher> teacher, server_teacher;  // server_teacher: see below
  SimResult r;
  if (!opt.maskrcnn.empty()) {
    auto model = teachers::MaskRcnnTeacher::load(opt.maskrcnn, opt.teacher_device);
    teacher = std::make_unique<teachers::MaskRcnnTeacher>(model, opt.maskrcnn.string());
    r.teacher = teacher->describe() + " (Detectron2 conventions, " +
                (opt.teacher_device.is_cuda() ? "cuda:" + std::to_string(opt.teacher_device.index) : "cpu") + ")";
  } else if (!opt.teacher_cmd.empty()) {
    teacher = std::make_unique<teachers::CommandTeacher>(opt.teacher_cmd, opt.teacher_timeout_s);
    r.teacher = teacher->describe();
    // A teacher command may carry state from frame to frame (the demo's RVM is recurrent). The
    // server's teacher process sees a session's key frames and nothing else (docs/teacher_pipe.md),
    // so the server half gets a process of its own; the reference one sees the evaluated raw
    // frames, the same sequence whatever the key frames are or how they travel. Only naive
    // offloading of raw frames, every frame evaluated, sends the server the reference's sequence.
    const bool same_sequence = opt.mode == Mode::Naive && opt.key_encoding == FrameEncoding::RawBgr &&
                               opt.eval_every == 1;
    if (opt.mode != Mode::Wild && !same_sequence) {
      server_teacher = std::make_unique<teachers::CommandTeacher>(opt.teacher_cmd, opt.teacher_timeout_s);
      r.teacher += "; a second process for the server half's frames";
    }
  } else {
    teacher = std::make_unique<teachers::RecordedTeacher>(opt.labels);
    r.teacher = teacher->describe();
  }
  const int64_t H = source->height(), W = source->width();

  r.mode = mode_name(opt.mode);
  const FrameEncoding key_encoding =
      opt.key_encoding_auto && opt.weights.empty() && opt.key_encoding == FrameEncoding::Jpeg
          ? FrameEncoding::Png : opt.key_encoding;
  r.key_encoding = frame_encoding_name(key_encoding);
  if (key_encoding == FrameEncoding::Jpeg) r.key_encoding += ":" + std::to_string(opt.jpeg_quality);
  const bool live_teacher = opt.labels.empty();  // recorded labels ignore the pixels
  const bool raw_keys = key_encoding == FrameEncoding::RawBgr;
  r.delay = opt.delay;
  r.step_histogram.assign(size_t(opt.distill.max_updates + 1), 0);
  r.rewind_optimizer = opt.distill.rewind_optimizer;

  nn::Student edge_student, server_student;
  if (!opt.weights.empty()) {
    edge_student.load_safetensors(opt.weights);
    r.weights = "pretrained: " + opt.weights.string();
  } else {
    r.weights = "random init";
  }
  server_student.load_state(edge_student.named_parameters(), "edge student");
  edge_student.set_partial_split(opt.split);  // both halves agree on what a blob holds
  server_student.set_partial_split(opt.split);
  const nn::Distillation dmode = nn::distillation_of(opt.mode);
  r.split = nn::split_name(opt.split);
  r.parameters = server_student.parameter_count();
  for (const Tensor& t : server_student.trained_parameters(dmode)) {
    ++r.trained_tensors;
    r.trained_parameters += t.numel();
  }
  std::unique_ptr<nn::Distiller> distiller;
  if (dmode != nn::Distillation::None)  // partial, full: the server half distils
    distiller = std::make_unique<nn::Distiller>(server_student, dmode, opt.distill);
  edge_student.configure(nn::Distillation::None);  // the edge never trains
  // Compact updates: the server half's mirror of the edge half's weights.
  std::unique_ptr<nn::UpdateEncoder> updater;
  if (opt.update && distiller)
    updater = std::make_unique<nn::UpdateEncoder>(edge_student, dmode, *opt.update);
  r.update = opt.update ? opt.update->name() : blob_encoding_name(opt.encoding);

  if (!opt.predictions_dir.empty()) std::filesystem::create_directories(opt.predictions_dir);
  if (!opt.overlays_dir.empty()) std::filesystem::create_directories(opt.overlays_dir);

  const int64_t frame_bytes = H * W * 3, label_bytes = H * W;
  int64_t next_key = 0, stride = opt.distill.min_stride;
  // A pending update: the blob (empty = "no change") and the frame before which it applies.
  std::vector<uint8_t> pending;
  uint64_t pending_hash = 0;  // compact updates: what the edge half must hold after `pending`
  int64_t apply_at = -1;
  double student_ms = 0, step_ms = 0, teacher_ms = 0;
  int64_t steps_total = 0, teacher_calls = 0;
  auto t_start = Clock::now();

  io::Frame f;
  while ((opt.max_frames < 0 || r.frames < opt.max_frames) && source->next(f)) {
    const int64_t i = f.index;
    ST_CHECK(f.bgr.height == H && f.bgr.width == W, "simulate: frame ", i, " changed size");
    if (apply_at == i) {  // swap between frames, never during one
      if (!pending.empty()) {
        nn::apply_update(edge_student, dmode, pending.data(), pending.size());
        ST_CHECK(!updater || nn::weights_hash(edge_student) == pending_hash,
                 "simulate: after the update of frame ", i - opt.delay, " the edge half's weights "
                 "differ from the server half's mirror of them");
      }
      apply_at = -1;
    }
    const bool key = distiller && i == next_key;
    const bool evaluate = i % opt.eval_every == 0;
    const bool offload = key || opt.mode == Mode::Naive;  // this frame goes up
    auto run_teacher = [&](teachers::Teacher& t, const uint8_t* bgr) {
      auto t0 = Clock::now();
      teachers::TeacherOutput out = t.run(uint64_t(i), bgr, H, W);
      teacher_ms += ms_since(t0);
      ++teacher_calls;
      ST_CHECK(out.height == H && out.width == W && int64_t(out.labels.size()) == H * W,
               "simulate: the teacher answered frame ", i, " with ", out.width, "x", out.height,
               " labels for a ", W, "x", H, " frame");
      return out;
    };
    // What goes up: the frame in the key-frame encoding; the server half gets what it decodes.
    int64_t up_bytes = frame_bytes;
    std::vector<uint8_t> decoded;  // empty: raw, the server has the frame itself
    if (offload && !raw_keys) {
      const std::vector<uint8_t> data = io::encode_key_frame(f.bgr, key_encoding, opt.jpeg_quality);
      up_bytes = int64_t(data.size());
      decoded = io::decode_key_frame_bgr(data.data(), data.size(), key_encoding, W, H);
    }
    // The teacher on the raw frame: the reference of every evaluated frame, and the server's
    // target unless the server has a teacher process of its own or a live teacher must see the
    // decoded frame instead.
    const bool server_label = offload && (server_teacher || (!decoded.empty() && live_teacher));
    const uint8_t* server_pixels = decoded.empty() ? f.bgr.pixels.data() : decoded.data();
    teachers::TeacherOutput truth, server_truth;
    if (evaluate || (offload && !server_label)) truth = run_teacher(*teacher, f.bgr.pixels.data());
    if (server_label)
      server_truth = run_teacher(server_teacher ? *server_teacher : *teacher, server_pixels);
    const teachers::TeacherOutput& target = server_label ? server_truth : truth;

    std::vector<uint8_t> pred;
    if (opt.mode == Mode::Naive) {
      // Every frame goes up; the client waits for the teacher's label map.
      pred = target.labels;
      r.bytes_up += up_bytes + kMessageHeaderBytes;
      r.bytes_down += label_bytes + kMessageHeaderBytes;
    } else {
      Tensor x = nn::Student::preprocess_bgr(f.bgr.pixels.data(), H, W);
      auto ts = Clock::now();
      Tensor labels;
      {
        NoGradGuard ng;
        labels = argmax_channels(edge_student.forward(x));
      }
      student_ms += ms_since(ts);
      pred = to_u8(labels);

      if (key) {
        // Key frame: the frame goes up; the server distils and answers (SPEC §6).
        ++r.key_frames;
        r.bytes_up += up_bytes + kMessageHeaderBytes;
        const Tensor xs = decoded.empty() ? x : nn::Student::preprocess_bgr(decoded.data(), H, W);
        nn::KeyFrameAnswer a =
            nn::answer_key_frame(*distiller, xs, target.labels, H, W,
                                 target.boxes ? &*target.boxes : nullptr, int(stride), opt.encoding);
        const nn::DistillOutcome& o = a.outcome;
        if (o.steps > 0) {  // the whole Algorithm 1 run, per step taken
          step_ms += a.distill_ms;
          steps_total += o.steps;
        }
        r.step_histogram[size_t(o.steps)]++;
        r.restores += o.restored ? 1 : 0;
        stride = a.next_stride;
        r.key_log.push_back({i, o.steps, o.acc_before, o.acc, a.next_stride,
                             nn::weights_hash(server_student)});
        if (o.steps > 0) {
          pending = updater ? updater->encode(server_student) : std::move(a.blob);
          if (updater) pending_hash = updater->mirror_hash();
          r.bytes_down += int64_t(pending.size()) + kMessageHeaderBytes;
        } else {
          pending.clear();  // "no change"
          r.bytes_down += kMessageHeaderBytes;
        }
        apply_at = i + opt.delay;
        next_key = i + stride;
      }
    }
    r.naive_bytes_up += frame_bytes + kMessageHeaderBytes;
    r.naive_bytes_down += label_bytes + kMessageHeaderBytes;
    if (evaluate) {
      r.frame_miou.push_back(nn::miou(pred, truth.labels));
      r.miou_frames.push_back(i);
    }
    char name[32];
    std::snprintf(name, sizeof name, "%06lld.png", (long long)i);
    if (!opt.predictions_dir.empty()) io::write_label_png(opt.predictions_dir / name, pred, H, W);
    if (!opt.overlays_dir.empty()) io::write_overlay_png(opt.overlays_dir / name, f.bgr, pred);
    ++r.frames;
    if (opt.progress) {
      double s = std::chrono::duration<double>(Clock::now() - t_start).count();
      std::fprintf(stderr, "\r[%s P-%d] frame %lld  mIoU %.3f  stride %lld  keys %lld  %.2f fps   ",
                   r.mode.c_str(), opt.delay, (long long)i, r.frame_miou.empty() ? 0.0 : r.frame_miou.back(), (long long)stride,
                   (long long)r.key_frames, double(r.frames) / std::max(s, 1e-9));
      std::fflush(stderr);
    }
  }
  if (opt.progress) std::fprintf(stderr, "\n");
  ST_CHECK(r.frames > 0, "simulate: no frames read from ", opt.video.string());
  double sum = 0;
  for (double m : r.frame_miou) sum += m;
  r.mean_miou = r.frame_miou.empty() ? 0.0 : sum / double(r.frame_miou.size());
  r.teacher_calls = teacher_calls;
  r.mean_student_ms = opt.mode == Mode::Naive ? 0 : student_ms / double(r.frames);
  r.mean_step_ms = steps_total ? step_ms / double(steps_total) : 0;
  r.mean_teacher_ms = teacher_ms / double(std::max<int64_t>(teacher_calls, 1));
  r.wall_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  return r;
}

std::string to_json(const SimResult& r) {
  nlohmann::json j;
  j["mode"] = r.mode;
  j["delay"] = r.delay;
  j["key_encoding"] = r.key_encoding;
  j["update"] = r.update;
  j["weights"] = r.weights;
  j["teacher"] = r.teacher;
  j["teacher_calls"] = r.teacher_calls;
  j["frames"] = r.frames;
  j["key_frames"] = r.key_frames;
  j["key_frame_ratio"] = r.frames ? double(r.key_frames) / double(r.frames) : 0.0;
  j["mean_miou"] = r.mean_miou;
  j["step_histogram"] = r.step_histogram;
  j["trained"] = {{"split", r.split},
                  {"tensors", r.trained_tensors},
                  {"parameters", r.trained_parameters},
                  {"share", r.parameters ? double(r.trained_parameters) / double(r.parameters) : 0.0}};
  j["best_restore"] = {{"restores", r.restores},
                       {"rewinds_optimizer", r.rewind_optimizer}};
  j["bytes"] = {{"up_total", r.bytes_up},
                {"down_total", r.bytes_down},
                {"up_per_key_frame", r.key_frames ? r.bytes_up / r.key_frames : 0},
                {"down_per_key_frame", r.key_frames ? r.bytes_down / r.key_frames : 0},
                {"naive_up_total", r.naive_bytes_up},
                {"naive_down_total", r.naive_bytes_down},
                {"total_vs_naive", double(r.bytes_up + r.bytes_down) /
                                       double(std::max<int64_t>(r.naive_bytes_up + r.naive_bytes_down, 1))}};
  j["time_ms"] = {{"student_inference_mean", r.mean_student_ms},
                  {"distillation_step_mean", r.mean_step_ms},
                  {"teacher_mean", r.mean_teacher_ms},
                  {"wall_s", r.wall_s}};
  j["frame_miou"] = r.frame_miou;
  if (int64_t(r.miou_frames.size()) != r.frames) j["miou_frames"] = r.miou_frames;
  return j.dump(1);
}

}  // namespace st::edge
