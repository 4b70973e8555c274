// Reverse-mode autodiff engine: recording, the backward walk, and backward-work counters.
#include "tensor/autograd.h"

#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "tensor/backend.h"

namespace st {

namespace {
thread_local bool g_grad_mode = true;
std::mutex g_count_mutex;
std::map<std::string, int64_t> g_counts;
}  // namespace

bool grad_mode_enabled() { return g_grad_mode; }
NoGradGuard::NoGradGuard() : prev_(g_grad_mode) { g_grad_mode = false; }
NoGradGuard::~NoGradGuard() { g_grad_mode = prev_; }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

void record(const std::shared_ptr<Node>& node, std::initializer_list<const Tensor*> inputs,
            Tensor& output) {
  node->next.reserve(inputs.size());
  for (const Tensor* t : inputs) {
    Node::Edge e;
    if (t && t->defined() && t->requires_grad()) {
      if (t->grad_fn())
        e.fn = t->grad_fn();
      else
        e.leaf = t->impl_ptr();
    }
    node->next.push_back(std::move(e));
  }
  node->scope = profile::current_scope();  // nullptr unless profiling
  output.impl()->grad_fn = node;
  output.impl()->requires_grad = true;
}

// a + b for gradient accumulation (no graph).
static Tensor accumulate(const Tensor& a, const Tensor& b) {
  ST_CHECK(a.shape() == b.shape(), "backward: gradient shape mismatch ", a.shape(), " vs ",
           b.shape());
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  backend_for(a.device()).binary(BinaryOp::Add, a, b, out);
  return out;
}

static void accumulate_into_leaf(TensorImpl& leaf, const Tensor& g) {
  ST_CHECK(g.shape() == leaf.shape, "backward: gradient of shape ", g.shape(),
           " for a leaf of shape ", leaf.shape);
  if (!leaf.grad) {
    // Own a private, contiguous copy: the incoming gradient may alias another buffer.
    Tensor c = Tensor::empty(g.shape(), g.dtype(), g.device());
    c.copy_(g);
    leaf.grad = c.impl_ptr();
  } else {
    Tensor prev(leaf.grad);
    leaf.grad = accumulate(prev, g).impl_ptr();
  }
}

void run_backward(const Tensor& root, const Tensor& grad_in) {
  ST_CHECK(root.defined(), "backward: undefined tensor");
  ST_CHECK(root.requires_grad(), "backward: tensor ", root.str(),
           " does not require a gradient (no input of its graph requires one)");
  NoGradGuard no_grad;
  Tensor grad = grad_in;
  if (!grad.defined()) {
    ST_CHECK(root.numel() == 1, "backward: a gradient must be given for non-scalar ", root.str());
    grad = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  }
  ST_CHECK(grad.shape() == root.shape(), "backward: gradient shape ", grad.shape(),
           " != tensor shape ", root.shape());
  if (!root.grad_fn()) {
    accumulate_into_leaf(*root.impl(), grad);
    return;
  }

  // Dependency counts: how many recorded consumers each node has within this graph.
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack{root.grad_fn().get()};
  std::unordered_set<Node*> seen{root.grad_fn().get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    ST_CHECK(!n->released, "backward: the graph through '", n->name(),
             "' was already freed by an earlier backward()");
    for (auto& e : n->next) {
      if (!e.fn) continue;
      ++deps[e.fn.get()];
      if (seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
    }
  }

  // Kahn's algorithm: a node runs when all of its consumers have delivered gradients.
  std::unordered_map<Node*, Tensor> pending;
  std::vector<std::shared_ptr<Node>> ready{root.grad_fn()};
  pending[root.grad_fn().get()] = grad;
  while (!ready.empty()) {
    std::shared_ptr<Node> node = std::move(ready.back());
    ready.pop_back();
    auto it = pending.find(node.get());
    Tensor g = it->second;
    pending.erase(it);
    profile::BackwardScope in_node(node->name(), node->scope);
    std::vector<Tensor> grads = node->apply(g);
    node->release();
    node->released = true;
    g = Tensor();
    ST_CHECK(grads.size() == node->next.size(), "backward: node '", node->name(), "' returned ",
             grads.size(), " gradients for ", node->next.size(), " inputs");
    if (profile::enabled()) profile::set_label("autograd.accumulate");
    for (size_t i = 0; i < grads.size(); ++i) {
      Node::Edge& e = node->next[i];
      if (!e.active()) continue;
      if (e.leaf) {
        if (grads[i].defined()) accumulate_into_leaf(*e.leaf, grads[i]);
        continue;
      }
      Node* target = e.fn.get();
      if (grads[i].defined()) {
        auto p = pending.find(target);
        if (p == pending.end())
          pending.emplace(target, grads[i]);
        else
          p->second = accumulate(p->second, grads[i]);
      }
      if (--deps[target] == 0) {
        if (pending.count(target))
          ready.push_back(e.fn);
        else
          e.fn->released = true;  // nothing reached it: its whole subgraph gets no gradient
      }
    }
    node->next.clear();  // free the graph as we go
  }
}

void count_backward_kernel(const char* kind) {
  if (profile::enabled()) profile::count_kind(kind);  // names the kernels that follow
  std::lock_guard<std::mutex> lock(g_count_mutex);
  ++g_counts[kind];
}
std::map<std::string, int64_t> backward_kernel_counts() {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  return g_counts;
}
int64_t backward_kernel_count(const std::string& kind) {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  auto it = g_counts.find(kind);
  return it == g_counts.end() ? 0 : it->second;
}
void reset_backward_kernel_counts() {
  std::lock_guard<std::mutex> lock(g_count_mutex);
  g_counts.clear();
}

}  // namespace st
