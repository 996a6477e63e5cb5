// Self-confinement once setup is done (see src/backend/cli/isolation.ts for
// the policy and its order): capabilities, no_new_privs, dumpable, an empty
// read-only root, Landlock and a seccomp allow-list.
//
// Node is multi-threaded before any JavaScript runs, which decides how each
// step reaches every thread:
// - uid/gid changes go through glibc (process.setuid & co.), which applies
//   them to every thread; leaving uid 0 clears the permitted and effective
//   capabilities of each thread.
// - The root directory lives in the fs_struct that all of Node's threads
//   share (pthreads are created with CLONE_FS), so one chroot() moves every
//   thread. A new user or mount namespace cannot be entered by a process
//   with more than one thread (unshare and setns say EINVAL), so the empty
//   root is a detached tmpfs made with fsopen()/fsmount(): it belongs to no
//   mount namespace, is mounted read-only and holds nothing.
// - The seccomp filter is installed with SECCOMP_FILTER_FLAG_TSYNC, which
//   also sets no_new_privs on every thread.
// - The capability bounding and inheritable sets and Landlock are per
//   thread: applied to the calling (main) thread, inherited by threads it
//   creates later. The filter forbids execve, the only place those sets
//   would matter for the other threads.
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "common.h"

namespace ferry {

namespace {

// ---- the allow-list ----

struct SyscallName {
  const char* name;
  int number;
};

#define FERRY_SYSCALL(n) {#n, __NR_##n}

// What Node 20 (V8, libuv, glibc) and ferry need while serving: memory for
// the JIT and GC, threads and their futexes, epoll and timers, ordinary
// sockets for flows, SCM_RIGHTS and mmap for guest memory, eventfds. File
// calls stay: with an empty root they find nothing, and Node probes a few.
const SyscallName kServing[] = {
    // memory
    FERRY_SYSCALL(mmap), FERRY_SYSCALL(munmap), FERRY_SYSCALL(mprotect), FERRY_SYSCALL(madvise), FERRY_SYSCALL(mremap),
    FERRY_SYSCALL(brk), FERRY_SYSCALL(msync), FERRY_SYSCALL(mincore), FERRY_SYSCALL(membarrier),
#ifdef __NR_pkey_alloc
    FERRY_SYSCALL(pkey_alloc), FERRY_SYSCALL(pkey_free), FERRY_SYSCALL(pkey_mprotect),
#endif
    // threads, scheduling, time
    FERRY_SYSCALL(futex), FERRY_SYSCALL(set_robust_list), FERRY_SYSCALL(get_robust_list),
    FERRY_SYSCALL(rseq), FERRY_SYSCALL(set_tid_address), FERRY_SYSCALL(gettid), FERRY_SYSCALL(getpid),
    FERRY_SYSCALL(getppid), FERRY_SYSCALL(sched_yield), FERRY_SYSCALL(sched_getaffinity), FERRY_SYSCALL(sched_getparam),
    FERRY_SYSCALL(sched_getscheduler), FERRY_SYSCALL(nanosleep), FERRY_SYSCALL(clock_nanosleep), FERRY_SYSCALL(clock_gettime),
    FERRY_SYSCALL(clock_getres), FERRY_SYSCALL(gettimeofday), FERRY_SYSCALL(getrusage), FERRY_SYSCALL(times),
    FERRY_SYSCALL(getpriority), FERRY_SYSCALL(prlimit64), FERRY_SYSCALL(getrlimit), FERRY_SYSCALL(setrlimit),
    FERRY_SYSCALL(exit), FERRY_SYSCALL(exit_group), FERRY_SYSCALL(restart_syscall), FERRY_SYSCALL(getrandom),
    FERRY_SYSCALL(uname), FERRY_SYSCALL(sysinfo), FERRY_SYSCALL(getcpu),
#ifdef __NR_futex_waitv
    FERRY_SYSCALL(futex_waitv),
#endif
    // identity (read only)
    FERRY_SYSCALL(getuid), FERRY_SYSCALL(geteuid), FERRY_SYSCALL(getgid), FERRY_SYSCALL(getegid),
    FERRY_SYSCALL(getresuid), FERRY_SYSCALL(getresgid), FERRY_SYSCALL(getgroups), FERRY_SYSCALL(capget),
    // signals (to ourselves, and to children ferry started)
    FERRY_SYSCALL(rt_sigaction), FERRY_SYSCALL(rt_sigprocmask), FERRY_SYSCALL(rt_sigreturn), FERRY_SYSCALL(sigaltstack),
    FERRY_SYSCALL(rt_sigtimedwait), FERRY_SYSCALL(rt_sigqueueinfo), FERRY_SYSCALL(rt_tgsigqueueinfo), FERRY_SYSCALL(tgkill),
    FERRY_SYSCALL(tkill), FERRY_SYSCALL(kill), FERRY_SYSCALL(wait4), FERRY_SYSCALL(waitid),
    // fds, pipes, polling, timers
    FERRY_SYSCALL(read), FERRY_SYSCALL(write), FERRY_SYSCALL(readv), FERRY_SYSCALL(writev), FERRY_SYSCALL(pread64),
    FERRY_SYSCALL(pwrite64), FERRY_SYSCALL(preadv), FERRY_SYSCALL(pwritev), FERRY_SYSCALL(close), FERRY_SYSCALL(close_range),
    FERRY_SYSCALL(dup), FERRY_SYSCALL(dup2), FERRY_SYSCALL(dup3), FERRY_SYSCALL(fcntl), FERRY_SYSCALL(ioctl),
    FERRY_SYSCALL(pipe2), FERRY_SYSCALL(eventfd2), FERRY_SYSCALL(epoll_create1), FERRY_SYSCALL(epoll_ctl),
    FERRY_SYSCALL(epoll_wait), FERRY_SYSCALL(epoll_pwait), FERRY_SYSCALL(poll), FERRY_SYSCALL(ppoll), FERRY_SYSCALL(select),
    FERRY_SYSCALL(pselect6), FERRY_SYSCALL(timerfd_create), FERRY_SYSCALL(timerfd_settime), FERRY_SYSCALL(timerfd_gettime),
    FERRY_SYSCALL(signalfd4), FERRY_SYSCALL(lseek), FERRY_SYSCALL(fstat), FERRY_SYSCALL(newfstatat), FERRY_SYSCALL(statx),
    FERRY_SYSCALL(fsync), FERRY_SYSCALL(fdatasync), FERRY_SYSCALL(ftruncate), FERRY_SYSCALL(memfd_create),
    FERRY_SYSCALL(splice), FERRY_SYSCALL(tee), FERRY_SYSCALL(sendfile), FERRY_SYSCALL(copy_file_range),
#ifdef __NR_epoll_pwait2
    FERRY_SYSCALL(epoll_pwait2),
#endif
#ifdef __NR_pipe
    FERRY_SYSCALL(pipe), FERRY_SYSCALL(epoll_create), FERRY_SYSCALL(eventfd),
#endif
    // paths: resolved inside the empty root (nothing to find, nothing to create)
    FERRY_SYSCALL(openat), FERRY_SYSCALL(readlinkat), FERRY_SYSCALL(faccessat), FERRY_SYSCALL(faccessat2),
    FERRY_SYSCALL(getcwd), FERRY_SYSCALL(unlinkat), FERRY_SYSCALL(getdents64), FERRY_SYSCALL(fchmod),
#ifdef __NR_open
    FERRY_SYSCALL(open), FERRY_SYSCALL(stat), FERRY_SYSCALL(lstat), FERRY_SYSCALL(access), FERRY_SYSCALL(readlink),
    FERRY_SYSCALL(unlink),
#endif
    // sockets
    FERRY_SYSCALL(socket), FERRY_SYSCALL(socketpair), FERRY_SYSCALL(bind), FERRY_SYSCALL(listen), FERRY_SYSCALL(accept),
    FERRY_SYSCALL(accept4), FERRY_SYSCALL(connect), FERRY_SYSCALL(shutdown), FERRY_SYSCALL(getsockname),
    FERRY_SYSCALL(getpeername), FERRY_SYSCALL(getsockopt), FERRY_SYSCALL(setsockopt), FERRY_SYSCALL(sendto),
    FERRY_SYSCALL(recvfrom), FERRY_SYSCALL(sendmsg), FERRY_SYSCALL(recvmsg), FERRY_SYSCALL(sendmmsg), FERRY_SYSCALL(recvmmsg),
    // the prctl() Node and glibc use to name threads; PR_SET_NO_NEW_PRIVS only ever tightens
    FERRY_SYSCALL(prctl), FERRY_SYSCALL(arch_prctl),
};

// Added for `ferry pasta`, which keeps opening sockets inside its namespace
// (-T/-U auto): a forked helper joins the namespaces with setns().
const SyscallName kNamespaceHelpers[] = {
    FERRY_SYSCALL(setns),
#ifdef __NR_fork
    FERRY_SYSCALL(fork), FERRY_SYSCALL(vfork),
#endif
};

#undef FERRY_SYSCALL

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
#error "ferry's seccomp filter knows x86_64 and aarch64"
#endif

// clone() is checked apart: threads and forks only, no new namespaces (a
// user namespace would give back every capability inside it). clone3()
// passes its flags in memory a filter cannot read: it gets ENOSYS, and
// glibc falls back to clone().
constexpr uint32_t kNamespaceCloneFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;

constexpr size_t kServingCount = sizeof kServing / sizeof kServing[0];
constexpr size_t kHelperCount = sizeof kNamespaceHelpers / sizeof kNamespaceHelpers[0];
// Header (arch check, x32 check, load nr), clone and clone3 (7), one compare per call, two returns.
constexpr size_t kMaxFilter = 6 + 7 + kServingCount + kHelperCount + 2;

// Build the program: wrong architecture (or an x32 call) kills, a listed
// call is allowed, anything else gets `otherwise`. Returns the length.
size_t BuildFilter(struct sock_filter* prog, bool helpers, uint32_t otherwise) {
  size_t n = 0;
  prog[n++] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  prog[n++] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0);
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
  prog[n++] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
  // x32 calls carry bit 30; they would reach the same handlers under other numbers.
  prog[n++] = BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1);
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
#endif
  // clone: allowed unless a namespace flag is set (args[0] low word; the flags all fit in it).
  prog[n++] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4);
  prog[n++] = BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
  prog[n++] = BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, kNamespaceCloneFlags, 0, 1);
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, otherwise);
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
#ifdef __NR_clone3
  prog[n++] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1);
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA));
#endif
  const size_t count = kServingCount + (helpers ? kHelperCount : 0);
  // Compare i jumps to ALLOW (after the remaining compares and the default return) on a match.
  for (size_t i = 0; i < count; i++) {
    const int nr = i < kServingCount ? kServing[i].number : kNamespaceHelpers[i - kServingCount].number;
    const uint8_t toAllow = static_cast<uint8_t>(count - i);  // count-i-1 compares left, then the default return
    prog[n++] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), toAllow, 0);
  }
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, otherwise);
  prog[n++] = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  return n;
}

static_assert(kServingCount + kHelperCount < 255, "BPF conditional jumps reach 255 instructions");

// ---- napi callbacks ----

napi_value SyscallNames(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  bool helpers = false;
  if (!ArgBool(env, argv[0], &helpers, "isolationSyscalls")) return nullptr;
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t at = 0;
  // Checked apart (see BuildFilter): clone without namespace flags, clone3 answered ENOSYS.
  for (const char* name : {"clone", "clone3"}) {
    napi_value v;
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, arr, at++, v);
  }
  for (const auto& s : kServing) {
    napi_value v;
    napi_create_string_utf8(env, s.name, NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, arr, at++, v);
  }
  for (size_t i = 0; helpers && i < kHelperCount; i++) {
    napi_value v;
    napi_create_string_utf8(env, kNamespaceHelpers[i].name, NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, arr, at++, v);
  }
  return arr;
}

// seccomp(SECCOMP_SET_MODE_FILTER, TSYNC) on every thread. With log=true a
// call outside the list is allowed and logged by the kernel (audit, dmesg)
// instead of killing the process.
napi_value InstallSeccomp(napi_env env, napi_callback_info info) {
  FERRY_ARGS(2);
  bool helpers = false, logOnly = false;
  if (!ArgBool(env, argv[0], &helpers, "seccomp")) return nullptr;
  if (!ArgBool(env, argv[1], &logOnly, "seccomp")) return nullptr;
  struct sock_filter prog[kMaxFilter];
  const size_t len = BuildFilter(prog, helpers, logOnly ? SECCOMP_RET_LOG : SECCOMP_RET_KILL_PROCESS);
  struct sock_fprog fprog;
  fprog.len = static_cast<unsigned short>(len);
  fprog.filter = prog;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) return ThrowErrno(env, "prctl(PR_SET_NO_NEW_PRIVS)", errno);
  long r = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
  if (r == -1) return ThrowErrno(env, "seccomp", errno);
  // TSYNC returns the id of a thread it could not synchronise.
  if (r > 0) return ThrowErrno(env, "seccomp(TSYNC)", ESRCH);
  return nullptr;
}

// Empty the bounding set. Needs CAP_SETPCAP (call it before leaving uid
// 0); without it the set stays as it is. Returns true when it is empty.
napi_value DropBoundingSet(napi_env env, napi_callback_info info) {
  bool empty = true;
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1) continue;  // not in the set, or past the kernel's last
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == -1) empty = false;
  }
  napi_value result;
  napi_get_boolean(env, empty, &result);
  return result;
}

// Clear the ambient set and zero effective, permitted and inheritable (after
// any uid change: setgroups and setuid need the capabilities this removes).
napi_value ClearCapabilities(napi_env env, napi_callback_info info) {
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == -1 && errno != EINVAL) {
    return ThrowErrno(env, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", errno);
  }
  struct __user_cap_header_struct header;
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
  memset(&header, 0, sizeof header);
  memset(data, 0, sizeof data);
  header.version = _LINUX_CAPABILITY_VERSION_3;
  if (syscall(__NR_capset, &header, data) == -1) return ThrowErrno(env, "capset", errno);
  return nullptr;
}

napi_value SetNoNewPrivs(napi_env env, napi_callback_info info) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) return ThrowErrno(env, "prctl(PR_SET_NO_NEW_PRIVS)", errno);
  return nullptr;
}

napi_value SetDumpable(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  bool on = false;
  if (!ArgBool(env, argv[0], &on, "prctl(PR_SET_DUMPABLE)")) return nullptr;
  if (prctl(PR_SET_DUMPABLE, on ? 1 : 0, 0, 0, 0) == -1) return ThrowErrno(env, "prctl(PR_SET_DUMPABLE)", errno);
  return nullptr;
}

// The new mount API, by number: older headers lack the wrappers.
#ifndef __NR_fsopen
#define __NR_fsopen 430
#define __NR_fsconfig 431
#define __NR_fsmount 432
#endif
constexpr unsigned kFsopenCloexec = 0x1;
constexpr unsigned kFsconfigSetString = 1;
constexpr unsigned kFsconfigCmdCreate = 6;
constexpr unsigned kFsmountCloexec = 0x1;
constexpr unsigned kMountAttrRdonly = 0x1, kMountAttrNosuid = 0x2, kMountAttrNodev = 0x4, kMountAttrNoexec = 0x8;

// chroot into a fresh, detached, read-only tmpfs: every thread's root and
// working directory become an empty directory nothing can be created in.
// Needs CAP_SYS_ADMIN (fsopen) and CAP_SYS_CHROOT.
napi_value ChrootEmpty(napi_env env, napi_callback_info info) {
  int fs = static_cast<int>(syscall(__NR_fsopen, "tmpfs", kFsopenCloexec));
  if (fs == -1) return ThrowErrno(env, "fsopen(tmpfs)", errno);
  auto fail = [&](const char* what) {
    int err = errno;
    close(fs);
    return ThrowErrno(env, what, err);
  };
  if (syscall(__NR_fsconfig, fs, kFsconfigSetString, "size", "4k", 0) == -1) return fail("fsconfig(size)");
  if (syscall(__NR_fsconfig, fs, kFsconfigSetString, "nr_inodes", "1", 0) == -1) return fail("fsconfig(nr_inodes)");
  if (syscall(__NR_fsconfig, fs, kFsconfigSetString, "mode", "0555", 0) == -1) return fail("fsconfig(mode)");
  if (syscall(__NR_fsconfig, fs, kFsconfigCmdCreate, nullptr, nullptr, 0) == -1) return fail("fsconfig(create)");
  int mnt = static_cast<int>(
      syscall(__NR_fsmount, fs, kFsmountCloexec, kMountAttrRdonly | kMountAttrNosuid | kMountAttrNodev | kMountAttrNoexec));
  if (mnt == -1) return fail("fsmount");
  close(fs);
  if (fchdir(mnt) == -1 || chroot(".") == -1 || chdir("/") == -1) {
    int err = errno;
    close(mnt);
    return ThrowErrno(env, "chroot", err);
  }
  close(mnt);
  return nullptr;
}

// Landlock with every filesystem right handled and no rule: no path can be
// opened, created or executed by this thread and the threads it starts
// later. Returns the ABI version used, 0 when the kernel has no Landlock.
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_restrict_self 446
#endif
napi_value RestrictLandlock(napi_env env, napi_callback_info info) {
  constexpr uint32_t kCreateRulesetVersion = 1;
  long abi = syscall(__NR_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  if (abi < 1) return MakeInt(env, 0);
  uint64_t handled = (1ull << 13) - 1;  // ABI 1: execute ... make_sym
  if (abi >= 2) handled |= 1ull << 13;  // refer
  if (abi >= 3) handled |= 1ull << 14;  // truncate
  if (abi >= 5) handled |= 1ull << 15;  // ioctl_dev
  struct {
    uint64_t handled_access_fs;
  } attr = {handled};
  int ruleset = static_cast<int>(syscall(__NR_landlock_create_ruleset, &attr, sizeof attr, 0));
  if (ruleset == -1) return ThrowErrno(env, "landlock_create_ruleset", errno);
  if (syscall(__NR_landlock_restrict_self, ruleset, 0) == -1) {
    int err = errno;
    close(ruleset);
    return ThrowErrno(env, "landlock_restrict_self", err);
  }
  close(ruleset);
  return MakeInt(env, abi);
}

// ---- the helper that removes ferry's files after a clean exit ----

// unlink() where the architecture has it (glibc may use either call).
constexpr uint32_t CleanupUnlinkNr() {
#ifdef __NR_unlink
  return __NR_unlink;
#else
  return __NR_unlinkat;
#endif
}

constexpr uint32_t kMaxCleanupPaths = 8;
constexpr size_t kCleanupPathMax = 4096;

// Forked before confinement: keeps only the read end of a pipe, waits on
// it, and if ferry writes one byte before exiting (a clean exit) unlinks
// the paths ferry created and can no longer reach from its empty root. EOF
// without that byte (ferry killed) leaves them, as before. Between fork()
// and _exit() only system calls on data prepared before the fork.
[[noreturn]] void CleanupMain(int readFd, const char (*paths)[kCleanupPathMax], uint32_t count) {
  prctl(PR_SET_NAME, "ferry-cleanup", 0, 0, 0);
  // Node's handlers came along with the fork. A Ctrl-C or SIGTERM for the whole
  // group is ferry's to act on; the helper ends when ferry's end of the pipe does.
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    const bool ignore = sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT || sig == SIGPIPE;
    signal(sig, ignore ? SIG_IGN : SIG_DFL);
  }
  // Nothing of ferry's stays open here: no socket, no listener, no terminal.
  for (int fd = 0; fd < readFd; fd++) close(fd);
  syscall(__NR_close_range, readFd + 1, ~0u, 0);
  // Its own filter: waiting, unlinking and exiting are all it may do.
  struct sock_filter prog[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_read, 5, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_unlinkat, 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, CleanupUnlinkNr(), 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit_group, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog fprog = {static_cast<unsigned short>(sizeof prog / sizeof prog[0]), prog};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 || syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) == -1) _exit(1);
  char byte = 0;
  ssize_t r = RetryEintr([&] { return read(readFd, &byte, 1); });
  if (r == 1 && byte == 'u') {
    for (uint32_t i = 0; i < count; i++) unlink(paths[i]);
  }
  _exit(0);
}

// cleanupHelper(paths): fork the helper; returns the write end of its pipe
// (CLOEXEC): write 'u' to have the paths removed, close it to leave them.
napi_value CleanupHelper(napi_env env, napi_callback_info info) {
  FERRY_ARGS(1);
  bool isArray = false;
  uint32_t count = 0;
  if (napi_is_array(env, argv[0], &isArray) != napi_ok || !isArray) return ThrowType(env, "cleanupHelper", "paths must be an array");
  napi_get_array_length(env, argv[0], &count);
  if (count > kMaxCleanupPaths) return ThrowInval(env, "cleanupHelper", "at most 8 paths");
  static char paths[kMaxCleanupPaths][kCleanupPathMax];
  for (uint32_t i = 0; i < count; i++) {
    napi_value v;
    size_t len = 0;
    napi_get_element(env, argv[0], i, &v);
    if (napi_get_value_string_utf8(env, v, paths[i], kCleanupPathMax, &len) != napi_ok) return ThrowType(env, "cleanupHelper", "paths must be strings");
    if (len == 0 || len >= kCleanupPathMax - 1) return ThrowInval(env, "cleanupHelper", "path empty or too long");
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) == -1) return ThrowErrno(env, "pipe2", errno);
  pid_t pid = fork();
  if (pid == -1) {
    int err = errno;
    close(fds[0]);
    close(fds[1]);
    return ThrowErrno(env, "fork", err);
  }
  if (pid == 0) CleanupMain(fds[0], paths, count);
  close(fds[0]);
  return MakeInt(env, fds[1]);
}

}  // namespace

void InitIsolate(Napi::Env env, Napi::Object exports) {
  SetFunction(env, exports, "isolationSyscalls", SyscallNames);
  SetFunction(env, exports, "isolationSeccomp", InstallSeccomp);
  SetFunction(env, exports, "isolationDropBoundingSet", DropBoundingSet);
  SetFunction(env, exports, "isolationClearCapabilities", ClearCapabilities);
  SetFunction(env, exports, "isolationNoNewPrivs", SetNoNewPrivs);
  SetFunction(env, exports, "isolationDumpable", SetDumpable);
  SetFunction(env, exports, "isolationChrootEmpty", ChrootEmpty);
  SetFunction(env, exports, "isolationLandlock", RestrictLandlock);
  SetFunction(env, exports, "isolationCleanupHelper", CleanupHelper);
}

}  // namespace ferry
