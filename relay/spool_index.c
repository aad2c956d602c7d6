/*
 * spool_index.c - the spool's in-memory index (see relay/spool_index.h).
 *
 * Pure data structure, shared by every storage backend so that queue order,
 * claiming, quotas, held tenants and figures behave the same whatever holds
 * the bytes: no I/O, no libuv, no clock (times come in as arguments).
 *
 *   ents[]    one 40-byte entry per message, free slots chained through hpos
 *   ht[]      open-addressing qid -> slot hash, backward-shift deletion
 *   tenants   per tenant: quota, held flag, figures, and two binary heaps of
 *             slots: ready (due now, by qid = oldest first) and wait (by next
 *             attempt).  claim_next promotes due entries from wait to ready;
 *             a claimed entry is in neither heap.
 *   side[]    chained hash of partly delivered messages: one state byte per
 *             recipient, so the common entry stays 40 bytes.
 *   fifo      per tenant: queue ids in arrival order for the clock-driven
 *             walk (spool_index_walk_aged); dead ids are dropped lazily.
 *
 * Allocation: growth of the entry array and the hash reports SPOOL_ENOMEM;
 * the small structures (tenants, heaps, side entries) use the x-allocators,
 * which abort, as they did in the journal this was split from.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "mxspool/util.h"
#include "spool_index.h"

struct heap {
	uint32_t *v;
	uint32_t n, cap;
};

/*
 * A tenant's queue ids in arrival order: v[head..n) holds every live one
 * plus DEAD ids of messages removed since (found dead by a hash lookup).
 * Positions are absolute indexes into v; head <= warn <= n.  While a walk
 * runs (WALKING) nothing moves but appends, so the walk can keep indexes.
 */
struct fifo {
	spool_qid *v;
	uint32_t head, n, cap;
	uint32_t dead;
	uint32_t warn;                        /* warn cursor */
	bool walking;
};

struct tenant {
	char *name;
	uint64_t quota_bytes, quota_msgs;     /* 0 = no limit */
	uint64_t messages, bytes;             /* committed */
	uint64_t pend_messages, pend_bytes;   /* committing */
	spool_qid oldest;
	bool oldest_dirty;
	bool held;
	struct heap ready;                    /* due, keyed by qid */
	struct heap wait;                     /* keyed by next attempt */
	struct fifo fifo;                     /* arrival order */
	bool caps_known;
	struct spool_caps caps;               /* the primary's last EHLO */
};

/* Recipient states of a partly delivered message (one byte each). */
struct side {
	struct side *next;
	spool_qid qid;
	uint32_t nrcpt, ndone;
	uint8_t st[];
};

struct spool_index {
	struct spool_index_ent *ents;
	uint32_t nents, capents, free_head, nlive;
	uint32_t *ht;
	uint32_t ht_mask, ht_used;
	struct side **side;
	uint32_t side_mask, nside;
	struct tenant **tenants;
	uint32_t ntenants;
	spool_qid last_qid;
	uint64_t total_bytes;
	uint64_t pend_bytes_total;
	uint64_t unknown_bytes, unknown_msgs;   /* spool_index_set_unknown */
	bool bulk;
	struct spool_index_hooks hooks;
	struct reply_slot *replies;   /* last replies, allocated on first use */
};

/* The primary's last reply to a deferred message, for mxspoolctl queue and
 * show: a fixed direct-mapped table (SPOOL_REPLY_SLOTS x 128 bytes, 2 MiB
 * once the first deferral is recorded).  A queue id is never reused, so a
 * slot holding another id just means "not known": collisions and restarts
 * lose replies, never show a wrong one, and nothing needs cleaning up. */
#define SPOOL_REPLY_SLOTS 16384u
#define SPOOL_REPLY_LEN 120
struct reply_slot {
	spool_qid qid;
	char text[SPOOL_REPLY_LEN];
};

_Static_assert(sizeof(struct spool_index_ent) == 40,
    "the index entry must stay 40 bytes (DESIGN.md: compact index)");

static inline void ent_set(struct spool_index_ent *e, unsigned f) { e->nrcpt_flags |= f; }
static inline void ent_clr(struct spool_index_ent *e, unsigned f) { e->nrcpt_flags &= ~(uint32_t)f; }

int
spool__u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

struct spool_index *
spool_index_new(const struct spool_index_hooks *hooks)
{
	struct spool_index *ix = calloc(1, sizeof(*ix));

	if (ix == NULL)
		return NULL;
	ix->free_head = SPOOL_INDEX_NONE;
	if (hooks != NULL)
		ix->hooks = *hooks;
	return ix;
}

void
spool_index_set_hooks(struct spool_index *ix,
    const struct spool_index_hooks *hooks)
{
	memset(&ix->hooks, 0, sizeof(ix->hooks));
	if (hooks != NULL)
		ix->hooks = *hooks;
}

void
spool_index_free(struct spool_index *ix)
{
	if (ix == NULL)
		return;
	for (uint32_t i = 0; i < ix->ntenants; i++) {
		free(ix->tenants[i]->name);
		free(ix->tenants[i]->ready.v);
		free(ix->tenants[i]->wait.v);
		free(ix->tenants[i]->fifo.v);
		free(ix->tenants[i]);
	}
	free(ix->replies);
	for (uint32_t i = 0; ix->side != NULL && i <= ix->side_mask; i++)
		while (ix->side[i] != NULL) {
			struct side *s = ix->side[i];

			ix->side[i] = s->next;
			free(s);
		}
	free(ix->side);
	free(ix->tenants);
	free(ix->ents);
	free(ix->ht);
	free(ix);
}

/* ---- queue ids ----------------------------------------------------------- */

spool_qid
spool_index_qid_next(struct spool_index *ix, int64_t now_ms)
{
	spool_qid q = (spool_qid)now_ms << 20;

	/* Time ordered, and unique even when the clock steps back. */
	if (q <= ix->last_qid)
		q = ix->last_qid + 1;
	ix->last_qid = q;
	return q;
}

void
spool_index_qid_seen(struct spool_index *ix, spool_qid qid)
{
	if (qid > ix->last_qid)
		ix->last_qid = qid;
}

/* ---- entries and the qid hash -------------------------------------------- */

static uint32_t
qid_hash(spool_qid q, uint32_t mask)
{
	return (uint32_t)((q * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static int
ht_grow(struct spool_index *ix)
{
	uint32_t nsize = ix->ht == NULL ? 1024 : (ix->ht_mask + 1) * 2;
	uint32_t *nht = malloc((size_t)nsize * sizeof(*nht));

	if (nht == NULL)
		return SPOOL_ENOMEM;
	memset(nht, 0xFF, (size_t)nsize * sizeof(*nht));
	for (uint32_t i = 0; ix->ht != NULL && i <= ix->ht_mask; i++) {
		uint32_t idx = ix->ht[i], h;

		if (idx == SPOOL_INDEX_NONE)
			continue;
		h = qid_hash(ix->ents[idx].qid, nsize - 1);
		while (nht[h] != SPOOL_INDEX_NONE)
			h = (h + 1) & (nsize - 1);
		nht[h] = idx;
	}
	free(ix->ht);
	ix->ht = nht;
	ix->ht_mask = nsize - 1;
	return 0;
}

uint32_t
spool_index_lookup(const struct spool_index *ix, spool_qid q)
{
	uint32_t h;

	if (ix->ht == NULL)
		return SPOOL_INDEX_NONE;
	for (h = qid_hash(q, ix->ht_mask); ix->ht[h] != SPOOL_INDEX_NONE;
	    h = (h + 1) & ix->ht_mask)
		if (ix->ents[ix->ht[h]].qid == q)
			return ix->ht[h];
	return SPOOL_INDEX_NONE;
}

static int
ht_insert(struct spool_index *ix, uint32_t idx)
{
	uint32_t h;
	int rc;

	/* Linear probing stays fast up to a load of 3/4. */
	if (ix->ht == NULL ||
	    (uint64_t)(ix->ht_used + 1) * 4 > (uint64_t)(ix->ht_mask + 1) * 3)
		if ((rc = ht_grow(ix)) != 0)
			return rc;
	h = qid_hash(ix->ents[idx].qid, ix->ht_mask);
	while (ix->ht[h] != SPOOL_INDEX_NONE)
		h = (h + 1) & ix->ht_mask;
	ix->ht[h] = idx;
	ix->ht_used++;
	return 0;
}

static void
ht_remove(struct spool_index *ix, spool_qid q)
{
	uint32_t h = qid_hash(q, ix->ht_mask), j;

	while (ix->ents[ix->ht[h]].qid != q)
		h = (h + 1) & ix->ht_mask;
	/* Backward-shift deletion: no tombstones, probes stay short. */
	for (j = (h + 1) & ix->ht_mask; ix->ht[j] != SPOOL_INDEX_NONE;
	    j = (j + 1) & ix->ht_mask) {
		uint32_t home = qid_hash(ix->ents[ix->ht[j]].qid, ix->ht_mask);

		if (((j - home) & ix->ht_mask) >= ((j - h) & ix->ht_mask)) {
			ix->ht[h] = ix->ht[j];
			h = j;
		}
	}
	ix->ht[h] = SPOOL_INDEX_NONE;
	ix->ht_used--;
}

static int
ent_alloc(struct spool_index *ix, uint32_t *out)
{
	if (ix->free_head != SPOOL_INDEX_NONE) {
		*out = ix->free_head;
		ix->free_head = ix->ents[*out].hpos;
		return 0;
	}
	if (ix->nents == ix->capents) {
		uint32_t ncap = ix->capents ? ix->capents + ix->capents / 2 : 1024;
		struct spool_index_ent *n = realloc(ix->ents, (size_t)ncap * sizeof(*n));

		if (n == NULL)
			return SPOOL_ENOMEM;
		ix->ents = n;
		ix->capents = ncap;
	}
	*out = ix->nents++;
	return 0;
}

static void
ent_release(struct spool_index *ix, uint32_t idx)
{
	ix->ents[idx].nrcpt_flags = 0;
	ix->ents[idx].hpos = ix->free_head;
	ix->free_head = idx;
}

const struct spool_index_ent *
spool_index_at(const struct spool_index *ix, uint32_t slot)
{
	if (slot >= ix->nents || !(spool_ent_flags(&ix->ents[slot]) & SPOOL_ENT_LIVE))
		return NULL;
	return &ix->ents[slot];
}

uint32_t
spool_index_slots(const struct spool_index *ix)
{
	return ix->nents;
}

/* ---- tenants --------------------------------------------------------------- */

int
spool_index_tenant_find(const struct spool_index *ix, const char *name,
    size_t len)
{
	for (uint32_t i = 0; i < ix->ntenants; i++) {
		const struct tenant *t = ix->tenants[i];

		if (strlen(t->name) == len && memcmp(t->name, name, len) == 0)
			return (int)i;
	}
	return -1;
}

int
spool_index_tenant_get(struct spool_index *ix, const char *name, size_t len)
{
	int i = spool_index_tenant_find(ix, name, len);
	struct tenant *t;

	if (i >= 0)
		return i;
	if (ix->ntenants > UINT16_MAX)
		return SPOOL_EINVAL;
	t = xcalloc(1, sizeof(*t));
	t->name = xstrndup(name, len);
	ix->tenants = xrealloc(ix->tenants,
	    (ix->ntenants + 1) * sizeof(*ix->tenants));
	ix->tenants[ix->ntenants] = t;
	return (int)ix->ntenants++;
}

static struct tenant *
tenant_named(const struct spool_index *ix, const char *name)
{
	int i = name == NULL ? -1 : spool_index_tenant_find(ix, name, strlen(name));

	return i < 0 ? NULL : ix->tenants[i];
}

uint32_t
spool_index_tenant_count(const struct spool_index *ix)
{
	return ix->ntenants;
}

const char *
spool_index_tenant_name(const struct spool_index *ix, unsigned t)
{
	return ix->tenants[t]->name;
}

bool
spool_index_tenant_held(const struct spool_index *ix, unsigned t)
{
	return ix->tenants[t]->held;
}

void
spool_index_tenant_set_held(struct spool_index *ix, unsigned t, bool held)
{
	ix->tenants[t]->held = held;
}

bool
spool_index_tenant_caps(const struct spool_index *ix, unsigned t,
    struct spool_caps *out)
{
	if (!ix->tenants[t]->caps_known)
		return false;
	if (out != NULL)
		*out = ix->tenants[t]->caps;
	return true;
}

void
spool_index_tenant_set_caps(struct spool_index *ix, unsigned t,
    const struct spool_caps *caps)
{
	ix->tenants[t]->caps = *caps;
	ix->tenants[t]->caps_known = true;
}

void
spool_index_set_quota(struct spool_index *ix, const char *name, uint64_t bytes,
    uint64_t messages)
{
	int t = spool_index_tenant_get(ix, name, strlen(name));

	if (t >= 0) {
		ix->tenants[t]->quota_bytes = bytes;
		ix->tenants[t]->quota_msgs = messages;
	}
}

int
spool_index_admit(const struct spool_index *ix, int ti, uint64_t size,
    uint64_t free_bytes, uint64_t reserve)
{
	const struct tenant *t = ti < 0 ? NULL : ix->tenants[ti];

	if (t != NULL && t->quota_bytes != 0 &&
	    t->bytes + t->pend_bytes + ix->unknown_bytes + size > t->quota_bytes)
		return SPOOL_EQUOTA;
	if (t != NULL && t->quota_msgs != 0 &&
	    t->messages + t->pend_messages + ix->unknown_msgs + 1 > t->quota_msgs)
		return SPOOL_EQUOTA;
	/* The free-space figure does not yet know about bytes being committed. */
	if (free_bytes < reserve + ix->pend_bytes_total + size)
		return SPOOL_ENOSPC;
	return 0;
}

void
spool_index_set_unknown(struct spool_index *ix, uint64_t bytes, uint64_t msgs)
{
	ix->unknown_bytes = bytes;
	ix->unknown_msgs = msgs;
}

void
spool_index_reserve(struct spool_index *ix, unsigned t, uint64_t size)
{
	ix->tenants[t]->pend_messages++;
	ix->tenants[t]->pend_bytes += size;
	ix->pend_bytes_total += size;
}

void
spool_index_unreserve(struct spool_index *ix, unsigned t, uint64_t size)
{
	ix->tenants[t]->pend_messages--;
	ix->tenants[t]->pend_bytes -= size;
	ix->pend_bytes_total -= size;
}

/* ---- heaps: ready (by qid) and wait (by next attempt) ---------------------- */

static bool
h_less(const struct spool_index *ix, bool ready, uint32_t a, uint32_t b)
{
	const struct spool_index_ent *x = &ix->ents[a], *y = &ix->ents[b];

	if (!ready && x->next_ms != y->next_ms)
		return x->next_ms < y->next_ms;
	return x->qid < y->qid;
}

static void
h_set(struct spool_index *ix, struct heap *h, uint32_t pos, uint32_t idx)
{
	h->v[pos] = idx;
	ix->ents[idx].hpos = pos;
}

static void
h_up(struct spool_index *ix, struct heap *h, bool ready, uint32_t pos)
{
	uint32_t idx = h->v[pos];

	while (pos > 0) {
		uint32_t parent = (pos - 1) / 2;

		if (!h_less(ix, ready, idx, h->v[parent]))
			break;
		h_set(ix, h, pos, h->v[parent]);
		pos = parent;
	}
	h_set(ix, h, pos, idx);
}

static void
h_down(struct spool_index *ix, struct heap *h, bool ready, uint32_t pos)
{
	uint32_t idx = h->v[pos];

	for (;;) {
		uint32_t c = 2 * pos + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && h_less(ix, ready, h->v[c + 1], h->v[c]))
			c++;
		if (!h_less(ix, ready, h->v[c], idx))
			break;
		h_set(ix, h, pos, h->v[c]);
		pos = c;
	}
	h_set(ix, h, pos, idx);
}

static void
h_push(struct spool_index *ix, struct heap *h, bool ready, uint32_t idx)
{
	if (h->n == h->cap) {
		/* + 1: a heap sized exactly by bulk_end may hold just one. */
		h->cap = h->cap ? h->cap + h->cap / 2 + 1 : 64;
		h->v = xrealloc(h->v, (size_t)h->cap * sizeof(*h->v));
	}
	h->v[h->n++] = idx;
	h_up(ix, h, ready, h->n - 1);
}

static void
h_remove(struct spool_index *ix, struct heap *h, bool ready, uint32_t pos)
{
	uint32_t last = h->v[--h->n];

	if (pos == h->n)
		return;
	h_set(ix, h, pos, last);
	h_up(ix, h, ready, pos);
	h_down(ix, h, ready, ix->ents[last].hpos);
}

/* Take the entry out of whichever heap holds it. */
static void
ent_unqueue(struct spool_index *ix, uint32_t idx)
{
	struct spool_index_ent *e = &ix->ents[idx];
	struct tenant *t = ix->tenants[e->tenant];

	if (spool_ent_flags(e) & SPOOL_ENT_READY)
		h_remove(ix, &t->ready, true, e->hpos);
	else if (spool_ent_flags(e) & SPOOL_ENT_WAITING)
		h_remove(ix, &t->wait, false, e->hpos);
	ent_clr(e, SPOOL_ENT_READY | SPOOL_ENT_WAITING);
}

/* Put an unclaimed entry in the wait heap (claim_next promotes it when due). */
static void
ent_queue(struct spool_index *ix, uint32_t idx)
{
	struct spool_index_ent *e = &ix->ents[idx];

	if (ix->bulk)
		return;               /* heaps are built once, at bulk_end */
	ent_set(e, SPOOL_ENT_WAITING);
	h_push(ix, &ix->tenants[e->tenant]->wait, false, idx);
}

/* Move the top of T's wait heap to its ready heap. */
static void
wait_promote(struct spool_index *ix, struct tenant *t)
{
	uint32_t idx = t->wait.v[0];

	h_remove(ix, &t->wait, false, 0);
	ent_clr(&ix->ents[idx], SPOOL_ENT_WAITING);
	ent_set(&ix->ents[idx], SPOOL_ENT_READY);
	h_push(ix, &t->ready, true, idx);
}

/* ---- side table of partly delivered messages -------------------------------- */

static struct side **
side_slot(const struct spool_index *ix, spool_qid q)
{
	struct side **p;

	if (ix->side == NULL)
		return NULL;
	for (p = &ix->side[qid_hash(q, ix->side_mask)]; *p != NULL; p = &(*p)->next)
		if ((*p)->qid == q)
			break;
	return p;
}

static struct side *
side_find(const struct spool_index *ix, spool_qid q)
{
	struct side **p = side_slot(ix, q);

	return p == NULL ? NULL : *p;
}

static void
side_rehash(struct spool_index *ix)
{
	uint32_t nb = ix->side == NULL ? 256 : (ix->side_mask + 1) * 2;
	struct side **nt = xcalloc(nb, sizeof(*nt));

	for (uint32_t i = 0; ix->side != NULL && i <= ix->side_mask; i++)
		while (ix->side[i] != NULL) {
			struct side *m = ix->side[i];

			ix->side[i] = m->next;
			m->next = nt[qid_hash(m->qid, nb - 1)];
			nt[qid_hash(m->qid, nb - 1)] = m;
		}
	free(ix->side);
	ix->side = nt;
	ix->side_mask = nb - 1;
}

static struct side *
side_get(struct spool_index *ix, spool_qid q, uint32_t nrcpt)
{
	struct side *s = side_find(ix, q), **p;

	if (s != NULL)
		return s;
	if (ix->side == NULL || ix->nside >= ix->side_mask + 1)
		side_rehash(ix);
	s = xcalloc(1, sizeof(*s) + nrcpt);
	s->qid = q;
	s->nrcpt = nrcpt;
	p = &ix->side[qid_hash(q, ix->side_mask)];
	s->next = *p;
	*p = s;
	ix->nside++;
	return s;
}

static void
side_drop(struct spool_index *ix, spool_qid q)
{
	struct side **p = side_slot(ix, q), *s;

	if (p == NULL || *p == NULL)
		return;
	s = *p;
	*p = s->next;
	free(s);
	ix->nside--;
}

/* ---- arrival FIFOs ------------------------------------------------------------ */

static int
fifo_reserve(struct fifo *f, uint32_t want)
{
	spool_qid *nv;
	uint32_t ncap;

	if (want <= f->cap)
		return 0;
	ncap = f->cap ? f->cap + f->cap / 2 : 64;
	if (ncap < want)
		ncap = want;
	if ((nv = realloc(f->v, (size_t)ncap * sizeof(*nv))) == NULL)
		return SPOOL_ENOMEM;
	f->v = nv;
	f->cap = ncap;
	return 0;
}

static int
fifo_push(struct fifo *f, spool_qid q)
{
	if (f->n == f->cap && f->head > 0 && f->head >= f->cap / 4 &&
	    !f->walking) {
		/* Reuse the room the front left instead of growing. */
		memmove(f->v, f->v + f->head,
		    (size_t)(f->n - f->head) * sizeof(*f->v));
		f->n -= f->head;
		f->warn -= f->head;
		f->head = 0;
	}
	if (f->n == f->cap && fifo_reserve(f, f->n + 1) != 0)
		return SPOOL_ENOMEM;
	f->v[f->n++] = q;
	return 0;
}

/* Drop every dead id of T's FIFO and give back the room: O(length), run
 * only once the dead (and the room at the front) outnumber the live. */
static void
fifo_compact(struct spool_index *ix, struct fifo *f)
{
	uint32_t w = 0, warn = 0;

	for (uint32_t r = f->head; r < f->n; r++) {
		if (r == f->warn)
			warn = w;
		if (spool_index_lookup(ix, f->v[r]) != SPOOL_INDEX_NONE)
			f->v[w++] = f->v[r];
	}
	f->warn = f->warn >= f->n ? w : warn;
	f->head = 0;
	f->n = w;
	f->dead = 0;
	if (f->cap > 64 && f->cap / 2 > w) {
		uint32_t ncap = w + w / 2 > 64 ? w + w / 2 : 64;
		spool_qid *nv = realloc(f->v, (size_t)ncap * sizeof(*nv));

		if (nv != NULL) {
			f->v = nv;
			f->cap = ncap;
		}
	}
}

static void
fifo_maybe_compact(struct spool_index *ix, struct tenant *t)
{
	struct fifo *f = &t->fifo;
	uint32_t waste = f->head + f->dead;

	if (!f->walking && waste >= 32 && waste > f->n - f->head - f->dead)
		fifo_compact(ix, f);
}

/* Bulk end: every live id into its tenant's FIFO, in queue id order
 * (replay order differs where compaction copied messages forward). */
static void
fifo_rebuild(struct spool_index *ix)
{
	for (uint32_t i = 0; i < ix->ntenants; i++) {
		struct fifo *f = &ix->tenants[i]->fifo;

		f->head = f->n = f->dead = f->warn = 0;
		if (ix->tenants[i]->messages > f->cap) {
			/* x-allocator, as the wait heaps built next to it. */
			f->cap = (uint32_t)ix->tenants[i]->messages;
			f->v = xrealloc(f->v, (size_t)f->cap * sizeof(*f->v));
		}
	}
	for (uint32_t i = 0; i < ix->nents; i++) {
		const struct spool_index_ent *e = &ix->ents[i];
		struct fifo *f;

		if (!(spool_ent_flags(e) & SPOOL_ENT_LIVE))
			continue;
		f = &ix->tenants[e->tenant]->fifo;
		f->v[f->n++] = e->qid;
	}
	for (uint32_t i = 0; i < ix->ntenants; i++) {
		struct fifo *f = &ix->tenants[i]->fifo;

		if (f->n > 1)
			qsort(f->v, f->n, sizeof(*f->v), spool__u64_cmp);
	}
}

uint32_t
spool_index_fifo_len(const struct spool_index *ix, const char *name)
{
	int t = name == NULL ? -1 : spool_index_tenant_find(ix, name, strlen(name));

	return t < 0 ? 0 : ix->tenants[t]->fifo.n - ix->tenants[t]->fifo.head;
}

/* ---- index operations -------------------------------------------------------- */

static void
loc_hook(const struct spool_index *ix, const struct spool_index_ent *e, bool add)
{
	void (*fn)(void *, const struct spool_index_ent *) =
	    add ? ix->hooks.loc_add : ix->hooks.loc_drop;

	if (!ix->bulk && fn != NULL)
		fn(ix->hooks.arg, e);
}

int
spool_index_insert(struct spool_index *ix, spool_qid qid, unsigned tenant,
    uint32_t nrcpt, uint32_t seg, uint32_t off, uint32_t len)
{
	struct tenant *t = ix->tenants[tenant];
	struct spool_index_ent *e;
	uint32_t idx;
	int rc;

	if ((rc = ent_alloc(ix, &idx)) != 0)
		return rc;
	e = &ix->ents[idx];
	memset(e, 0, sizeof(*e));
	e->qid = qid;
	e->seg = seg;
	e->off = off;
	e->len = len;
	e->tenant = (uint16_t)tenant;
	e->nrcpt_flags = nrcpt << 8 | SPOOL_ENT_LIVE;
	if ((rc = ht_insert(ix, idx)) != 0) {
		ent_release(ix, idx);
		return rc;
	}
	if (!ix->bulk && (rc = fifo_push(&t->fifo, qid)) != 0) {
		ht_remove(ix, qid);
		ent_release(ix, idx);
		return rc;
	}
	ix->nlive++;
	t->messages++;
	t->bytes += len;
	ix->total_bytes += len;
	if (!t->oldest_dirty && (t->messages == 1 || qid < t->oldest))
		t->oldest = qid;
	loc_hook(ix, e, true);
	ent_queue(ix, idx);
	return 0;
}

void
spool_index_remove(struct spool_index *ix, uint32_t idx)
{
	struct spool_index_ent *e = &ix->ents[idx];
	struct tenant *t = ix->tenants[e->tenant];

	if (!ix->bulk)
		ent_unqueue(ix, idx);
	if (spool_ent_flags(e) & SPOOL_ENT_PARTIAL)
		side_drop(ix, e->qid);
	ht_remove(ix, e->qid);
	loc_hook(ix, e, false);
	if (!ix->bulk) {
		/* Its id stays in the FIFO until a walk or a rebuild drops it. */
		t->fifo.dead++;
		fifo_maybe_compact(ix, t);
	}
	t->messages--;
	t->bytes -= e->len;
	ix->total_bytes -= e->len;
	if (e->qid == t->oldest)
		t->oldest_dirty = true;
	ix->nlive--;
	ent_release(ix, idx);
}

void
spool_index_relocate(struct spool_index *ix, uint32_t idx, uint32_t seg,
    uint32_t off)
{
	struct spool_index_ent *e = &ix->ents[idx];

	loc_hook(ix, e, false);
	e->seg = seg;
	e->off = off;
	loc_hook(ix, e, true);
}

bool
spool_index_mark_rcpt(struct spool_index *ix, uint32_t idx, uint32_t r,
    enum spool_rcpt_state st)
{
	struct spool_index_ent *e = &ix->ents[idx];
	struct side *s = side_get(ix, e->qid, spool_ent_nrcpt(e));
	bool was = s->st[r] != SPOOL_RCPT_PENDING, now = st != SPOOL_RCPT_PENDING;

	ent_set(e, SPOOL_ENT_PARTIAL);
	s->st[r] = (uint8_t)st;
	if (was != now)
		s->ndone += now ? 1 : (uint32_t)-1;
	if (s->ndone == s->nrcpt) {
		spool_index_remove(ix, idx);
		return true;
	}
	return false;
}

const uint8_t *
spool_index_rcpt_states(const struct spool_index *ix, uint32_t slot)
{
	const struct spool_index_ent *e = spool_index_at(ix, slot);
	const struct side *s;

	if (e == NULL || !(spool_ent_flags(e) & SPOOL_ENT_PARTIAL))
		return NULL;
	s = side_find(ix, e->qid);
	return s == NULL ? NULL : s->st;
}

void
spool_index_set_retry(struct spool_index *ix, uint32_t slot, int64_t next_ms,
    uint32_t attempts)
{
	struct spool_index_ent *e = &ix->ents[slot];
	bool queued = !ix->bulk && !(spool_ent_flags(e) & SPOOL_ENT_CLAIMED);

	/* The wait heap is keyed by next_ms: take the entry out while it moves. */
	if (queued)
		ent_unqueue(ix, slot);
	e->next_ms = next_ms;
	e->attempts = attempts > UINT16_MAX ? UINT16_MAX : (uint16_t)attempts;
	if (queued)
		ent_queue(ix, slot);
}

void
spool_index_defer(struct spool_index *ix, uint32_t slot, int64_t next_ms)
{
	struct spool_index_ent *e = &ix->ents[slot];

	ent_unqueue(ix, slot);
	ent_clr(e, SPOOL_ENT_CLAIMED);
	e->next_ms = next_ms;
	if (e->attempts < UINT16_MAX)
		e->attempts++;
	ent_queue(ix, slot);
}

/* ---- bulk load --------------------------------------------------------------- */

void
spool_index_bulk_begin(struct spool_index *ix)
{
	ix->bulk = true;
}

/* Room for the N entries counted into H (bulk_end), which then fills it
 * from 0. */
static void
heap_reserve(struct heap *h)
{
	if (h->n > h->cap) {
		h->cap = h->n;
		h->v = xrealloc(h->v, (size_t)h->cap * sizeof(*h->v));
	}
	h->n = 0;
}

uint64_t
spool_index_bulk_end(struct spool_index *ix)
{
	uint64_t live = 0;

	ix->bulk = false;
	/* Growth by half each time left slack; give it back (it is the bulk
	 * of the index). */
	if (ix->nents > 0 && ix->nents < ix->capents) {
		struct spool_index_ent *shrunk =
		    realloc(ix->ents, (size_t)ix->nents * sizeof(*shrunk));

		if (shrunk != NULL) {
			ix->ents = shrunk;
			ix->capents = ix->nents;
		}
	}
	/* Messages due at once (never deferred) go straight to the ready
	 * heap: left in the wait heap, the first claim_next would promote all
	 * of them one by one (seconds on the loop at 10 million).  Count
	 * first, so both heaps get exactly their size. */
	for (uint32_t i = 0; i < ix->ntenants; i++)
		ix->tenants[i]->ready.n = ix->tenants[i]->wait.n = 0;
	for (uint32_t i = 0; i < ix->nents; i++) {
		const struct spool_index_ent *e = &ix->ents[i];

		if ((spool_ent_flags(e) & (SPOOL_ENT_LIVE | SPOOL_ENT_CLAIMED)) ==
		    SPOOL_ENT_LIVE) {
			if (e->next_ms == 0)
				ix->tenants[e->tenant]->ready.n++;
			else
				ix->tenants[e->tenant]->wait.n++;
		}
	}
	for (uint32_t i = 0; i < ix->ntenants; i++) {
		struct tenant *t = ix->tenants[i];

		heap_reserve(&t->ready);
		heap_reserve(&t->wait);
		/* The oldest comes out of the pass below: a first status after
		 * a start need not scan 25 million entries for it. */
		t->oldest = UINT64_MAX;
		t->oldest_dirty = false;
	}
	/* Build what the bulk inserts skipped: hooks, heaps, oldest. */
	for (uint32_t i = 0; i < ix->nents; i++) {
		struct spool_index_ent *e = &ix->ents[i];
		struct tenant *t;

		if (!(spool_ent_flags(e) & SPOOL_ENT_LIVE))
			continue;
		loc_hook(ix, e, true);
		live++;
		t = ix->tenants[e->tenant];
		if (e->qid < t->oldest)
			t->oldest = e->qid;
		/* Claimed during a background load (a DELETE being written):
		 * queued by its release, not here. */
		if (spool_ent_flags(e) & SPOOL_ENT_CLAIMED)
			continue;
		if (e->next_ms == 0) {
			h_set(ix, &t->ready, t->ready.n++, i);
			ent_set(e, SPOOL_ENT_READY);
		} else {
			h_set(ix, &t->wait, t->wait.n++, i);
			ent_set(e, SPOOL_ENT_WAITING);
		}
	}
	for (uint32_t i = 0; i < ix->ntenants; i++) {
		struct tenant *t = ix->tenants[i];

		for (uint32_t k = t->ready.n / 2; k-- > 0;)
			h_down(ix, &t->ready, true, k);
		for (uint32_t k = t->wait.n / 2; k-- > 0;)
			h_down(ix, &t->wait, false, k);
	}
	fifo_rebuild(ix);
	return live;
}

/* ---- draining ---------------------------------------------------------------- */

int
spool_index_claim_next(struct spool_index *ix, const char *tenant,
    int64_t now_ms, spool_qid *out)
{
	struct tenant *t = tenant_named(ix, tenant);
	uint32_t idx;

	if (t == NULL || t->held)
		return SPOOL_ENOENT;
	/* Promote everything that has become due, then take the oldest. */
	while (t->wait.n > 0 && ix->ents[t->wait.v[0]].next_ms <= now_ms)
		wait_promote(ix, t);
	if (t->ready.n == 0)
		return SPOOL_ENOENT;
	idx = t->ready.v[0];
	ent_unqueue(ix, idx);
	ent_set(&ix->ents[idx], SPOOL_ENT_CLAIMED);
	*out = ix->ents[idx].qid;
	return 0;
}

void
spool_index_release(struct spool_index *ix, spool_qid qid)
{
	uint32_t idx = spool_index_lookup(ix, qid);

	if (idx == SPOOL_INDEX_NONE ||
	    !(spool_ent_flags(&ix->ents[idx]) & SPOOL_ENT_CLAIMED))
		return;
	ent_clr(&ix->ents[idx], SPOOL_ENT_CLAIMED);
	ent_queue(ix, idx);
}

bool
spool_index_claim(struct spool_index *ix, uint32_t slot)
{
	struct spool_index_ent *e = &ix->ents[slot];

	if (spool_ent_flags(e) & SPOOL_ENT_CLAIMED)
		return false;
	ent_unqueue(ix, slot);
	ent_set(e, SPOOL_ENT_CLAIMED);
	return true;
}

int
spool_index_retry_now(struct spool_index *ix, const char *tenant)
{
	struct tenant *t = tenant_named(ix, tenant);
	int n = 0;

	if (t == NULL)
		return 0;
	while (t->wait.n > 0) {
		ix->ents[t->wait.v[0]].next_ms = 0;
		wait_promote(ix, t);
		n++;
	}
	return n;
}

int64_t
spool_index_next_due_ms(const struct spool_index *ix, const char *tenant)
{
	const struct tenant *t = tenant_named(ix, tenant);
	int64_t best = -1;

	if (t == NULL)
		return -1;
	/* Ready entries are due already; their own time is in the past. */
	if (t->ready.n > 0)
		best = ix->ents[t->ready.v[0]].next_ms;
	if (t->wait.n > 0 && (best < 0 || ix->ents[t->wait.v[0]].next_ms < best))
		best = ix->ents[t->wait.v[0]].next_ms;
	return best;
}

/* ---- figures ----------------------------------------------------------------- */

void
spool_index_tenant_stats(struct spool_index *ix, const char *tenant,
    struct spool_tenant_stats *out)
{
	int tidx = tenant == NULL ? -1 :
	    spool_index_tenant_find(ix, tenant, strlen(tenant));
	struct tenant *t = tidx < 0 ? NULL : ix->tenants[tidx];

	memset(out, 0, sizeof(*out));
	out->oldest_arrival_ms = -1;
	if (t == NULL || t->messages == 0)
		return;
	if (t->oldest_dirty) {
		/* The oldest left: one scan, then exact again until it goes.
		 * Draining is oldest-first, so this runs about once per
		 * status query, never per message. */
		t->oldest = UINT64_MAX;
		for (uint32_t i = 0; i < ix->nents; i++) {
			const struct spool_index_ent *e = &ix->ents[i];

			if ((spool_ent_flags(e) & SPOOL_ENT_LIVE) &&
			    e->tenant == (uint16_t)tidx && e->qid < t->oldest)
				t->oldest = e->qid;
		}
		t->oldest_dirty = false;
	}
	out->messages = t->messages;
	out->bytes = t->bytes;
	out->oldest_arrival_ms = spool_qid_ms(t->oldest);
}

uint64_t
spool_index_total_bytes(const struct spool_index *ix)
{
	return ix->total_bytes;
}

uint64_t
spool_index_total_messages(const struct spool_index *ix)
{
	return ix->nlive;
}

static void
item_fill(const struct spool_index *ix, const struct spool_index_ent *e,
    struct spool_item *it)
{
	it->qid = e->qid;
	it->tenant = ix->tenants[e->tenant]->name;
	it->arrival_ms = spool_qid_ms(e->qid);
	it->next_attempt_ms = e->next_ms;
	it->size = e->len;
	it->attempts = e->attempts;
	it->claimed = (spool_ent_flags(e) & SPOOL_ENT_CLAIMED) != 0;
	it->warned = (spool_ent_flags(e) & SPOOL_ENT_WARNED) != 0;
}

void
spool_index_foreach(const struct spool_index *ix, const char *tenant,
    int (*cb)(void *arg, const struct spool_item *item), void *arg)
{
	int tidx = -1;
	spool_qid *q;
	size_t n = 0;

	if (tenant != NULL &&
	    (tidx = spool_index_tenant_find(ix, tenant, strlen(tenant))) < 0)
		return;
	/* Snapshot the ids first: CB may delete or add messages. */
	q = malloc(((size_t)ix->nlive + 1) * sizeof(*q));
	if (q == NULL)
		return;
	for (uint32_t i = 0; i < ix->nents; i++) {
		const struct spool_index_ent *e = &ix->ents[i];

		if ((spool_ent_flags(e) & SPOOL_ENT_LIVE) &&
		    (tidx < 0 || e->tenant == (uint16_t)tidx))
			q[n++] = e->qid;
	}
	if (n > 0)
		qsort(q, n, sizeof(*q), spool__u64_cmp);
	for (size_t i = 0; i < n; i++) {
		uint32_t idx = spool_index_lookup(ix, q[i]);
		struct spool_item it;

		if (idx == SPOOL_INDEX_NONE)
			continue;
		item_fill(ix, &ix->ents[idx], &it);
		if (cb(arg, &it) != 0)
			break;
	}
	free(q);
}

/* Sift the max-heap H[0..N) down from I (largest queue id on top). */
static void
page_sift_down(spool_qid *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		spool_qid t;

		if (l < n && h[l] > h[m])
			m = l;
		if (r < n && h[r] > h[m])
			m = r;
		if (m == i)
			return;
		t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

static void
page_sift_up(spool_qid *h, size_t i)
{
	while (i > 0 && h[(i - 1) / 2] < h[i]) {
		spool_qid t = h[i];

		h[i] = h[(i - 1) / 2];
		h[(i - 1) / 2] = t;
		i = (i - 1) / 2;
	}
}

size_t
spool_index_page(const struct spool_index *ix, const char *tenant,
    spool_qid after, size_t max,
    bool (*keep)(void *arg, const struct spool_item *item), void *arg,
    spool_qid *out)
{
	int tidx = -1;
	size_t n = 0;

	if (max == 0 || (tenant != NULL &&
	    (tidx = spool_index_tenant_find(ix, tenant, strlen(tenant))) < 0))
		return 0;
	/* One pass, a heap of the MAX smallest ids above AFTER: no copy or sort
	 * of the whole queue. */
	for (uint32_t i = 0; i < ix->nents; i++) {
		const struct spool_index_ent *e = &ix->ents[i];
		struct spool_item it;

		if (!(spool_ent_flags(e) & SPOOL_ENT_LIVE) || e->qid <= after ||
		    (tidx >= 0 && e->tenant != (uint16_t)tidx))
			continue;
		if (n == max && e->qid >= out[0])
			continue;
		if (keep != NULL) {
			item_fill(ix, e, &it);
			if (!keep(arg, &it))
				continue;
		}
		if (n < max) {
			out[n] = e->qid;
			page_sift_up(out, n++);
		} else {
			out[0] = e->qid;
			page_sift_down(out, n, 0);
		}
	}
	if (n > 0)
		qsort(out, n, sizeof(*out), spool__u64_cmp);
	return n;
}

static struct reply_slot *
reply_slot(const struct spool_index *ix, spool_qid qid)
{
	return &ix->replies[(qid * 0x9E3779B97F4A7C15ull) >> 50 & (SPOOL_REPLY_SLOTS - 1)];
}

void
spool_index_set_reply(struct spool_index *ix, spool_qid qid, const char *text)
{
	struct reply_slot *r;

	if (ix->replies == NULL &&
	    (ix->replies = calloc(SPOOL_REPLY_SLOTS, sizeof(*ix->replies))) == NULL)
		return;   /* a view, not the queue: do without */
	r = reply_slot(ix, qid);
	r->qid = qid;
	snprintf(r->text, sizeof(r->text), "%s", text ? text : "");
}

const char *
spool_index_reply(const struct spool_index *ix, spool_qid qid)
{
	const struct reply_slot *r;

	if (ix->replies == NULL)
		return NULL;
	r = reply_slot(ix, qid);
	return r->qid == qid && r->text[0] != '\0' ? r->text : NULL;
}

int
spool_index_find(const struct spool_index *ix, spool_qid qid,
    struct spool_item *out)
{
	uint32_t idx = spool_index_lookup(ix, qid);

	if (idx == SPOOL_INDEX_NONE)
		return SPOOL_ENOENT;
	item_fill(ix, &ix->ents[idx], out);
	return 0;
}

/* ---- the clock-driven walk --------------------------------------------------- */

void
spool_index_set_warned(struct spool_index *ix, uint32_t slot)
{
	ent_set(&ix->ents[slot], SPOOL_ENT_WARNED);
}

struct walk {
	struct spool_index *ix;
	int64_t expire_before, warn_before;
	unsigned max, calls;
	spool_age_cb cb;
	void *arg;
	bool stop;
};

/* One callback; false when it asked to stop. */
static bool
walk_call(struct walk *w, uint32_t slot, enum spool_age what)
{
	struct spool_item it;

	item_fill(w->ix, &w->ix->ents[slot], &it);
	w->calls++;
	if (w->cb(w->arg, &it, what) != 0) {
		w->stop = true;
		return false;
	}
	return true;
}

/*
 * Expiry, from the front of F.  The ids passed are v[head..r); the live
 * ones among them are copied down to v[head..k) as the walk goes, and at
 * the end moved up to just below R, so the dead ones fall off the front.
 * CB may append (F->v may move: only indexes are kept) or remove (an id
 * kept here may be dead by the end: counted in F->dead, dropped later).
 */
static void
walk_expired(struct walk *w, struct fifo *f)
{
	uint32_t r = f->head, k = f->head, ndead = 0, live;

	while (r < f->n && r - f->head < SPOOL_INDEX_WALK_SCAN &&
	    w->calls < w->max && spool_qid_ms(f->v[r]) <= w->expire_before) {
		spool_qid q = f->v[r];
		uint32_t slot = spool_index_lookup(w->ix, q);

		if (slot == SPOOL_INDEX_NONE) {
			ndead++;
			r++;
			continue;
		}
		if (!walk_call(w, slot, SPOOL_AGE_EXPIRED))
			break;        /* not passed: offered again next call */
		f->v[k++] = q;
		r++;
	}
	live = k - f->head;
	if (ndead > 0) {
		memmove(f->v + r - live, f->v + f->head, (size_t)live * sizeof(*f->v));
		f->head = r - live;
		f->dead = ndead > f->dead ? 0 : f->dead - ndead;
	}
	/* What the expiry passed is expired: no warning for it. */
	if (f->warn < r)
		f->warn = r;
}

/* Warnings, from the cursor: every entry examined is passed for good,
 * except one whose callback asked to stop. */
static void
walk_warn(struct walk *w, struct fifo *f)
{
	uint32_t p = f->warn < f->head ? f->head : f->warn, start = p;

	while (p < f->n && p - start < SPOOL_INDEX_WALK_SCAN &&
	    w->calls < w->max && spool_qid_ms(f->v[p]) <= w->warn_before) {
		spool_qid q = f->v[p];
		uint32_t slot = spool_index_lookup(w->ix, q);

		if (slot != SPOOL_INDEX_NONE &&
		    !(spool_ent_flags(&w->ix->ents[slot]) & SPOOL_ENT_WARNED) &&
		    spool_qid_ms(q) > w->expire_before &&
		    !walk_call(w, slot, SPOOL_AGE_WARN))
			break;
		p++;
	}
	f->warn = p;
}

static void
walk_tenant(struct walk *w, struct tenant *t)
{
	struct fifo *f = &t->fifo;

	f->walking = true;
	walk_expired(w, f);
	/* Each pass has its own MAX: expired messages the caller leaves in
	 * place (a bounce waiting out its back-off, one being delivered) are
	 * offered on every call, and must not starve the warnings. */
	if (!w->stop && w->warn_before != INT64_MIN) {
		unsigned spent = w->calls;

		w->calls = 0;
		walk_warn(w, f);
		w->calls += spent;
	}
	f->walking = false;
	fifo_maybe_compact(w->ix, t);
}

unsigned
spool_index_walk_aged(struct spool_index *ix, const char *tenant,
    int64_t expire_before_ms, int64_t warn_before_ms, unsigned max,
    spool_age_cb cb, void *arg)
{
	struct walk w = { ix, expire_before_ms, warn_before_ms, max, 0, cb, arg,
	    false };
	int t;

	if (cb == NULL || max == 0)
		return 0;
	if (tenant != NULL) {
		if ((t = spool_index_tenant_find(ix, tenant, strlen(tenant))) >= 0)
			walk_tenant(&w, ix->tenants[t]);
		return w.calls;
	}
	/* Every tenant, in tenant number order, sharing MAX.  (The count is
	 * read each time: a callback may create a tenant.) */
	for (uint32_t i = 0; i < ix->ntenants && !w.stop && w.calls < max; i++)
		walk_tenant(&w, ix->tenants[i]);
	return w.calls;
}

size_t
spool_index_mem_bytes(const struct spool_index *ix)
{
	size_t n = (size_t)ix->capents * sizeof(struct spool_index_ent) +
	    (ix->ht ? ((size_t)ix->ht_mask + 1) * sizeof(uint32_t) : 0) +
	    (ix->side ? ((size_t)ix->side_mask + 1) * sizeof(void *) : 0);

	for (uint32_t i = 0; i < ix->ntenants; i++)
		n += ((size_t)ix->tenants[i]->ready.cap +
		    ix->tenants[i]->wait.cap) * sizeof(uint32_t) +
		    (size_t)ix->tenants[i]->fifo.cap * sizeof(spool_qid);
	return n;
}
