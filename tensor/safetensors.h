// safetensors files: read and write named tensors (F32, F64, F16, U8, I32, I64) with their
// string metadata. Format: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {str: str}}, then the data.
// Every malformed input raises st::Error naming the file and the problem.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace st::safetensors {

struct File {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in header (data offset) order
  std::map<std::string, std::string> metadata;
  std::string source;  // the path or a description, for messages

  bool contains(const std::string& name) const;
  // The named tensor (CPU, contiguous). Throws naming the file and the missing name.
  const Tensor& get(const std::string& name) const;
  // Same, and checks the shape and dtype, naming both on a mismatch.
  const Tensor& get(const std::string& name, const Shape& shape, DType dtype) const;
  std::vector<std::string> names() const;
};

File load(const std::filesystem::path& path);
// Parses a file held in memory; `source` names it in error messages.
File parse(const uint8_t* data, size_t size, const std::string& source = "<memory>");

// Writes tensors (any device, layout; written as contiguous CPU data) in the given order.
// Names must be unique and non-empty and not "__metadata__".
void save(const std::filesystem::path& path,
          const std::vector<std::pair<std::string, Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata = {});
std::vector<uint8_t> serialize(const std::vector<std::pair<std::string, Tensor>>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

}  // namespace st::safetensors
