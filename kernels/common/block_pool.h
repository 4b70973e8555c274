// A caching pool of memory blocks carved from larger segments, for a device allocator (the CUDA
// backend keeps one per GPU: kernels/cuda/backend.cu). Host code only, device-agnostic: segments
// come from a Source (two callbacks: the CUDA backend passes cudaMalloc / cudaFree, the tests
// malloc / free or made-up addresses), so every rule here is unit-tested on the CPU
// (tests/test_block_pool.cpp). C++17 (nvcc compiles it). Not thread-safe: the owner locks.
//
// Why segments and splitting: the teacher's shapes change every frame (image sizes, the number of
// detections), so a cache keyed by exact size keeps missing, asks the driver for more and more
// memory until it runs out, and then has to give everything back. Here a request is served by the
// smallest cached free block that holds it (best fit), cut to size when the rest is worth keeping,
// and a freed block merges with its free neighbours, so memory freed for one size serves others.
// The rules (the same kind as PyTorch's CUDA caching allocator, whose documentation states them):
//   - requests are rounded up to 512 bytes (kRound; every block starts 512-aligned within its
//     segment);
//   - the small pool serves requests <= 1 MiB from 2 MiB segments; the large pool serves the rest
//     from 20 MiB segments for requests under 10 MiB, else from a segment of the request rounded
//     up to 2 MiB. The pools never share blocks, so small short-lived blocks do not fragment the
//     large segments;
//   - free blocks are ordered by (size, address): the first one not smaller than the request is
//     the best fit, ties going to the lower address;
//   - a block is split when the remainder is worth keeping: >= 512 bytes in the small pool,
//     > 1 MiB in the large (a smaller remainder stays part of the block handed out);
//   - on free, a block merges with the free blocks just before and after it in its segment
//     (never across segments: two segments that happen to be adjacent are separate allocations);
//   - release_cached() hands back only segments that are wholly free;
//   - when the source cannot provide a segment, the pool releases its wholly free segments and
//     asks once more; if that fails too, allocate() returns nullptr (the owner reports out of
//     memory).
// With caching off (ST_CUDA_CACHE=0 in the CUDA backend) every request is a segment of its own
// (rounded to 512 bytes) and every free returns it to the source at once.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

namespace st {

// What a pool holds and has done. Bytes are block and segment sizes (requests rounded up).
struct BlockPoolStats {
  uint64_t segment_allocations = 0;  // segments obtained from the source (cumulative)
  uint64_t segment_releases = 0;     // segments handed back to it (cumulative)
  uint64_t cache_hits = 0;           // requests served from a cached free block
  size_t in_use_bytes = 0;           // blocks handed out and not yet freed
  size_t peak_in_use_bytes = 0;
  size_t reserved_bytes = 0;         // segments held (in use + cached)
  size_t peak_reserved_bytes = 0;
  size_t cached_bytes = 0;           // free bytes inside the held segments (reserved - in use)
  size_t segments = 0;               // segments held
  size_t free_blocks = 0;            // free blocks (after merging)
  size_t largest_free_block = 0;     // the largest free block (of either pool)
  // 1 - largest_free_block / cached_bytes: 0 when the cached bytes form one block (or there are
  // none), near 1 when they are scattered in pieces too small for most requests.
  double fragmentation() const {
    return cached_bytes ? 1.0 - double(largest_free_block) / double(cached_bytes) : 0.0;
  }
};

class BlockPool {
 public:
  static constexpr size_t kRound = 512;
  static constexpr size_t kSmallRequest = size_t(1) << 20;      // small pool: requests <= 1 MiB
  static constexpr size_t kSmallSegment = size_t(2) << 20;
  static constexpr size_t kLargeSegment = size_t(20) << 20;     // for large requests < 10 MiB
  static constexpr size_t kLargeSegmentBelow = size_t(10) << 20;
  static constexpr size_t kLargeSegmentRound = size_t(2) << 20; // larger requests: rounded to this
  static constexpr size_t kLargeMinRemainder = size_t(1) << 20; // large pool: split if rest > this

  // Where segments come from. obtain(n) returns n bytes, or nullptr when there is no memory (any
  // other failure may throw; the pool is left as it was); release(p, n) takes back what obtain
  // gave.
  struct Source {
    std::function<void*(size_t)> obtain;
    std::function<void(void*, size_t)> release;
  };

  // One block, as blocks() reports it (tests check the pool's invariants with these).
  struct BlockInfo {
    uintptr_t addr;
    size_t size;
    bool free;
    bool small;  // in the small pool
    uintptr_t segment;
    size_t segment_size;
  };

  explicit BlockPool(Source source, bool caching = true)
      : source_(std::move(source)), caching_(caching) {}
  // Hands back the wholly free segments. Segments with blocks still in use are left to their
  // users (the CUDA backend's pools are never destroyed: tensors may outlive main()).
  ~BlockPool() {
    release_cached();
    for (auto& [addr, head] : segments_) {
      for (Block* b = head; b;) {
        Block* next = b->next;
        delete b;
        b = next;
      }
    }
  }
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  bool caching() const { return caching_; }

  // The size a request is served with (before any unsplit remainder): n rounded up to kRound, at
  // least kRound. 0 for a request too large to round (it cannot be served).
  static size_t round_request(size_t n) {
    if (n > SIZE_MAX - kLargeSegmentRound) return 0;
    return n <= kRound ? kRound : (n + kRound - 1) / kRound * kRound;
  }
  // The segment obtained for a rounded request that no cached block holds.
  static size_t segment_size(size_t rounded) {
    if (rounded <= kSmallRequest) return kSmallSegment;
    if (rounded < kLargeSegmentBelow) return kLargeSegment;
    return (rounded + kLargeSegmentRound - 1) / kLargeSegmentRound * kLargeSegmentRound;
  }

  // A block of at least n bytes, or nullptr when the source has no memory for it (after the
  // cached segments were released and the source asked again).
  void* allocate(size_t n) {
    const size_t r = round_request(n);
    if (r == 0) return nullptr;
    const bool small = r <= kSmallRequest;
    Block* b = nullptr;
    if (caching_) {
      FreeSet& pool = free_set(small);
      Block probe;
      probe.addr = 0;
      probe.size = r;
      auto it = pool.lower_bound(&probe);
      if (it != pool.end()) {
        b = *it;
        pool.erase(it);
        stats_.cache_hits++;
      }
    }
    if (!b) {
      b = new_segment(caching_ ? segment_size(r) : r, small);
      if (!b) return nullptr;
    }
    // Split off the rest when it is worth keeping (in the small pool a nonzero rest is always
    // a multiple of kRound, so it is kept whenever there is one).
    const size_t rest = b->size - r;
    if (caching_ && (small ? rest >= kRound : rest > kLargeMinRemainder)) {
      Block* tail = new Block;
      tail->addr = b->addr + r;
      tail->size = rest;
      tail->free = true;
      tail->small = small;
      tail->segment = b->segment;
      tail->prev = b;
      tail->next = b->next;
      if (b->next) b->next->prev = tail;
      b->next = tail;
      b->size = r;
      free_set(small).insert(tail);
    }
    b->free = false;
    live_.emplace(b->addr, b);
    stats_.in_use_bytes += b->size;
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
    return reinterpret_cast<void*>(b->addr);
  }

  // Takes back a block from allocate(); false (and nothing done) for a pointer it did not hand
  // out or that was already freed.
  bool deallocate(void* p) {
    auto it = live_.find(reinterpret_cast<uintptr_t>(p));
    if (it == live_.end()) return false;
    Block* b = it->second;
    live_.erase(it);
    stats_.in_use_bytes -= b->size;
    b->free = true;
    if (!caching_) {  // a segment of its own: straight back
      release_segment(b);
      return true;
    }
    FreeSet& pool = free_set(b->small);
    if (b->next && b->next->free) {  // absorb the next block
      Block* n = b->next;
      pool.erase(n);
      b->size += n->size;
      b->next = n->next;
      if (n->next) n->next->prev = b;
      delete n;
    }
    if (b->prev && b->prev->free) {  // be absorbed by the previous one (a segment's first block
      Block* p0 = b->prev;           // thus stays its first block)
      pool.erase(p0);
      p0->size += b->size;
      p0->next = b->next;
      if (b->next) b->next->prev = p0;
      delete b;
      b = p0;
    }
    pool.insert(b);
    return true;
  }

  // Hands every wholly free segment back to the source; returns the bytes released.
  size_t release_cached() {
    size_t released = 0;
    for (auto it = segments_.begin(); it != segments_.end();) {
      Block* head = it->second;
      ++it;  // release_segment erases head's entry
      if (head->free && !head->next) {
        free_set(head->small).erase(head);
        released += head->size;
        release_segment(head);
      }
    }
    return released;
  }

  // The size of a block in use (its rounded request plus any unsplit rest), 0 if p is not one.
  size_t block_size(const void* p) const {
    auto it = live_.find(reinterpret_cast<uintptr_t>(p));
    return it == live_.end() ? 0 : it->second->size;
  }
  size_t in_use_bytes() const { return stats_.in_use_bytes; }

  BlockPoolStats stats() const {
    BlockPoolStats s = stats_;
    s.segments = segments_.size();
    s.cached_bytes = s.reserved_bytes - s.in_use_bytes;
    s.free_blocks = small_free_.size() + large_free_.size();
    if (!small_free_.empty()) s.largest_free_block = (*small_free_.rbegin())->size;
    if (!large_free_.empty())
      s.largest_free_block = std::max(s.largest_free_block, (*large_free_.rbegin())->size);
    return s;
  }

  // Every block, segment by segment in address order, each segment's blocks in address order.
  std::vector<BlockInfo> blocks() const {
    std::vector<BlockInfo> out;
    for (const auto& [addr, head] : segments_) {
      size_t seg_size = 0;
      for (const Block* b = head; b; b = b->next) seg_size += b->size;
      for (const Block* b = head; b; b = b->next)
        out.push_back({b->addr, b->size, b->free, b->small, addr, seg_size});
    }
    return out;
  }

 private:
  struct Block {
    uintptr_t addr = 0;
    size_t size = 0;
    bool free = false;
    bool small = false;
    uintptr_t segment = 0;  // the address of its segment's first byte
    Block* prev = nullptr;  // neighbours in the same segment, by address
    Block* next = nullptr;
  };
  struct BySizeThenAddress {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->addr < b->addr;
    }
  };
  using FreeSet = std::set<Block*, BySizeThenAddress>;

  FreeSet& free_set(bool small) { return small ? small_free_ : large_free_; }

  // A new segment of `size` bytes as one block (not yet in any free set), or nullptr.
  Block* new_segment(size_t size, bool small) {
    void* p = source_.obtain(size);
    if (!p && caching_ && release_cached() > 0) p = source_.obtain(size);
    if (!p) return nullptr;
    Block* b = new Block;
    b->addr = reinterpret_cast<uintptr_t>(p);
    b->size = size;
    b->small = small;
    b->segment = b->addr;
    segments_.emplace(b->addr, b);
    stats_.segment_allocations++;
    stats_.reserved_bytes += size;
    stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
    return b;
  }

  // `b` is a whole segment, in no free set and not in use: back to the source.
  void release_segment(Block* b) {
    segments_.erase(b->addr);
    stats_.reserved_bytes -= b->size;
    stats_.segment_releases++;
    const uintptr_t addr = b->addr;
    const size_t size = b->size;
    delete b;
    source_.release(reinterpret_cast<void*>(addr), size);
  }

  Source source_;
  bool caching_;
  FreeSet small_free_, large_free_;
  std::unordered_map<uintptr_t, Block*> live_;  // blocks in use, by address
  std::map<uintptr_t, Block*> segments_;        // each segment's first block, by address
  BlockPoolStats stats_;                        // the counters (stats() fills in the rest)
};

}  // namespace st
