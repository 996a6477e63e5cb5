// Error construction, argument checking and IoVecList parsing.
#include "common.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace ferry {

namespace {

// Property keys of IoVecList, created once per env so parsing a list does not
// build key strings on every call. Node 20 only allows references to objects,
// so the key strings are held in an array: [buffers, offsets, lengths, count].
struct EnvData {
  napi_ref keys = nullptr;
};

enum KeyIndex : uint32_t { kBuffers = 0, kOffsets = 1, kLengths = 2, kCount = 3 };

void FreeEnvData(napi_env env, void* data, void*) {
  EnvData* d = static_cast<EnvData*>(data);
  napi_delete_reference(env, d->keys);
  delete d;
}

// Build and throw an error of the given kind with code/errno/syscall set.
napi_value ThrowWith(napi_env env, napi_status (*create)(napi_env, napi_value, napi_value, napi_value*),
                     const char* syscall, const char* code, int err, const char* text) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s (%s)", syscall, code, text);
  napi_value vmsg, vcode, verrno, vsys, error;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &vmsg);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &vcode);
  napi_create_int32(env, err, &verrno);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &vsys);
  if (create(env, nullptr, vmsg, &error) != napi_ok) return nullptr;
  napi_set_named_property(env, error, "code", vcode);
  napi_set_named_property(env, error, "errno", verrno);
  napi_set_named_property(env, error, "syscall", vsys);
  napi_throw(env, error);
  return nullptr;
}

EnvData* GetEnvData(napi_env env) {
  void* d = nullptr;
  napi_get_instance_data(env, &d);
  return static_cast<EnvData*>(d);
}

// Fetch list[key] where key is one of the interned IoVecList key strings.
bool GetKeyed(napi_env env, napi_value keys, napi_value list, KeyIndex i, napi_value* out) {
  napi_value key;
  return napi_get_element(env, keys, i, &key) == napi_ok && napi_get_property(env, list, key, out) == napi_ok;
}

}  // namespace

napi_value ThrowErrno(napi_env env, const char* syscall, int err) {
  const char* name = strerrorname_np(err);
  const char* text = strerrordesc_np(err);
  char unknown[32];
  if (name == nullptr) {
    snprintf(unknown, sizeof unknown, "E%d", err);
    name = unknown;
  }
  return ThrowWith(env, napi_create_error, syscall, name, err, text ? text : "Unknown error");
}

napi_value ThrowRange(napi_env env, const char* syscall, const char* what) {
  return ThrowWith(env, napi_create_range_error, syscall, "ERANGE", ERANGE, what);
}

napi_value ThrowType(napi_env env, const char* syscall, const char* what) {
  return ThrowWith(env, napi_create_type_error, syscall, "EINVAL", EINVAL, what);
}

napi_value ThrowInval(napi_env env, const char* syscall, const char* what) {
  return ThrowWith(env, napi_create_error, syscall, "EINVAL", EINVAL, what);
}

bool ArgInt32(napi_env env, napi_value v, int32_t* out, const char* syscall) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    ThrowType(env, syscall, "expected a number");
    return false;
  }
  if (!(d >= INT32_MIN && d <= INT32_MAX) || d != std::floor(d)) {
    ThrowType(env, syscall, "expected a 32-bit integer");
    return false;
  }
  *out = static_cast<int32_t>(d);
  return true;
}

bool ArgUint32(napi_env env, napi_value v, uint32_t* out, const char* syscall) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    ThrowType(env, syscall, "expected a number");
    return false;
  }
  if (!(d >= 0 && d <= UINT32_MAX) || d != std::floor(d)) {
    ThrowType(env, syscall, "expected an unsigned 32-bit integer");
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

bool ArgSize(napi_env env, napi_value v, uint64_t* out, const char* syscall) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    ThrowType(env, syscall, "expected a number");
    return false;
  }
  if (!(d >= 0 && d <= 9007199254740992.0) || d != std::floor(d)) {
    ThrowType(env, syscall, "expected a non-negative integer");
    return false;
  }
  *out = static_cast<uint64_t>(d);
  return true;
}

bool ArgBool(napi_env env, napi_value v, bool* out, const char* syscall) {
  if (napi_get_value_bool(env, v, out) != napi_ok) {
    ThrowType(env, syscall, "expected a boolean");
    return false;
  }
  return true;
}

bool IsNullish(napi_env env, napi_value v) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  return t == napi_null || t == napi_undefined;
}

bool GetBytes(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  bool is = false;
  void* d = nullptr;
  // ArrayBuffer first: guest-memory chunks are plain ArrayBuffers.
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    if (napi_get_arraybuffer_info(env, v, &d, len) != napi_ok) return false;
    *data = static_cast<uint8_t*>(d);
    return true;
  }
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count;
    if (napi_get_typedarray_info(env, v, &type, &count, &d, nullptr, nullptr) != napi_ok) return false;
    size_t elem = 1;
    switch (type) {
      case napi_int8_array:
      case napi_uint8_array:
      case napi_uint8_clamped_array: elem = 1; break;
      case napi_int16_array:
      case napi_uint16_array: elem = 2; break;
      case napi_int32_array:
      case napi_uint32_array:
      case napi_float32_array: elem = 4; break;
      default: elem = 8; break;
    }
    *data = static_cast<uint8_t*>(d);
    *len = count * elem;
    return true;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    if (napi_get_dataview_info(env, v, len, &d, nullptr, nullptr) != napi_ok) return false;
    *data = static_cast<uint8_t*>(d);
    return true;
  }
  return false;
}

bool ArgBytes(napi_env env, napi_value v, uint8_t** data, size_t* len, const char* syscall) {
  if (!GetBytes(env, v, data, len)) {
    ThrowType(env, syscall, "expected an ArrayBuffer or Uint8Array");
    return false;
  }
  return true;
}

bool ArgBytesOrNull(napi_env env, napi_value v, uint8_t** data, size_t* len, const char* syscall) {
  if (IsNullish(env, v)) {
    *data = nullptr;
    *len = 0;
    return true;
  }
  return ArgBytes(env, v, data, len, syscall);
}

bool ArgInt32Array(napi_env env, napi_value v, int32_t** data, size_t* count, const char* syscall) {
  bool is = false;
  napi_typedarray_type type;
  void* d = nullptr;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, v, &type, count, &d, nullptr, nullptr) != napi_ok || type != napi_int32_array) {
    ThrowType(env, syscall, "expected an Int32Array");
    return false;
  }
  *data = static_cast<int32_t*>(d);
  return true;
}

bool ArgRange(napi_env env, napi_value buf, napi_value off, napi_value len, uint8_t** ptr, size_t* n,
              const char* syscall) {
  uint8_t* data;
  size_t size;
  uint64_t o, l;
  if (!ArgBytes(env, buf, &data, &size, syscall) || !ArgSize(env, off, &o, syscall) ||
      !ArgSize(env, len, &l, syscall))
    return false;
  if (o > size || l > size - o) {
    ThrowRange(env, syscall, "offset/length outside the buffer");
    return false;
  }
  *ptr = data + o;
  *n = static_cast<size_t>(l);
  return true;
}

// A Float64Array's element pointer and count.
static bool GetFloat64Array(napi_env env, napi_value v, double** data, size_t* count) {
  bool is = false;
  napi_typedarray_type type;
  void* d = nullptr;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, v, &type, count, &d, nullptr, nullptr) != napi_ok || type != napi_float64_array)
    return false;
  *data = static_cast<double*>(d);
  return true;
}

long BuildIov(napi_env env, napi_value list, struct iovec* iov, const char* syscall) {
  EnvData* keys = GetEnvData(env);
  napi_valuetype t;
  if (keys == nullptr || napi_typeof(env, list, &t) != napi_ok || t != napi_object) {
    ThrowType(env, syscall, "expected an IoVecList");
    return -1;
  }
  napi_value vkeys, vbuffers, voffsets, vlengths, vcount;
  if (napi_get_reference_value(env, keys->keys, &vkeys) != napi_ok ||
      !GetKeyed(env, vkeys, list, kBuffers, &vbuffers) || !GetKeyed(env, vkeys, list, kOffsets, &voffsets) ||
      !GetKeyed(env, vkeys, list, kLengths, &vlengths) || !GetKeyed(env, vkeys, list, kCount, &vcount))
    return -1;
  uint64_t count;
  if (!ArgSize(env, vcount, &count, syscall)) return -1;
  if (count > kMaxIov) {
    ThrowRange(env, syscall, "iovec count exceeds IOV_MAX");
    return -1;
  }
  double* offsets;
  double* lengths;
  size_t nOffsets, nLengths;
  uint32_t nBuffers = 0;
  bool isArray = false;
  if (!GetFloat64Array(env, voffsets, &offsets, &nOffsets) || !GetFloat64Array(env, vlengths, &lengths, &nLengths) ||
      napi_is_array(env, vbuffers, &isArray) != napi_ok || !isArray ||
      napi_get_array_length(env, vbuffers, &nBuffers) != napi_ok) {
    ThrowType(env, syscall, "IoVecList needs buffers[], offsets: Float64Array, lengths: Float64Array");
    return -1;
  }
  if (count > nOffsets || count > nLengths || count > nBuffers) {
    ThrowRange(env, syscall, "iovec count exceeds the list arrays");
    return -1;
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value b;
    uint8_t* data;
    size_t size;
    if (napi_get_element(env, vbuffers, i, &b) != napi_ok) return -1;
    if (!GetBytes(env, b, &data, &size)) {
      ThrowType(env, syscall, "iovec buffer is not an ArrayBuffer or Uint8Array");
      return -1;
    }
    double o = offsets[i], l = lengths[i];
    // NaN fails every comparison, so it is rejected here as well.
    if (!(o >= 0 && l >= 0 && o <= static_cast<double>(size) && l <= static_cast<double>(size) - o) ||
        o != std::floor(o) || l != std::floor(l)) {
      char what[96];
      snprintf(what, sizeof what, "iovec %u out of bounds", i);
      ThrowRange(env, syscall, what);
      return -1;
    }
    iov[i].iov_base = data + static_cast<size_t>(o);
    iov[i].iov_len = static_cast<size_t>(l);
  }
  return static_cast<long>(count);
}

struct iovec* ScratchIov() {
  static thread_local struct iovec scratch[kMaxIov];
  return scratch;
}

bool InitCommon(napi_env env) {
  static const char* const names[] = {"buffers", "offsets", "lengths", "count"};
  napi_value arr;
  if (napi_create_array_with_length(env, 4, &arr) != napi_ok) return false;
  for (uint32_t i = 0; i < 4; i++) {
    napi_value s;
    if (napi_create_string_utf8(env, names[i], NAPI_AUTO_LENGTH, &s) != napi_ok ||
        napi_set_element(env, arr, i, s) != napi_ok)
      return false;
  }
  EnvData* d = new EnvData();
  if (napi_create_reference(env, arr, 1, &d->keys) != napi_ok) {
    delete d;
    return false;
  }
  return napi_set_instance_data(env, d, FreeEnvData, nullptr) == napi_ok;
}

napi_value MakeInt(napi_env env, int64_t v) {
  napi_value r = nullptr;
  if (v >= INT32_MIN && v <= INT32_MAX)
    napi_create_int32(env, static_cast<int32_t>(v), &r);
  else
    napi_create_double(env, static_cast<double>(v), &r);
  return r;
}

void SetFunction(napi_env env, napi_value exports, const char* name, napi_callback cb) {
  napi_value fn;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, nullptr, &fn) == napi_ok)
    napi_set_named_property(env, exports, name, fn);
}

}  // namespace ferry
