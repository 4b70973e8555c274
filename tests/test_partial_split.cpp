// Configurable partial training (nn/student.h PartialSplit): the front/back cut at every block
// boundary gives the forward bit for bit; the trained tensors of each split and of the bias-only
// variant; a partial step of another split does no backward work in its frozen front; blobs
// carry the split's tensors and are refused by a student with another split; simulate trains the
// split it is given and says how much of the student that is.
#include <set>

#include "cli/flags.h"
#include "edge/simulate.h"
#include "nn/blob.h"
#include "nn/distill.h"
#include "nn/student.h"
#include "synthetic_clip.h"
#include "tensor/autograd.h"
#include "tensor/ops.h"
#include "tensor/profile.h"
#include "test_util.h"

using namespace st;
using namespace st::nn;
using Catch::Contains;

namespace {
std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

// The block a parameter belongs to: its name's first component, as SPEC §2 names the modules.
int block_of(const std::string& name) { return student_block(name.substr(0, name.find('.'))); }
}  // namespace

TEST_CASE("partial split: block names, and the splits a student accepts", "[student][portable]") {
  REQUIRE(kStudentBlocks == 11);
  REQUIRE(std::string(student_block_name(0)) == "in_conv1");
  REQUIRE(std::string(student_block_name(kDefaultSplit)) == "dec2");
  REQUIRE(std::string(student_block_name(10)) == "out_conv3");
  for (int b = 0; b < kStudentBlocks; ++b) REQUIRE(student_block(student_block_name(b)) == b);
  REQUIRE_THROWS_WITH(student_block("dec4"), Contains("no block named 'dec4'") && Contains("out_conv3"));
  Student s;
  REQUIRE(s.partial_split() == PartialSplit{});
  REQUIRE_THROWS_WITH(s.set_partial_split({0, false}), Contains("from in_conv2 to out_conv3"));
  REQUIRE_THROWS(s.set_partial_split({11, false}));
  REQUIRE(s.partial_split() == PartialSplit{});  // unchanged after a refusal
  REQUIRE(split_name({4, true}) == "enc3 (biases and BN affine only)");
}

TEST_CASE("partial split: back(front(x, k)) is the forward at every block boundary, bit for bit",
          "[student][portable]") {
  Student s(4);
  const Tensor x = Tensor::uniform({1, 3, 40, 56}, -2, 2, 8);
  std::vector<float> ref;
  {
    NoGradGuard ng;
    ref = values(s.forward(x));
  }
  for (int k = 0; k < kStudentBlocks; ++k) {
    INFO("split at " << student_block_name(k));
    NoGradGuard ng;
    const StudentFront f = s.front(x, k);
    REQUIRE(f.split == k);
    REQUIRE(values(s.back(f)) == ref);
    REQUIRE(values(s.back(f)) == ref);  // the cached front is not consumed
  }
}

TEST_CASE("partial split: the tensors each split and variant trains", "[student][portable]") {
  Student s;
  const auto all = s.named_parameters();
  for (int k = 1; k < kStudentBlocks; ++k) {
    for (const bool bias_only : {false, true}) {
      INFO(split_name({k, bias_only}));
      s.set_partial_split({k, bias_only});
      std::vector<std::string> want;
      for (const auto& [n, t] : all) {
        const bool affine = n.ends_with(".bias") || n.find("preact_path") != std::string::npos;
        if (block_of(n) >= k && (!bias_only || affine)) want.push_back(n);
      }
      REQUIRE(s.trained_names(Distillation::Partial) == want);
      REQUIRE(s.trained_names(Distillation::Full).size() == all.size());  // Full: all, always
      s.configure(Distillation::Partial);
      for (const auto& [n, t] : all)
        REQUIRE(t.requires_grad() ==
                (std::find(want.begin(), want.end(), n) != want.end()));
    }
  }
  // Counted by hand from SPEC §2's shapes: out_conv3 alone is a 1x1 conv 32 -> 9 (288 + 9);
  // dec2 .. out_conv3 with biases and BN affine only: BN 128 + 4 conv biases of 32 in dec2,
  // BN 96 + 4 x 32 in dec3, 32 + 32 + 9 in the out convs.
  auto count = [&](PartialSplit sp) {
    s.set_partial_split(sp);
    int64_t n = 0;
    for (const Tensor& t : s.trained_parameters(Distillation::Partial)) n += t.numel();
    return n;
  };
  REQUIRE(count({10, false}) == 297);
  REQUIRE(count({6, true}) == (2 * 128 + 4 * 32) + (2 * 96 + 4 * 32) + 32 + 32 + 9);
  REQUIRE(count({6, false}) == 103465);  // the paper's 21.4%
}

TEST_CASE("partial split: a step of another split runs no backward kernel in its frozen front",
          "[student][distill][portable]") {
  // enc3 .. out_conv3 train: 19 convolutions (4 in each of enc3, dec1, dec2, dec3; 3 out convs)
  // get weight gradients; in_conv1 .. enc2 get no backward work at all.
  Student s(2);
  s.set_partial_split({student_block("enc3"), false});
  DistillConfig cfg;
  cfg.max_updates = 1;
  cfg.threshold = 0.999;  // always train
  Distiller d(s, Distillation::Partial, cfg);
  const Tensor x = Tensor::uniform({1, 3, 48, 64}, -1, 1, 3);
  std::vector<int64_t> labels(48 * 64);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = int64_t((i / 64) % 9);
  Target t;
  t.labels = Tensor::from_vector(labels, {1, 48, 64});
  t.weight = Tensor::full({1, 48, 64}, 1.0);
  const std::vector<float> front_before = values(s.parameter("enc2.long_path.0.weight"));
  const std::vector<float> back_before = values(s.parameter("enc3.long_path.0.weight"));
  reset_backward_kernel_counts();
  profile::Options po;
  po.at_exit = false;
  profile::start(po);
  const DistillOutcome o = d.distill(x, t);
  const auto scopes = profile::scope_rows();
  profile::stop();
  profile::reset();
  REQUIRE(o.steps == 1);
  REQUIRE(backward_kernel_count("conv2d.grad_weight") == 19);
  for (const auto& r : scopes) {
    INFO(r.scope);
    if (s.front_scope(r.scope)) REQUIRE(r.backward_calls == 0);
  }
  bool enc3_backward = false;
  for (const auto& r : scopes) enc3_backward |= r.scope.rfind("enc3", 0) == 0 && r.backward_calls > 0;
  REQUIRE(enc3_backward);
  REQUIRE(values(s.parameter("enc2.long_path.0.weight")) == front_before);
  REQUIRE(values(s.parameter("enc3.long_path.0.weight")) != back_before);
}

TEST_CASE("partial split: a blob holds the split's tensors, and a student of another split refuses it",
          "[blob][portable]") {
  Student server(1), edge(2), other(2);
  const PartialSplit sp{student_block("out_conv1"), true};
  server.set_partial_split(sp);
  edge.set_partial_split(sp);
  // out_conv1 .. out_conv3 biases: 32 + 32 + 9 floats after the 24-byte header
  REQUIRE(blob_size(server, Distillation::Partial, BlobEncoding::F32) == 24 + 4 * (32 + 32 + 9));
  const auto blob = pack_trained(server, Distillation::Partial, BlobEncoding::F32);
  unpack_trained(edge, Distillation::Partial, blob.data(), blob.size());
  REQUIRE(values(edge.parameter("out_conv2.bias")) == values(server.parameter("out_conv2.bias")));
  REQUIRE(values(edge.parameter("out_conv2.weight")) != values(server.parameter("out_conv2.weight")));
  const auto before = values(other.parameter("out_conv2.bias"));
  REQUIRE_THROWS(unpack_trained(other, Distillation::Partial, blob.data(), blob.size()));
  REQUIRE(values(other.parameter("out_conv2.bias")) == before);
  REQUIRE(layout_hash(server, Distillation::Partial) != layout_hash(other, Distillation::Partial));
}

TEST_CASE("partial split: simulate trains the split it is given and reports its share",
          "[simulate]") {
  test::SyntheticClip clip("split", 12);
  edge::SimOptions o;
  o.video = clip.frames;
  o.labels = clip.labels;
  o.progress = false;
  o.split = {student_block("out_conv1"), false};
  const edge::SimResult r = edge::simulate(o);
  REQUIRE(r.split == "out_conv1");
  REQUIRE(r.trained_tensors == 6);
  // two 3x3 convs 32 -> 32 with biases, one 1x1 32 -> 9
  REQUIRE(r.trained_parameters == 2 * (32 * 32 * 9 + 32) + 32 * 9 + 9);
  REQUIRE(r.parameters == 483873);
  REQUIRE(r.key_frames >= 1);
  const int64_t trained_frames = r.key_frames - r.step_histogram[0];
  REQUIRE(trained_frames >= 1);  // a random student on this clip trains
  // every update is that split's blob (or a header-only "no change")
  REQUIRE(r.bytes_down == trained_frames * (24 + 4 * r.trained_parameters + edge::kMessageHeaderBytes) +
                              r.step_histogram[0] * edge::kMessageHeaderBytes);
}

TEST_CASE("partial split: the command-line flags", "[student][portable]") {
  auto parse = [](std::vector<std::string> args, PartialSplit& sp) {
    cli::Flags f("prog", "usage");
    cli::declare_split_flags(f, sp);
    std::vector<char*> argv{const_cast<char*>("prog")};
    for (auto& a : args) argv.push_back(a.data());
    const auto rc = f.parse(int(argv.size()), argv.data());
    return std::make_pair(rc, f.error());
  };
  PartialSplit sp;
  REQUIRE(!parse({"--train-from", "enc3", "--train", "bias"}, sp).first);
  REQUIRE(sp == PartialSplit{4, true});
  sp = {};
  REQUIRE(!parse({"--train-last", "5"}, sp).first);
  REQUIRE(sp.first == student_block("dec2"));  // the paper's split: the last five blocks
  REQUIRE(!parse({"--train-last", "1"}, sp).first);
  REQUIRE(sp.first == student_block("out_conv3"));
  for (auto bad : std::vector<std::vector<std::string>>{{"--train-from", "in_conv1"},
                                                        {"--train-from", "dec9"},
                                                        {"--train-last", "0"},
                                                        {"--train-last", "11"},
                                                        {"--train", "weights"}}) {
    PartialSplit untouched;
    const auto [rc, err] = parse(bad, untouched);
    INFO(bad[0] << " " << bad[1] << ": " << err);
    REQUIRE(rc == 2);
    REQUIRE(!err.empty());
    REQUIRE(untouched == PartialSplit{});
  }
}
