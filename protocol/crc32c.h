// CRC32C (Castagnoli, reflected polynomial 0x82F63B78): the checksum of the wire protocol's
// header and payload (docs/protocol.md). A portable slice-by-8 table implementation, plus the
// SSE4.2 crc32 instruction on x86-64 CPUs that have it (picked once at run time).
// crc32c("123456789") == 0xE3069283.
#pragma once
#include <cstddef>
#include <cstdint>

namespace st::protocol {

// The CRC32C of n bytes.
uint32_t crc32c(const void* data, size_t n);
// Continues a CRC: crc32c_extend(crc32c(a, na), b, nb) == crc32c(a ++ b).
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);

// The table implementation alone (tests compare it with the dispatched one).
uint32_t crc32c_software(uint32_t crc, const void* data, size_t n);
// True when crc32c() uses the CPU's crc32 instruction.
bool crc32c_hardware();

}  // namespace st::protocol
