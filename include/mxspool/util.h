/*
 * util.h - small helpers shared by every module.
 *
 * The x-prefixed allocators abort on failure; use them only for startup,
 * configuration and data that is bounded and small.  Per-connection memory
 * uses plain malloc and turns failure into a 421/451.
 */
#ifndef MXSPOOL_UTIL_H
#define MXSPOOL_UTIL_H

#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Milliseconds: wall clock (epoch) and monotonic. */
int64_t util_now_ms(void);
int64_t util_mono_ms(void);

/* ASCII case-insensitive compare of LEN bytes / of whole strings. */
int util_strncasecmp(const char *a, const char *b, size_t len);
void util_lower(char *s);

/* mkdir -p: create PATH and its missing parents.  0 or -1 with errno. */
int util_mkdir_p(const char *path, unsigned mode);

#endif
