/*
 * spool_index.h - the spool's in-memory index: internal to the spool module
 * group (relay/spool*.c) and its unit tests.
 *
 * The index knows which messages are queued, for which tenant, in what order
 * they are due, which recipients of a partly delivered message are done, and
 * the per-tenant figures (quota, held flag, bytes, messages).  It does no I/O
 * and knows nothing of libuv or of the storage backend: a message's location
 * is two opaque 32-bit numbers (SEG, OFF) plus its size in bytes (LEN), which
 * the journal uses as segment number and offset and the RAM backend as a slot
 * number.  A backend that must follow locations (the journal counts live
 * bytes per segment, the RAM backend frees bodies) is told through hooks.
 *
 * Ownership: the index owns its entries, tenants and side table; pointers it
 * returns (entries, tenant names, recipient states) stay valid until the next
 * call that changes the index.
 *
 * Memory: one entry is 40 bytes, plus 4 bytes in the qid hash (at a load of
 * at most 3/4), 4 in a heap and 8 in its tenant's arrival FIFO (at most 16
 * while dead queue ids wait to be dropped); partly delivered messages add a
 * side-table entry with one byte per recipient.
 */
#ifndef MXSPOOL_SPOOL_INDEX_H
#define MXSPOOL_SPOOL_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/spool.h"

#define SPOOL_INDEX_NONE     UINT32_MAX   /* "no such slot" */

#define SPOOL_ENT_CLAIMED    0x01u
#define SPOOL_ENT_PARTIAL    0x02u        /* has a side-table entry */
#define SPOOL_ENT_READY      0x04u        /* in the tenant's ready heap */
#define SPOOL_ENT_WAITING    0x08u        /* in the tenant's wait heap */
#define SPOOL_ENT_LIVE       0x10u
#define SPOOL_ENT_WARNED     0x20u        /* WARNED record: delay notice done */

/*
 * One queued message: 40 bytes.  The arrival shown by the index is the queue
 * id's timestamp; the exact envelope arrival is in the stored record.
 */
struct spool_index_ent {
	spool_qid qid;
	int64_t next_ms;              /* next attempt; 0 = due at once */
	uint32_t seg, off, len;       /* backend location; len = stored bytes */
	uint32_t hpos;                /* heap position; free-list link if dead */
	uint32_t nrcpt_flags;         /* recipients << 8 | SPOOL_ENT_* */
	uint16_t tenant, attempts;
};

static inline unsigned spool_ent_flags(const struct spool_index_ent *e)
{ return e->nrcpt_flags & 0xFFu; }
static inline uint32_t spool_ent_nrcpt(const struct spool_index_ent *e)
{ return e->nrcpt_flags >> 8; }

/* A queue id's timestamp (ms since the epoch). */
static inline int64_t spool_qid_ms(spool_qid q) { return (int64_t)(q >> 20); }

/* qsort comparator for uint64_t arrays (queue ids, segment numbers). */
int spool__u64_cmp(const void *a, const void *b);

/*
 * Called when an entry starts (LOC_ADD) or stops (LOC_DROP) occupying its
 * location: on insert, remove, and both around a relocation.  Not called
 * between spool_index_bulk_begin and _end; bulk_end calls LOC_ADD once for
 * every live entry.  Hooks must not change the index.
 */
struct spool_index_hooks {
	void (*loc_add)(void *arg, const struct spool_index_ent *e);
	void (*loc_drop)(void *arg, const struct spool_index_ent *e);
	void *arg;
};

struct spool_index;

/* HOOKS may be NULL.  Returns NULL only when out of memory. */
struct spool_index *spool_index_new(const struct spool_index_hooks *hooks);
void spool_index_free(struct spool_index *ix);
/* Replace the hooks (a backend installs its own at open). */
void spool_index_set_hooks(struct spool_index *ix,
    const struct spool_index_hooks *hooks);

/* Queue ids: time ordered (NOW_MS << 20) and unique even when the clock
 * steps back; _seen makes later ids larger than QID (recovery). */
spool_qid spool_index_qid_next(struct spool_index *ix, int64_t now_ms);
void spool_index_qid_seen(struct spool_index *ix, spool_qid qid);

/*
 * Bulk load (recovery): between begin and end, inserts skip the heaps, the
 * oldest-message figure and the hooks; end builds them all in one pass,
 * gives back the entry array's slack, and returns the live message count.
 */
void spool_index_bulk_begin(struct spool_index *ix);
uint64_t spool_index_bulk_end(struct spool_index *ix);

/* Tenants, by name (LEN bytes, no terminator needed).  find returns the
 * tenant number or -1; get creates it and returns SPOOL_EINVAL when the
 * 65536 tenant numbers are used up. */
int spool_index_tenant_find(const struct spool_index *ix, const char *name,
    size_t len);
int spool_index_tenant_get(struct spool_index *ix, const char *name,
    size_t len);
uint32_t spool_index_tenant_count(const struct spool_index *ix);
const char *spool_index_tenant_name(const struct spool_index *ix, unsigned t);
bool spool_index_tenant_held(const struct spool_index *ix, unsigned t);
void spool_index_tenant_set_held(struct spool_index *ix, unsigned t, bool held);
/* The primary's capabilities kept for tenant T: get returns false while
 * none were ever set. */
bool spool_index_tenant_caps(const struct spool_index *ix, unsigned t,
    struct spool_caps *out);
void spool_index_tenant_set_caps(struct spool_index *ix, unsigned t,
    const struct spool_caps *caps);
/* Quota of tenant NAME (created if new); 0 = no limit for that figure. */
void spool_index_set_quota(struct spool_index *ix, const char *name,
    uint64_t bytes, uint64_t messages);

/*
 * Admission of SIZE more bytes for tenant T (-1: disk only), counting bytes
 * already reserved by commits in flight.  FREE_BYTES is the backend's free
 * space figure, RESERVE the bytes to keep.  0, SPOOL_EQUOTA or SPOOL_ENOSPC.
 * reserve/unreserve bracket a commit so that concurrent commits see each
 * other.
 */
int spool_index_admit(const struct spool_index *ix, int t, uint64_t size,
    uint64_t free_bytes, uint64_t reserve);
void spool_index_reserve(struct spool_index *ix, unsigned t, uint64_t size);
/* While a background load runs: BYTES and MSGS not scanned yet, counted as
 * every tenant's by admit (conservative quotas); 0, 0 when it is done. */
void spool_index_set_unknown(struct spool_index *ix, uint64_t bytes,
    uint64_t msgs);
void spool_index_unreserve(struct spool_index *ix, unsigned t, uint64_t size);

/* Entries.  lookup returns a slot or SPOOL_INDEX_NONE; at returns NULL for
 * a slot that holds no live entry; slots bounds a scan over every slot. */
uint32_t spool_index_lookup(const struct spool_index *ix, spool_qid qid);
const struct spool_index_ent *spool_index_at(const struct spool_index *ix,
    uint32_t slot);
uint32_t spool_index_slots(const struct spool_index *ix);

/* Insert a committed message (due at once, unclaimed).  0 or SPOOL_ENOMEM;
 * inserting a queue id already present is a caller bug. */
int spool_index_insert(struct spool_index *ix, spool_qid qid, unsigned t,
    uint32_t nrcpt, uint32_t seg, uint32_t off, uint32_t len);
void spool_index_remove(struct spool_index *ix, uint32_t slot);
void spool_index_relocate(struct spool_index *ix, uint32_t slot, uint32_t seg,
    uint32_t off);
/* Set recipient R's state; true when that finished the message, which is
 * then removed.  R must be below the entry's recipient count. */
bool spool_index_mark_rcpt(struct spool_index *ix, uint32_t slot, uint32_t r,
    enum spool_rcpt_state st);
/* One byte per recipient (enum spool_rcpt_state), or NULL when every
 * recipient is still pending. */
const uint8_t *spool_index_rcpt_states(const struct spool_index *ix,
    uint32_t slot);
/* Replay of a deferral: set the next attempt and the attempt count. */
void spool_index_set_retry(struct spool_index *ix, uint32_t slot,
    int64_t next_ms, uint32_t attempts);
/* A failed attempt: unclaim, count it, and wait until NEXT_MS. */
void spool_index_defer(struct spool_index *ix, uint32_t slot, int64_t next_ms);

/* The delay notice of the entry at SLOT is done (SPOOL_ENT_WARNED). */
void spool_index_set_warned(struct spool_index *ix, uint32_t slot);

/*
 * The clock-driven walk of include/mxspool/spool.h (spool_walk_aged), over
 * each tenant's arrival FIFO: queue ids in commit order (queue id order
 * after a bulk load), appended by insert; a removed message leaves its
 * queue id behind as dead, dropped when a walk passes it at the front or
 * when a tenant's dead ids outnumber its live ones (the FIFO is then
 * rebuilt, shrunk).  Per tenant and call:
 *   expiry:   from the front while arrival <= EXPIRE_BEFORE_MS; dead ids
 *             passed are dropped, live ones are called back and stay;
 *   warnings: from the tenant's warn cursor (the front after a bulk load or
 *             a new index) while arrival <= WARN_BEFORE_MS; the cursor moves
 *             past every entry examined except the one whose callback
 *             returned non-zero, which is offered again on the next call.
 * Each pass examines at most SPOOL_INDEX_WALK_SCAN ids per tenant and call
 * (the rest are left for the next call), so a call costs what it visits
 * plus at most that much.  CB may change the index (remove, defer, mark).
 */
#define SPOOL_INDEX_WALK_SCAN 16384u
unsigned spool_index_walk_aged(struct spool_index *ix, const char *tenant,
    int64_t expire_before_ms, int64_t warn_before_ms, unsigned max,
    spool_age_cb cb, void *arg);
/* Queue ids (live and dead) in tenant NAME's arrival FIFO, for tests. */
uint32_t spool_index_fifo_len(const struct spool_index *ix, const char *name);

/* Draining: the spool_claim_next family of include/mxspool/spool.h. */
int spool_index_claim_next(struct spool_index *ix, const char *tenant,
    int64_t now_ms, spool_qid *out);
void spool_index_release(struct spool_index *ix, spool_qid qid);
/* Claim the entry at SLOT if nobody has: true when this call claimed it
 * (the caller releases it), false when it was claimed already. */
bool spool_index_claim(struct spool_index *ix, uint32_t slot);
int spool_index_retry_now(struct spool_index *ix, const char *tenant);
int64_t spool_index_next_due_ms(const struct spool_index *ix,
    const char *tenant);

/* Figures: the spool_tenant_stats family of include/mxspool/spool.h. */
void spool_index_tenant_stats(struct spool_index *ix, const char *tenant,
    struct spool_tenant_stats *out);
uint64_t spool_index_total_bytes(const struct spool_index *ix);
uint64_t spool_index_total_messages(const struct spool_index *ix);
/* spool_page(): up to MAX ids > AFTER that KEEP (NULL = all) keeps, in
 * order, into OUT; returns how many. */
size_t spool_index_page(const struct spool_index *ix, const char *tenant,
    spool_qid after, size_t max,
    bool (*keep)(void *arg, const struct spool_item *item), void *arg,
    spool_qid *out);
/* spool_set_last_reply() / spool_last_reply(). */
void spool_index_set_reply(struct spool_index *ix, spool_qid qid, const char *text);
const char *spool_index_reply(const struct spool_index *ix, spool_qid qid);
void spool_index_foreach(const struct spool_index *ix, const char *tenant,
    int (*cb)(void *arg, const struct spool_item *item), void *arg);
int spool_index_find(const struct spool_index *ix, spool_qid qid,
    struct spool_item *out);
/* Bytes of entries, hash, heaps and side-table buckets. */
size_t spool_index_mem_bytes(const struct spool_index *ix);

#endif
