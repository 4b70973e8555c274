// CRC32C: slice-by-8 tables built at compile time, and an SSE4.2 path chosen at run time.
// The CRC is kept in its "inverted" register form only inside crc32c_extend; callers see the
// standard value (initial ~0, final xor ~0).
#include "protocol/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define ST_CRC32C_X86 1
#endif

namespace st::protocol {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // Castagnoli, bit-reversed

// kTables[0] is the classic byte table; kTables[k][b] is the CRC of byte b followed by k zero
// bytes, so eight table look-ups advance the register by eight bytes at once.
using Tables = std::array<std::array<uint32_t, 256>, 8>;
constexpr Tables make_tables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][b] = c;
  }
  for (size_t k = 1; k < 8; ++k)
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  return t;
}
constexpr Tables kTables = make_tables();

inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// `reg` is the raw register (already inverted).
uint32_t sw_update(uint32_t reg, const uint8_t* p, size_t n) {
  const auto& t = kTables;
  while (n >= 8) {
    uint32_t lo = reg ^ load_le32(p), hi = load_le32(p + 4);
    reg = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
          t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) reg = (reg >> 8) ^ t[0][(reg ^ *p++) & 0xFF];
  return reg;
}

#ifdef ST_CRC32C_X86
__attribute__((target("sse4.2"))) uint32_t hw_update(uint32_t reg, const uint8_t* p, size_t n) {
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    reg = _mm_crc32_u8(reg, *p++);
    --n;
  }
  uint64_t r = reg;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // x86 is little-endian, as the CRC's byte order needs
    r = _mm_crc32_u64(r, v);
    p += 8;
    n -= 8;
  }
  reg = uint32_t(r);
  while (n--) reg = _mm_crc32_u8(reg, *p++);
  return reg;
}

bool detect_hw() { return __builtin_cpu_supports("sse4.2"); }
#else
bool detect_hw() { return false; }
#endif

using UpdateFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);
UpdateFn pick() {
#ifdef ST_CRC32C_X86
  if (detect_hw()) return hw_update;
#endif
  return sw_update;
}
// Chosen on first use (a function-local static, so no static-initialisation order issue).
UpdateFn update_fn() {
  static const UpdateFn fn = pick();
  return fn;
}

}  // namespace

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n) {
  return ~update_fn()(~crc, static_cast<const uint8_t*>(data), n);
}
uint32_t crc32c(const void* data, size_t n) { return crc32c_extend(0, data, n); }
uint32_t crc32c_software(uint32_t crc, const void* data, size_t n) {
  return ~sw_update(~crc, static_cast<const uint8_t*>(data), n);
}
bool crc32c_hardware() { return update_fn() != sw_update; }

}  // namespace st::protocol
