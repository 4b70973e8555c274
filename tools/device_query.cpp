// st-device-query: what the CUDA runtime sees, without nvidia-smi (JetPack has none).
//
//   st-device-query            key=value lines: driver and runtime versions, then per device
//                              its name, compute capability, memory and multiprocessors
//   st-device-query --cc       the first device's compute capability alone, e.g. "87"
//
// Exit status: 0 with at least one usable device; 1 when the runtime reports no device or an
// error (an insufficient driver, no driver at all, ...), with the runtime's own words on stderr.
// Built with the CUDA backend (target st-device-query); tools/gpu_check.sh compiles it on its own
// with nvcc before anything else, to learn which architecture to build for.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

namespace {
int fail(const char* what, cudaError_t e) {
  std::fprintf(stderr, "st-device-query: %s: %s (%s)\n", what, cudaGetErrorString(e),
               cudaGetErrorName(e));
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  const bool cc_only = argc > 1 && std::strcmp(argv[1], "--cc") == 0;
  if (argc > 1 && !cc_only) {
    std::fprintf(stderr, "usage: st-device-query [--cc]\n");
    return 2;
  }
  int driver = 0, runtime = 0;
  cudaError_t e = cudaDriverGetVersion(&driver);
  if (e != cudaSuccess) return fail("cudaDriverGetVersion", e);
  e = cudaRuntimeGetVersion(&runtime);
  if (e != cudaSuccess) return fail("cudaRuntimeGetVersion", e);
  if (driver == 0) {
    std::fprintf(stderr, "st-device-query: no CUDA driver is installed\n");
    return 1;
  }
  int n = 0;
  e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return fail("cudaGetDeviceCount", e);
  if (n == 0) {
    std::fprintf(stderr, "st-device-query: the CUDA runtime sees no device\n");
    return 1;
  }
  if (cc_only) {
    cudaDeviceProp p{};
    e = cudaGetDeviceProperties(&p, 0);
    if (e != cudaSuccess) return fail("cudaGetDeviceProperties", e);
    std::printf("%d%d\n", p.major, p.minor);
    return 0;
  }
  std::printf("driver=%d.%d\nruntime=%d.%d\ndevices=%d\n", driver / 1000, driver % 1000 / 10,
              runtime / 1000, runtime % 1000 / 10, n);
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp p{};
    e = cudaGetDeviceProperties(&p, d);
    if (e != cudaSuccess) return fail("cudaGetDeviceProperties", e);
    std::printf("device%d.name=%s\ndevice%d.cc=%d%d\ndevice%d.memory_mib=%zu\n", d, p.name, d,
                p.major, p.minor, d, p.totalGlobalMem >> 20);
    std::printf("device%d.multiprocessors=%d\ndevice%d.integrated=%d\n", d, p.multiProcessorCount,
                d, p.integrated);
  }
  return 0;
}
