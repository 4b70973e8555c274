// Reverse-mode automatic differentiation.
//
// A graph node is recorded only for an op with at least one input that requires a gradient
// (and only while grad mode is on: see NoGradGuard). Each node knows, per input, whether that
// input leads to a tensor requiring a gradient (`needs_input_grad`), and a backward function
// computes only those gradients — e.g. a conv whose input comes from a frozen front computes its
// weight gradient but not its input gradient. That is partial backward, and the per-kernel
// counters below make it measurable.
//
// backward() walks the nodes in reverse topological order, calls each node once with the sum
// of the gradients reaching it, releases the node's saved tensors right after, and accumulates
// gradients into leaves' .grad().
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace st {

struct Node {
  // Where the gradient of input i goes: into another node, into a leaf's .grad, or nowhere.
  struct Edge {
    std::shared_ptr<Node> fn;
    std::shared_ptr<TensorImpl> leaf;
    bool active() const { return fn || leaf; }
  };

  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // Given the gradient of this node's output, returns one gradient per input (an undefined
  // tensor for inputs that need none). Called at most once.
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  // Drops the tensors saved for backward.
  virtual void release() {}

  bool needs_input_grad(size_t i) const { return i < next.size() && next[i].active(); }

  std::vector<Edge> next;
  bool released = false;
  const char* scope = nullptr;  // the module scope that recorded it, while profiling
};

// Grad mode: recording is on by default, per thread.
bool grad_mode_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True when an op with these inputs must be recorded.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);

// Connects `node` to `inputs` (one edge per input, in order) and makes it the grad_fn of
// `output`. Call only when any_requires_grad(inputs) is true.
void record(const std::shared_ptr<Node>& node, std::initializer_list<const Tensor*> inputs,
            Tensor& output);

// A node defined by a lambda (for simple ops). The lambda receives the node (for
// needs_input_grad) and the output gradient.
struct LambdaNode : Node {
  using Fn = std::function<std::vector<Tensor>(const LambdaNode&, const Tensor&)>;
  LambdaNode(const char* n, Fn f) : name_(n), fn_(std::move(f)) {}
  const char* name() const override { return name_; }
  std::vector<Tensor> apply(const Tensor& g) override { return fn_(*this, g); }
  void release() override { fn_ = nullptr; }

 private:
  const char* name_;
  Fn fn_;
};

// Runs backward from `root` (see Tensor::backward).
void run_backward(const Tensor& root, const Tensor& grad);

// ---- backward-work counters (per backward kernel kind, process-wide) ----
// Every backward kernel call goes through count_backward_kernel("<op>.<what>"), e.g.
// "conv2d.grad_input", "conv2d.grad_weight". Tests and profiles read them; while the profiler
// is on (tensor/profile.h) the kind also labels the kernel calls that follow it.
void count_backward_kernel(const char* kind);
std::map<std::string, int64_t> backward_kernel_counts();
int64_t backward_kernel_count(const std::string& kind);  // 0 when never run
void reset_backward_kernel_counts();

}  // namespace st
