// Guest-memory SIGBUS guard (guard.cc): mem.cc registers each chunk it maps.
#pragma once

#include <cstddef>

namespace ferry {

// Watch [addr, addr+len) for SIGBUS; false when the table of guarded chunks is full.
bool GuardRegister(void* addr, size_t len);
// Stop watching the chunk starting at addr (before it is unmapped).
void GuardUnregister(void* addr);

}  // namespace ferry
