/* Small Node-API helpers shared by addon.c and fdstore.c: arguments in,
   numbers out. Negative numbers returned to JavaScript are -errno. */
#ifndef SOCKBRIDGE_NAPI_H
#define SOCKBRIDGE_NAPI_H

#define NAPI_VERSION 8
#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARGS(n)                                                                      \
  size_t argc = n;                                                                   \
  napi_value argv[n];                                                                \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL

static inline int32_t int_arg(napi_env env, napi_value v) {
  int32_t x = 0;
  napi_get_value_int32(env, v, &x);
  return x;
}

static inline double number_arg(napi_env env, napi_value v) {
  double x = 0;
  napi_get_value_double(env, v, &x);
  return x;
}

static inline bool bool_arg(napi_env env, napi_value v) {
  bool x = false;
  napi_get_value_bool(env, v, &x);
  return x;
}

static inline napi_value int_result(napi_env env, int64_t x) {
  napi_value v;
  napi_create_int64(env, x, &v);
  return v;
}

static inline napi_value undefined_result(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

/* A Buffer's bytes (borrowed), or none for anything else; false on a broken Buffer. */
static inline bool buffer_arg(napi_env env, napi_value v, char **data, size_t *len) {
  bool is;
  *data = NULL;
  *len = 0;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return true;
  void *p;
  if (napi_get_buffer_info(env, v, &p, len) != napi_ok) return false;
  *data = p;
  return true;
}

/* Elements from..from+n of a JavaScript array of numbers. */
static inline void ints_arg(napi_env env, napi_value arr, uint32_t from, uint32_t n, int *out) {
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, arr, from + i, &v);
    out[i] = int_arg(env, v);
  }
}

void fdstore_register(napi_env env, napi_value exports);

#endif
