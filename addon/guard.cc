// Guest-memory fault guard and fd checks for memory shared by a front-end.
//
// A MAP_SHARED mapping of a file raises SIGBUS when a page beyond the file's
// end is touched: a front-end that declares a region larger than its memfd,
// or truncates the memfd later, could kill the whole daemon with one kick.
// Every guest-memory chunk made by mem.cc is registered here. The SIGBUS
// handler checks that the faulting address lies in a registered chunk; if so
// it maps anonymous zero pages over the rest of that chunk (MAP_FIXED, so the
// faulting instruction reads zeros when it resumes), counts the fault on the
// chunk and returns. A zeroed ring reads as empty or invalid, which the split
// ring already rejects, and the worker sees the count and reports the ring
// broken. Any other SIGBUS goes to the previous handler or its default
// action (the process dies as it would have without the guard).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "common.h"
#include "guard.h"

namespace ferry {

namespace {

// Room for 16 workers each holding two tables (old and new during a
// SET_MEM_TABLE) of the largest allowed size in 1 GiB chunks, plus one
// partial chunk per region.
constexpr size_t kMaxGuarded = 65536;

struct GuardSlot {
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> len{0};
  std::atomic<uint32_t> faults{0};
};

GuardSlot g_slots[kMaxGuarded];
std::atomic<uint64_t> g_total_faults{0};
std::mutex g_register_lock;
// Where the search for a free slot starts (under g_register_lock): mapping a
// table of n chunks stays O(n) instead of O(n * table).
size_t g_next_free = 0;
struct sigaction g_previous;
std::once_flag g_install_once;
bool g_installed = false;
size_t g_page = 4096;

// Async-signal-safe: atomics, mmap and sigaction only.
void OnSigbus(int sig, siginfo_t* info, void* context) {
  // Only a fault on a mapped address (not a kill(2) or a hardware error) can be a shrunken file.
  if (info != nullptr && (info->si_code == BUS_ADRERR || info->si_code == BUS_OBJERR)) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
    for (size_t i = 0; i < kMaxGuarded; i++) {
      const uintptr_t start = g_slots[i].start.load(std::memory_order_acquire);
      if (start == 0 || addr < start) continue;
      const size_t len = g_slots[i].len.load(std::memory_order_acquire);
      if (addr - start >= len) continue;
      const uintptr_t page = addr & ~(static_cast<uintptr_t>(g_page) - 1);
      // Everything from here to the chunk's end lies past the file's end too.
      void* r = mmap(reinterpret_cast<void*>(page), start + len - page, PROT_READ | PROT_WRITE,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (r == MAP_FAILED) break;
      g_slots[i].faults.fetch_add(1, std::memory_order_relaxed);
      g_total_faults.fetch_add(1, std::memory_order_release);
      return;
    }
  }
  // Not guest memory: what would have happened without the guard.
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
    return;
  }
  // Restore the default and return: the faulting access repeats and the
  // kernel delivers SIGBUS with its default action; a sent SIGBUS is re-raised.
  signal(SIGBUS, SIG_DFL);
  if (info == nullptr || info->si_code <= 0) raise(SIGBUS);
}

void Install() {
  g_page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  g_installed = sigaction(SIGBUS, &sa, &g_previous) == 0;
}

int SlotOf(uintptr_t start) {
  for (size_t i = 0; i < kMaxGuarded; i++) {
    if (g_slots[i].start.load(std::memory_order_acquire) == start) return static_cast<int>(i);
  }
  return -1;
}

uintptr_t BufferStart(napi_env env, napi_value v) {
  bool is = false;
  if (napi_is_arraybuffer(env, v, &is) != napi_ok || !is) return 0;
  void* data = nullptr;
  size_t len = 0;
  if (napi_get_arraybuffer_info(env, v, &data, &len) != napi_ok || len == 0) return 0;
  return reinterpret_cast<uintptr_t>(data);
}

napi_value GuardFaults(napi_env env, napi_callback_info info) {
  napi_value out;
  napi_create_double(env, static_cast<double>(g_total_faults.load(std::memory_order_acquire)), &out);
  return out;
}

napi_value GuardMappingFaults(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  const uintptr_t start = BufferStart(env, argv[0]);
  const int slot = start == 0 ? -1 : SlotOf(start);
  return MakeInt(env, slot < 0 ? 0 : g_slots[slot].faults.load(std::memory_order_relaxed));
}

napi_value GuardInstalled(napi_env env, napi_callback_info info) {
  napi_value out;
  napi_get_boolean(env, g_installed, &out);
  return out;
}

napi_value AddSeals(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  int32_t fd;
  uint32_t seals;
  if (!ArgInt32(env, argv[0], &fd, "fcntl") || !ArgUint32(env, argv[1], &seals, "fcntl")) return nullptr;
  if (fcntl(fd, F_ADD_SEALS, static_cast<int>(seals)) == -1) return ThrowErrno(env, "fcntl F_ADD_SEALS", errno);
  return nullptr;
}

napi_value GetSeals(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  int32_t fd;
  if (!ArgInt32(env, argv[0], &fd, "fcntl")) return nullptr;
  int r = fcntl(fd, F_GET_SEALS);
  // Files that cannot be sealed (not memfd/shmem, or hugetlbfs on old kernels) report EINVAL.
  if (r == -1) return errno == EINVAL ? MakeInt(env, -1) : ThrowErrno(env, "fcntl F_GET_SEALS", errno);
  return MakeInt(env, r);
}

napi_value MemfdCreateSealable(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  size_t n = 0;
  char name[250];
  uint64_t size;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &n) != napi_ok)
    return ThrowType(env, "memfd_create", "name must be a string");
  if (!ArgSize(env, argv[1], &size, "ftruncate")) return nullptr;
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd == -1) return ThrowErrno(env, "memfd_create", errno);
  if (RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); }) == -1) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, "ftruncate", err);
  }
  return MakeInt(env, fd);
}

}  // namespace

bool GuardRegister(void* addr, size_t len) {
  std::call_once(g_install_once, Install);
  std::lock_guard<std::mutex> hold(g_register_lock);
  for (size_t n = 0; n < kMaxGuarded; n++) {
    const size_t i = (g_next_free + n) % kMaxGuarded;
    if (g_slots[i].start.load(std::memory_order_relaxed) != 0) continue;
    g_slots[i].faults.store(0, std::memory_order_relaxed);
    g_slots[i].len.store(len, std::memory_order_release);
    g_slots[i].start.store(reinterpret_cast<uintptr_t>(addr), std::memory_order_release);
    g_next_free = (i + 1) % kMaxGuarded;
    return true;
  }
  return false;
}

void GuardUnregister(void* addr) {
  std::lock_guard<std::mutex> hold(g_register_lock);
  const int slot = SlotOf(reinterpret_cast<uintptr_t>(addr));
  if (slot >= 0) g_slots[slot].start.store(0, std::memory_order_release);
}

void InitGuard(Napi::Env env, Napi::Object exports) {
  std::call_once(g_install_once, Install);
  napi_value e = exports;
  SetFunction(env, e, "guardFaults", GuardFaults);
  SetFunction(env, e, "guardMappingFaults", GuardMappingFaults);
  SetFunction(env, e, "guardInstalled", GuardInstalled);
  SetFunction(env, e, "addSeals", AddSeals);
  SetFunction(env, e, "getSeals", GetSeals);
  SetFunction(env, e, "memfdCreateSealable", MemfdCreateSealable);
}

}  // namespace ferry
