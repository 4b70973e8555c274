// The kernel list (tensor/kernels.def) against the backends: every backend defines every kernel,
// for real or as an explicit decline, and the CPU backend, the reference, declines none.
//
// That every backend defines every kernel is also guaranteed when the project builds: each
// kernel is a pure virtual method of st::Backend, so a backend class that lacks one cannot be
// instantiated and one declared without a definition does not link, and ST_DECLINE_KERNEL does
// not compile for a kernel missing from its backend's ST_DECLINED_KERNELS. What runs here: the
// list itself (names, order), that the CPU backend declines nothing, and that each kernel a
// loadable backend declines throws st::Error naming the kernel and the backend.
#include <array>
#include <set>
#include <string>
#include <type_traits>

#include "tensor/backend.h"
#include "tensor/cpu_backend.h"
#include "test_util.h"

using namespace st;
using Catch::Equals;

namespace {

// Arguments for a kernel that must not read them (a declined kernel throws first): references
// bind to default-constructed objects (an undefined Tensor, default parameters), pointers are
// null, enums and scalars zero.
template <class A>
A placeholder() {
  if constexpr (std::is_reference_v<A>) {
    static std::remove_cv_t<std::remove_reference_t<A>> value{};
    return value;
  } else {
    return A{};
  }
}
template <class... Args>
void call_with_placeholders(Backend& b, void (Backend::*kernel)(Args...)) {
  (b.*kernel)(placeholder<Args>()...);
}
// Calls kernel k of b with placeholder arguments: only for a kernel that b declines.
void call_declined(Backend& b, Kernel k) {
  switch (k) {
#define ST_KERNEL(name, params, args) \
  case Kernel::name:                  \
    return call_with_placeholders(b, &Backend::name);
#include "tensor/kernels.def"
  }
}

// b's declined list names kernels of the list, each once; declines() agrees with it; calling a
// declined kernel throws st::Error "<kernel>: not implemented on the <backend> backend".
void check_declines(Backend& b) {
  std::set<Kernel> declined;
  for (Kernel k : b.declined_kernels()) {
    INFO("the " << b.name() << " backend declines " << kernel_name(k));
    REQUIRE(size_t(k) < all_kernels().size());
    REQUIRE(declined.insert(k).second);
    REQUIRE_THROWS_AS(call_declined(b, k), Error);
    REQUIRE_THROWS_WITH(call_declined(b, k),
                        Equals(std::string(kernel_name(k)) + ": not implemented on the " +
                               b.name() + " backend"));
  }
  for (Kernel k : all_kernels()) {
    INFO(kernel_name(k) << " on the " << b.name() << " backend");
    REQUIRE(b.declines(k) == (declined.count(k) == 1));
  }
}

// A backend that declines every kernel of the list (defined from tensor/kernels.def, as a real
// backend defines its declines): the decline path of every kernel, whatever the real backends
// decline today.
class DecliningBackend final : public Backend {
 public:
  const char* name() const override { return "declining"; }
  void* allocate(size_t, int) override { return nullptr; }
  void deallocate(void*, size_t, int) noexcept override {}
  void memcpy(void*, Device, const void*, Device, size_t) override {}
#define ST_KERNEL(name, params, args) void name params override;
#include "tensor/kernels.def"
  static constexpr std::array kDeclinedKernels = {
#define ST_KERNEL(name, params, args) Kernel::name,
#include "tensor/kernels.def"
  };
  std::vector<Kernel> declined_kernels() const override {
    return {kDeclinedKernels.begin(), kDeclinedKernels.end()};
  }
};
#define ST_KERNEL(name, params, args) ST_DECLINE_KERNEL(DecliningBackend, name, params)
#include "tensor/kernels.def"

}  // namespace

TEST_CASE("backend: the kernel list names each kernel once, in the order of kernels.def",
          "[backend][portable]") {
  const std::vector<std::string> names = {
#define ST_KERNEL(name, params, args) #name,
#include "tensor/kernels.def"
  };
  const std::vector<Kernel>& kernels = all_kernels();
  REQUIRE_FALSE(kernels.empty());
  REQUIRE(kernels.size() == names.size());
  std::set<std::string> seen;
  for (size_t i = 0; i < kernels.size(); ++i) {
    REQUIRE(size_t(kernels[i]) == i);
    REQUIRE(kernel_name(kernels[i]) == names[i]);
    REQUIRE(seen.insert(names[i]).second);
  }
  REQUIRE(std::string(kernel_name(Kernel::conv2d_forward)) == "conv2d_forward");
}

TEST_CASE("backend: the CPU backend, the reference, implements every kernel and declines none",
          "[backend][portable]") {
  Backend& cpu = backend_for(Device::cpu());
  REQUIRE(&cpu == &cpu::cpu_backend());
  REQUIRE(std::string(cpu.name()) == "cpu");
  CHECK(cpu.declined_kernels().empty());
  for (Kernel k : all_kernels()) {
    INFO(kernel_name(k));
    CHECK_FALSE(cpu.declines(k));
  }
  check_declines(cpu);
}

TEST_CASE("backend: a declined kernel throws st::Error naming the kernel and the backend",
          "[backend][portable][errors]") {
  DecliningBackend b;
  REQUIRE(b.declined_kernels().size() == all_kernels().size());
  check_declines(b);
}

TEST_CASE("backend: the CUDA backend defines every kernel or declines it explicitly",
          "[backend][cuda]") {
  ST_REQUIRE_CUDA_GPU();
  Backend& gpu = backend_for(Device::cuda(0));
  REQUIRE(std::string(gpu.name()) == "cuda");
  check_declines(gpu);
}
