/* systemd's file descriptor store, as a restart uses it (src/systemd/fd-store.ts):
 * notify messages with fds attached (sd_pid_notify_with_fds), the barrier
 * that says systemd has them, the bundles that carry thousands of fds in one
 * store entry, and the state's memory file.
 */
#define _GNU_SOURCE
#include "napi.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The most fds one message may carry (the kernel's SCM_MAX_FD). */
#define FDS_PER_MESSAGE 253
/* Messages per bundle: their buffers stay well inside a socket's default send buffer. */
#define BUNDLE_MESSAGES 32


/* The notify socket's address: a path, or "@name" in the abstract namespace. */
static socklen_t notify_address(napi_env env, napi_value v, struct sockaddr_un *sa) {
  *sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
  size_t len;
  if (napi_get_value_string_utf8(env, v, sa->sun_path, sizeof sa->sun_path, &len) != napi_ok || len == 0 || len >= sizeof sa->sun_path - 1) return 0;
  if (sa->sun_path[0] == '@') sa->sun_path[0] = '\0';
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (sa->sun_path[0] ? 1 : 0));
}

/* One message on sock (to sa, when given) with up to FDS_PER_MESSAGE fds attached (SCM_RIGHTS). Returns 0 or -errno. */
static int send_with_fds(int sock, const struct sockaddr_un *sa, socklen_t salen, const void *data, size_t len, const int *fds, size_t nfds) {
  char control[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
  memset(control, 0, sizeof control);
  if (nfds > FDS_PER_MESSAGE) return -E2BIG;
  struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
  struct msghdr msg = { .msg_name = (void *)sa, .msg_namelen = sa ? salen : 0, .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = nfds ? control : NULL, .msg_controllen = nfds ? CMSG_SPACE(sizeof(int) * nfds) : 0 };
  if (nfds) {
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
  }
  ssize_t rc;
  do rc = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (rc < 0 && errno == EINTR);
  return rc < 0 ? -errno : 0;
}

/* One datagram to the notify socket, with fds attached. */
static int notify_with_fds(const struct sockaddr_un *sa, socklen_t salen, const char *text, const int *fds, size_t nfds) {
  int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return -errno;
  int err = send_with_fds(sock, sa, salen, text, strlen(text), fds, nfds);
  close(sock);
  return err;
}

/* notifyWithFds(socket, text, fds): sd_pid_notify_with_fds(3), e.g.
   "FDSTORE=1\nFDNAME=sb" with up to FDS_PER_MESSAGE fds. Returns 0 or -errno. */
static napi_value js_notify_with_fds(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct sockaddr_un sa;
  socklen_t salen = notify_address(env, argv[0], &sa);
  if (!salen) return int_result(env, -EINVAL);
  char text[256];
  size_t tlen;
  if (napi_get_value_string_utf8(env, argv[1], text, sizeof text, &tlen) != napi_ok) return int_result(env, -EINVAL);
  uint32_t n = 0;
  napi_get_array_length(env, argv[2], &n);
  if (n > FDS_PER_MESSAGE) return int_result(env, -E2BIG);
  int fds[FDS_PER_MESSAGE];
  ints_arg(env, argv[2], 0, n, fds);
  return int_result(env, notify_with_fds(&sa, salen, text, fds, n));
}

/* barrier(socket, timeoutMs): sd_notify_barrier(3). systemd closes the pipe
   end sent with BARRIER=1 once it has processed every earlier message (the
   stored fds are safe then). Returns 0 or -errno (-ETIMEDOUT). */
static napi_value js_barrier(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct sockaddr_un sa;
  socklen_t salen = notify_address(env, argv[0], &sa);
  if (!salen) return int_result(env, -EINVAL);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) < 0) return int_result(env, -errno);
  int rc = notify_with_fds(&sa, salen, "BARRIER=1", &pipefd[1], 1);
  close(pipefd[1]);
  if (rc == 0) {
    struct pollfd p = { .fd = pipefd[0], .events = 0 };
    int n;
    do n = poll(&p, 1, int_arg(env, argv[1]));
    while (n < 0 && errno == EINTR);
    rc = n < 0 ? -errno : n == 0 ? -ETIMEDOUT : 0;
  }
  close(pipefd[0]);
  return int_result(env, rc);
}

/* bundle(fds): the fds, in order, queued in flight (SCM_RIGHTS) inside a new
   socket pair whose sending end is closed; returns the other end, or -errno.
   systemd's fd store compares every fd it gets with every one it holds, so
   storing thousands of fds one by one keeps PID 1 busy for seconds (measured:
   4,001 fds, 5 to 9 s): a few bundles cost it nothing. At most
   FDS_PER_MESSAGE * BUNDLE_MESSAGES fds. */
static napi_value js_bundle(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint32_t n = 0;
  napi_get_array_length(env, argv[0], &n);
  if (n > FDS_PER_MESSAGE * BUNDLE_MESSAGES) return int_result(env, -E2BIG);
  int pair[2];
  /* Non-blocking: a full buffer fails at once instead of hanging (nobody reads until the next process). */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0) return int_result(env, -errno);
  int err = 0;
  for (uint32_t off = 0; off < n && !err; off += FDS_PER_MESSAGE) {
    int fds[FDS_PER_MESSAGE];
    uint32_t k = n - off < FDS_PER_MESSAGE ? n - off : FDS_PER_MESSAGE;
    ints_arg(env, argv[0], off, k, fds);
    /* One byte per message, the count: a stream socket never merges messages that carry fds. */
    unsigned char count = (unsigned char)k;
    int rc = send_with_fds(pair[1], NULL, 0, &count, 1, fds, k);
    if (rc < 0) err = -rc;
  }
  close(pair[1]);
  if (err) {
    close(pair[0]);
    return int_result(env, -err);
  }
  /* Blocking again for the reader: its recvmsg waits for nothing, everything is queued. */
  fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) & ~O_NONBLOCK);
  return int_result(env, pair[0]);
}

/* unbundle(fd): the fds a bundle carries, in order (an array; a negative last
   element is the -errno that ended the reading early). Closes the bundle. */
static napi_value js_unbundle(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd = int_arg(env, argv[0]);
  napi_value arr, v;
  napi_create_array(env, &arr);
  uint32_t at = 0;
  for (;;) {
    char count;
    struct iovec iov = { .iov_base = &count, .iov_len = 1 };
    char control[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
    ssize_t rc;
    do rc = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (rc < 0 && errno == EINTR);
    if (rc <= 0) {
      if (rc < 0) {
        napi_create_int32(env, -errno, &v);
        napi_set_element(env, arr, at++, v);
      }
      break;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int fds[FDS_PER_MESSAGE];
      memcpy(fds, CMSG_DATA(cm), sizeof(int) * (k < FDS_PER_MESSAGE ? k : FDS_PER_MESSAGE));
      for (size_t i = 0; i < k && i < FDS_PER_MESSAGE; i++) {
        napi_create_int32(env, fds[i], &v);
        napi_set_element(env, arr, at++, v);
      }
    }
  }
  close(fd);
  return arr;
}

/* peerGone(fd): whether a connection is over for good (POLLHUP or POLLERR:
   reset, or shut down both ways), as systemd would have dropped it from the
   store. A client that only half-closed still waits for its answer. */
static napi_value js_peer_gone(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct pollfd p = { .fd = int_arg(env, argv[0]), .events = 0 };
  bool gone = poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
  napi_value v;
  napi_get_boolean(env, gone, &v);
  return v;
}

/* memfd(name, bytes): a memory file holding bytes (the handover state), or -errno. */
static napi_value js_memfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  char name[64];
  size_t nlen, len;
  char *data;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nlen) != napi_ok || !buffer_arg(env, argv[1], &data, &len)) return int_result(env, -EINVAL);
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return int_result(env, -errno);
  for (size_t off = 0; off < len;) {
    ssize_t w = pwrite(fd, data + off, len - off, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int err = w < 0 ? errno : EIO;
      close(fd);
      return int_result(env, -err);
    }
    off += (size_t)w;
  }
  return int_result(env, fd);
}

void fdstore_register(napi_env env, napi_value exports) {
  const struct { const char *name; napi_callback fn; } fns[] = {
    { "notifyWithFds", js_notify_with_fds }, { "barrier", js_barrier }, { "memfd", js_memfd },
    { "bundle", js_bundle }, { "unbundle", js_unbundle }, { "peerGone", js_peer_gone },
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value f;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
    napi_set_named_property(env, exports, fns[i].name, f);
  }
}
