{
  "targets": [
    {
      "target_name": "ferry_native",
      "sources": ["addon/ferry.cc", "addon/common.cc", "addon/fd.cc", "addon/mem.cc", "addon/poller.cc", "addon/sock.cc", "addon/ns.cc", "addon/guard.cc", "addon/isolate.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
