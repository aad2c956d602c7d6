/*
 * spool.c - the durable message journal: append, group commit, recovery,
 * index, quotas, compaction.
 *
 * ON-DISK FORMAT (version 1).  Everything little-endian.
 *
 *   DIR/journal/NNNNNNNNNNNN.seg   segments, NNN = segment number (decimal,
 *                                  12 digits, starting at 1, never reused)
 *   DIR/tmp/<QID>                  spill files of transactions in progress;
 *                                  never trusted, emptied by spool_open
 *   DIR/corrupt/<SEGNO>-<OFFSET>   bytes recovery set aside (evidence only)
 *
 * Segment header, 32 bytes:
 *   0  8  magic "MXSPJRNL"
 *   8  4  format version (1); a segment of another version is refused
 *   12 4  header length (32)
 *   16 8  segment number (must match the file name)
 *   24 4  reserved, 0
 *   28 4  CRC32C of bytes 0..27
 * followed by records, back to back, no padding.
 *
 * Record header, 24 bytes:
 *   0  4  magic 0x5243584D ("MXCR")
 *   4  1  type (below)        5 1 flags, 0       6 2 reserved, 0
 *   8  4  body length (at most 1 GiB)
 *   12 4  CRC32C: of the body, continued over header bytes 4..11 and 16..23
 *         (the body comes first so a message is checksummed as it streams in,
 *         before its final length is known)
 *   16 8  queue id (0 for HOLD)
 *
 * Record types and bodies:
 *   1 MSG    0 u32 env_len (bytes of the envelope part, these fields included)
 *            4 u32 recipient count      8 i64 arrival (ms since the epoch)
 *            16 u8 RET  17 u8 BODY  18 u8 flags (1 = SMTPUTF8)  19 u8 0
 *            20 u16 tenant length, tenant; then u16-length strings sender,
 *            ENVID, client (0xFFFF = absent); per recipient: address, ORCPT
 *            (0xFFFF = absent), u8 NOTIFY bits; then the message bytes up to
 *            the end of the body.  Recovery reads only up to the tenant.
 *   2 RCPT   u32 recipient index, u8 state (0 pending, 1 delivered, 2 bounced)
 *   3 DEFER  i64 next attempt (ms), u32 attempt count
 *   4 DELETE empty: the message is gone
 *   5 HOLD   u8 held, u16 length, tenant.  Every new segment starts with one
 *            HOLD record per held tenant, so the held set survives the
 *            deletion of the segment that first recorded it.
 *
 * Replay (recovery) reads segments in number order and records in file
 * order.  A MSG whose queue id is already known is a copy made by
 * compaction: the index moves to the later copy and keeps the state gathered
 * so far (state records always follow the message record they change, and
 * compaction re-writes the current state right after each copy).  A state
 * record for an unknown queue id is ignored.
 *
 * DURABILITY.  A flush job (one at a time, on the threadpool) writes every
 * record queued since the previous job, then issues one fdatasync on the
 * segment, plus an fsync of journal/ when it created a segment.  Only after
 * both returned 0 do the commit callbacks of that job run with 0; records
 * finished while a job runs wait for the next one (group commit).  An error
 * from write or fsync fails every record of the job with SPOOL_EIO and the
 * segment's descriptor is closed and never written again: after a failed
 * fsync the kernel may have dropped the dirty pages and cleared the error,
 * so a retry could "succeed" without the data being on disk (the 2018
 * PostgreSQL fsync episode).  The next job starts a new segment.  Records
 * acknowledged earlier were covered by an fsync that succeeded, so they are
 * not affected; the failed job's records may or may not survive a crash,
 * which is harmless because their callers were told SPOOL_EIO.
 *
 * Recovery verifies every CRC.  A bad record with a valid record after it
 * is "corrupt in the middle": its bytes are copied to corrupt/ and counted.
 * A bad record with nothing valid after it is a torn tail (a crash during
 * an append): the segment is truncated there.  Nothing acknowledged can be
 * in a torn tail, because the fdatasync covering it did not return.
 *
 * DELETION.  A segment may be unlinked only when nothing live is in it AND it
 * is the oldest segment left: a DELETE or RCPT record in segment S can refer
 * to a message in any older segment, so S must outlive them all, or a crash
 * after unlinking S would resurrect the message.  Compaction therefore works
 * on the oldest segment: when its live bytes fall under a quarter of the
 * segment size, its live messages are copied verbatim (same queue id, same
 * CRC) into the active segment with their current state, durably, and then
 * the old segment is unlinked and journal/ fsync'd.  A crash in between
 * leaves the message twice, and replay keeps the later copy.
 *
 * THREADING.  Everything in struct spool is owned by the loop thread,
 * except struct wstate (the active segment's descriptor and size), which
 * only the running flush job touches; the loop thread reads it in the job's
 * after-callback, which libuv orders after the work function.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#include "mxspool/spool.h"
#include "mxspool/util.h"
#include "spool_internal.h"

#define SPILL_THRESHOLD    (64u * 1024)         /* per-tx buffer before spill */
#define STAGE_CAP          (4u * 1024 * 1024)   /* flush job write buffer */
#define RECOVER_BUF        (8u * 1024 * 1024)   /* recovery read window */
#define READ_CHUNK_MAX     (1u * 1024 * 1024)   /* largest spool_msg_read */
#define DEFAULT_SEG_SIZE   (64ull * 1024 * 1024)
#define MAX_SEG_SIZE       (1ull << 30)         /* offsets fit 32 bits */
#define STATVFS_PERIOD_MS  1000                 /* free-space refresh */
#define COMPACT_DIVISOR    4                    /* live < size/4: compact */

#define ENT_CLAIMED  0x01
#define ENT_PARTIAL  0x02                       /* has a side-table entry */
#define ENT_READY    0x04                       /* in the tenant's ready heap */
#define ENT_WAITING  0x08                       /* in the tenant's wait heap */
#define ENT_LIVE     0x10

/*
 * One queued message in the index: 40 bytes.  The arrival shown by the index
 * is the queue id's timestamp; the exact envelope arrival is in the record.
 */
struct ent {
	spool_qid qid;
	int64_t next_ms;              /* next attempt; 0 = due at once */
	uint32_t seg, off, len;       /* record location, len with header */
	uint32_t hpos;                /* heap position; free-list link if dead */
	uint32_t nrcpt_flags;         /* recipients << 8 | ENT_* */
	uint16_t tenant, attempts;
};

struct heap {
	uint32_t *v;
	uint32_t n, cap;
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
};

/* Recipient states of a partly delivered message (one byte each). */
struct side {
	struct side *next;
	spool_qid qid;
	uint32_t nrcpt, ndone;
	uint8_t st[];
};

struct seg {
	uint64_t no;
	uint64_t size;
	uint64_t live_bytes;
	uint32_t live_msgs;
	uint32_t copies_out;          /* compaction copies not yet committed */
	bool compacting;
	bool copy_failed;
};

enum pend_cb { CB_NONE, CB_DONE, CB_COMMIT };

/* A record queued for (or inside) a flush job. */
struct pend {
	struct pend *next;
	struct spool_rec_hdr h;
	uint8_t hdr[SPOOL_REC_HDR_LEN];
	uint8_t small[SPOOL_DEFER_BODY_LEN];
	uint8_t *own;                 /* owned body (HOLD), or NULL */
	const uint8_t *body;
	size_t body_len;
	struct spool_tx *tx;          /* MSG from a transaction */
	bool is_copy;                 /* MSG copied verbatim by compaction */
	uint32_t src_seg, src_off, src_len;
	uint32_t seg, off;            /* where it was written */
	enum pend_cb cbkind;
	spool_done_cb done;
	spool_commit_cb commit;
	void *arg;
};

struct wstate {
	int fd;                       /* active segment, -1 if none */
	uint64_t segno, size, next_segno;
	uint8_t *stage;
	size_t stage_len;
};

struct fjob {
	uv_work_t req;
	struct spool *sp;
	struct pend *head;
	uint8_t *snap;                /* HOLD records for a new segment */
	size_t snap_len;
	int status;
	uint64_t *created;            /* segment numbers this job created */
	size_t ncreated, capcreated;
	uint64_t free_bytes;
	bool have_free;
};

struct spool_tx {
	struct spool *sp;
	spool_qid qid;
	uint16_t tenant;
	uint32_t nrcpt;
	uint8_t *env;
	size_t env_len;
	uint32_t crc;                 /* over env + spilled bytes */
	uint8_t *buf;
	size_t len, cap;
	uint64_t spilled;
	int spill_fd;
	int spill_status;
	bool spilling;
	bool aborted;
	uv_work_t spill_req;
	spool_done_cb cb;
	void *arg;
};

struct spool_msg {
	uv_loop_t *loop;
	struct spool *sp;             /* only during load */
	struct spool_envelope *env;
	uint8_t *rst;                 /* recipient states */
	spool_qid qid;
	unsigned attempts;
	int fd;
	uint64_t size, data_off;
	uint8_t *rbuf;
	size_t rcap;
	int reading;
	bool freed;
};

struct spool {
	uv_loop_t *loop;
	char *dir, *jdir, *tdir, *cdir;
	uint64_t seg_size;
	uint64_t disk_reserve;
	uint64_t window_ms;
	int64_t (*now_ms)(void);

	/* index */
	struct ent *ents;
	uint32_t nents, capents, free_head, nlive;
	uint32_t *ht;
	uint32_t ht_mask, ht_used;
	struct side **side;
	uint32_t side_mask, nside;
	struct tenant **tenants;
	uint32_t ntenants;
	spool_qid last_qid;
	uint64_t total_bytes;
	bool recovering;

	/* segments, oldest first */
	struct seg *segs;
	size_t nsegs, capsegs;
	uint64_t active_segno;        /* 0 = none */

	/* group commit */
	struct pend *pq_head, **pq_tail;
	bool flush_running;
	bool window_armed;
	struct wstate w;
	uv_timer_t window_timer;

	/* disk space */
	uv_timer_t statvfs_timer;
	bool statvfs_running;
	uint64_t free_bytes;
	uint64_t pend_bytes_total;

	bool maint_running;
	bool maint_stuck;             /* an unlink failed: stop deleting */

	uint64_t nsyncs;              /* flush jobs that reached fdatasync */
	unsigned nreqs;               /* work requests in flight */
	unsigned nhandles;            /* open handles */
	bool closing, closed_handles;
	void (*close_done)(void *);
	void *close_arg;
};

static void flush_maybe_start(struct spool *sp);
static void maint_check(struct spool *sp);
static void close_maybe_finish(struct spool *sp);

/* ---- queue ids and errors ---------------------------------------------- */

void
spool_qid_format(spool_qid qid, char buf[SPOOL_QID_STRLEN + 1])
{
	snprintf(buf, SPOOL_QID_STRLEN + 1, "%016" PRIX64, qid);
}

int
spool_qid_parse(const char *s, spool_qid *out)
{
	spool_qid v = 0;

	for (int i = 0; i < SPOOL_QID_STRLEN; i++) {
		char c = s[i];
		unsigned d;

		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return SPOOL_EINVAL;
		v = v << 4 | d;
	}
	if (s[SPOOL_QID_STRLEN] != '\0' || v == 0)
		return SPOOL_EINVAL;
	*out = v;
	return 0;
}

const char *
spool_strerror(int status)
{
	switch (status) {
	case SPOOL_OK: return "ok";
	case SPOOL_PENDING: return "pending";
	case SPOOL_EQUOTA: return "tenant quota exceeded";
	case SPOOL_ENOSPC: return "free disk space below reserve";
	case SPOOL_EIO: return "journal write failed";
	case SPOOL_ENOENT: return "no such message";
	case SPOOL_ECORRUPT: return "journal record corrupt";
	case SPOOL_ENOMEM: return "out of memory";
	case SPOOL_EINVAL: return "invalid argument";
	case SPOOL_ECLOSED: return "spool is closing";
	default: return status < 0 ? strerror(-status) : "unknown status";
	}
}

static spool_qid
qid_next(struct spool *sp)
{
	spool_qid q = (spool_qid)sp->now_ms() << 20;

	/* Time ordered, and unique even when the clock steps back. */
	if (q <= sp->last_qid)
		q = sp->last_qid + 1;
	sp->last_qid = q;
	return q;
}

static int64_t
qid_ms(spool_qid q)
{
	return (int64_t)(q >> 20);
}

/* ---- index: entries and the qid hash ------------------------------------ */

static inline unsigned ent_flags(const struct ent *e) { return e->nrcpt_flags & 0xFF; }
static inline uint32_t ent_nrcpt(const struct ent *e) { return e->nrcpt_flags >> 8; }
static inline void ent_set(struct ent *e, unsigned f) { e->nrcpt_flags |= f; }
static inline void ent_clr(struct ent *e, unsigned f) { e->nrcpt_flags &= ~(uint32_t)f; }

static uint32_t
qid_hash(spool_qid q, uint32_t mask)
{
	return (uint32_t)((q * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static int
ht_grow(struct spool *sp)
{
	uint32_t nsize = sp->ht == NULL ? 1024 : (sp->ht_mask + 1) * 2;
	uint32_t *nht = malloc((size_t)nsize * sizeof(*nht));

	if (nht == NULL)
		return SPOOL_ENOMEM;
	memset(nht, 0xFF, (size_t)nsize * sizeof(*nht));
	for (uint32_t i = 0; sp->ht != NULL && i <= sp->ht_mask; i++) {
		uint32_t idx = sp->ht[i], h;

		if (idx == UINT32_MAX)
			continue;
		h = qid_hash(sp->ents[idx].qid, nsize - 1);
		while (nht[h] != UINT32_MAX)
			h = (h + 1) & (nsize - 1);
		nht[h] = idx;
	}
	free(sp->ht);
	sp->ht = nht;
	sp->ht_mask = nsize - 1;
	return 0;
}

static uint32_t
ht_find(const struct spool *sp, spool_qid q)
{
	uint32_t h;

	if (sp->ht == NULL)
		return UINT32_MAX;
	for (h = qid_hash(q, sp->ht_mask); sp->ht[h] != UINT32_MAX;
	    h = (h + 1) & sp->ht_mask)
		if (sp->ents[sp->ht[h]].qid == q)
			return sp->ht[h];
	return UINT32_MAX;
}

static int
ht_insert(struct spool *sp, uint32_t idx)
{
	uint32_t h;
	int rc;

	/* Linear probing stays fast up to a load of 3/4. */
	if (sp->ht == NULL || (uint64_t)(sp->ht_used + 1) * 4 > (uint64_t)(sp->ht_mask + 1) * 3)
		if ((rc = ht_grow(sp)) != 0)
			return rc;
	h = qid_hash(sp->ents[idx].qid, sp->ht_mask);
	while (sp->ht[h] != UINT32_MAX)
		h = (h + 1) & sp->ht_mask;
	sp->ht[h] = idx;
	sp->ht_used++;
	return 0;
}

static void
ht_remove(struct spool *sp, spool_qid q)
{
	uint32_t h = qid_hash(q, sp->ht_mask), j;

	while (sp->ents[sp->ht[h]].qid != q)
		h = (h + 1) & sp->ht_mask;
	/* Backward-shift deletion: no tombstones, probes stay short. */
	for (j = (h + 1) & sp->ht_mask; sp->ht[j] != UINT32_MAX;
	    j = (j + 1) & sp->ht_mask) {
		uint32_t home = qid_hash(sp->ents[sp->ht[j]].qid, sp->ht_mask);

		if (((j - home) & sp->ht_mask) >= ((j - h) & sp->ht_mask)) {
			sp->ht[h] = sp->ht[j];
			h = j;
		}
	}
	sp->ht[h] = UINT32_MAX;
	sp->ht_used--;
}

static int
ent_alloc(struct spool *sp, uint32_t *out)
{
	if (sp->free_head != UINT32_MAX) {
		*out = sp->free_head;
		sp->free_head = sp->ents[*out].hpos;
		return 0;
	}
	if (sp->nents == sp->capents) {
		uint32_t ncap = sp->capents ? sp->capents + sp->capents / 2 : 1024;
		struct ent *n = realloc(sp->ents, (size_t)ncap * sizeof(*n));

		if (n == NULL)
			return SPOOL_ENOMEM;
		sp->ents = n;
		sp->capents = ncap;
	}
	*out = sp->nents++;
	return 0;
}

/* ---- tenants ----------------------------------------------------------- */

static struct tenant *
tenant_find(struct spool *sp, const char *name, size_t len, uint16_t *idx)
{
	for (uint32_t i = 0; i < sp->ntenants; i++) {
		struct tenant *t = sp->tenants[i];

		if (strlen(t->name) == len && memcmp(t->name, name, len) == 0) {
			if (idx != NULL)
				*idx = (uint16_t)i;
			return t;
		}
	}
	return NULL;
}

/* Find or create; NULL only when the 65536 tenant slots are used up. */
static struct tenant *
tenant_get(struct spool *sp, const char *name, size_t len, uint16_t *idx)
{
	struct tenant *t = tenant_find(sp, name, len, idx);

	if (t != NULL)
		return t;
	if (sp->ntenants > UINT16_MAX)
		return NULL;
	t = xcalloc(1, sizeof(*t));
	t->name = xstrndup(name, len);
	sp->tenants = xrealloc(sp->tenants,
	    (sp->ntenants + 1) * sizeof(*sp->tenants));
	if (idx != NULL)
		*idx = (uint16_t)sp->ntenants;
	sp->tenants[sp->ntenants++] = t;
	return t;
}

/* ---- heaps: ready (by qid) and wait (by next attempt) ------------------ */

static bool
h_less(const struct spool *sp, bool ready, uint32_t a, uint32_t b)
{
	const struct ent *x = &sp->ents[a], *y = &sp->ents[b];

	if (!ready && x->next_ms != y->next_ms)
		return x->next_ms < y->next_ms;
	return x->qid < y->qid;
}

static void
h_set(struct spool *sp, struct heap *h, uint32_t pos, uint32_t idx)
{
	h->v[pos] = idx;
	sp->ents[idx].hpos = pos;
}

static void
h_up(struct spool *sp, struct heap *h, bool ready, uint32_t pos)
{
	uint32_t idx = h->v[pos];

	while (pos > 0) {
		uint32_t parent = (pos - 1) / 2;

		if (!h_less(sp, ready, idx, h->v[parent]))
			break;
		h_set(sp, h, pos, h->v[parent]);
		pos = parent;
	}
	h_set(sp, h, pos, idx);
}

static void
h_down(struct spool *sp, struct heap *h, bool ready, uint32_t pos)
{
	uint32_t idx = h->v[pos];

	for (;;) {
		uint32_t c = 2 * pos + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && h_less(sp, ready, h->v[c + 1], h->v[c]))
			c++;
		if (!h_less(sp, ready, h->v[c], idx))
			break;
		h_set(sp, h, pos, h->v[c]);
		pos = c;
	}
	h_set(sp, h, pos, idx);
}

static void
h_push(struct spool *sp, struct heap *h, bool ready, uint32_t idx)
{
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap + h->cap / 2 : 64;
		h->v = xrealloc(h->v, (size_t)h->cap * sizeof(*h->v));
	}
	h->v[h->n++] = idx;
	h_up(sp, h, ready, h->n - 1);
}

static void
h_remove(struct spool *sp, struct heap *h, bool ready, uint32_t pos)
{
	uint32_t last = h->v[--h->n];

	if (pos == h->n)
		return;
	h_set(sp, h, pos, last);
	h_up(sp, h, ready, pos);
	h_down(sp, h, ready, sp->ents[last].hpos);
}

/* Take E out of whichever heap holds it. */
static void
ent_unqueue(struct spool *sp, uint32_t idx)
{
	struct ent *e = &sp->ents[idx];
	struct tenant *t = sp->tenants[e->tenant];

	if (ent_flags(e) & ENT_READY)
		h_remove(sp, &t->ready, true, e->hpos);
	else if (ent_flags(e) & ENT_WAITING)
		h_remove(sp, &t->wait, false, e->hpos);
	ent_clr(e, ENT_READY | ENT_WAITING);
}

/* Put an unclaimed E in the wait heap (claim_next promotes it when due). */
static void
ent_queue(struct spool *sp, uint32_t idx)
{
	struct ent *e = &sp->ents[idx];

	if (sp->recovering)
		return;               /* heaps are built once, at the end */
	ent_set(e, ENT_WAITING);
	h_push(sp, &sp->tenants[e->tenant]->wait, false, idx);
}

/* ---- side table of partly delivered messages ---------------------------- */

static struct side **
side_slot(struct spool *sp, spool_qid q)
{
	struct side **p;

	if (sp->side == NULL)
		return NULL;
	for (p = &sp->side[qid_hash(q, sp->side_mask)]; *p != NULL; p = &(*p)->next)
		if ((*p)->qid == q)
			break;
	return p;
}

static struct side *
side_find(struct spool *sp, spool_qid q)
{
	struct side **p = side_slot(sp, q);

	return p == NULL ? NULL : *p;
}

static struct side *
side_get(struct spool *sp, spool_qid q, uint32_t nrcpt)
{
	struct side *s = side_find(sp, q), **p;

	if (s != NULL)
		return s;
	if (sp->side == NULL || sp->nside >= sp->side_mask + 1) {
		uint32_t nb = sp->side == NULL ? 256 : (sp->side_mask + 1) * 2;
		struct side **nt = xcalloc(nb, sizeof(*nt));

		for (uint32_t i = 0; sp->side != NULL && i <= sp->side_mask; i++)
			while (sp->side[i] != NULL) {
				struct side *m = sp->side[i];

				sp->side[i] = m->next;
				m->next = nt[qid_hash(m->qid, nb - 1)];
				nt[qid_hash(m->qid, nb - 1)] = m;
			}
		free(sp->side);
		sp->side = nt;
		sp->side_mask = nb - 1;
	}
	s = xcalloc(1, sizeof(*s) + nrcpt);
	s->qid = q;
	s->nrcpt = nrcpt;
	p = &sp->side[qid_hash(q, sp->side_mask)];
	s->next = *p;
	*p = s;
	sp->nside++;
	return s;
}

static void
side_drop(struct spool *sp, spool_qid q)
{
	struct side **p = side_slot(sp, q), *s;

	if (p == NULL || *p == NULL)
		return;
	s = *p;
	*p = s->next;
	free(s);
	sp->nside--;
}

/* ---- segments ---------------------------------------------------------- */

static struct seg *
seg_find(struct spool *sp, uint64_t no)
{
	size_t lo = 0, hi = sp->nsegs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (sp->segs[mid].no < no)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < sp->nsegs && sp->segs[lo].no == no ? &sp->segs[lo] : NULL;
}

/* Segments are only ever added with a number above every existing one. */
static struct seg *
seg_add(struct spool *sp, uint64_t no)
{
	struct seg *s = seg_find(sp, no);

	if (s != NULL)
		return s;
	if (sp->nsegs == sp->capsegs) {
		sp->capsegs = sp->capsegs ? sp->capsegs * 2 : 16;
		sp->segs = xrealloc(sp->segs, sp->capsegs * sizeof(*sp->segs));
	}
	s = &sp->segs[sp->nsegs++];
	memset(s, 0, sizeof(*s));
	s->no = no;
	return s;
}

static void
seg_path(char *buf, size_t len, const char *jdir, uint64_t no)
{
	snprintf(buf, len, "%s/%012" PRIu64 ".seg", jdir, no);
}

static void
seg_account(struct spool *sp, uint32_t segno, uint32_t len, int sign)
{
	struct seg *s;

	if (sp->recovering)
		return;               /* recomputed once after replay */
	s = seg_find(sp, segno);
	if (s == NULL)
		return;
	if (sign > 0) {
		s->live_bytes += len;
		s->live_msgs++;
	} else {
		s->live_bytes -= len;
		s->live_msgs--;
	}
}

/* ---- index operations -------------------------------------------------- */

static uint64_t
ent_msg_bytes(const struct ent *e)
{
	return e->len;
}

static int
index_insert(struct spool *sp, spool_qid qid, uint16_t tenant, uint32_t nrcpt,
    uint32_t segno, uint32_t off, uint32_t len)
{
	struct tenant *t = sp->tenants[tenant];
	struct ent *e;
	uint32_t idx;
	int rc;

	if ((rc = ent_alloc(sp, &idx)) != 0)
		return rc;
	e = &sp->ents[idx];
	memset(e, 0, sizeof(*e));
	e->qid = qid;
	e->seg = segno;
	e->off = off;
	e->len = len;
	e->tenant = tenant;
	e->nrcpt_flags = nrcpt << 8 | ENT_LIVE;
	if ((rc = ht_insert(sp, idx)) != 0) {
		e->nrcpt_flags = 0;
		e->hpos = sp->free_head;
		sp->free_head = idx;
		return rc;
	}
	sp->nlive++;
	t->messages++;
	t->bytes += len;
	sp->total_bytes += len;
	if (!t->oldest_dirty && (t->messages == 1 || qid < t->oldest))
		t->oldest = qid;
	seg_account(sp, segno, len, +1);
	ent_queue(sp, idx);
	return 0;
}

static void
index_remove(struct spool *sp, uint32_t idx)
{
	struct ent *e = &sp->ents[idx];
	struct tenant *t = sp->tenants[e->tenant];

	if (!sp->recovering)
		ent_unqueue(sp, idx);
	if (ent_flags(e) & ENT_PARTIAL)
		side_drop(sp, e->qid);
	ht_remove(sp, e->qid);
	seg_account(sp, e->seg, e->len, -1);
	t->messages--;
	t->bytes -= ent_msg_bytes(e);
	sp->total_bytes -= ent_msg_bytes(e);
	if (e->qid == t->oldest)
		t->oldest_dirty = true;
	sp->nlive--;
	e->nrcpt_flags = 0;
	e->hpos = sp->free_head;
	sp->free_head = idx;
}

static void
index_relocate(struct spool *sp, uint32_t idx, uint32_t segno, uint32_t off)
{
	struct ent *e = &sp->ents[idx];

	seg_account(sp, e->seg, e->len, -1);
	e->seg = segno;
	e->off = off;
	seg_account(sp, e->seg, e->len, +1);
}

/* Apply a recipient state; returns true when the message is finished and
 * has been removed from the index. */
static bool
index_mark_rcpt(struct spool *sp, uint32_t idx, uint32_t r,
    enum spool_rcpt_state st)
{
	struct ent *e = &sp->ents[idx];
	struct side *s = side_get(sp, e->qid, ent_nrcpt(e));
	bool was = s->st[r] != SPOOL_RCPT_PENDING, now = st != SPOOL_RCPT_PENDING;

	ent_set(e, ENT_PARTIAL);
	s->st[r] = (uint8_t)st;
	if (was != now)
		s->ndone += now ? 1 : (uint32_t)-1;
	if (s->ndone == s->nrcpt) {
		index_remove(sp, idx);
		return true;
	}
	return false;
}

/* ---- recovery ---------------------------------------------------------- */

struct rwin {
	int fd;
	uint8_t *buf;
	size_t cap;
	uint64_t base;                /* file offset of buf[0] */
	size_t len;
};

/* Make [off, off+n) of the file available; n <= cap.  Returns a pointer,
 * or NULL on a read error or a short file. */
static const uint8_t *
rwin_get(struct rwin *w, uint64_t off, size_t n)
{
	if (off >= w->base && off + n <= w->base + w->len)
		return w->buf + (off - w->base);
	if (off >= w->base && off < w->base + w->len) {
		size_t keep = (size_t)(w->base + w->len - off);

		memmove(w->buf, w->buf + (off - w->base), keep);
		w->len = keep;
	} else
		w->len = 0;
	w->base = off;
	while (w->len < n) {
		ssize_t r = pread(w->fd, w->buf + w->len, w->cap - w->len,
		    (off_t)(w->base + w->len));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return NULL;
		w->len += (size_t)r;
	}
	return w->buf;
}

/* CRC of LEN body bytes at OFF, streamed through the window. */
static int
rwin_crc(struct rwin *w, uint64_t off, uint64_t len, uint32_t *crc)
{
	uint32_t c = 0;

	while (len > 0) {
		size_t n = len > w->cap ? w->cap : (size_t)len;
		const uint8_t *p = rwin_get(w, off, n);

		if (p == NULL)
			return SPOOL_EIO;
		c = spool_crc32c(c, p, n);
		off += n;
		len -= n;
	}
	*crc = c;
	return 0;
}

/* Is there a whole, valid record at OFF?  Sets *END past it. */
static bool
rec_valid_at(struct rwin *w, uint64_t off, uint64_t size, uint64_t *end)
{
	struct spool_rec_hdr h;
	const uint8_t *p;
	uint32_t crc;

	if (off + SPOOL_REC_HDR_LEN > size)
		return false;
	p = rwin_get(w, off, SPOOL_REC_HDR_LEN);
	if (p == NULL || spool_rec_hdr_decode(p, &h) != 0)
		return false;
	if (off + SPOOL_REC_HDR_LEN + h.len > size)
		return false;
	if (rwin_crc(w, off + SPOOL_REC_HDR_LEN, h.len, &crc) != 0 ||
	    spool_rec_crc(crc, &h) != h.crc)
		return false;
	*end = off + SPOOL_REC_HDR_LEN + h.len;
	return true;
}

/* The first offset >= FROM holding a valid record, or 0. */
static uint64_t
find_next_valid(int fd, uint64_t from, uint64_t size)
{
	static const uint8_t magic[4] = { 0x4D, 0x58, 0x43, 0x52 };
	struct rwin probe = { .fd = fd, .cap = 1 << 20 };
	uint8_t *chunk = xmalloc(1 << 20);
	uint64_t found = 0, end;

	probe.buf = xmalloc(probe.cap);
	while (from + SPOOL_REC_HDR_LEN <= size && found == 0) {
		ssize_t n = pread(fd, chunk, 1 << 20, (off_t)from);
		const uint8_t *p, *q;

		if (n < 4)
			break;
		for (p = chunk; (q = memmem(p, (size_t)(chunk + n - p), magic, 4)) != NULL;
		    p = q + 1)
			if (rec_valid_at(&probe, from + (uint64_t)(q - chunk), size, &end)) {
				found = from + (uint64_t)(q - chunk);
				break;
			}
		/* Overlap by 3 so a magic split across chunks is seen. */
		from += (uint64_t)n - 3;
	}
	free(probe.buf);
	free(chunk);
	return found;
}

/* Copy [off, end) of segment NO to corrupt/NNN-OFF; best effort, since the
 * copy is evidence for the operator and recovery proceeds either way. */
static void
set_aside(struct spool *sp, int fd, uint64_t no, uint64_t off, uint64_t end)
{
	char path[4096];
	uint8_t *buf = xmalloc(1 << 20);
	int out;

	snprintf(path, sizeof(path), "%s/%012" PRIu64 "-%" PRIu64, sp->cdir, no, off);
	out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	while (out >= 0 && off < end) {
		size_t want = end - off > (1 << 20) ? (1 << 20) : (size_t)(end - off);
		ssize_t n = pread(fd, buf, want, (off_t)off);

		if (n <= 0 || write(out, buf, (size_t)n) != n)
			break;
		off += (uint64_t)n;
	}
	if (out >= 0)
		(void)close(out);
	free(buf);
}

static void
replay_msg(struct spool *sp, const struct spool_rec_hdr *h,
    const struct spool_msg_prefix *pf, uint64_t segno, uint64_t off)
{
	uint32_t idx = ht_find(sp, h->qid);
	uint16_t tidx;

	if (idx != UINT32_MAX) {
		/* A compaction copy: the later one wins, the state stays. */
		index_relocate(sp, idx, (uint32_t)segno, (uint32_t)off);
		return;
	}
	if (tenant_get(sp, pf->tenant, pf->tenant_len, &tidx) == NULL)
		return;
	(void)index_insert(sp, h->qid, tidx, pf->nrcpt, (uint32_t)segno,
	    (uint32_t)off, SPOOL_REC_HDR_LEN + h->len);
}

/* Apply one verified record.  Returns SPOOL_ECORRUPT when a record with a
 * good CRC does not parse (a bug or a foreign writer): it is set aside. */
static int
replay(struct spool *sp, const struct spool_rec_hdr *h, const uint8_t *body,
    size_t avail, uint64_t segno, uint64_t off)
{
	struct spool_msg_prefix pf;
	enum spool_rcpt_state st;
	uint32_t idx, r, attempts;
	const char *tn;
	size_t tl;
	int64_t next;
	bool held;

	if (h->qid > sp->last_qid)
		sp->last_qid = h->qid;
	if (h->type != SPOOL_REC_HOLD && h->qid == 0)
		return SPOOL_ECORRUPT;
	idx = h->type == SPOOL_REC_HOLD ? UINT32_MAX : ht_find(sp, h->qid);
	switch (h->type) {
	case SPOOL_REC_MSG:
		if (spool_msg_prefix_decode(body, avail, h->len, &pf) != 0)
			return SPOOL_ECORRUPT;
		replay_msg(sp, h, &pf, segno, off);
		return 0;
	case SPOOL_REC_RCPT:
		if (spool_rcpt_body_decode(body, h->len, &r, &st) != 0)
			return SPOOL_ECORRUPT;
		if (idx != UINT32_MAX && r < ent_nrcpt(&sp->ents[idx]))
			(void)index_mark_rcpt(sp, idx, r, st);
		return 0;
	case SPOOL_REC_DEFER:
		if (spool_defer_body_decode(body, h->len, &next, &attempts) != 0)
			return SPOOL_ECORRUPT;
		if (idx != UINT32_MAX) {
			sp->ents[idx].next_ms = next;
			sp->ents[idx].attempts = attempts > UINT16_MAX ?
			    UINT16_MAX : (uint16_t)attempts;
		}
		return 0;
	case SPOOL_REC_DELETE:
		if (h->len != 0)
			return SPOOL_ECORRUPT;
		if (idx != UINT32_MAX)
			index_remove(sp, idx);
		return 0;
	case SPOOL_REC_HOLD:
		if (spool_hold_body_decode(body, h->len, &tn, &tl, &held) != 0)
			return SPOOL_ECORRUPT;
		if (tenant_get(sp, tn, tl, NULL) != NULL)
			tenant_find(sp, tn, tl, NULL)->held = held;
		return 0;
	}
	return SPOOL_ECORRUPT;
}

/* Recover one segment: verify, replay, set aside, cut the torn tail. */
static int
recover_seg(struct spool *sp, uint64_t no, struct rwin *w,
    struct spool_recovery_stats *st)
{
	char path[4096];
	struct stat sb;
	uint64_t size, off, segno, end;
	const uint8_t *p;
	int fd, rc = 0;

	seg_path(path, sizeof(path), sp->jdir, no);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) != 0) {
		rc = -errno;
		goto done;
	}
	size = (uint64_t)sb.st_size;
	w->fd = fd;
	w->base = 0;
	w->len = 0;
	if (size < SPOOL_SEG_HDR_LEN) {
		/* Torn while being created: nothing in it was acknowledged,
		 * because the first fdatasync covers the header too. */
		st->torn_bytes += size;
		if (unlink(path) != 0)
			rc = -errno;
		goto done;
	}
	p = rwin_get(w, 0, SPOOL_SEG_HDR_LEN);
	if (p == NULL || spool_seg_hdr_decode(p, &segno) != 0 || segno != no) {
		char dst[4096];

		/* Not ours or not this version: keep it out of the way. */
		snprintf(dst, sizeof(dst), "%s/%012" PRIu64 ".seg", sp->cdir, no);
		st->corrupt_records++;
		if (rename(path, dst) != 0)
			rc = -errno;
		goto done;
	}
	seg_add(sp, no)->size = size;
	st->segments++;
	off = SPOOL_SEG_HDR_LEN;
	while (off < size) {
		struct spool_rec_hdr h;
		uint64_t whole = 0;
		uint32_t crc;
		size_t avail;

		if (off + SPOOL_REC_HDR_LEN > size)
			goto bad;
		p = rwin_get(w, off, SPOOL_REC_HDR_LEN);
		if (p == NULL) {
			rc = SPOOL_EIO;
			goto done;
		}
		if (spool_rec_hdr_decode(p, &h) != 0)
			goto bad;
		if (off + SPOOL_REC_HDR_LEN + h.len > size)
			goto bad;
		whole = SPOOL_REC_HDR_LEN + (uint64_t)h.len;
		if (whole <= w->cap) {
			/* The common case: one look at the bytes in the window. */
			p = rwin_get(w, off, (size_t)whole);
			if (p == NULL) {
				rc = SPOOL_EIO;
				goto done;
			}
			crc = spool_crc32c(0, p + SPOOL_REC_HDR_LEN, h.len);
		} else if (rwin_crc(w, off + SPOOL_REC_HDR_LEN, h.len, &crc) != 0) {
			rc = SPOOL_EIO;
			goto done;
		}
		if (spool_rec_crc(crc, &h) != h.crc)
			goto bad;
		avail = h.len < SPOOL_MSG_FIXED_LEN + 0xFFFF ? h.len :
		    SPOOL_MSG_FIXED_LEN + 0xFFFF;
		p = rwin_get(w, off + SPOOL_REC_HDR_LEN, avail);
		if (p == NULL && avail > 0) {
			rc = SPOOL_EIO;
			goto done;
		}
		if (replay(sp, &h, p, avail, no, off) != 0)
			goto bad;
		st->records++;
		off += whole;
		continue;
bad:
		/* Is this a damaged record with good ones after it? */
		end = 0;
		if (whole > 0 && off + whole < size &&
		    rec_valid_at(w, off + whole, size, &end))
			end = off + whole;
		else
			end = find_next_valid(fd, off + 1, size);
		if (end != 0) {
			set_aside(sp, fd, no, off, end);
			st->corrupt_records++;
			off = end;
			continue;
		}
		/* Nothing valid follows: a torn tail.  A record that looks
		 * whole but fails its CRC is kept as evidence first. */
		if (whole > 0 && off + whole == size) {
			set_aside(sp, fd, no, off, size);
			st->corrupt_records++;
		} else
			st->torn_bytes += size - off;
		if (ftruncate(fd, (off_t)off) != 0 || fsync(fd) != 0) {
			rc = -errno;
			goto done;
		}
		size = off;
		seg_find(sp, no)->size = size;
		w->len = 0;
		break;
	}
	st->bytes += size;
done:
	(void)close(fd);
	return rc;
}

static int
u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Remove leftovers of transactions that were in progress at the crash. */
static int
clean_tmp(struct spool *sp)
{
	DIR *d = opendir(sp->tdir);
	struct dirent *de;
	char path[4096];

	if (d == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", sp->tdir, de->d_name);
		(void)unlink(path);
	}
	(void)closedir(d);
	return 0;
}

static int
recover(struct spool *sp, struct spool_recovery_stats *st)
{
	DIR *d = opendir(sp->jdir);
	struct dirent *de;
	uint64_t *nos = NULL, maxno = 0;
	size_t n = 0, cap = 0;
	struct rwin w = { .fd = -1, .cap = RECOVER_BUF };
	int rc = 0;

	if (d == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		char *endp;
		unsigned long long v;

		if (strlen(de->d_name) != 16 || strcmp(de->d_name + 12, ".seg") != 0)
			continue;
		v = strtoull(de->d_name, &endp, 10);
		if (endp != de->d_name + 12 || v == 0 || v > UINT32_MAX)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			nos = xrealloc(nos, cap * sizeof(*nos));
		}
		nos[n++] = v;
	}
	(void)closedir(d);
	if (n > 0)
		qsort(nos, n, sizeof(*nos), u64_cmp);

	w.buf = xmalloc(w.cap);
	sp->recovering = true;
	for (size_t i = 0; i < n && rc == 0; i++) {
		rc = recover_seg(sp, nos[i], &w, st);
		maxno = nos[i];
	}
	sp->recovering = false;
	free(w.buf);
	free(nos);
	if (rc != 0)
		return rc;

	/* Replay grew the entry array by half each time; give the slack back
	 * (it is the bulk of the index). */
	if (sp->nents > 0 && sp->nents < sp->capents) {
		struct ent *shrunk = realloc(sp->ents, (size_t)sp->nents * sizeof(*shrunk));

		if (shrunk != NULL) {
			sp->ents = shrunk;
			sp->capents = sp->nents;
		}
	}
	for (uint32_t i = 0; i < sp->ntenants; i++) {
		struct tenant *t = sp->tenants[i];

		if (t->messages > 0) {
			t->wait.cap = (uint32_t)t->messages;
			t->wait.v = xmalloc(t->wait.cap * sizeof(uint32_t));
		}
	}
	/* Build what replay skipped: segment liveness, heaps, oldest. */
	for (uint32_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		struct tenant *t;

		if (!(ent_flags(e) & ENT_LIVE))
			continue;
		seg_account(sp, e->seg, e->len, +1);
		t = sp->tenants[e->tenant];
		h_set(sp, &t->wait, t->wait.n++, i);
		ent_set(e, ENT_WAITING);
		st->messages++;
	}
	for (uint32_t i = 0; i < sp->ntenants; i++) {
		struct tenant *t = sp->tenants[i];

		for (uint32_t k = t->wait.n / 2; k-- > 0;)
			h_down(sp, &t->wait, false, k);
		t->oldest_dirty = t->messages > 0;
	}
	sp->w.next_segno = maxno + 1;
	return clean_tmp(sp);
}

/* ---- group commit: the flush job ----------------------------------------- */

static int
w_stage_flush(struct spool *sp)
{
	struct wstate *w = &sp->w;
	size_t done = 0;

	while (done < w->stage_len) {
		ssize_t n = write(w->fd, w->stage + done, w->stage_len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return SPOOL_EIO;
		done += (size_t)n;
	}
	w->stage_len = 0;
	return 0;
}

static int
w_write(struct spool *sp, const void *p, size_t n)
{
	struct wstate *w = &sp->w;
	int rc;

	if (w->stage_len + n > STAGE_CAP && (rc = w_stage_flush(sp)) != 0)
		return rc;
	if (n > STAGE_CAP) {
		while (n > 0) {
			ssize_t k = write(w->fd, p, n);

			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return k < 0 ? -errno : SPOOL_EIO;
			p = (const uint8_t *)p + k;
			n -= (size_t)k;
			w->size += (uint64_t)k;
		}
		return 0;
	}
	memcpy(w->stage + w->stage_len, p, n);
	w->stage_len += n;
	w->size += n;
	return 0;
}

/* Append LEN bytes read from FD at OFF, through the stage buffer. */
static int
w_copy(struct spool *sp, int fd, uint64_t off, uint64_t len)
{
	struct wstate *w = &sp->w;
	int rc;

	while (len > 0) {
		size_t room, want;
		ssize_t n;

		if (w->stage_len == STAGE_CAP && (rc = w_stage_flush(sp)) != 0)
			return rc;
		room = STAGE_CAP - w->stage_len;
		want = len < room ? (size_t)len : room;
		n = pread(fd, w->stage + w->stage_len, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : SPOOL_EIO;
		w->stage_len += (size_t)n;
		w->size += (uint64_t)n;
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

static int
fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) != 0)
		rc = -errno;
	(void)close(fd);
	return rc;
}

/* Sync and close the active segment, then start segment next_segno. */
static int
w_rotate(struct spool *sp, struct fjob *job)
{
	struct wstate *w = &sp->w;
	uint8_t hdr[SPOOL_SEG_HDR_LEN];
	char path[4096];
	int rc;

	if (w->fd >= 0) {
		if ((rc = w_stage_flush(sp)) != 0)
			return rc;
		if (fdatasync(w->fd) != 0)
			return -errno;
		(void)close(w->fd);
		w->fd = -1;
	}
	w->segno = w->next_segno++;
	seg_path(path, sizeof(path), sp->jdir, w->segno);
	w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (w->fd < 0)
		return -errno;
	if (job->ncreated == job->capcreated) {
		job->capcreated = job->capcreated ? job->capcreated * 2 : 4;
		job->created = xrealloc(job->created,
		    job->capcreated * sizeof(*job->created));
	}
	job->created[job->ncreated++] = w->segno;
	w->size = 0;
	w->stage_len = 0;
	spool_seg_hdr_encode(hdr, w->segno);
	if ((rc = w_write(sp, hdr, sizeof(hdr))) != 0)
		return rc;
	return job->snap_len ? w_write(sp, job->snap, job->snap_len) : 0;
}

static int
w_pend(struct spool *sp, struct fjob *job, struct pend *p, int *srcfd,
    uint64_t *srcno)
{
	struct wstate *w = &sp->w;
	int rc;

	if ((w->fd < 0 || w->size >= sp->seg_size) && (rc = w_rotate(sp, job)) != 0)
		return rc;
	p->seg = (uint32_t)w->segno;
	p->off = (uint32_t)w->size;
	if (p->is_copy) {
		char path[4096];

		if (*srcfd < 0 || *srcno != p->src_seg) {
			if (*srcfd >= 0)
				(void)close(*srcfd);
			seg_path(path, sizeof(path), sp->jdir, p->src_seg);
			*srcno = p->src_seg;
			*srcfd = open(path, O_RDONLY | O_CLOEXEC);
			if (*srcfd < 0)
				return -errno;
		}
		return w_copy(sp, *srcfd, p->src_off, p->src_len);
	}
	if (p->tx != NULL) {
		struct spool_tx *tx = p->tx;
		uint32_t crc = spool_crc32c(tx->crc, tx->buf, tx->len);

		p->h.len = (uint32_t)(tx->env_len + tx->spilled + tx->len);
		p->h.crc = spool_rec_crc(crc, &p->h);
		spool_rec_hdr_encode(p->hdr, &p->h);
		if ((rc = w_write(sp, p->hdr, SPOOL_REC_HDR_LEN)) != 0 ||
		    (rc = w_write(sp, tx->env, tx->env_len)) != 0)
			return rc;
		if (tx->spilled > 0 &&
		    (rc = w_copy(sp, tx->spill_fd, 0, tx->spilled)) != 0)
			return rc;
		return w_write(sp, tx->buf, tx->len);
	}
	if ((rc = w_write(sp, p->hdr, SPOOL_REC_HDR_LEN)) != 0)
		return rc;
	return w_write(sp, p->body, p->body_len);
}

static void
tmp_path(char *buf, size_t len, const char *tdir, spool_qid qid)
{
	char q[SPOOL_QID_STRLEN + 1];

	spool_qid_format(qid, q);
	snprintf(buf, len, "%s/%s", tdir, q);
}

static void
flush_work(uv_work_t *req)
{
	struct fjob *job = req->data;
	struct spool *sp = job->sp;
	struct wstate *w = &sp->w;
	struct statvfs vfs;
	uint64_t srcno = 0;
	int srcfd = -1, rc = 0;

	for (struct pend *p = job->head; p != NULL && rc == 0; p = p->next)
		rc = w_pend(sp, job, p, &srcfd, &srcno);
	if (rc == 0 && w->fd >= 0 && (rc = w_stage_flush(sp)) == 0 &&
	    fdatasync(w->fd) != 0)
		rc = -errno;
	/* A new directory entry is durable only once the directory is. */
	if (rc == 0 && job->ncreated > 0)
		rc = fsync_dir(sp->jdir);
	if (rc != 0 && w->fd >= 0) {
		/* Never write to or fsync this descriptor again. */
		(void)close(w->fd);
		w->fd = -1;
		w->stage_len = 0;
	}
	if (srcfd >= 0)
		(void)close(srcfd);
	for (struct pend *p = job->head; p != NULL; p = p->next) {
		char path[4096];

		if (p->tx == NULL || p->tx->spill_fd < 0)
			continue;
		(void)close(p->tx->spill_fd);
		p->tx->spill_fd = -1;
		tmp_path(path, sizeof(path), sp->tdir, p->tx->qid);
		(void)unlink(path);
	}
	job->status = rc == 0 ? 0 : SPOOL_EIO;
	if (statvfs(sp->dir, &vfs) == 0) {
		job->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		job->have_free = true;
	}
}

static void
tx_free(struct spool_tx *tx)
{
	free(tx->env);
	free(tx->buf);
	free(tx);
}

static void
pend_free(struct pend *p)
{
	if (p->tx != NULL)
		tx_free(p->tx);
	free(p->own);
	free(p);
}

/* Loop thread: fold a finished job into the index, then run callbacks. */
static void
flush_after(uv_work_t *req, int uvstatus)
{
	struct fjob *job = req->data;
	struct spool *sp = job->sp;
	int status = uvstatus != 0 ? SPOOL_EIO : job->status;
	struct pend *p, *next;

	sp->nreqs--;
	sp->flush_running = false;
	sp->nsyncs++;
	for (size_t i = 0; i < job->ncreated; i++)
		seg_add(sp, job->created[i]);
	sp->active_segno = sp->w.fd >= 0 ? sp->w.segno : 0;
	if (sp->active_segno != 0)
		seg_find(sp, sp->active_segno)->size = sp->w.size;
	if (job->have_free)
		sp->free_bytes = job->free_bytes;

	for (p = job->head; p != NULL; p = p->next) {
		struct seg *s;
		uint32_t idx;

		if (status == 0) {
			s = seg_find(sp, p->seg);
			if (s != NULL && s->size < (uint64_t)p->off + SPOOL_REC_HDR_LEN + p->h.len)
				s->size = (uint64_t)p->off + SPOOL_REC_HDR_LEN + p->h.len;
		}
		if (p->tx != NULL) {
			struct tenant *t = sp->tenants[p->tx->tenant];
			uint64_t sz = SPOOL_REC_HDR_LEN + (uint64_t)p->h.len;

			t->pend_messages--;
			t->pend_bytes -= sz;
			sp->pend_bytes_total -= sz;
			if (status == 0 && index_insert(sp, p->h.qid, p->tx->tenant,
			    p->tx->nrcpt, p->seg, p->off, (uint32_t)sz) != 0)
				status = SPOOL_ENOMEM;
		} else if (p->is_copy) {
			s = seg_find(sp, p->src_seg);
			idx = ht_find(sp, p->h.qid);
			if (s != NULL) {
				s->copies_out--;
				if (status != 0)
					s->copy_failed = true;
				if (s->copies_out == 0) {
					s->compacting = false;
				}
			}
			/* Move only if nothing moved or removed it meanwhile. */
			if (status == 0 && idx != UINT32_MAX &&
			    sp->ents[idx].seg == p->src_seg &&
			    sp->ents[idx].off == p->src_off)
				index_relocate(sp, idx, p->seg, p->off);
		}
	}
	/* Callbacks last: they may append, claim or close the spool. */
	for (p = job->head; p != NULL; p = next) {
		next = p->next;
		if (p->cbkind == CB_COMMIT)
			p->commit(p->arg, status, p->h.qid);
		else if (p->cbkind == CB_DONE && p->done != NULL)
			p->done(p->arg, status);
		pend_free(p);
	}
	free(job->created);
	free(job->snap);
	free(job);
	flush_maybe_start(sp);
	maint_check(sp);
	close_maybe_finish(sp);
}

/* HOLD records for every held tenant, to open a new segment with. */
static void
build_snapshot(struct spool *sp, struct fjob *job)
{
	size_t cap = 0;

	for (uint32_t i = 0; i < sp->ntenants; i++) {
		struct tenant *t = sp->tenants[i];
		size_t need = SPOOL_REC_HDR_LEN + 3 + strlen(t->name);
		struct spool_rec_hdr h = { .type = SPOOL_REC_HOLD };
		uint8_t *p;
		int n;

		if (!t->held)
			continue;
		if (job->snap_len + need > cap) {
			cap = (job->snap_len + need) * 2;
			job->snap = xrealloc(job->snap, cap);
		}
		p = job->snap + job->snap_len;
		n = spool_hold_body_encode(p + SPOOL_REC_HDR_LEN, need, t->name, true);
		if (n < 0)
			continue;
		h.len = (uint32_t)n;
		h.crc = spool_rec_crc(spool_crc32c(0, p + SPOOL_REC_HDR_LEN, h.len), &h);
		spool_rec_hdr_encode(p, &h);
		job->snap_len += SPOOL_REC_HDR_LEN + h.len;
	}
}

static void
flush_start(struct spool *sp)
{
	struct fjob *job = xcalloc(1, sizeof(*job));
	int rc;

	job->sp = sp;
	job->req.data = job;
	job->head = sp->pq_head;
	sp->pq_head = NULL;
	sp->pq_tail = &sp->pq_head;
	build_snapshot(sp, job);
	sp->flush_running = true;
	rc = uv_queue_work(sp->loop, &job->req, flush_work, flush_after);
	if (rc != 0) {
		/* Cannot happen with a valid loop; fail the batch visibly. */
		sp->nreqs++;
		job->status = SPOOL_EIO;
		flush_after(&job->req, rc);
		return;
	}
	sp->nreqs++;
}

static void
window_cb(uv_timer_t *t)
{
	struct spool *sp = t->data;

	sp->window_armed = false;
	/* The window has been waited out: start now, do not wait again. */
	if (!sp->flush_running && sp->pq_head != NULL)
		flush_start(sp);
}

static void
flush_maybe_start(struct spool *sp)
{
	if (sp->flush_running || sp->pq_head == NULL || sp->window_armed)
		return;
	if (sp->window_ms > 0 && !sp->closing &&
	    uv_timer_start(&sp->window_timer, window_cb, sp->window_ms, 0) == 0) {
		sp->window_armed = true;
		return;
	}
	flush_start(sp);
}

static void
pend_enqueue(struct spool *sp, struct pend *p)
{
	p->next = NULL;
	*sp->pq_tail = p;
	sp->pq_tail = &p->next;
	flush_maybe_start(sp);
}

/* A state record whose body is already in P->small or P->own. */
static struct pend *
pend_state(uint8_t type, spool_qid qid, const uint8_t *body, size_t len)
{
	struct pend *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	p->h.type = type;
	p->h.qid = qid;
	p->h.len = (uint32_t)len;
	if (len <= sizeof(p->small)) {
		if (len > 0)   /* a delete record has no body: BODY may be NULL */
			memcpy(p->small, body, len);
		p->body = p->small;
	} else {
		p->own = malloc(len);
		if (p->own == NULL) {
			free(p);
			return NULL;
		}
		memcpy(p->own, body, len);
		p->body = p->own;
	}
	p->body_len = len;
	p->h.crc = spool_rec_crc(spool_crc32c(0, p->body, len), &p->h);
	spool_rec_hdr_encode(p->hdr, &p->h);
	return p;
}

static int
journal_state(struct spool *sp, uint8_t type, spool_qid qid,
    const uint8_t *body, size_t len, spool_done_cb cb, void *arg)
{
	struct pend *p = pend_state(type, qid, body, len);

	if (p == NULL)
		return SPOOL_ENOMEM;
	p->cbkind = CB_DONE;
	p->done = cb;
	p->arg = arg;
	pend_enqueue(sp, p);
	return 0;
}

/* ---- maintenance: unlink and compaction ---------------------------------- */

struct mjob {
	uv_work_t req;
	struct spool *sp;
	uint64_t segno;
	int status;
};

static void
unlink_work(uv_work_t *req)
{
	struct mjob *m = req->data;
	char path[4096];

	seg_path(path, sizeof(path), m->sp->jdir, m->segno);
	m->status = 0;
	if (unlink(path) != 0 && errno != ENOENT)
		m->status = -errno;
	else
		m->status = fsync_dir(m->sp->jdir);
}

static void
unlink_after(uv_work_t *req, int uvstatus)
{
	struct mjob *m = req->data;
	struct spool *sp = m->sp;
	struct seg *s = seg_find(sp, m->segno);

	sp->nreqs--;
	sp->maint_running = false;
	if (uvstatus != 0 || m->status != 0)
		sp->maint_stuck = true;   /* keep the in-order rule intact */
	else if (s != NULL) {
		size_t i = (size_t)(s - sp->segs);

		memmove(s, s + 1, (sp->nsegs - i - 1) * sizeof(*s));
		sp->nsegs--;
	}
	free(m);
	maint_check(sp);
	close_maybe_finish(sp);
}

/* Queue copies of every live message of S, each followed by its state. */
static void
compact_start(struct spool *sp, struct seg *s)
{
	uint32_t segno = (uint32_t)s->no;

	s->compacting = true;
	s->copy_failed = false;
	for (uint32_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		struct pend *p;
		struct side *sd;

		if (!(ent_flags(e) & ENT_LIVE) || e->seg != segno)
			continue;
		p = calloc(1, sizeof(*p));
		if (p == NULL)
			break;
		p->is_copy = true;
		p->h.type = SPOOL_REC_MSG;
		p->h.qid = e->qid;
		p->h.len = e->len - SPOOL_REC_HDR_LEN;
		p->src_seg = e->seg;
		p->src_off = e->off;
		p->src_len = e->len;
		s->copies_out++;
		pend_enqueue(sp, p);
		sd = (ent_flags(e) & ENT_PARTIAL) ? side_find(sp, e->qid) : NULL;
		for (uint32_t r = 0; sd != NULL && r < sd->nrcpt; r++) {
			uint8_t b[SPOOL_RCPT_BODY_LEN];

			if (sd->st[r] == SPOOL_RCPT_PENDING)
				continue;
			spool_rcpt_body_encode(b, r, sd->st[r]);
			(void)journal_state(sp, SPOOL_REC_RCPT, e->qid, b, sizeof(b),
			    NULL, NULL);
		}
		if (e->attempts > 0 || e->next_ms != 0) {
			uint8_t b[SPOOL_DEFER_BODY_LEN];

			spool_defer_body_encode(b, e->next_ms, e->attempts);
			(void)journal_state(sp, SPOOL_REC_DEFER, e->qid, b, sizeof(b),
			    NULL, NULL);
		}
	}
	if (s->copies_out == 0)
		s->compacting = false;
}

static void
maint_check(struct spool *sp)
{
	struct seg *s;
	struct mjob *m;

	if (sp->maint_running || sp->maint_stuck || sp->closing || sp->nsegs == 0)
		return;
	/* Only the oldest segment: see DELETION at the top of this file. */
	s = &sp->segs[0];
	if (s->no == sp->active_segno || s->compacting)
		return;
	if (s->live_msgs == 0) {
		m = xcalloc(1, sizeof(*m));
		m->sp = sp;
		m->segno = s->no;
		m->req.data = m;
		if (uv_queue_work(sp->loop, &m->req, unlink_work, unlink_after) != 0) {
			free(m);
			return;
		}
		sp->nreqs++;
		sp->maint_running = true;
		return;
	}
	/* Retry a failed compaction only after a later flush succeeded. */
	if (s->copy_failed) {
		s->copy_failed = false;
		return;
	}
	if (s->live_bytes < sp->seg_size / COMPACT_DIVISOR)
		compact_start(sp, s);
}

/* ---- free space -------------------------------------------------------- */

struct vjob {
	uv_work_t req;
	struct spool *sp;
	uint64_t free_bytes;
	int status;
};

static void
statvfs_work(uv_work_t *req)
{
	struct vjob *v = req->data;
	struct statvfs vfs;

	v->status = statvfs(v->sp->dir, &vfs) == 0 ? 0 : -errno;
	if (v->status == 0)
		v->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

static void
statvfs_after(uv_work_t *req, int uvstatus)
{
	struct vjob *v = req->data;
	struct spool *sp = v->sp;

	sp->nreqs--;
	sp->statvfs_running = false;
	if (uvstatus == 0 && v->status == 0)
		sp->free_bytes = v->free_bytes;
	free(v);
	close_maybe_finish(sp);
}

static void
statvfs_timer_cb(uv_timer_t *t)
{
	struct spool *sp = t->data;
	struct vjob *v;

	if (sp->statvfs_running || sp->closing)
		return;
	v = xcalloc(1, sizeof(*v));
	v->sp = sp;
	v->req.data = v;
	if (uv_queue_work(sp->loop, &v->req, statvfs_work, statvfs_after) != 0) {
		free(v);
		return;
	}
	sp->nreqs++;
	sp->statvfs_running = true;
}

/* ---- open and close ---------------------------------------------------- */

static int
mkdir_p(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return SPOOL_EINVAL;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, 0700) != 0 && errno != EEXIST)
			return -errno;
		buf[i] = i == n ? '\0' : '/';
	}
	return 0;
}

static char *
path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = xmalloc(la + lb + 2);

	memcpy(p, a, la);
	p[la] = '/';
	memcpy(p + la + 1, b, lb + 1);
	return p;
}

static void
spool_free(struct spool *sp)
{
	for (uint32_t i = 0; i < sp->ntenants; i++) {
		free(sp->tenants[i]->name);
		free(sp->tenants[i]->ready.v);
		free(sp->tenants[i]->wait.v);
		free(sp->tenants[i]);
	}
	for (uint32_t i = 0; sp->side != NULL && i <= sp->side_mask; i++)
		while (sp->side[i] != NULL) {
			struct side *s = sp->side[i];

			sp->side[i] = s->next;
			free(s);
		}
	free(sp->side);
	free(sp->tenants);
	free(sp->ents);
	free(sp->ht);
	free(sp->segs);
	free(sp->w.stage);
	free(sp->dir);
	free(sp->jdir);
	free(sp->tdir);
	free(sp->cdir);
	free(sp);
}

int
spool_open(uv_loop_t *loop, const struct spool_options *opts,
    struct spool **out, struct spool_recovery_stats *stats)
{
	struct spool_recovery_stats local;
	struct spool *sp;
	struct statvfs vfs;
	int64_t t0;
	int rc;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(*stats));
	if (opts == NULL || opts->dir == NULL || opts->segment_size > MAX_SEG_SIZE)
		return SPOOL_EINVAL;
	sp = xcalloc(1, sizeof(*sp));
	sp->loop = loop;
	sp->dir = xstrdup(opts->dir);
	sp->jdir = path_join(opts->dir, "journal");
	sp->tdir = path_join(opts->dir, "tmp");
	sp->cdir = path_join(opts->dir, "corrupt");
	sp->seg_size = opts->segment_size ? opts->segment_size : DEFAULT_SEG_SIZE;
	if (sp->seg_size < 4096)
		sp->seg_size = 4096;
	sp->disk_reserve = opts->disk_reserve;
	sp->window_ms = opts->commit_window_ms;
	sp->now_ms = opts->now_ms ? opts->now_ms : util_now_ms;
	sp->free_head = UINT32_MAX;
	sp->pq_tail = &sp->pq_head;
	sp->w.fd = -1;
	sp->w.next_segno = 1;
	sp->w.stage = xmalloc(STAGE_CAP);

	t0 = util_mono_ms();
	if ((rc = mkdir_p(sp->jdir)) != 0 || (rc = mkdir_p(sp->tdir)) != 0 ||
	    (rc = mkdir_p(sp->cdir)) != 0)
		goto fail;
	if ((rc = recover(sp, stats)) != 0)
		goto fail;
	if (statvfs(sp->dir, &vfs) != 0) {
		rc = -errno;
		goto fail;
	}
	sp->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	stats->duration_ms = (uint64_t)(util_mono_ms() - t0);

	if ((rc = uv_timer_init(loop, &sp->window_timer)) != 0)
		goto fail;
	sp->window_timer.data = sp;
	sp->nhandles++;
	if ((rc = uv_timer_init(loop, &sp->statvfs_timer)) != 0) {
		/* Only reachable with a broken loop; leak-free is enough. */
		goto fail;
	}
	sp->statvfs_timer.data = sp;
	sp->nhandles++;
	if ((rc = uv_timer_start(&sp->statvfs_timer, statvfs_timer_cb,
	    STATVFS_PERIOD_MS, STATVFS_PERIOD_MS)) != 0)
		goto fail;
	/* The refresh timer alone must not keep the loop running. */
	uv_unref((uv_handle_t *)&sp->statvfs_timer);
	*out = sp;
	maint_check(sp);
	return 0;
fail:
	if (sp->nhandles > 0) {
		/* Handles exist: they must be closed through the loop.  This
		 * path is only taken when libuv refuses a timer start. */
		sp->closing = true;
		spool_close(sp, NULL, NULL);
		return rc;
	}
	spool_free(sp);
	return rc;
}

static void
handle_closed(uv_handle_t *h)
{
	struct spool *sp = h->data;
	void (*done)(void *);
	void *arg;

	if (--sp->nhandles > 0)
		return;
	done = sp->close_done;
	arg = sp->close_arg;
	spool_free(sp);
	if (done != NULL)
		done(arg);
}

static void
close_fd_work(uv_work_t *req)
{
	struct spool *sp = req->data;

	/* Everything in it was fdatasync'd by the job that wrote it. */
	if (sp->w.fd >= 0)
		(void)close(sp->w.fd);
	sp->w.fd = -1;
}

static void
close_fd_after(uv_work_t *req, int uvstatus)
{
	struct spool *sp = req->data;

	free(req);
	sp->nreqs--;
	close_maybe_finish(sp);
}

static void
close_maybe_finish(struct spool *sp)
{
	if (!sp->closing || sp->closed_handles || sp->nreqs > 0 ||
	    sp->flush_running || sp->pq_head != NULL || sp->window_armed)
		return;
	if (sp->w.fd >= 0) {
		uv_work_t *req = xcalloc(1, sizeof(*req));

		req->data = sp;
		if (uv_queue_work(sp->loop, req, close_fd_work, close_fd_after) == 0) {
			sp->nreqs++;
			return;
		}
		free(req);
		sp->w.fd = -1;    /* leaked rather than closed on the loop */
	}
	sp->closed_handles = true;
	if (sp->nhandles == 0) {
		void (*done)(void *) = sp->close_done;
		void *arg = sp->close_arg;

		spool_free(sp);
		if (done != NULL)
			done(arg);
		return;
	}
	uv_close((uv_handle_t *)&sp->window_timer, handle_closed);
	if (sp->nhandles > 1)
		uv_close((uv_handle_t *)&sp->statvfs_timer, handle_closed);
}

void
spool_close(struct spool *sp, void (*done)(void *arg), void *arg)
{
	sp->closing = true;
	sp->close_done = done;
	sp->close_arg = arg;
	if (sp->window_armed) {
		/* Do not make the last commits wait out the window. */
		(void)uv_timer_stop(&sp->window_timer);
		sp->window_armed = false;
	}
	flush_maybe_start(sp);
	close_maybe_finish(sp);
}

/* ---- quotas and admission ---------------------------------------------- */

void
spool_set_quota(struct spool *sp, const char *tenant, uint64_t bytes,
    uint64_t messages)
{
	struct tenant *t = tenant_get(sp, tenant, strlen(tenant), NULL);

	if (t != NULL) {
		t->quota_bytes = bytes;
		t->quota_msgs = messages;
	}
}

void
spool_set_disk_reserve(struct spool *sp, uint64_t bytes)
{
	sp->disk_reserve = bytes;
}

static int
admit(struct spool *sp, const struct tenant *t, uint64_t size)
{
	if (t != NULL && t->quota_bytes != 0 &&
	    t->bytes + t->pend_bytes + size > t->quota_bytes)
		return SPOOL_EQUOTA;
	if (t != NULL && t->quota_msgs != 0 &&
	    t->messages + t->pend_messages + 1 > t->quota_msgs)
		return SPOOL_EQUOTA;
	/* The cached figure does not yet know about bytes being committed. */
	if (sp->free_bytes < sp->disk_reserve + sp->pend_bytes_total + size)
		return SPOOL_ENOSPC;
	return 0;
}

int
spool_check(struct spool *sp, const char *tenant, uint64_t size)
{
	if (sp->closing)
		return SPOOL_ECLOSED;
	/* No tenant yet (at MAIL): only the disk reserve can be checked. */
	if (tenant == NULL)
		return admit(sp, NULL, size);
	return admit(sp, tenant_find(sp, tenant, strlen(tenant), NULL), size);
}

/* ---- transactions ------------------------------------------------------ */

int
spool_tx_begin(struct spool *sp, const struct spool_envelope *env,
    struct spool_tx **out)
{
	struct spool_tx *tx;
	int64_t arrival;
	int rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (env == NULL || env->tenant == NULL || env->tenant[0] == '\0' ||
	    env->sender == NULL)
		return SPOOL_EINVAL;
	tx = calloc(1, sizeof(*tx));
	if (tx == NULL)
		return SPOOL_ENOMEM;
	if (tenant_get(sp, env->tenant, strlen(env->tenant), &tx->tenant) == NULL) {
		free(tx);
		return SPOOL_EINVAL;
	}
	tx->sp = sp;
	tx->qid = qid_next(sp);
	tx->spill_fd = -1;
	tx->nrcpt = (uint32_t)env->nrcpt;
	arrival = env->arrival_ms != 0 ? env->arrival_ms : qid_ms(tx->qid);
	if ((rc = spool_env_encode(env, arrival, &tx->env, &tx->env_len)) != 0) {
		free(tx);
		return rc;
	}
	tx->crc = spool_crc32c(0, tx->env, tx->env_len);
	tx->spill_req.data = tx;
	*out = tx;
	return 0;
}

spool_qid
spool_tx_qid(const struct spool_tx *tx)
{
	return tx->qid;
}

uint64_t
spool_tx_size(const struct spool_tx *tx)
{
	return tx->spilled + tx->len;
}

static void
tmp_cleanup_work(uv_work_t *req)
{
	struct spool_tx *tx = req->data;
	char path[4096];

	if (tx->spill_fd >= 0)
		(void)close(tx->spill_fd);
	tmp_path(path, sizeof(path), tx->sp->tdir, tx->qid);
	(void)unlink(path);
}

static void
tmp_cleanup_after(uv_work_t *req, int uvstatus)
{
	struct spool_tx *tx = req->data;
	struct spool *sp = tx->sp;

	sp->nreqs--;
	tx_free(tx);
	close_maybe_finish(sp);
}

/* Free an aborted tx, removing its spill file off the loop thread. */
static void
tx_discard(struct spool_tx *tx)
{
	struct spool *sp = tx->sp;

	if (tx->spill_fd < 0 && tx->spilled == 0) {
		tx_free(tx);
		return;
	}
	if (uv_queue_work(sp->loop, &tx->spill_req, tmp_cleanup_work,
	    tmp_cleanup_after) != 0) {
		tx_free(tx);          /* the file stays until the next open */
		return;
	}
	sp->nreqs++;
}

static void
spill_work(uv_work_t *req)
{
	struct spool_tx *tx = req->data;
	size_t done = 0;

	tx->spill_status = 0;
	if (tx->spill_fd < 0) {
		char path[4096];

		tmp_path(path, sizeof(path), tx->sp->tdir, tx->qid);
		tx->spill_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (tx->spill_fd < 0) {
			tx->spill_status = -errno;
			return;
		}
	}
	while (done < tx->len) {
		ssize_t n = pwrite(tx->spill_fd, tx->buf + done, tx->len - done,
		    (off_t)(tx->spilled + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			tx->spill_status = n < 0 ? -errno : SPOOL_EIO;
			return;
		}
		done += (size_t)n;
	}
	tx->crc = spool_crc32c(tx->crc, tx->buf, tx->len);
	tx->spilled += tx->len;
	tx->len = 0;
}

static void
spill_after(uv_work_t *req, int uvstatus)
{
	struct spool_tx *tx = req->data;
	struct spool *sp = tx->sp;
	int status = uvstatus != 0 ? SPOOL_EIO : tx->spill_status;

	sp->nreqs--;
	tx->spilling = false;
	if (tx->aborted) {
		tx_discard(tx);
		close_maybe_finish(sp);
		return;
	}
	if (status != 0)
		status = status == -ENOSPC ? SPOOL_ENOSPC : SPOOL_EIO;
	tx->cb(tx->arg, status);
	close_maybe_finish(sp);
}

int
spool_tx_write(struct spool_tx *tx, const void *buf, size_t len,
    spool_done_cb cb, void *arg)
{
	struct spool *sp = tx->sp;

	if (tx->spilling)
		return SPOOL_EINVAL;
	if (sp->closing)
		return SPOOL_ECLOSED;
	if (tx->env_len + tx->spilled + tx->len + len > SPOOL_REC_MAX_BODY)
		return SPOOL_EINVAL;
	if (tx->len + len > tx->cap) {
		size_t ncap = tx->cap ? tx->cap : 4096;
		uint8_t *n;

		while (ncap < tx->len + len)
			ncap *= 2;
		n = realloc(tx->buf, ncap);
		if (n == NULL)
			return SPOOL_ENOMEM;
		tx->buf = n;
		tx->cap = ncap;
	}
	memcpy(tx->buf + tx->len, buf, len);
	tx->len += len;
	if (tx->len < SPILL_THRESHOLD)
		return 0;
	/* The buffer is full: write it to tmp/<qid> on the threadpool. */
	tx->cb = cb;
	tx->arg = arg;
	if (uv_queue_work(sp->loop, &tx->spill_req, spill_work, spill_after) != 0)
		return SPOOL_EIO;
	sp->nreqs++;
	tx->spilling = true;
	return SPOOL_PENDING;
}

int
spool_tx_commit(struct spool_tx *tx, spool_commit_cb cb, void *arg)
{
	struct spool *sp = tx->sp;
	struct tenant *t = sp->tenants[tx->tenant];
	uint64_t sz = SPOOL_REC_HDR_LEN + tx->env_len + tx->spilled + tx->len;
	struct pend *p;
	int rc;

	if (tx->spilling)
		return SPOOL_EINVAL;  /* misuse: the tx is not consumed */
	if (sp->closing)
		rc = SPOOL_ECLOSED;
	else
		rc = admit(sp, t, sz);
	if (rc == 0 && (p = calloc(1, sizeof(*p))) == NULL)
		rc = SPOOL_ENOMEM;
	if (rc != 0) {
		tx_discard(tx);
		return rc;
	}
	p->tx = tx;
	p->h.type = SPOOL_REC_MSG;
	p->h.qid = tx->qid;
	p->cbkind = CB_COMMIT;
	p->commit = cb;
	p->arg = arg;
	/* Counted as pending now so concurrent commits see each other. */
	p->h.len = (uint32_t)(sz - SPOOL_REC_HDR_LEN);
	t->pend_messages++;
	t->pend_bytes += sz;
	sp->pend_bytes_total += sz;
	pend_enqueue(sp, p);
	return 0;
}

void
spool_tx_abort(struct spool_tx *tx)
{
	if (tx->spilling) {
		tx->aborted = true;   /* spill_after frees it */
		return;
	}
	tx_discard(tx);
}

/* ---- draining ---------------------------------------------------------- */

int
spool_claim_next(struct spool *sp, const char *tenant, int64_t now_ms,
    spool_qid *out)
{
	struct tenant *t = tenant_find(sp, tenant, strlen(tenant), NULL);
	uint32_t idx;

	if (t == NULL || t->held)
		return SPOOL_ENOENT;
	/* Promote everything that has become due, then take the oldest. */
	while (t->wait.n > 0 && sp->ents[t->wait.v[0]].next_ms <= now_ms) {
		idx = t->wait.v[0];
		h_remove(sp, &t->wait, false, 0);
		ent_clr(&sp->ents[idx], ENT_WAITING);
		ent_set(&sp->ents[idx], ENT_READY);
		h_push(sp, &t->ready, true, idx);
	}
	if (t->ready.n == 0)
		return SPOOL_ENOENT;
	idx = t->ready.v[0];
	ent_unqueue(sp, idx);
	ent_set(&sp->ents[idx], ENT_CLAIMED);
	*out = sp->ents[idx].qid;
	return 0;
}

void
spool_release(struct spool *sp, spool_qid qid)
{
	uint32_t idx = ht_find(sp, qid);

	if (idx == UINT32_MAX || !(ent_flags(&sp->ents[idx]) & ENT_CLAIMED))
		return;
	ent_clr(&sp->ents[idx], ENT_CLAIMED);
	ent_queue(sp, idx);
}

int
spool_retry_now(struct spool *sp, const char *tenant)
{
	struct tenant *t = tenant_find(sp, tenant, strlen(tenant), NULL);
	uint32_t idx;
	int n = 0;

	if (t == NULL)
		return 0;
	/*
	 * Memory only: the deferral records stay in the journal, so after a
	 * restart these messages wait out their back-off again.  That costs a
	 * late retry at worst, never a message, and a flush of millions of
	 * deferred messages writes nothing.
	 */
	while (t->wait.n > 0) {
		idx = t->wait.v[0];
		h_remove(sp, &t->wait, false, 0);
		ent_clr(&sp->ents[idx], ENT_WAITING);
		ent_set(&sp->ents[idx], ENT_READY);
		sp->ents[idx].next_ms = 0;
		h_push(sp, &t->ready, true, idx);
		n++;
	}
	return n;
}

int64_t
spool_next_due_ms(struct spool *sp, const char *tenant)
{
	struct tenant *t = tenant_find(sp, tenant, strlen(tenant), NULL);
	int64_t best = -1;

	if (t == NULL)
		return -1;
	/* Ready entries are due already; their own time is in the past. */
	if (t->ready.n > 0)
		best = sp->ents[t->ready.v[0]].next_ms;
	if (t->wait.n > 0 && (best < 0 || sp->ents[t->wait.v[0]].next_ms < best))
		best = sp->ents[t->wait.v[0]].next_ms;
	return best;
}

/* ---- loading and reading ----------------------------------------------- */

struct ljob {
	uv_work_t req;
	struct spool *sp;
	struct spool_msg *m;
	uint32_t seg, off, len;
	int status;
	bool retried;
	spool_load_cb cb;
	void *arg;
};

static void
load_work(uv_work_t *req)
{
	struct ljob *j = req->data;
	struct spool_msg *m = j->m;
	struct spool_rec_hdr h;
	uint8_t hdr[SPOOL_REC_HDR_LEN];
	struct spool_msg_prefix pf;
	uint8_t *env = NULL, *chunk = NULL;
	char path[4096];
	uint64_t pos, end;
	uint32_t crc = 0;
	ssize_t n;
	int rc = 0;

	seg_path(path, sizeof(path), j->sp->jdir, j->seg);
	m->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (m->fd < 0) {
		rc = errno == ENOENT ? SPOOL_ENOENT : SPOOL_EIO;
		goto done;
	}
	n = pread(m->fd, hdr, sizeof(hdr), j->off);
	if (n != (ssize_t)sizeof(hdr) || spool_rec_hdr_decode(hdr, &h) != 0 ||
	    h.type != SPOOL_REC_MSG || SPOOL_REC_HDR_LEN + h.len != j->len ||
	    h.len < SPOOL_MSG_FIXED_LEN) {
		rc = n < 0 ? SPOOL_EIO : SPOOL_ECORRUPT;
		goto done;
	}
	/* Verify the whole record, streaming, before anyone trusts it. */
	chunk = malloc(h.len < READ_CHUNK_MAX ? h.len : READ_CHUNK_MAX);
	if (chunk == NULL) {
		rc = SPOOL_ENOMEM;
		goto done;
	}
	pos = (uint64_t)j->off + SPOOL_REC_HDR_LEN;
	end = pos + h.len;
	while (pos < end) {
		size_t want = end - pos > READ_CHUNK_MAX ? READ_CHUNK_MAX : (size_t)(end - pos);

		n = pread(m->fd, chunk, want, (off_t)pos);
		if (n <= 0) {
			rc = SPOOL_EIO;
			goto done;
		}
		if (pos == (uint64_t)j->off + SPOOL_REC_HDR_LEN) {
			if (spool_msg_prefix_decode(chunk, (size_t)n, h.len, &pf) != 0 ||
			    (size_t)n < pf.env_len) {
				/* The encoder keeps envelopes within
				 * SPOOL_ENV_MAX, inside the first chunk. */
				rc = SPOOL_ECORRUPT;
				goto done;
			}
			env = malloc(pf.env_len);
			if (env == NULL) {
				rc = SPOOL_ENOMEM;
				goto done;
			}
			memcpy(env, chunk, pf.env_len);
		}
		crc = spool_crc32c(crc, chunk, (size_t)n);
		pos += (uint64_t)n;
	}
	if (spool_rec_crc(crc, &h) != h.crc) {
		rc = SPOOL_ECORRUPT;
		goto done;
	}
	if ((rc = spool_env_decode(env, pf.env_len, &m->env)) != 0)
		goto done;
	m->size = h.len - pf.env_len;
	m->data_off = (uint64_t)j->off + SPOOL_REC_HDR_LEN + pf.env_len;
done:
	if (rc != 0 && m->fd >= 0) {
		(void)close(m->fd);
		m->fd = -1;
	}
	free(env);
	free(chunk);
	j->status = rc;
}

static void load_after(uv_work_t *req, int uvstatus);

static int
load_queue(struct ljob *j)
{
	struct spool *sp = j->sp;
	uint32_t idx = ht_find(sp, j->m->qid);
	int rc;

	if (idx == UINT32_MAX)
		return SPOOL_ENOENT;
	j->seg = sp->ents[idx].seg;
	j->off = sp->ents[idx].off;
	j->len = sp->ents[idx].len;
	if ((rc = uv_queue_work(sp->loop, &j->req, load_work, load_after)) != 0)
		return SPOOL_EIO;
	sp->nreqs++;
	return 0;
}

static void
load_after(uv_work_t *req, int uvstatus)
{
	struct ljob *j = req->data;
	struct spool *sp = j->sp;
	struct spool_msg *m = j->m;
	int status = uvstatus != 0 ? SPOOL_EIO : j->status;
	uint32_t idx;

	sp->nreqs--;
	idx = ht_find(sp, m->qid);
	/* Compaction may have moved it and unlinked the old segment. */
	if (status == SPOOL_ENOENT && !j->retried && idx != UINT32_MAX &&
	    (sp->ents[idx].seg != j->seg || sp->ents[idx].off != j->off)) {
		j->retried = true;
		if (load_queue(j) == 0)
			return;
	}
	if (status == 0 && m->env != NULL) {
		struct side *s = NULL;

		m->rst = calloc(m->env->nrcpt ? m->env->nrcpt : 1, 1);
		if (m->rst == NULL)
			status = SPOOL_ENOMEM;
		if (idx != UINT32_MAX) {
			m->attempts = sp->ents[idx].attempts;
			if (ent_flags(&sp->ents[idx]) & ENT_PARTIAL)
				s = side_find(sp, m->qid);
		}
		for (uint32_t i = 0; s != NULL && m->rst != NULL &&
		    i < s->nrcpt && i < m->env->nrcpt; i++)
			m->rst[i] = s->st[i];
	}
	m->sp = NULL;
	if (status != 0) {
		spool_msg_free(m);
		m = NULL;
	}
	j->cb(j->arg, status, m);
	free(j);
	close_maybe_finish(sp);
}

int
spool_load(struct spool *sp, spool_qid qid, spool_load_cb cb, void *arg)
{
	struct ljob *j;
	struct spool_msg *m;
	int rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	j = calloc(1, sizeof(*j));
	m = calloc(1, sizeof(*m));
	if (j == NULL || m == NULL) {
		free(j);
		free(m);
		return SPOOL_ENOMEM;
	}
	m->loop = sp->loop;
	m->sp = sp;
	m->qid = qid;
	m->fd = -1;
	j->sp = sp;
	j->m = m;
	j->cb = cb;
	j->arg = arg;
	j->req.data = j;
	if ((rc = load_queue(j)) != 0) {
		free(m);
		free(j);
	}
	return rc;
}

const struct spool_envelope *
spool_msg_envelope(const struct spool_msg *m)
{
	return m->env;
}

enum spool_rcpt_state
spool_msg_rcpt_state(const struct spool_msg *m, size_t i)
{
	return i < m->env->nrcpt ? (enum spool_rcpt_state)m->rst[i] :
	    SPOOL_RCPT_PENDING;
}

unsigned
spool_msg_attempts(const struct spool_msg *m)
{
	return m->attempts;
}

spool_qid
spool_msg_qid(const struct spool_msg *m)
{
	return m->qid;
}

uint64_t
spool_msg_size(const struct spool_msg *m)
{
	return m->size;
}

struct rjob {
	uv_work_t req;
	struct spool_msg *m;
	uint64_t offset;
	size_t max;
	ssize_t got;
	spool_read_cb cb;
	void *arg;
};

static void
read_work(uv_work_t *req)
{
	struct rjob *r = req->data;
	struct spool_msg *m = r->m;
	size_t want = r->max;

	if (r->offset >= m->size) {
		r->got = 0;
		return;
	}
	if (want > m->size - r->offset)
		want = (size_t)(m->size - r->offset);
	do
		r->got = pread(m->fd, m->rbuf, want, (off_t)(m->data_off + r->offset));
	while (r->got < 0 && errno == EINTR);
	if (r->got == 0)
		r->got = -1;          /* the record promised more bytes */
}

static void msg_destroy(struct spool_msg *m);

static void
read_after(uv_work_t *req, int uvstatus)
{
	struct rjob *r = req->data;
	struct spool_msg *m = r->m;

	m->reading--;
	if (m->freed) {
		/* The owner let go while we were reading: nobody to call. */
		if (m->reading == 0)
			msg_destroy(m);
	} else if (uvstatus != 0 || r->got < 0)
		r->cb(r->arg, SPOOL_EIO, NULL, 0);
	else
		r->cb(r->arg, 0, m->rbuf, (size_t)r->got);
	free(r);
}

int
spool_msg_read(struct spool_msg *m, uint64_t offset, size_t max,
    spool_read_cb cb, void *arg)
{
	struct rjob *r;

	if (m->reading > 0 || max == 0)
		return SPOOL_EINVAL;  /* one read at a time: BUF is shared */
	/* The buffer is sized for this message, at most READ_CHUNK_MAX. */
	if (m->rbuf == NULL) {
		m->rcap = m->size < READ_CHUNK_MAX ? (size_t)m->size + 1 : READ_CHUNK_MAX;
		if ((m->rbuf = malloc(m->rcap)) == NULL)
			return SPOOL_ENOMEM;
	}
	if (max > m->rcap)
		max = m->rcap;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return SPOOL_ENOMEM;
	r->m = m;
	r->offset = offset;
	r->max = max;
	r->cb = cb;
	r->arg = arg;
	r->req.data = r;
	if (uv_queue_work(m->loop, &r->req, read_work, read_after) != 0) {
		free(r);
		return SPOOL_EIO;
	}
	m->reading++;
	return 0;
}

static void
msg_close_cb(uv_fs_t *req)
{
	uv_fs_req_cleanup(req);
	free(req);
}

static void
msg_destroy(struct spool_msg *m)
{
	if (m->fd >= 0) {
		uv_fs_t *req = malloc(sizeof(*req));

		/* close() runs on the threadpool like every other file call. */
		if (req == NULL || uv_fs_close(m->loop, req, m->fd, msg_close_cb) != 0)
			free(req);
	}
	free(m->env);
	free(m->rst);
	free(m->rbuf);
	free(m);
}

void
spool_msg_free(struct spool_msg *m)
{
	if (m == NULL)
		return;
	m->freed = true;
	if (m->reading == 0)
		msg_destroy(m);
}

/* ---- state records ----------------------------------------------------- */

int
spool_mark_rcpt(struct spool *sp, spool_qid qid, size_t rcpt,
    enum spool_rcpt_state state, spool_done_cb cb, void *arg)
{
	uint32_t idx = ht_find(sp, qid);
	uint8_t b[SPOOL_RCPT_BODY_LEN];
	int rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (idx == UINT32_MAX)
		return SPOOL_ENOENT;
	if (rcpt >= ent_nrcpt(&sp->ents[idx]) || state > SPOOL_RCPT_BOUNCED)
		return SPOOL_EINVAL;
	spool_rcpt_body_encode(b, (uint32_t)rcpt, state);
	if ((rc = journal_state(sp, SPOOL_REC_RCPT, qid, b, sizeof(b), cb, arg)) != 0)
		return rc;
	(void)index_mark_rcpt(sp, idx, (uint32_t)rcpt, state);
	return 0;
}

int
spool_defer(struct spool *sp, spool_qid qid, int64_t next_attempt_ms,
    spool_done_cb cb, void *arg)
{
	uint32_t idx = ht_find(sp, qid);
	uint8_t b[SPOOL_DEFER_BODY_LEN];
	struct ent *e;
	int rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (idx == UINT32_MAX)
		return SPOOL_ENOENT;
	e = &sp->ents[idx];
	spool_defer_body_encode(b, next_attempt_ms, e->attempts + 1u);
	if ((rc = journal_state(sp, SPOOL_REC_DEFER, qid, b, sizeof(b), cb, arg)) != 0)
		return rc;
	ent_unqueue(sp, idx);
	ent_clr(e, ENT_CLAIMED);
	e->next_ms = next_attempt_ms;
	if (e->attempts < UINT16_MAX)
		e->attempts++;
	ent_queue(sp, idx);
	return 0;
}

int
spool_delete(struct spool *sp, spool_qid qid, spool_done_cb cb, void *arg)
{
	uint32_t idx = ht_find(sp, qid);
	int rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (idx == UINT32_MAX)
		return SPOOL_ENOENT;
	if ((rc = journal_state(sp, SPOOL_REC_DELETE, qid, NULL, 0, cb, arg)) != 0)
		return rc;
	index_remove(sp, idx);
	return 0;
}

int
spool_set_held(struct spool *sp, const char *tenant, bool held,
    spool_done_cb cb, void *arg)
{
	uint8_t b[3 + 0xFFFF];
	struct tenant *t;
	int n, rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	n = spool_hold_body_encode(b, sizeof(b), tenant, held);
	if (n < 0)
		return n;
	t = tenant_get(sp, tenant, strlen(tenant), NULL);
	if (t == NULL)
		return SPOOL_EINVAL;
	if ((rc = journal_state(sp, SPOOL_REC_HOLD, 0, b, (size_t)n, cb, arg)) != 0)
		return rc;
	t->held = held;
	return 0;
}

bool
spool_is_held(struct spool *sp, const char *tenant)
{
	struct tenant *t = tenant_find(sp, tenant, strlen(tenant), NULL);

	return t != NULL && t->held;
}

/* ---- figures ----------------------------------------------------------- */

void
spool_tenant_stats(struct spool *sp, const char *tenant,
    struct spool_tenant_stats *out)
{
	struct tenant *t = tenant_find(sp, tenant, strlen(tenant), NULL);
	uint16_t tidx;

	memset(out, 0, sizeof(*out));
	out->oldest_arrival_ms = -1;
	if (t == NULL || t->messages == 0)
		return;
	if (t->oldest_dirty) {
		/* The oldest left: one scan, then exact again until it goes.
		 * Draining is oldest-first, so this runs about once per
		 * status query, never per message. */
		(void)tenant_find(sp, tenant, strlen(tenant), &tidx);
		t->oldest = UINT64_MAX;
		for (uint32_t i = 0; i < sp->nents; i++) {
			const struct ent *e = &sp->ents[i];

			if ((ent_flags(e) & ENT_LIVE) && e->tenant == tidx &&
			    e->qid < t->oldest)
				t->oldest = e->qid;
		}
		t->oldest_dirty = false;
	}
	out->messages = t->messages;
	out->bytes = t->bytes;
	out->oldest_arrival_ms = qid_ms(t->oldest);
}

uint64_t
spool_total_bytes(struct spool *sp)
{
	return sp->total_bytes;
}

uint64_t
spool_total_messages(struct spool *sp)
{
	return sp->nlive;
}

static void
item_fill(struct spool *sp, const struct ent *e, struct spool_item *it)
{
	it->qid = e->qid;
	it->tenant = sp->tenants[e->tenant]->name;
	it->arrival_ms = qid_ms(e->qid);
	it->next_attempt_ms = e->next_ms;
	it->size = e->len;
	it->attempts = e->attempts;
	it->claimed = (ent_flags(e) & ENT_CLAIMED) != 0;
}

void
spool_foreach(struct spool *sp, const char *tenant,
    int (*cb)(void *arg, const struct spool_item *item), void *arg)
{
	uint16_t tidx = 0;
	spool_qid *q;
	size_t n = 0;

	if (tenant != NULL && tenant_find(sp, tenant, strlen(tenant), &tidx) == NULL)
		return;
	/* Snapshot the ids first: CB may delete or add messages. */
	q = malloc(((size_t)sp->nlive + 1) * sizeof(*q));
	if (q == NULL)
		return;
	for (uint32_t i = 0; i < sp->nents; i++) {
		const struct ent *e = &sp->ents[i];

		if ((ent_flags(e) & ENT_LIVE) && (tenant == NULL || e->tenant == tidx))
			q[n++] = e->qid;
	}
	if (n > 0)
		qsort(q, n, sizeof(*q), u64_cmp);
	for (size_t i = 0; i < n; i++) {
		uint32_t idx = ht_find(sp, q[i]);
		struct spool_item it;

		if (idx == UINT32_MAX)
			continue;
		item_fill(sp, &sp->ents[idx], &it);
		if (cb(arg, &it) != 0)
			break;
	}
	free(q);
}

int
spool_find(struct spool *sp, spool_qid qid, struct spool_item *out)
{
	uint32_t idx = ht_find(sp, qid);

	if (idx == UINT32_MAX)
		return SPOOL_ENOENT;
	item_fill(sp, &sp->ents[idx], out);
	return 0;
}

uint64_t
spool_flush_count(const struct spool *sp)
{
	return sp->nsyncs;
}

size_t
spool_index_bytes(const struct spool *sp)
{
	size_t n = (size_t)sp->capents * sizeof(struct ent) +
	    (sp->ht ? ((size_t)sp->ht_mask + 1) * sizeof(uint32_t) : 0) +
	    (sp->side ? ((size_t)sp->side_mask + 1) * sizeof(void *) : 0);

	for (uint32_t i = 0; i < sp->ntenants; i++)
		n += ((size_t)sp->tenants[i]->ready.cap +
		    sp->tenants[i]->wait.cap) * sizeof(uint32_t);
	return n;
}
