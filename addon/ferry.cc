// ferry native addon: thin syscall wrappers Node lacks (see src/native.ts for
// the contract). No protocol logic lives here.
#include "common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  if (!ferry::InitCommon(env)) {
    Napi::Error::New(env, "ferry: addon initialisation failed").ThrowAsJavaScriptException();
    return exports;
  }
  ferry::InitFd(env, exports);
  ferry::InitMem(env, exports);
  ferry::InitGuard(env, exports);
  ferry::InitPoller(env, exports);
  ferry::InitSock(env, exports);
  ferry::InitNs(env, exports);  // after InitSock: adds to its constants
  ferry::InitIsolate(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(ferry_native, Init)
