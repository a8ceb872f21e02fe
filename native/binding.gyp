{
  "targets": [
    {
      "target_name": "relay",
      "sources": ["relay.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
      "libraries": ["-lpthread"]
    }
  ]
}
