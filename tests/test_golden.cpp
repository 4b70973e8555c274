// Golden tests: every op against PyTorch 1.13 reference files in tests/golden/ (made by
// tools/make_golden.py; see tests/golden/README.md). Inputs are float32; references were
// computed by torch in float64 from those exact inputs. Each case runs twice:
//  - in f32 (the production path): tolerance atol 2e-5, rtol 2e-4. Inputs are ~N(0,1) and the
//    longest reduction is ~150 terms (conv 5x5x6), so f32 rounding (eps 6e-8) accumulates to at
//    most ~sqrt(150)*eps*|sum of |terms|| ~ 1e-5 absolute; rtol covers larger outputs;
//  - in f64 (the reference path used by finite differences): atol 1e-10, rtol 1e-9 — only
//    summation-order differences remain.
#include <nlohmann/json.hpp>

#include "nn/optim.h"
#include "tensor/safetensors.h"
#include "test_util.h"

using namespace st;
using json = nlohmann::json;

namespace {

struct Golden {
  safetensors::File file;
  std::vector<std::string> cases;
  explicit Golden(const std::string& family) {
    file = safetensors::load(test::source_dir() / "tests" / "golden" / (family + ".safetensors"));
    REQUIRE(file.metadata.count("torch_version"));
    REQUIRE(file.metadata.at("generator") == "tools/make_golden.py");
    cases = json::parse(file.metadata.at("cases")).get<std::vector<std::string>>();
    REQUIRE_FALSE(cases.empty());
  }
  json params(const std::string& c) const { return json::parse(file.metadata.at(c + ".params")); }
  bool has(const std::string& c, const std::string& role) const {
    return file.contains(c + "." + role);
  }
  Tensor get(const std::string& c, const std::string& role) const {
    return file.get(c + "." + role);
  }
};

struct Tol {
  double atol, rtol;
};
constexpr Tol kF32{2e-5, 2e-4};
constexpr Tol kF64{1e-10, 1e-9};

// Runs `forward` on the named inputs (converted to `dt`, requiring grad where listed), checks
// y, then back-propagates gy and checks g<input> for every differentiable input.
void run_case(const Golden& g, const std::string& c, DType dt, const std::vector<std::string>& inputs,
              const std::vector<std::string>& differentiable,
              const std::function<Tensor(const std::vector<Tensor>&)>& forward,
              Tol tol, const std::string& out_role = "y") {
  INFO("case " << c << " dtype " << dtype_name(dt));
  std::vector<Tensor> in;
  for (auto& name : inputs) {
    Tensor t = g.get(c, name);
    if (is_floating(t.dtype())) t = t.to(dt).clone();  // a private leaf, never the file's tensor
    bool diff = std::find(differentiable.begin(), differentiable.end(), name) != differentiable.end();
    if (diff) t.set_requires_grad(true);
    in.push_back(t);
  }
  Tensor y = forward(in);
  {
    INFO("output " << out_role);
    ST_REQUIRE_CLOSE(y, g.get(c, out_role), tol.atol, tol.rtol);
  }
  if (differentiable.empty()) return;
  if (g.has(c, "gy"))
    y.backward(g.get(c, "gy").to(dt));
  else
    y.backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (std::find(differentiable.begin(), differentiable.end(), inputs[i]) == differentiable.end())
      continue;
    INFO("gradient g" << inputs[i]);
    REQUIRE(in[i].grad().defined());
    ST_REQUIRE_CLOSE(in[i].grad(), g.get(c, "g" + inputs[i]), tol.atol, tol.rtol);
  }
}

template <class F>
void both_dtypes(F&& f) {
  f(DType::F32, kF32);
  f(DType::F64, kF64);
}

Conv2dParams conv_params(const json& p) {
  Conv2dParams cp;
  cp.stride_h = p["stride"][0];
  cp.stride_w = p["stride"][1];
  cp.pad_h = p["padding"][0];
  cp.pad_w = p["padding"][1];
  cp.groups = p["groups"];
  if (p.contains("output_padding")) {
    cp.output_pad_h = p["output_padding"][0];
    cp.output_pad_w = p["output_padding"][1];
  }
  return cp;
}

}  // namespace

TEST_CASE("golden: conv2d", "[golden][portable]") {
  Golden g("conv2d");
  for (auto& c : g.cases) {
    Conv2dParams p = conv_params(g.params(c));
    bool bias = g.params(c)["bias"];
    std::vector<std::string> in = {"x", "w"};
    if (bias) in.push_back("b");
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, in, in, [&](auto& v) {
        return conv2d(v[0], v[1], bias ? v[2] : Tensor(), p);
      }, tol);
    });
  }
}

TEST_CASE("golden: conv_transpose2d", "[golden][portable]") {
  Golden g("conv_transpose2d");
  for (auto& c : g.cases) {
    Conv2dParams p = conv_params(g.params(c));
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x", "w", "b"}, {}, [&](auto& v) {
        return conv_transpose2d(v[0], v[1], v[2], p);
      }, tol);
    });
  }
}

TEST_CASE("golden: batch norm (batch statistics and frozen)", "[golden][portable]") {
  Golden g("batch_norm");
  for (auto& c : g.cases) {
    json p = g.params(c);
    double eps = p["eps"];
    bool frozen = p.value("frozen", false);
    both_dtypes([&](DType dt, Tol tol) {
      if (frozen)
        run_case(g, c, dt, {"x", "weight", "bias", "mean", "var"}, {"x", "weight", "bias"},
                 [&](auto& v) { return batch_norm_frozen(v[0], v[1], v[2], v[3], v[4], eps); },
                 tol);
      else
        run_case(g, c, dt, {"x", "weight", "bias"}, {"x", "weight", "bias"},
                 [&](auto& v) { return batch_norm(v[0], v[1], v[2], eps); }, tol);
    });
  }
}

TEST_CASE("golden: relu and sigmoid", "[golden][portable]") {
  Golden g("activation");
  for (auto& c : g.cases) {
    std::string op = g.params(c)["op"];
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x"}, {"x"},
               [&](auto& v) { return op == "relu" ? relu(v[0]) : sigmoid(v[0]); }, tol);
    });
  }
}

TEST_CASE("golden: add, mul (broadcasting) and scalar ops", "[golden][portable]") {
  Golden g("binary");
  for (auto& c : g.cases) {
    json p = g.params(c);
    std::string op = p["op"];
    both_dtypes([&](DType dt, Tol tol) {
      if (op == "add" || op == "mul")
        run_case(g, c, dt, {"a", "b"}, {"a", "b"},
                 [&](auto& v) { return op == "add" ? add(v[0], v[1]) : mul(v[0], v[1]); }, tol);
      else {
        double alpha = p["alpha"];
        run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) {
          return op == "mul_scalar" ? mul_scalar(v[0], alpha) : add_scalar(v[0], alpha);
        }, tol);
      }
    });
  }
}

TEST_CASE("golden: concat along channels", "[golden][portable]") {
  Golden g("concat");
  for (auto& c : g.cases)
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x0", "x1", "x2"}, {"x0", "x1", "x2"},
               [&](auto& v) { return cat({v[0], v[1], v[2]}, 1); }, tol);
    });
}

TEST_CASE("golden: strided subsample", "[golden][portable]") {
  Golden g("subsample");
  for (auto& c : g.cases) {
    int64_t s = g.params(c)["step"];
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) { return subsample(v[0], s); }, tol);
    });
  }
}

TEST_CASE("golden: bilinear and nearest resize", "[golden][portable]") {
  Golden g("resize");
  for (auto& c : g.cases) {
    json p = g.params(c);
    std::string mode = p["mode"];
    int64_t oh = p["size"][0], ow = p["size"][1];
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) {
        return mode == "bilinear" ? resize_bilinear(v[0], oh, ow) : resize_nearest(v[0], oh, ow);
      }, tol);
    });
  }
}

TEST_CASE("golden: max_pool2d", "[golden][portable]") {
  Golden g("max_pool2d");
  for (auto& c : g.cases) {
    json p = g.params(c);
    Pool2dParams pp{p["kernel"][0], p["kernel"][1], p["stride"][0],
                    p["stride"][1], p["padding"][0], p["padding"][1]};
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) { return max_pool2d(v[0], pp); }, tol);
    });
  }
}

TEST_CASE("golden: softmax and log_softmax over channels", "[golden][portable]") {
  Golden g("softmax");
  for (auto& c : g.cases) {
    std::string op = g.params(c)["op"];
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"x"}, {"x"}, [&](auto& v) {
        return op == "softmax" ? softmax_channels(v[0]) : log_softmax_channels(v[0]);
      }, tol);
    });
  }
}

TEST_CASE("golden: weighted cross-entropy (SPEC 3)", "[golden][portable]") {
  Golden g("weighted_ce");
  for (auto& c : g.cases)
    both_dtypes([&](DType dt, Tol tol) {
      run_case(g, c, dt, {"logits", "target", "weight"}, {"logits"},
               [&](auto& v) { return weighted_cross_entropy(v[0], v[1], v[2]); }, tol, "loss");
    });
}

TEST_CASE("golden: argmax over channels", "[golden][portable]") {
  Golden g("argmax");
  for (auto& c : g.cases)
    for (DType dt : {DType::F32, DType::F64}) {
      Tensor y = argmax_channels(g.get(c, "x").to(dt));
      REQUIRE(y.dtype() == DType::I64);
      REQUIRE(y.to_vector<int64_t>() == g.get(c, "y").to_vector<int64_t>());
    }
}

TEST_CASE("golden: matmul and linear", "[golden][portable]") {
  Golden gm("matmul");
  for (auto& c : gm.cases)
    both_dtypes([&](DType dt, Tol tol) {
      run_case(gm, c, dt, {"a", "b"}, {"a", "b"}, [&](auto& v) { return matmul(v[0], v[1]); }, tol);
    });
  Golden gl("linear");
  for (auto& c : gl.cases)
    both_dtypes([&](DType dt, Tol tol) {
      run_case(gl, c, dt, {"x", "weight", "bias"}, {"x", "weight", "bias"},
               [&](auto& v) { return linear(v[0], v[1], v[2]); }, tol);
    });
}

// Adam runs in f32 like real training; torch's kernels may fuse multiply-adds, so results can
// differ by a few ulp per step (the generator measured up to 16 ulp ~ 3e-8 over 5 steps).
TEST_CASE("golden: Adam, 5 steps with bias correction", "[golden][portable]") {
  Golden g("adam");
  for (auto& c : g.cases) {
    INFO("case " << c);
    json p = g.params(c);
    Tensor w = g.get(c, "p0").clone();
    w.set_requires_grad(true);
    nn::Adam opt({w}, {p["lr"], p["beta1"], p["beta2"], p["eps"]});
    for (int k = 1; k <= 5; ++k) {
      w.set_grad(g.get(c, "g" + std::to_string(k)));
      opt.step();
      INFO("step " << k);
      ST_REQUIRE_CLOSE(w, g.get(c, "p" + std::to_string(k)), 1e-6, 1e-6);
    }
    ST_REQUIRE_CLOSE(opt.exp_avg(0), g.get(c, "m5"), 1e-7, 1e-6);
    ST_REQUIRE_CLOSE(opt.exp_avg_sq(0), g.get(c, "v5"), 1e-7, 1e-6);
    REQUIRE(opt.steps(0) == 5);
  }
}
