// The edge's frame loop (client.h): EdgeSession runs the student on every frame on the caller's
// thread and drives the network thread (net_client.h) between frames.
#include "edge/client.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "io/frame_encoder.h"
#include "io/video.h"
#include "nn/blob.h"
#include "nn/update.h"
#include "nn/distill.h"
#include "net/net.h"
#include "tensor/autograd.h"
#include "tensor/image.h"

namespace st::edge {

// WELCOME.train_from counts the student's blocks as nn/student.h does.
static_assert(protocol::kMaxTrainFrom == nn::kStudentBlocks - 1);
static_assert(protocol::kPaperTrainFrom == nn::kDefaultSplit);

using namespace st::protocol;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- progress line

double progress_interval_s(bool terminal) { return terminal ? 0.2 : 5.0; }

bool progress_due(bool terminal, double since_last_s, bool first_frame) {
  return first_frame || since_last_s >= progress_interval_s(terminal);
}

std::string format_progress(const ProgressLine& p, bool terminal) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s[edge %s] frame %lld  %.2f fps  stride %lld  keys %lld  stale %lld  up %.2f MB  "
                "down %.2f MB  %s%s",
                terminal ? "\r" : "", p.mode.c_str(), (long long)p.frame, p.fps,
                (long long)p.stride, (long long)p.key_frames, (long long)p.stale_frames,
                double(p.bytes_up) / 1e6, double(p.bytes_down) / 1e6,
                p.online ? "online" : "offline", terminal ? "   " : "\n");
  return buf;
}

// ---------------------------------------------------------------- EdgeSession

namespace {

double secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// `t` plus `seconds`, clipped to 0..1e9 s so that infinity stays representable.
Clock::time_point after(Clock::time_point t, double seconds) {
  return t + std::chrono::duration_cast<Clock::duration>(
                 std::chrono::duration<double>(std::clamp(seconds, 0.0, 1e9)));
}

constexpr double kStopPollS = 0.05;  // how often waits look at EdgeOptions::stop

// One run of the edge (run_edge): the frame loop and everything it keeps between frames. The
// network thread (net_) owns the connection; this object, on the caller's thread, owns the
// session state, the two weight buffers and the result. A frame, in order (run): the next frame
// (next_frame), the pacing (pace), the network events that arrived meanwhile (handle: updates
// are swapped in here, between frames), what the mode asks for this frame (offload_naive, or
// wait_if_due and send_key_frame_if_due), the student (segment), the outputs (write_outputs),
// the frame time, the frame log, the progress line and on_frame (end_frame).
class EdgeSession {
 public:
  explicit EdgeSession(const EdgeOptions& opt);
  EdgeResult run();

 private:
  // ---- network events ----
  void handle(NetClient::Event& e);
  void on_connected(uint64_t epoch);
  void on_welcome(uint64_t epoch, Welcome& w);
  void on_update(uint64_t epoch, const Update& u);
  void on_labels(uint64_t epoch, Labels& l);
  void on_weights(uint64_t epoch, const Weights& w);  // the answer to our RESYNC
  // A blob in `message` (UPDATE, WEIGHTS) could not be applied: the session on `epoch` ends
  // (the connection is dropped and reconnects) with `why` in the result's errors.
  void end_session(uint64_t epoch, const char* message, const std::string& why);
  // Unpacks a blob into the spare copy and swaps the copies (between two frames).
  void apply_blob(nn::Distillation scope, const std::vector<uint8_t>& blob);
  bool stop_requested() const { return opt_.stop && opt_.stop->load(std::memory_order_relaxed); }
  // The next network event within `seconds` (false: none). With a stop flag it waits in slices,
  // so that a stop request ends the wait within 50 ms.
  bool wait_event(NetClient::Event& e, double seconds);
  // Handles network events while `waiting()` holds, until a stop is requested or `until`
  // passes; counts the time as blocked.
  void block_while(const std::function<bool()>& waiting, Clock::time_point until);
  // Blocks until the outstanding answer arrives or the session is lost (block_while).
  void block_until(Clock::time_point until);
  // The answer to the outstanding key frame did not come within update_timeout_s.
  void give_up();
  // At start, up to initial_wait_s for the first session (a head start, not a requirement).
  void wait_for_first_session();

  // ---- one frame ----
  // The next frame; with opt.loop the video starts again when it ends, its indices shifted
  // past the previous passes.
  bool next_frame(io::Frame& f);
  void pace();  // frame_interval_s > 0: sleeps until this frame's time
  KeyFrame make_key_frame(const io::Frame& f);
  // Naive offloading: the frame goes up and the edge waits for its label map (empty: none came).
  std::vector<uint8_t> offload_naive(const io::Frame& f);
  // Partial/full: at the frame where the outstanding update is due, waits for it once, at most
  // wait_bound(); drops the connection update_timeout_s after it became due. True: this frame
  // runs stale (the update is due and not here).
  bool wait_if_due();
  // The wait bound: max_wait_s, or max_wait_frames frame times.
  double wait_bound() const;
  // Frames after its key frame at which an update is due: MIN_STRIDE, or apply_after_frames.
  int64_t due_after() const;
  // The session is gone (dropped or lost): nothing outstanding any more; a reproducible run
  // (apply_after_frames) keeps the unanswered key frame to send it to the next session.
  void lose_session();
  // apply_after_frames (partial/full): the frame loop looks at the network only where something
  // is due, so that a run is the same whatever the timing: at the frame an update is due it
  // handles what came and waits for the update (or the loss of the session); where a key frame
  // is due and no session is up it waits for one (both up to update_timeout_s); a key frame a
  // lost session left unanswered is sent again to the next one.
  void checkpoint();
  // Partial/full: sends this frame as the key frame when one is due and none is unanswered.
  bool send_key_frame_if_due(const io::Frame& f);
  std::vector<uint8_t> segment(const io::Frame& f);  // the student on the current weights
  // Label map and overlay files; the frame's mIoU against the reference (-1: none).
  double write_outputs(const io::Frame& f, const std::vector<uint8_t>& pred);
  // Counts the frame, logs it, shows progress; false when on_frame ends the run.
  bool end_frame(bool key_sent, bool stale, double frame_miou);
  EdgeResult finish();

  const EdgeOptions& opt_;
  EdgeResult r_;
  std::unique_ptr<io::FrameSource> source_;
  int64_t H_ = 0, W_ = 0;
  nn::Distillation dmode_;  // what an UPDATE blob holds: nn::distillation_of(opt.mode)

  // Two parameter buffers: `active_` computes frames; updates land in `spare_`, then swap.
  std::unique_ptr<nn::Student> active_, spare_;
  uint64_t layout_ = 0, cur_hash_ = 0;
  std::optional<io::LabelSource> reference_;
  std::ofstream frame_log_;
  NetClient net_;

  // Session state.
  bool session_ = false;
  uint64_t epoch_ = 0, hello_epoch_ = 0;
  Welcome welcome_;
  int64_t next_key_ = 0, stride_ = 0;
  std::optional<int64_t> outstanding_;  // key frame sent, answer not here yet
  std::optional<Labels> labels_;        // naive: the answer to the outstanding frame
  // apply_after_frames (reproducible runs): the last KEY_FRAME sent, and the index of one a lost
  // session left unanswered (sent again to the next session).
  std::optional<KeyFrame> last_key_msg_;
  std::optional<int64_t> lost_key_;
  bool resync_pending_ = false;         // RESYNC sent, WEIGHTS not here yet
  int64_t frame_i_ = 0;
  bool applied_ = false;     // an update was swapped in before this frame
  double last_acc_ = -1;     // the server's mIoU for the last update applied
  uint32_t last_steps_ = 0;  // and its distillation steps
  double miou_sum_ = 0;

  // Per outstanding key frame (partial/full): since when the edge needs its update, and whether
  // it has already waited for it.
  Clock::time_point due_since_{};
  bool due_ = false, waited_ = false;
  double frame_blocked_s_ = 0;  // blocked before the current frame
  // The running mean of the time per frame (blocked time excluded; the run's first frame, which
  // also starts the decoder and warms up the backend, only stands in until a second one is
  // measured).
  double first_frame_s_ = 0, frame_time_s_ = -1;  // < 0: no frame after the first measured yet

  // Looping (opt.loop): the index of the first frame of this pass, frames read in it, the
  // last index the source gave.
  int64_t index_base_ = 0, pass_frames_ = 0, last_index_ = -1;

  Clock::time_point t_start_, t_print_, t_next_, t_frame_end_;
  bool progress_tty_ = false;  // else a plain line every few seconds
};

EdgeSession::EdgeSession(const EdgeOptions& opt)
    : opt_(opt),
      source_(io::open_video(opt.video)),
      H_(source_->height()),
      W_(source_->width()),
      dmode_(nn::distillation_of(opt.mode)),
      net_(opt.net) {
  ST_CHECK(H_ > 0 && W_ > 0 && H_ <= kMaxFrameDim && W_ <= kMaxFrameDim, "edge: bad frame size ",
           W_, "x", H_);
  ST_CHECK(opt.mode == Mode::Partial || opt.mode == Mode::Full || opt.mode == Mode::Naive,
           "edge: mode ", mode_name(opt.mode), " is not a session mode (partial, full, naive)");
  r_.mode = mode_name(opt.mode);

  active_ = std::make_unique<nn::Student>(opt.init_seed);
  if (!opt.weights.empty()) active_->load_safetensors(opt.weights);
  spare_ = std::make_unique<nn::Student>(opt.init_seed);
  spare_->load_state(active_->named_parameters(), "edge weights");
  active_->configure(nn::Distillation::None);
  spare_->configure(nn::Distillation::None);
  active_->to(opt.device);
  spare_->to(opt.device);
  layout_ = nn::layout_hash(*active_, nn::Distillation::Full);
  cur_hash_ = nn::weights_hash(*active_);
  r_.initial_weights_hash = cur_hash_;

  if (!opt.reference_dir.empty()) {
    ST_CHECK(std::filesystem::is_directory(opt.reference_dir), "edge: reference label folder ",
             opt.reference_dir.string(), " does not exist");
    reference_.emplace(opt.reference_dir);
  }
  if (!opt.frame_log.empty()) {
    frame_log_.open(opt.frame_log);
    ST_CHECK(bool(frame_log_), "edge: cannot write the frame log ", opt.frame_log.string());
  }
  ST_CHECK(opt.overlay_every >= 1, "edge: overlay_every must be >= 1");
  ST_CHECK(opt.jpeg_quality >= 1 && opt.jpeg_quality <= 100, "edge: JPEG quality must be 1..100");
  if (!opt.predictions_dir.empty()) std::filesystem::create_directories(opt.predictions_dir);
  if (!opt.overlays_dir.empty()) std::filesystem::create_directories(opt.overlays_dir);
}

// ---- network events

void EdgeSession::apply_blob(nn::Distillation scope, const std::vector<uint8_t>& blob) {
  // A plain blob or a compact update (nn/update.h), validated (its hash too) before anything
  // changes: on an error the spare copy is untouched.
  nn::apply_update(*spare_, scope, blob.data(), blob.size());
  std::swap(active_, spare_);
  spare_->load_state(active_->named_parameters(), "edge weights");
  cur_hash_ = nn::weights_hash(*active_);
}

void EdgeSession::handle(NetClient::Event& e) {
  switch (e.kind) {
    case NetClient::Event::Connected: on_connected(e.epoch); break;
    case NetClient::Event::Disconnected:
      if (e.epoch == epoch_ && session_) {
        lose_session();
        ++r_.disconnects;
      }
      r_.errors.push_back(e.text);
      break;
    case NetClient::Event::Message: {
      Message& m = e.message;
      if (m.is<Welcome>()) on_welcome(e.epoch, m.as<Welcome>());
      else if (m.is<Update>()) on_update(e.epoch, m.as<Update>());
      else if (m.is<Labels>()) on_labels(e.epoch, m.as<Labels>());
      else if (m.is<Weights>()) on_weights(e.epoch, m.as<Weights>());
      break;
    }
  }
}

void EdgeSession::on_connected(uint64_t epoch) {
  Hello h;
  h.mode = opt_.mode;
  h.layout_hash = layout_;
  h.weights_hash = cur_hash_;
  h.frame_width = uint32_t(W_);
  h.frame_height = uint32_t(H_);
  h.accept_blobs = opt_.accept_blobs;
  h.auth_token = opt_.token;
  h.edge_name = opt_.edge_name;
  hello_epoch_ = epoch;
  net_.send(epoch, std::move(h));
}

void EdgeSession::on_welcome(uint64_t epoch, Welcome& w) {
  if (epoch != hello_epoch_) return;
  // Partial: the trained part is what the server's split says (the codec has checked its range).
  if (opt_.mode == Mode::Partial) {
    const nn::PartialSplit split{w.train_from, w.train == protocol::TrainedTensors::BiasOnly};
    if (opt_.require_split && split != *opt_.require_split) {
      const std::string why = "the server trains from " + nn::split_name(split) +
                              ", this edge requires " + nn::split_name(*opt_.require_split);
      r_.errors.push_back("WELCOME refused: " + why);
      net_.drop(epoch, why, ErrorMessage{ErrorCode::SplitMismatch, why});
      return;
    }
    if (split != active_->partial_split()) {  // what a trained-part blob holds from now on
      active_->set_partial_split(split);
      spare_->set_partial_split(split);
    }
    r_.split = nn::split_name(split);
  }
  if (w.scope == WeightsScope::Wanted) {
    // Session migration (version 3): the server continues from this edge's weights, the ones
    // HELLO named (nothing has changed them since: anything of an older connection is dropped).
    net_.send(epoch, Weights{BlobEncoding::F32,
                             nn::pack_trained(*active_, nn::Distillation::Full, BlobEncoding::F32)});
    ++r_.weights_uploads;
  }
  try {
    if (w.blob_kind != BlobEncoding::None) {
      apply_blob(w.scope == WeightsScope::Full ? nn::Distillation::Full : dmode_, w.blob);
      if (w.scope == WeightsScope::Full) ++r_.full_weight_syncs;
    }
  } catch (const std::exception& ex) {
    r_.errors.push_back(std::string("WELCOME blob refused: ") + ex.what());
    net_.drop(epoch, "bad WELCOME blob");
    return;
  }
  welcome_ = w;
  session_ = true;
  epoch_ = epoch;
  // The first key frame of a session: the next frame; reproducible runs keep their schedule
  // (a key frame lost with the previous session is sent again: checkpoint()).
  if (opt_.apply_after_frames <= 0) next_key_ = frame_i_;
  stride_ = w.min_stride;
  outstanding_.reset();
  labels_.reset();
  resync_pending_ = false;
  ++r_.welcomes;
  if (opt_.net.log)
    net::log_line("edge", "session " + std::to_string(w.session_id) + " (stride " +
                              std::to_string(w.min_stride) + ".." + std::to_string(w.max_stride) +
                              (w.scope == WeightsScope::Full     ? ", full weights received)"
                               : w.scope == WeightsScope::Wanted ? ", its weights sent)"
                                                                 : ")"));
}

void EdgeSession::on_update(uint64_t epoch, const Update& u) {
  if (!session_ || epoch != epoch_ || !outstanding_ || int64_t(u.key_frame) != *outstanding_)
    return;
  if (u.blob_kind != BlobEncoding::None && resync_pending_) {
    // Made against the server's old mirror of these weights: WEIGHTS will bring them all.
  } else if (u.blob_kind != BlobEncoding::None) {
    try {
      apply_blob(dmode_, u.blob);
      ++r_.updates_with_weights;
    } catch (const nn::WeightsMismatch& ex) {
      // Well-formed, but made for other weights than these: keep them and ask for the student.
      r_.errors.push_back(std::string("UPDATE for other weights: ") + ex.what());
      net_.send(epoch, Resync{cur_hash_});
      resync_pending_ = true;
      ++r_.resyncs;
    } catch (const std::exception& ex) {
      end_session(epoch, "UPDATE", ex.what());
      return;
    }
  }
  ++r_.updates;
  applied_ = true;
  last_acc_ = u.accuracy;
  last_steps_ = u.steps;
  r_.steps_total += u.steps;
  stride_ = u.next_stride;
  next_key_ = int64_t(u.key_frame) + stride_;
  outstanding_.reset();
}

int64_t EdgeSession::due_after() const {
  const int64_t min_stride = int64_t(welcome_.min_stride);
  return opt_.apply_after_frames > 0 ? std::min(opt_.apply_after_frames, min_stride) : min_stride;
}

void EdgeSession::lose_session() {
  session_ = false;
  if (opt_.apply_after_frames > 0 && outstanding_) lost_key_ = outstanding_;
  outstanding_.reset();
}

void EdgeSession::checkpoint() {
  const bool update_due = outstanding_ && frame_i_ >= *outstanding_ + due_after();
  const bool key_due = !outstanding_ && (lost_key_ || frame_i_ >= next_key_);
  if (!update_due && !key_due) return;
  NetClient::Event e;
  while (net_.poll(e)) handle(e);
  for (int round = 0; round < 2; ++round) {  // (a lost key frame sent again is waited for too)
    if (session_ && outstanding_ && frame_i_ >= *outstanding_ + due_after()) {
      block_until(after(Clock::now(), opt_.update_timeout_s));  // the update, or a lost session
      if (session_ && outstanding_ && !stop_requested()) give_up();
    }
    if (outstanding_ || (!lost_key_ && frame_i_ < next_key_)) return;
    if (!session_) {  // a key frame is due (or lost): wait for a session to send it to
      block_while([this] { return !session_; }, after(Clock::now(), opt_.update_timeout_s));
      if (!session_) return;  // no server: on with the weights held, waiting again next frame
    }
    if (!lost_key_ || !last_key_msg_) return;  // send_key_frame_if_due sends this frame
    // The key frame the previous session lost goes to this one: its update is then applied at
    // the frame it was due, whichever server answers.
    net_.send(epoch_, *last_key_msg_);
    outstanding_ = int64_t(last_key_msg_->frame_index);
    lost_key_.reset();
    ++r_.key_frames;
  }
}

void EdgeSession::end_session(uint64_t epoch, const char* message, const std::string& why) {
  r_.errors.push_back(std::string(message) + " blob refused: " + why);
  net_.drop(epoch, std::string("bad ") + message + " blob");
  lose_session();
}

void EdgeSession::on_weights(uint64_t epoch, const Weights& w) {
  if (!session_ || epoch != epoch_ || !resync_pending_) return;
  try {
    apply_blob(nn::Distillation::Full, w.blob);
  } catch (const std::exception& ex) {
    end_session(epoch, "WEIGHTS", ex.what());
    return;
  }
  resync_pending_ = false;
  ++r_.full_weight_syncs;
}

void EdgeSession::on_labels(uint64_t epoch, Labels& l) {
  if (!session_ || epoch != epoch_ || !outstanding_ || int64_t(l.frame_index) != *outstanding_)
    return;
  labels_ = std::move(l);
  ++r_.labels;
  outstanding_.reset();
}

bool EdgeSession::wait_event(NetClient::Event& e, double seconds) {
  if (!opt_.stop) return net_.wait(e, seconds);
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(seconds));
  for (;;) {
    if (stop_requested()) return false;
    const double left = secs(Clock::now(), until);
    if (left <= 0) return false;
    if (net_.wait(e, std::min(left, kStopPollS))) return true;
  }
}

void EdgeSession::block_while(const std::function<bool()>& waiting, Clock::time_point until) {
  const auto t0 = Clock::now();
  NetClient::Event e;
  while (waiting()) {
    const double left = secs(Clock::now(), until);
    if (left <= 0 || !wait_event(e, left)) break;
    handle(e);
  }
  const double b = secs(t0, Clock::now());
  r_.blocked_s += b;
  r_.max_blocked_s = std::max(r_.max_blocked_s, b);
  frame_blocked_s_ += b;
}

void EdgeSession::block_until(Clock::time_point until) {
  block_while([this] { return session_ && outstanding_.has_value(); }, until);
}

void EdgeSession::give_up() {
  std::string why = "no answer to key frame " + std::to_string(*outstanding_) + " within " +
                    std::to_string(opt_.update_timeout_s) + " s";
  r_.errors.push_back(why);
  net_.drop(epoch_, why);
  lose_session();
  ++r_.disconnects;
}

void EdgeSession::wait_for_first_session() {
  if (opt_.initial_wait_s <= 0) return;
  auto t0 = Clock::now();
  NetClient::Event e;
  while (!session_) {
    double left = opt_.initial_wait_s - secs(t0, Clock::now());
    if (left <= 0 || !wait_event(e, left)) break;
    handle(e);
  }
}

// ---- one frame

bool EdgeSession::next_frame(io::Frame& f) {
  try {
    for (;;) {
      if (source_->next(f)) {
        ++pass_frames_;
        last_index_ = f.index;
        f.index += index_base_;
        return true;
      }
      if (!opt_.loop || pass_frames_ == 0 || stop_requested()) return false;
      index_base_ += last_index_ + 1;
      pass_frames_ = 0;
      source_ = io::open_video(opt_.video);
    }
  } catch (const std::exception&) {
    // Ctrl-C also reaches an ffmpeg decoder in our process group: its death ends the input.
    if (stop_requested()) return false;
    throw;
  }
}

void EdgeSession::pace() {
  if (opt_.frame_interval_s <= 0) return;
  if (!opt_.stop) {
    std::this_thread::sleep_until(t_next_);
  } else {
    for (auto now = Clock::now(); now < t_next_ && !stop_requested(); now = Clock::now())
      std::this_thread::sleep_for(std::min<Clock::duration>(
          t_next_ - now, std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(kStopPollS))));
  }
  t_next_ += std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(opt_.frame_interval_s));
}

KeyFrame EdgeSession::make_key_frame(const io::Frame& f) {
  KeyFrame k;
  k.frame_index = uint64_t(frame_i_);
  k.width = uint32_t(W_);
  k.height = uint32_t(H_);
  // The preferred encoding when WELCOME accepts it; else PNG (lossless, and what a server whose
  // student starts from random initialisation takes instead of JPEG), else raw.
  FrameEncoding enc = opt_.key_encoding;
  auto accepted = [this](FrameEncoding e) { return (welcome_.accept_frames & (1u << uint8_t(e))) != 0; };
  if (!accepted(enc)) enc = accepted(FrameEncoding::Png) ? FrameEncoding::Png : FrameEncoding::RawBgr;
  k.encoding = enc;
  k.data = io::encode_key_frame(f.bgr, enc, opt_.jpeg_quality);
  r_.key_bytes += int64_t(k.data.size());
  r_.key_encoding = frame_encoding_name(enc);
  if (enc == FrameEncoding::Jpeg) r_.key_encoding += ":" + std::to_string(opt_.jpeg_quality);
  return k;
}

std::vector<uint8_t> EdgeSession::offload_naive(const io::Frame& f) {
  net_.send(epoch_, make_key_frame(f));
  outstanding_ = frame_i_;
  ++r_.key_frames;
  block_until(after(Clock::now(), opt_.update_timeout_s));
  if (session_ && outstanding_ && !stop_requested()) give_up();
  std::vector<uint8_t> pred;
  if (labels_ && int64_t(labels_->frame_index) == frame_i_) pred = std::move(labels_->labels);
  labels_.reset();
  return pred;
}

double EdgeSession::wait_bound() const {
  if (opt_.max_wait_s >= 0) return opt_.max_wait_s;
  const double frame_s = frame_time_s_ >= 0 ? frame_time_s_ : first_frame_s_;
  return opt_.max_wait_frames * std::max(frame_s, opt_.frame_interval_s);
}

bool EdgeSession::wait_if_due() {
  // SPEC §6: the update is due MIN_STRIDE frames after its key frame. The edge waits for it
  // there once, at most wait_bound(), then carries on stale (client.h); update_timeout_s after
  // it became due, the connection is dropped.
  if (opt_.apply_after_frames > 0) return false;  // checkpoint() waits instead
  if (!(session_ && outstanding_ && frame_i_ - *outstanding_ >= due_after())) return false;
  const auto now = Clock::now();
  if (!due_) due_ = true, due_since_ = now;
  const auto deadline = after(due_since_, opt_.update_timeout_s);
  if (!waited_) {
    waited_ = true;
    const double bound = wait_bound();
    r_.max_wait_s = std::max(r_.max_wait_s, bound);
    block_until(std::min(deadline, after(now, bound)));
  }
  if (session_ && outstanding_ && Clock::now() >= deadline && !stop_requested()) give_up();
  return session_ && outstanding_.has_value();
}

bool EdgeSession::send_key_frame_if_due(const io::Frame& f) {
  if (!session_ || outstanding_ || frame_i_ < next_key_) return false;
  KeyFrame k = make_key_frame(f);
  if (opt_.apply_after_frames > 0) last_key_msg_ = k;  // sent again if this session is lost
  net_.send(epoch_, std::move(k));  // without blocking: the network thread sends it
  outstanding_ = frame_i_;
  due_ = waited_ = false;
  ++r_.key_frames;
  return true;
}

std::vector<uint8_t> EdgeSession::segment(const io::Frame& f) {
  Tensor x = nn::Student::preprocess_bgr(f.bgr.pixels.data(), H_, W_).to(opt_.device);
  NoGradGuard ng;
  auto v = argmax_channels(active_->forward(x)).to_vector<int64_t>();
  return std::vector<uint8_t>(v.begin(), v.end());
}

double EdgeSession::write_outputs(const io::Frame& f, const std::vector<uint8_t>& pred) {
  char name[32];
  std::snprintf(name, sizeof name, "%06lld.png", (long long)frame_i_);
  if (!opt_.predictions_dir.empty())
    io::write_label_png(opt_.predictions_dir / name, pred, H_, W_);
  if (!opt_.overlays_dir.empty() && frame_i_ % opt_.overlay_every == 0)
    io::write_overlay_png(opt_.overlays_dir / std::filesystem::path(name).replace_extension(
                                                  opt_.overlay_jpeg ? ".jpg" : ".png"),
                          f.bgr, pred);
  if (!reference_ || !reference_->has(frame_i_)) return -1;
  const double frame_miou = nn::miou(pred, reference_->labels(frame_i_, H_, W_));
  miou_sum_ += frame_miou;
  ++r_.miou_frames;
  return frame_miou;
}

bool EdgeSession::end_frame(bool key_sent, bool stale, double frame_miou) {
  ++r_.frames;
  auto now = Clock::now();
  {  // the frame time: from the end of the previous frame, less the time blocked
    const double t = std::max(0.0, secs(t_frame_end_, now) - frame_blocked_s_);
    if (r_.frames == 1) first_frame_s_ = t;
    else frame_time_s_ = frame_time_s_ < 0 ? t : frame_time_s_ + (t - frame_time_s_) / 8.0;
    t_frame_end_ = now;
  }
  if (frame_log_.is_open()) {
    nlohmann::json j;
    j["frame"] = frame_i_;
    j["t"] = secs(t_start_, now);
    j["key"] = key_sent;
    j["applied"] = applied_;
    if (applied_) j["server_miou"] = last_acc_, j["steps"] = last_steps_;
    j["stride"] = stride_;
    if (frame_miou >= 0) j["miou"] = frame_miou;
    j["up"] = net_.bytes_up();
    j["down"] = net_.bytes_down();
    j["online"] = session_;
    j["sessions"] = r_.welcomes;  // WELCOMEs so far: a new value is a new session (reconnect)
    j["stale"] = stale;
    if (frame_blocked_s_ > 0) j["blocked_s"] = frame_blocked_s_;
    frame_log_ << j.dump() << "\n";
  }
  applied_ = false;
  frame_blocked_s_ = 0;
  if (opt_.progress && progress_due(progress_tty_, secs(t_print_, now), r_.frames == 1)) {
    t_print_ = now;
    ProgressLine pl;
    pl.mode = r_.mode;
    pl.frame = frame_i_;
    pl.fps = double(r_.frames) / std::max(secs(t_start_, now), 1e-9);
    pl.stride = stride_;
    pl.key_frames = r_.key_frames;
    pl.stale_frames = r_.stale_frames;
    pl.bytes_up = net_.bytes_up();
    pl.bytes_down = net_.bytes_down();
    pl.online = session_;
    std::fputs(format_progress(pl, progress_tty_).c_str(), stderr);
    std::fflush(stderr);
  }
  if (!opt_.on_frame) return true;
  EdgeProgress p;
  p.frame = frame_i_;
  p.frames = r_.frames;
  p.key_frames = r_.key_frames;
  p.updates = r_.updates;
  p.labels = r_.labels;
  p.welcomes = r_.welcomes;
  p.disconnects = r_.disconnects;
  p.online = session_;
  p.waiting = session_ && outstanding_.has_value();
  p.stale = stale;
  p.stale_frames = r_.stale_frames;
  return opt_.on_frame(p);
}

EdgeResult EdgeSession::run() {
  net_.start();
  wait_for_first_session();
  t_start_ = t_print_ = t_next_ = t_frame_end_ = Clock::now();
  progress_tty_ = isatty(2) == 1;
  io::Frame f;
  while ((opt_.max_frames < 0 || r_.frames < opt_.max_frames) && !stop_requested() &&
         next_frame(f)) {
    ST_CHECK(f.bgr.height == H_ && f.bgr.width == W_, "edge: frame ", f.index, " changed size");
    frame_i_ = f.index;
    pace();
    NetClient::Event e;
    if (opt_.apply_after_frames > 0 && opt_.mode != Mode::Naive) {
      checkpoint();  // the network only at the frames where something is due
    } else {
      while (net_.poll(e)) handle(e);  // updates are swapped in here, between frames
    }

    bool key_sent = false, stale = false;
    std::vector<uint8_t> pred;
    if (opt_.mode == Mode::Naive) {
      if (session_) {
        pred = offload_naive(f);
        key_sent = true;
      }
    } else {
      stale = wait_if_due();
      key_sent = send_key_frame_if_due(f);
    }
    if (stale) ++r_.stale_frames;
    if (pred.empty()) pred = segment(f);
    const double frame_miou = write_outputs(f, pred);
    if (!end_frame(key_sent, stale, frame_miou)) break;
  }
  if (opt_.progress && progress_tty_) std::fprintf(stderr, "\n");  // (a plain line ends with one)
  return finish();
}

EdgeResult EdgeSession::finish() {
  net_.stop();
  r_.wall_s = secs(t_start_, Clock::now());
  r_.fps = r_.wall_s > 0 ? double(r_.frames) / r_.wall_s : 0;
  r_.bytes_up = net_.bytes_up();
  r_.bytes_down = net_.bytes_down();
  r_.final_stride = stride_;
  r_.final_weights_hash = cur_hash_;
  r_.miou_mean = r_.miou_frames ? miou_sum_ / double(r_.miou_frames) : 0.0;
  if (frame_log_.is_open()) {
    frame_log_.flush();
    ST_CHECK(bool(frame_log_), "edge: writing the frame log ", opt_.frame_log.string(), " failed");
  }
  return r_;
}

}  // namespace

EdgeResult run_edge(const EdgeOptions& opt) { return EdgeSession(opt).run(); }

std::string to_json(const EdgeResult& r) {
  nlohmann::json j;
  j["mode"] = r.mode;
  j["frames"] = r.frames;
  j["key_frames"] = r.key_frames;
  j["key_frame_ratio"] = r.frames ? double(r.key_frames) / double(r.frames) : 0.0;
  j["updates"] = r.updates;
  j["updates_with_weights"] = r.updates_with_weights;
  j["distillation_steps"] = r.steps_total;
  j["labels_received"] = r.labels;
  j["sessions"] = r.welcomes;
  j["full_weight_syncs"] = r.full_weight_syncs;
  j["resyncs"] = r.resyncs;
  j["weights_uploads"] = r.weights_uploads;
  if (!r.split.empty()) j["split"] = r.split;
  j["disconnects"] = r.disconnects;
  j["bytes"] = {{"up_total", r.bytes_up},
                {"down_total", r.bytes_down},
                {"up_per_frame", r.frames ? double(r.bytes_up) / double(r.frames) : 0.0},
                {"down_per_frame", r.frames ? double(r.bytes_down) / double(r.frames) : 0.0}};
  j["fps"] = r.fps;
  j["wall_s"] = r.wall_s;
  j["blocked_s"] = r.blocked_s;
  j["max_blocked_s"] = r.max_blocked_s;
  j["max_wait_s"] = r.max_wait_s;
  j["stale_frames"] = r.stale_frames;
  j["final_stride"] = r.final_stride;
  j["key_frame_bytes"] = r.key_bytes;
  j["key_encoding"] = r.key_encoding;
  if (r.miou_frames) {
    j["miou_frames"] = r.miou_frames;
    j["miou_mean"] = r.miou_mean;
  }
  j["errors"] = r.errors;
  return j.dump(1);
}

}  // namespace st::edge
