{
  "targets": [
    {
      "target_name": "relay",
      "sources": ["addon.c", "accept.c", "fdstore.c", "identity.c", "limits.c", "policy.c", "proxy.c", "relay.c", "threads.c", "tls.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-fvisibility=hidden"],
      "ldflags": ["-Wl,-z,now", "-Wl,-Bsymbolic"],
      "libraries": ["-lpthread"]
    }
  ]
}
