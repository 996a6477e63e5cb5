// Shared helpers for the ferry addon: errno-carrying errors, argument
// checking and iovec-list building. Everything here is allocation-free on the
// success path so the hot-path calls built on it stay allocation-free too.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <sys/uio.h>

namespace ferry {

// Upper bound on iovec entries per call (Linux UIO_MAXIOV / IOV_MAX).
constexpr size_t kMaxIov = 1024;

// Retry a syscall while it fails with EINTR.
template <typename F>
static inline auto RetryEintr(F f) -> decltype(f()) {
  decltype(f()) r;
  do {
    r = f();
  } while (r == -1 && errno == EINTR);
  return r;
}

// Throw Error{code: errno name, errno, syscall}; message "syscall: CODE (text)".
// Always returns nullptr so callbacks can `return ThrowErrno(...)`.
napi_value ThrowErrno(napi_env env, const char* syscall, int err);
// Throw RangeError{code: 'ERANGE'} for an out-of-bounds buffer access.
napi_value ThrowRange(napi_env env, const char* syscall, const char* what);
// Throw TypeError{code: 'EINVAL'} for a bad argument type or value.
napi_value ThrowType(napi_env env, const char* syscall, const char* what);
// Throw Error{code: 'EINVAL'} for an argument value the syscall would reject.
napi_value ThrowInval(napi_env env, const char* syscall, const char* what);

// Argument readers: return false after throwing when the value is unusable.
bool ArgInt32(napi_env env, napi_value v, int32_t* out, const char* syscall);
bool ArgUint32(napi_env env, napi_value v, uint32_t* out, const char* syscall);
// A non-negative integer number no larger than 2^53.
bool ArgSize(napi_env env, napi_value v, uint64_t* out, const char* syscall);
bool ArgBool(napi_env env, napi_value v, bool* out, const char* syscall);
// True for null or undefined.
bool IsNullish(napi_env env, napi_value v);
// Bytes of an ArrayBuffer or any ArrayBufferView (typed array byteOffset applied).
bool GetBytes(napi_env env, napi_value v, uint8_t** data, size_t* len);
bool ArgBytes(napi_env env, napi_value v, uint8_t** data, size_t* len, const char* syscall);
// Like ArgBytes but null/undefined give data=nullptr, len=0.
bool ArgBytesOrNull(napi_env env, napi_value v, uint8_t** data, size_t* len, const char* syscall);
// An Int32Array (element pointer and element count).
bool ArgInt32Array(napi_env env, napi_value v, int32_t** data, size_t* count, const char* syscall);
// A Uint8Array/ArrayBuffer plus (offset, length) checked to lie inside it.
bool ArgRange(napi_env env, napi_value buf, napi_value off, napi_value len, uint8_t** ptr, size_t* n,
              const char* syscall);

// Parse an IoVecList object ({buffers, offsets, lengths, count}) into iov
// (capacity kMaxIov). Every entry is bounds-checked against its buffer.
// Returns the entry count, or -1 after throwing.
long BuildIov(napi_env env, napi_value list, struct iovec* iov, const char* syscall);

// Per-thread scratch iovec array (no heap per call).
struct iovec* ScratchIov();

// Create the interned property keys used by BuildIov; called once per env.
bool InitCommon(napi_env env);

// Module parts register their functions on exports.
void InitFd(Napi::Env env, Napi::Object exports);
void InitMem(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitSock(Napi::Env env, Napi::Object exports);
void InitNs(Napi::Env env, Napi::Object exports);
void InitGuard(Napi::Env env, Napi::Object exports);
void InitIsolate(Napi::Env env, Napi::Object exports);

// A JS number for an integer result (a Smi when it fits in int32).
napi_value MakeInt(napi_env env, int64_t v);

// Register a raw N-API callback as exports[name].
void SetFunction(napi_env env, napi_value exports, const char* name, napi_callback cb);

// Read up to N arguments into a stack array (missing ones are undefined).
#define FERRY_ARGS(n)                                         \
  size_t argc = (n);                                          \
  napi_value argv[(n)];                                       \
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr); \
  (void)argc

}  // namespace ferry
