// What a run does with the teacher: the one mode of every layer (the programs' --mode, the
// edge, the simulation, the wire protocol's HELLO/WELCOME.mode).
//   Partial  partial distillation: the server trains the back of its student copy on each key
//            frame and sends that part (SPEC §4)
//   Full     full distillation: the same, every tensor of the student
//   Naive    naive offloading: every frame goes to the server, which answers its label map
//   Wild     the student alone, never updated (a baseline of `shadowtutor simulate`)
// On the wire as a u8 (docs/protocol.md): Partial 0, Full 1, Naive 2. Wild never goes on the
// wire: the codec refuses any value above Naive as an unknown mode. Which student tensors a
// mode trains is nn::distillation_of (nn/student.h).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common/error.h"

namespace st {

enum class Mode : uint8_t { Partial = 0, Full = 1, Naive = 2, Wild = 3 };

// "partial", "full", "naive", "wild"; "unknown" for a value outside the enum.
inline const char* mode_name(Mode m) {
  switch (m) {
    case Mode::Partial: return "partial";
    case Mode::Full: return "full";
    case Mode::Naive: return "naive";
    case Mode::Wild: return "wild";
  }
  return "unknown";
}

// The mode named `s` among `allowed` (the modes a program runs); otherwise throws st::Error
// "unknown mode 's' (partial, full, naive)", listing `allowed` in its order.
inline Mode parse_mode(const std::string& s, std::initializer_list<Mode> allowed) {
  std::string names;
  for (Mode m : allowed) {
    if (s == mode_name(m)) return m;
    names += names.empty() ? "" : ", ";
    names += mode_name(m);
  }
  throw Error("unknown mode '" + s + "' (" + names + ")");
}

}  // namespace st
