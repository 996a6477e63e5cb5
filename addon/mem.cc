// Guest memory: chunked MAP_SHARED mappings exposed as external ArrayBuffers.
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"
#include "guard.h"

namespace ferry {

namespace {

// One mapped chunk. Owned by its ArrayBuffer's finalizer; `unmapped` keeps the
// finalizer from unmapping again after an explicit munmap (the address may
// already belong to a newer mapping by then).
struct Chunk {
  void* addr;
  size_t len;
  bool unmapped;
};

void UnmapChunk(Chunk* c) {
  if (!c->unmapped) {
    GuardUnregister(c->addr);
    munmap(c->addr, c->len);
    c->unmapped = true;
  }
}

void FinalizeChunk(napi_env, void*, void* hint) {
  Chunk* c = static_cast<Chunk*>(hint);
  UnmapChunk(c);
  delete c;
}

// Unmap and detach an ArrayBuffer made by MapChunk; a no-op when it was
// already unmapped (its wrap is removed on the first call).
void UnmapBuffer(napi_env env, napi_value ab) {
  void* hint = nullptr;
  if (napi_remove_wrap(env, ab, &hint) != napi_ok || hint == nullptr) return;
  Chunk* c = static_cast<Chunk*>(hint);
  void* data = nullptr;
  size_t len = 0;
  napi_get_arraybuffer_info(env, ab, &data, &len);
  // If the buffer no longer points at the chunk (it was transferred to
  // another thread), the memory may still be in use there: leave it to the
  // finalizer, which runs when the last holder lets go.
  if (data != c->addr) return;
  UnmapChunk(c);
  napi_detach_arraybuffer(env, ab);
}

// Create the ArrayBuffer for one fresh mapping; on failure the mapping is
// released and false returned (exception pending or thrown here).
bool MapChunk(napi_env env, void* addr, size_t len, napi_value* out) {
  // A chunk the SIGBUS guard cannot watch is not handed out.
  if (!GuardRegister(addr, len)) {
    munmap(addr, len);
    ThrowErrno(env, "mmap", ENOMEM);
    return false;
  }
  Chunk* c = new Chunk{addr, len, false};
  if (napi_create_external_arraybuffer(env, addr, len, FinalizeChunk, c, out) != napi_ok) {
    GuardUnregister(addr);
    munmap(addr, len);
    delete c;
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) ThrowErrno(env, "mmap", ENOMEM);
    return false;
  }
  // The wrap is how munmap(ab) finds its chunk; no finalizer of its own.
  if (napi_wrap(env, *out, c, nullptr, nullptr, nullptr) != napi_ok) {
    UnmapChunk(c);
    napi_detach_arraybuffer(env, *out);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) ThrowErrno(env, "mmap", ENOMEM);
    return false;
  }
  return true;
}

napi_value Mmap(napi_env env, napi_callback_info info) {
  FERRY_ARGS(4);
  int32_t fd;
  uint64_t offset, size, chunk;
  if (!ArgInt32(env, argv[0], &fd, "mmap") || !ArgSize(env, argv[1], &offset, "mmap") ||
      !ArgSize(env, argv[2], &size, "mmap") || !ArgSize(env, argv[3], &chunk, "mmap"))
    return nullptr;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (chunk == 0 || chunk % page != 0 || chunk > (uint64_t{1} << 32))
    return ThrowInval(env, "mmap", "chunkSize must be a page multiple in (0, 2^32]");
  if (offset % page != 0) return ThrowInval(env, "mmap", "offset must be page aligned");
  if (size == 0) return ThrowInval(env, "mmap", "size must be positive");
  // Both are <= 2^53 (ArgSize), so the sum cannot wrap; keep it within off_t.
  if (offset + size > static_cast<uint64_t>(INT64_MAX)) return ThrowInval(env, "mmap", "offset+size too large");
  const uint64_t count = (size + chunk - 1) / chunk;
  if (count > UINT32_MAX) return ThrowInval(env, "mmap", "too many chunks");
  napi_value arr;
  if (napi_create_array_with_length(env, static_cast<size_t>(count), &arr) != napi_ok) return nullptr;
  for (uint64_t i = 0; i < count; i++) {
    const uint64_t pos = i * chunk;
    const size_t len = static_cast<size_t>(size - pos < chunk ? size - pos : chunk);
    void* addr = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset + pos));
    napi_value ab = nullptr;
    bool ok = addr != MAP_FAILED;
    int err = errno;
    if (ok) ok = MapChunk(env, addr, len, &ab);
    if (ok) ok = napi_set_element(env, arr, static_cast<uint32_t>(i), ab) == napi_ok;
    if (!ok) {
      // Undo the chunks made so far so a failed call leaves nothing mapped.
      for (uint64_t j = 0; j < i; j++) {
        napi_value prev;
        if (napi_get_element(env, arr, static_cast<uint32_t>(j), &prev) == napi_ok) UnmapBuffer(env, prev);
      }
      if (addr == MAP_FAILED) return ThrowErrno(env, "mmap", err);
      if (ab != nullptr) UnmapBuffer(env, ab);
      return nullptr;
    }
  }
  return arr;
}

napi_value Munmap(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  bool is = false;
  if (napi_is_arraybuffer(env, argv[0], &is) != napi_ok || !is)
    return ThrowType(env, "munmap", "expected an ArrayBuffer returned by mmap");
  UnmapBuffer(env, argv[0]);
  return nullptr;
}

}  // namespace

void InitMem(Napi::Env env, Napi::Object exports) {
  SetFunction(env, exports, "mmap", Mmap);
  SetFunction(env, exports, "munmap", Munmap);
}

}  // namespace ferry
