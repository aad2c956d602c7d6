/*
 * rcache.c - one tenant's learned recipients (see rcache.h).
 *
 * A chained hash table keyed by the lower-cased address, and one list per
 * state (valid, invalid), each ordered by the time an answer was put, the
 * newest at the head.  Eviction takes the tail of the invalid list first,
 * then the tail of the valid list: the answers learned longest ago, and the
 * cheap ones (a 5xx that expires in hours anyway) before the ones that keep
 * real mail flowing while the primary is down.
 *
 * Nothing here allocates per lookup; a put allocates one entry.  The image
 * codec checks the digest and the whole structure before it changes the
 * cache, so a damaged file loads nothing rather than half of itself.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "mxspool/rcache.h"

static const char rcache_magic[8] = { 'M', 'X', 'R', 'C', 'A', 'C', 'H', 'E' };
#define RCACHE_VERSION 1u

struct rc_ent {
	struct rc_ent *hnext;         /* hash chain */
	struct rc_ent *prev, *next;   /* the list of its state; head = newest */
	uint64_t hash;
	int64_t learned_ms, expires_ms;
	enum rcache_state state;
	size_t len;
	char addr[];
};

struct rc_list {
	struct rc_ent *head, *tail;
	size_t n;
};

struct rcache {
	size_t max, count;
	struct rc_ent **buckets;
	size_t nbuckets;              /* a power of two */
	struct rc_list lists[3];      /* indexed by state; [0] unused */
};

const char *
rcache_strerror(int status)
{
	switch (status) {
	case RCACHE_OK: return "ok";
	case RCACHE_EINVAL: return "invalid address or state";
	case RCACHE_ENOMEM: return "out of memory";
	case RCACHE_EFORMAT: return "not a recipient cache image (bad magic, "
	    "version or structure)";
	case RCACHE_ECHECKSUM: return "recipient cache image digest mismatch";
	}
	return "unknown error";
}

/* ---- keys and the table ------------------------------------------------ */

/* Lower-case ADDR into BUF (RCACHE_ADDR_MAX + 1); its length, or 0 when it
 * is empty or too long. */
static size_t
rc_key(const char *addr, char *buf)
{
	size_t n = 0;

	for (; addr[n] != '\0'; n++) {
		char ch = addr[n];

		if (n >= RCACHE_ADDR_MAX)
			return 0;
		buf[n] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
	}
	buf[n] = '\0';
	return n;
}

/* FNV-1a, 64 bits: short keys, no adversary control over the bucket count
 * worth worrying about at these sizes (the table stays at load <= 1). */
static uint64_t
rc_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static struct rc_ent **
rc_slot(const struct rcache *c, const char *key, size_t len, uint64_t h)
{
	struct rc_ent **pp = &c->buckets[h & (c->nbuckets - 1)];

	for (; *pp != NULL; pp = &(*pp)->hnext)
		if ((*pp)->hash == h && (*pp)->len == len &&
		    memcmp((*pp)->addr, key, len) == 0)
			return pp;
	return pp;
}

/* Double the table when it is fuller than one entry per bucket. */
static int
rc_grow(struct rcache *c)
{
	size_t nb = c->nbuckets * 2;
	struct rc_ent **b;

	if (c->count < c->nbuckets)
		return 0;
	b = calloc(nb, sizeof(*b));
	if (b == NULL)
		return RCACHE_ENOMEM;
	for (size_t i = 0; i < c->nbuckets; i++) {
		struct rc_ent *e = c->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->hnext;
			e->hnext = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
		}
	}
	free(c->buckets);
	c->buckets = b;
	c->nbuckets = nb;
	return 0;
}

/* ---- the lists ------------------------------------------------------------ */

static void
rc_list_unlink(struct rcache *c, struct rc_ent *e)
{
	struct rc_list *l = &c->lists[e->state];

	if (e->prev)
		e->prev->next = e->next;
	else
		l->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		l->tail = e->prev;
	e->prev = e->next = NULL;
	l->n--;
}

static void
rc_list_push_head(struct rcache *c, struct rc_ent *e)
{
	struct rc_list *l = &c->lists[e->state];

	e->prev = NULL;
	e->next = l->head;
	if (l->head)
		l->head->prev = e;
	else
		l->tail = e;
	l->head = e;
	l->n++;
}

static void
rc_list_push_tail(struct rcache *c, struct rc_ent *e)
{
	struct rc_list *l = &c->lists[e->state];

	e->next = NULL;
	e->prev = l->tail;
	if (l->tail)
		l->tail->next = e;
	else
		l->head = e;
	l->tail = e;
	l->n++;
}

/* Unlink E from its chain and list and free it. */
static void
rc_remove(struct rcache *c, struct rc_ent *e)
{
	struct rc_ent **pp = rc_slot(c, e->addr, e->len, e->hash);

	*pp = e->hnext;
	rc_list_unlink(c, e);
	c->count--;
	free(e);
}

/* The entry to evict: the oldest invalid one, else the oldest valid. */
static struct rc_ent *
rc_victim(const struct rcache *c)
{
	if (c->lists[RCACHE_INVALID].tail)
		return c->lists[RCACHE_INVALID].tail;
	return c->lists[RCACHE_VALID].tail;
}

/* ---- the API -------------------------------------------------------------- */

struct rcache *
rcache_new(size_t max)
{
	struct rcache *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->max = max ? max : 1;
	c->nbuckets = 64;
	c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
	if (c->buckets == NULL) {
		free(c);
		return NULL;
	}
	return c;
}

void
rcache_free(struct rcache *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->nbuckets; i++) {
		struct rc_ent *e = c->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->hnext;
			free(e);
		}
	}
	free(c->buckets);
	free(c);
}

void
rcache_set_max(struct rcache *c, size_t max)
{
	c->max = max ? max : 1;
	while (c->count > c->max)
		rc_remove(c, rc_victim(c));
}

enum rcache_state
rcache_get(struct rcache *c, const char *addr, int64_t now)
{
	char key[RCACHE_ADDR_MAX + 1];
	size_t len = rc_key(addr, key);
	struct rc_ent *e;

	if (len == 0)
		return RCACHE_UNKNOWN;
	e = *rc_slot(c, key, len, rc_hash(key, len));
	if (e == NULL)
		return RCACHE_UNKNOWN;
	if (e->expires_ms <= now) {
		rc_remove(c, e);
		return RCACHE_UNKNOWN;
	}
	return e->state;
}

/* Insert a new entry for KEY (not in the table); at the head of its list,
 * or at the tail with AT_TAIL.  The caller made room. */
static int
rc_insert(struct rcache *c, const char *key, size_t len, uint64_t h,
    enum rcache_state st, int64_t learned, int64_t expires, bool at_tail)
{
	struct rc_ent *e, **pp;

	if (rc_grow(c) != 0)
		return RCACHE_ENOMEM;
	e = malloc(sizeof(*e) + len + 1);
	if (e == NULL)
		return RCACHE_ENOMEM;
	memcpy(e->addr, key, len + 1);
	e->len = len;
	e->hash = h;
	e->state = st;
	e->learned_ms = learned;
	e->expires_ms = expires;
	pp = rc_slot(c, key, len, h);
	e->hnext = NULL;
	*pp = e;
	if (at_tail)
		rc_list_push_tail(c, e);
	else
		rc_list_push_head(c, e);
	c->count++;
	return RCACHE_OK;
}

int
rcache_put(struct rcache *c, const char *addr, enum rcache_state st,
    int64_t now, int64_t expires_ms)
{
	char key[RCACHE_ADDR_MAX + 1];
	size_t len = rc_key(addr, key);
	uint64_t h;
	struct rc_ent *e;

	if (len == 0 || (st != RCACHE_VALID && st != RCACHE_INVALID))
		return RCACHE_EINVAL;
	h = rc_hash(key, len);
	e = *rc_slot(c, key, len, h);
	if (e != NULL) {
		/* Known: the new answer replaces the old and is the newest. */
		rc_list_unlink(c, e);
		e->state = st;
		e->learned_ms = now;
		e->expires_ms = expires_ms;
		rc_list_push_head(c, e);
		return RCACHE_OK;
	}
	if (c->count >= c->max)
		rc_remove(c, rc_victim(c));
	return rc_insert(c, key, len, h, st, now, expires_ms, false);
}

bool
rcache_forget(struct rcache *c, const char *addr)
{
	char key[RCACHE_ADDR_MAX + 1];
	size_t len = rc_key(addr, key);
	struct rc_ent *e;

	if (len == 0)
		return false;
	e = *rc_slot(c, key, len, rc_hash(key, len));
	if (e == NULL)
		return false;
	rc_remove(c, e);
	return true;
}

size_t
rcache_expire(struct rcache *c, int64_t now)
{
	size_t gone = 0;

	for (int s = RCACHE_VALID; s <= RCACHE_INVALID; s++) {
		struct rc_ent *e = c->lists[s].head, *next;

		for (; e != NULL; e = next) {
			next = e->next;
			if (e->expires_ms <= now) {
				rc_remove(c, e);
				gone++;
			}
		}
	}
	return gone;
}

size_t
rcache_count(const struct rcache *c)
{
	return c->count;
}

/* The newer of the two list cursors (merge by learned time). */
static const struct rc_ent *
rc_newer(const struct rc_ent *a, const struct rc_ent *b)
{
	if (a == NULL)
		return b;
	if (b == NULL)
		return a;
	return a->learned_ms >= b->learned_ms ? a : b;
}

int
rcache_walk(const struct rcache *c,
    int (*cb)(void *arg, const struct rcache_entry *e), void *arg)
{
	const struct rc_ent *v = c->lists[RCACHE_VALID].head;
	const struct rc_ent *i = c->lists[RCACHE_INVALID].head;
	const struct rc_ent *e;

	while ((e = rc_newer(v, i)) != NULL) {
		struct rcache_entry pub = {
			e->addr, e->state, e->learned_ms, e->expires_ms,
		};
		int rc;

		if (e == v)
			v = v->next;
		else
			i = i->next;
		if ((rc = cb(arg, &pub)) != 0)
			return rc;
	}
	return 0;
}

/* ---- the image ------------------------------------------------------------ */

size_t
rcache_image_max(size_t max)
{
	return RCACHE_IMAGE_HDR + RCACHE_IMAGE_DIGEST +
	    max * (RCACHE_IMAGE_ENTRY_FIXED + RCACHE_ADDR_MAX);
}

static void
rc_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t
rc_get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

static void
rc_put64(uint8_t *p, int64_t v)
{
	rc_put32(p, (uint32_t)((uint64_t)v >> 32));
	rc_put32(p + 4, (uint32_t)v);
}

static int64_t
rc_get64(const uint8_t *p)
{
	return (int64_t)((uint64_t)rc_get32(p) << 32 | rc_get32(p + 4));
}

static int
rc_digest(const uint8_t *buf, size_t len, uint8_t out[RCACHE_IMAGE_DIGEST])
{
	unsigned int n = 0;

	if (EVP_Digest(buf, len, out, &n, EVP_sha256(), NULL) != 1 ||
	    n != RCACHE_IMAGE_DIGEST)
		return RCACHE_ENOMEM;   /* OpenSSL's only failure here */
	return RCACHE_OK;
}

struct rc_enc {
	uint8_t *p;
	size_t off;
	uint32_t n;
	int64_t now;
};

static int
rc_enc_one(void *arg, const struct rcache_entry *e)
{
	struct rc_enc *enc = arg;
	size_t len = strlen(e->addr);
	uint8_t *p = enc->p + enc->off;

	if (e->expires_ms <= enc->now)
		return 0;
	p[0] = (uint8_t)e->state;
	p[1] = 0;
	p[2] = (uint8_t)(len >> 8);
	p[3] = (uint8_t)len;
	rc_put64(p + 4, e->learned_ms);
	rc_put64(p + 12, e->expires_ms);
	memcpy(p + RCACHE_IMAGE_ENTRY_FIXED, e->addr, len);
	enc->off += RCACHE_IMAGE_ENTRY_FIXED + len;
	enc->n++;
	return 0;
}

int
rcache_encode(const struct rcache *c, int64_t now, uint8_t **out, size_t *len)
{
	size_t cap = rcache_image_max(c->count);
	struct rc_enc enc = { NULL, RCACHE_IMAGE_HDR, 0, now };

	*out = NULL;
	*len = 0;
	enc.p = malloc(cap);
	if (enc.p == NULL)
		return RCACHE_ENOMEM;
	(void)rcache_walk(c, rc_enc_one, &enc);
	memcpy(enc.p, rcache_magic, sizeof(rcache_magic));
	rc_put32(enc.p + 8, RCACHE_VERSION);
	rc_put32(enc.p + 12, enc.n);
	if (rc_digest(enc.p, enc.off, enc.p + enc.off) != RCACHE_OK) {
		free(enc.p);
		return RCACHE_ENOMEM;
	}
	*out = enc.p;
	*len = enc.off + RCACHE_IMAGE_DIGEST;
	return RCACHE_OK;
}

/* Walk the N entries of BODY (LEN bytes): with C NULL only check them,
 * otherwise load them.  Returns RCACHE_OK or RCACHE_EFORMAT (check) /
 * RCACHE_ENOMEM (load). */
static int
rc_dec_entries(struct rcache *c, const uint8_t *body, size_t len, uint32_t n,
    int64_t now, size_t *loaded)
{
	size_t off = 0;

	for (uint32_t k = 0; k < n; k++) {
		const uint8_t *p = body + off;
		char key[RCACHE_ADDR_MAX + 1];
		size_t alen, klen;
		int64_t expires;

		if (len - off < RCACHE_IMAGE_ENTRY_FIXED)
			return RCACHE_EFORMAT;
		alen = (size_t)p[2] << 8 | p[3];
		if ((p[0] != RCACHE_VALID && p[0] != RCACHE_INVALID) || p[1] != 0 ||
		    alen == 0 || alen > RCACHE_ADDR_MAX ||
		    len - off - RCACHE_IMAGE_ENTRY_FIXED < alen)
			return RCACHE_EFORMAT;
		off += RCACHE_IMAGE_ENTRY_FIXED + alen;
		if (memchr(p + RCACHE_IMAGE_ENTRY_FIXED, '\0', alen) != NULL)
			return RCACHE_EFORMAT;
		if (c == NULL)
			continue;
		expires = rc_get64(p + 12);
		memcpy(key, p + RCACHE_IMAGE_ENTRY_FIXED, alen);
		key[alen] = '\0';
		klen = rc_key(key, key);
		if (expires <= now || c->count >= c->max)
			continue;
		uint64_t h = rc_hash(key, klen);

		if (*rc_slot(c, key, klen, h) != NULL)
			continue;   /* learned since the start: newer */
		if (rc_insert(c, key, klen, h, (enum rcache_state)p[0],
		    rc_get64(p + 4), expires, true) != RCACHE_OK)
			return RCACHE_ENOMEM;
		(*loaded)++;
	}
	return off == len ? RCACHE_OK : RCACHE_EFORMAT;
}

int
rcache_decode(struct rcache *c, const uint8_t *buf, size_t len, int64_t now,
    size_t *loaded)
{
	uint8_t digest[RCACHE_IMAGE_DIGEST];
	size_t got = 0, body;
	uint32_t n;
	int rc;

	if (loaded)
		*loaded = 0;
	if (len < RCACHE_IMAGE_HDR + RCACHE_IMAGE_DIGEST ||
	    memcmp(buf, rcache_magic, sizeof(rcache_magic)) != 0 ||
	    rc_get32(buf + 8) != RCACHE_VERSION)
		return RCACHE_EFORMAT;
	body = len - RCACHE_IMAGE_DIGEST;
	if ((rc = rc_digest(buf, body, digest)) != RCACHE_OK)
		return rc;
	if (memcmp(digest, buf + body, sizeof(digest)) != 0)
		return RCACHE_ECHECKSUM;
	n = rc_get32(buf + 12);
	/* Structure first, so that a bad image changes nothing. */
	rc = rc_dec_entries(NULL, buf + RCACHE_IMAGE_HDR, body - RCACHE_IMAGE_HDR,
	    n, now, &got);
	if (rc != RCACHE_OK)
		return rc;
	rc = rc_dec_entries(c, buf + RCACHE_IMAGE_HDR, body - RCACHE_IMAGE_HDR,
	    n, now, &got);
	if (loaded)
		*loaded = got;
	return rc;
}
