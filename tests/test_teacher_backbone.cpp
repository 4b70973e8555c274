// The teacher's ResNet-50 + FPN backbone against torchvision's own forward on a seeded model
// (MASKRCNN.md §10.2): tools/make_teacher_golden.py builds it with calibrated FrozenBN statistics,
// writes the weights under Detectron2 names (~110 MB, to a temporary folder, never committed) and
// the stage outputs; we load, fold FrozenBN and compare C2..C5, P2..P6 in both stride
// conventions. Needs Debian's python3-torchvision; reported as skipped without it.
// Tolerance: a random network with calibrated BN amplifies float32 rounding with depth (torch's
// own float32 forward is ~2e-3 off its float64 forward at C5), so the reference is the float64
// forward and our float32 error (mean and max) must stay within 3x torch's own float32 error.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "teacher_port/backbone.h"
#include "test_util.h"

using namespace st;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path p;
  TempDir() {
    p = fs::temp_directory_path() / ("st_teacher_" + std::to_string(::getpid()));
    fs::create_directories(p);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

struct Err {
  double mean = 0, max = 0;
};
Err error_vs(const Tensor& a, const Tensor& ref) {
  auto x = a.to_vector<double>(), y = ref.to_vector<double>();
  REQUIRE(x.size() == y.size());
  Err e;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = std::abs(x[i] - y[i]);
    e.mean += d;
    e.max = std::max(e.max, d);
  }
  e.mean /= double(std::max<size_t>(x.size(), 1));
  return e;
}

bool have_torchvision() {
  return std::system("/usr/bin/python3 -c 'import torchvision' >/dev/null 2>&1") == 0;
}
}  // namespace

TEST_CASE("teacher: ResNet-50 + FPN backbone matches torchvision (Detectron2 and torchvision strides)",
          "[teacher][golden]") {
  if (!have_torchvision()) ST_SKIP("Debian's python3-torchvision is not installed (tools/bootstrap.sh --bench)");
  TempDir tmp;
  for (const char* mode : {"d2", "tv"}) {
    INFO("mode " << mode);
    const fs::path dir = tmp.p / mode;
    const std::string cmd = "/usr/bin/python3 '" + (test::source_dir() / "tools" / "make_teacher_golden.py").string() +
                            "' '" + dir.string() + "' --mode " + mode + " --size 64x96";
    REQUIRE(std::system(cmd.c_str()) == 0);
    auto w = safetensors::load(dir / "weights.safetensors");
    auto s = safetensors::load(dir / "stages.safetensors");
    teacher::BackboneOptions o;
    o.stride_in_1x1 = std::string(mode) == "d2";
    teacher::Backbone bb(w, o);
    auto out = bb.forward(s.get("x"));
    auto check = [&](const Tensor& ours, const std::string& name) {
      INFO(name);
      const Tensor& t32 = s.get(name);
      const Tensor& t64 = s.get(name + "_f64");
      REQUIRE(ours.shape() == t32.shape());
      const Err e = error_vs(ours, t64), et = error_vs(t32, t64);
      INFO("ours vs f64: mean " << e.mean << " max " << e.max << "; torch f32 vs f64: mean "
                               << et.mean << " max " << et.max);
      REQUIRE(e.mean <= 3 * et.mean + 1e-6);
      REQUIRE(e.max <= 3 * et.max + 1e-5);
    };
    for (int i = 0; i < 4; ++i) check(out.c[size_t(i)], "c" + std::to_string(i + 2));
    for (int i = 0; i < 5; ++i) check(out.p[size_t(i)], "p" + std::to_string(i + 2));
    // The other stride convention computes something else: the switch matters.
    o.stride_in_1x1 = !o.stride_in_1x1;
    teacher::Backbone other(w, o);
    REQUIRE_FALSE(test::compare(other.forward(s.get("x")).c[1], s.get("c3"), 1e-3, 1e-3).ok);
  }
}

TEST_CASE("teacher: backbone weights are validated by name and shape", "[teacher][errors]") {
  safetensors::File empty;
  REQUIRE_THROWS_WITH(teacher::Backbone(empty), Contains("missing tensor 'backbone.bottom_up.stem.conv1.weight'"));
}
