// Poller: an epoll set watched by one uv_poll_t on the calling thread's loop.
// One libuv wake-up drains a batch of ready fds into a caller-owned
// Int32Array and calls back into JS once, so readiness costs no allocation.
#include <sys/epoll.h>
#include <unistd.h>
#include <uv.h>

#include <climits>

#include "common.h"

namespace ferry {

namespace {

// Most events taken per wake-up (on the stack); more stay ready in epoll and
// wake libuv again on its next iteration, since the epoll fd is level-triggered.
constexpr size_t kMaxBatch = 1024;

class Poller;

// libuv handle memory lives apart from the JS object: it must outlive both
// Poller::close() and the object's finalizer until uv_close calls back.
struct PollHandle {
  uv_poll_t poll;
  Poller* owner = nullptr;  // null once the Poller let go of the handle
  napi_env env = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;  // set while env teardown may need us
};

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod<&Poller::Add>("add"), InstanceMethod<&Poller::Modify>("modify"),
                        InstanceMethod<&Poller::Remove>("remove"), InstanceMethod<&Poller::Close>("close"),
                        InstanceMethod<&Poller::RefHandle>("ref"), InstanceMethod<&Poller::UnrefHandle>("unref")});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    napi_env env = info.Env();
    if (info.Length() < 2 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
        info[0].As<Napi::TypedArray>().ElementLength() < 2 || !info[1].IsFunction()) {
      ThrowType(env, "Poller", "new Poller(events: Int32Array (length >= 2), callback: Function)");
      return;
    }
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ == -1) {
      ThrowErrno(env, "epoll_create1", errno);
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      ThrowErrno(env, "uv_poll_init", EINVAL);
      return;
    }
    PollHandle* ph = new PollHandle();
    int r = uv_poll_init(loop, &ph->poll, epfd_);
    if (r != 0) {
      delete ph;  // never initialised, so nothing to uv_close
      ThrowErrno(env, "uv_poll_init", -r);
      return;
    }
    ph->poll.data = ph;
    ph->owner = this;
    ph->env = env;
    ph_ = ph;
    r = uv_poll_start(&ph->poll, UV_READABLE, OnReadable);
    if (r != 0) {
      ThrowErrno(env, "uv_poll_start", -r);
      return;  // the destructor closes the handle
    }
    // A worker's loop must have no open handles when it ends: close ours then.
    if (napi_add_async_cleanup_hook(env, OnEnvCleanup, ph, &ph->hook) != napi_ok) ph->hook = nullptr;
    napi_value name;
    napi_create_string_utf8(env, "ferry.Poller", NAPI_AUTO_LENGTH, &name);
    napi_async_init(env, nullptr, name, &async_);
    events_ = Napi::Persistent(info[0].As<Napi::Int32Array>());
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    // Stay alive while watching even if JS drops every reference.
    Ref();
    strong_ = true;
  }

  ~Poller() override {
    Shutdown();
    if (async_ != nullptr) napi_async_destroy(Env(), async_);
  }

 private:
  // Stop watching and release the uv handle and the epoll fd. Idempotent.
  void Shutdown() {
    if (ph_ != nullptr) {
      PollHandle* ph = ph_;
      ph_ = nullptr;
      ph->owner = nullptr;
      if (ph->hook != nullptr) {
        napi_remove_async_cleanup_hook(ph->hook);
        ph->hook = nullptr;
      }
      uv_poll_stop(&ph->poll);
      uv_close(reinterpret_cast<uv_handle_t*>(&ph->poll), OnClosed);
    }
    if (epfd_ != -1) {
      close(epfd_);
      epfd_ = -1;
    }
  }

  static void OnClosed(uv_handle_t* h) {
    PollHandle* ph = static_cast<PollHandle*>(h->data);
    if (ph->hook != nullptr) napi_remove_async_cleanup_hook(ph->hook);  // teardown waited for this
    delete ph;
  }

  // Environment teardown (e.g. a worker exiting) with the Poller still open.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    PollHandle* ph = static_cast<PollHandle*>(arg);
    if (ph->owner != nullptr) {
      Poller* self = ph->owner;
      self->ph_ = nullptr;
      if (self->epfd_ != -1) {
        close(self->epfd_);
        self->epfd_ = -1;
      }
      ph->owner = nullptr;
    }
    uv_poll_stop(&ph->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&ph->poll), OnClosed);
  }

  static void OnReadable(uv_poll_t* h, int status, int events) {
    PollHandle* ph = static_cast<PollHandle*>(h->data);
    Poller* self = ph->owner;
    if (self == nullptr || self->epfd_ == -1) return;
    napi_env env = ph->env;
    Napi::HandleScope scope(env);
    napi_value arr = self->events_.Value();
    void* data = nullptr;
    size_t length = 0;
    if (napi_get_typedarray_info(env, arr, nullptr, &length, &data, nullptr, nullptr) != napi_ok) return;
    size_t max = length / 2;
    if (max > kMaxBatch) max = kMaxBatch;
    if (max == 0 || data == nullptr) return;  // the array was detached
    struct epoll_event evs[kMaxBatch];
    int n = RetryEintr([&] { return epoll_wait(self->epfd_, evs, static_cast<int>(max), 0); });
    if (n <= 0) return;
    int32_t* out = static_cast<int32_t*>(data);
    for (int i = 0; i < n; i++) {
      out[2 * i] = evs[i].data.fd;
      out[2 * i + 1] = static_cast<int32_t>(evs[i].events);
    }
    napi_value argv[1];
    napi_create_int32(env, n, &argv[0]);
    napi_value recv = self->Value();
    napi_value fn = self->callback_.Value();
    napi_value result;
    // MakeCallback runs the nextTick/microtask queues afterwards, like any
    // libuv-driven callback in Node. `self` may be closed by the callback,
    // so it is not touched after this point.
    napi_status s = napi_make_callback(env, self->async_, recv, fn, 1, argv, &result);
    if (s != napi_ok) {
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value err;
        napi_get_and_clear_last_exception(env, &err);
        napi_fatal_exception(env, err);  // 'uncaughtException', as for any other callback
      }
    }
  }

  // Bits for one fd: data.fd carries the fd number back in the batch.
  Napi::Value Ctl(const Napi::CallbackInfo& info, int op, const char* name) {
    napi_env env = info.Env();
    int32_t fd;
    uint32_t events = 0;
    if (!ArgInt32(env, info[0], &fd, name)) return Napi::Value();
    if (op != EPOLL_CTL_DEL) {
      // JS bit operations make EPOLLET (bit 31) negative: take int32 or uint32.
      double d;
      if (napi_get_value_double(env, info[1], &d) != napi_ok || !(d >= INT32_MIN && d <= UINT32_MAX) ||
          d != static_cast<double>(static_cast<int64_t>(d))) {
        ThrowType(env, name, "events must be a 32-bit integer");
        return Napi::Value();
      }
      events = static_cast<uint32_t>(static_cast<int64_t>(d));
    }
    if (epfd_ == -1) {
      ThrowErrno(env, name, EBADF);
      return Napi::Value();
    }
    struct epoll_event ev = {};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epfd_, op, fd, &ev) == -1) {
      if (op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF)) return Napi::Value();
      ThrowErrno(env, name, errno);
    }
    return Napi::Value();
  }

  Napi::Value Add(const Napi::CallbackInfo& info) { return Ctl(info, EPOLL_CTL_ADD, "epoll_ctl"); }
  Napi::Value Modify(const Napi::CallbackInfo& info) { return Ctl(info, EPOLL_CTL_MOD, "epoll_ctl"); }
  Napi::Value Remove(const Napi::CallbackInfo& info) { return Ctl(info, EPOLL_CTL_DEL, "epoll_ctl"); }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    events_.Reset();
    callback_.Reset();
    if (strong_) {
      strong_ = false;
      Unref();
    }
    return Napi::Value();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    if (ph_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&ph_->poll));
    return Napi::Value();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (ph_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&ph_->poll));
    return Napi::Value();
  }

  int epfd_ = -1;
  PollHandle* ph_ = nullptr;
  Napi::Reference<Napi::Int32Array> events_;
  Napi::FunctionReference callback_;
  napi_async_context async_ = nullptr;
  bool strong_ = false;
};

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) { exports.Set("Poller", Poller::Define(env)); }

}  // namespace ferry
