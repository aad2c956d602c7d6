/*
 * rcache.h - one tenant's learned recipients: which addresses the primary
 * said exist (valid) or do not (invalid), each until an expiry time.
 *
 * Pure: no I/O, no libuv, no logging; every function that looks at time is
 * given NOW (wall clock, ms since the epoch) so the tests run on a fake
 * clock.  The verifier (verify.c) owns one rcache per tenant, fills it from
 * live probes and deliveries, answers RCPT from it while the primary is
 * down, and stores it with rcache_encode() / rcache_decode().
 *
 * Bounded: at most MAX entries.  When a new address does not fit, the
 * invalid entry learned longest ago goes first, and a valid one only when
 * no invalid entry is left, so a dictionary attack (thousands of invalid
 * addresses) cannot push the real users out of the cache.
 *
 * Addresses are compared ASCII case-insensitively (stored lower case), as
 * the recipients FILE is.
 */
#ifndef MXSPOOL_RCACHE_H
#define MXSPOOL_RCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RCACHE_ADDR_MAX 254           /* SMTP_PROTO_ADDR_MAX: local@domain */

enum rcache_state {
	RCACHE_UNKNOWN = 0,           /* not cached, or expired */
	RCACHE_VALID = 1,             /* the primary accepted it (or a delivery) */
	RCACHE_INVALID = 2,           /* the primary refused it with 5xx */
};

enum rcache_status {
	RCACHE_OK = 0,
	RCACHE_EINVAL = -4001,        /* empty or over-long address, bad state */
	RCACHE_ENOMEM = -4002,
	RCACHE_EFORMAT = -4003,       /* not an rcache image, or a version we
	                               * do not know, or truncated */
	RCACHE_ECHECKSUM = -4004,     /* the image's digest does not match */
};
const char *rcache_strerror(int status);

struct rcache;

/* One entry as rcache_walk() shows it; ADDR valid during the callback. */
struct rcache_entry {
	const char *addr;
	enum rcache_state state;
	int64_t learned_ms;           /* when the answer was put */
	int64_t expires_ms;
};

/* A cache of at most MAX (>= 1) entries, or NULL when out of memory. */
struct rcache *rcache_new(size_t max);
void rcache_free(struct rcache *c);
/* Change the bound; entries beyond it are evicted now (invalid first). */
void rcache_set_max(struct rcache *c, size_t max);

/* What is known about ADDR at NOW: an expired entry is dropped and reads
 * as RCACHE_UNKNOWN. */
enum rcache_state rcache_get(struct rcache *c, const char *addr, int64_t now);
/*
 * Record ADDR as ST (VALID or INVALID), learned at NOW, until EXPIRES_MS.
 * Replaces what was known.  May evict one entry (see above).  Returns
 * RCACHE_OK, RCACHE_EINVAL or RCACHE_ENOMEM (the cache is unchanged).
 */
int rcache_put(struct rcache *c, const char *addr, enum rcache_state st,
    int64_t now, int64_t expires_ms);
/* Drop ADDR; true if it was there (expired or not). */
bool rcache_forget(struct rcache *c, const char *addr);
/* Drop every entry expired at NOW; returns how many went. */
size_t rcache_expire(struct rcache *c, int64_t now);
/* Entries held (expired ones not yet dropped included). */
size_t rcache_count(const struct rcache *c);
/* Call CB for every entry, most recently learned first, until it returns
 * non-zero (that value is returned).  CB must not change the cache. */
int rcache_walk(const struct rcache *c,
    int (*cb)(void *arg, const struct rcache_entry *e), void *arg);

/*
 * The durable image (verify.c writes it to spool_dir/recipients/TENANT):
 *
 *   offset  size  field
 *   0       8     magic "MXRCACHE"
 *   8       4     format version, big endian (1)
 *   12      4     entry count N, big endian
 *   16      ...   N entries: state (1 byte: 1 valid, 2 invalid), 1 byte 0,
 *                 address length L (2 bytes BE, 1..254), learned_ms and
 *                 expires_ms (8 bytes BE each, signed), L address bytes
 *   end-32  32    SHA-256 of every byte before it
 *
 * Entries are written most recently learned first; decoding appends them
 * behind what the cache already holds, in that order, and stops when the
 * cache is full, so the oldest answers are the ones left out.
 */
#define RCACHE_IMAGE_HDR 16
#define RCACHE_IMAGE_DIGEST 32
#define RCACHE_IMAGE_ENTRY_FIXED 20
/* The largest image a cache of MAX entries can write: what a loader
 * reads at most before it gives up on a file. */
size_t rcache_image_max(size_t max);

/* Encode every entry still valid at NOW into a malloc'd buffer (*OUT,
 * *LEN; free() it).  RCACHE_OK or RCACHE_ENOMEM. */
int rcache_encode(const struct rcache *c, int64_t now, uint8_t **out,
    size_t *len);
/*
 * Check and load an image into C: entries expired at NOW are skipped, and
 * so are addresses C already holds (what was learned since the start is
 * newer).  On a format or digest error C is unchanged and nothing is
 * loaded (the structure is checked whole first); only RCACHE_ENOMEM may
 * leave part of the image loaded.  *LOADED
 * (may be NULL) is the number of entries taken.
 */
int rcache_decode(struct rcache *c, const uint8_t *buf, size_t len,
    int64_t now, size_t *loaded);

#endif
