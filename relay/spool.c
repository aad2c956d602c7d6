/*
 * spool.c - the spool's public API (include/mxspool/spool.h): the wrapper
 * around a storage backend.
 *
 * What is here is what every backend shares, so that it exists once: the
 * choice of backend by name (spool_options.backend), argument and state
 * checks, queue ids, envelope encoding, admission against tenant quotas and
 * the disk reserve, and the in-memory index (relay/spool_index.c), which the
 * wrapper owns and keeps current whatever stores the bytes.  The backends
 * (struct spool_ops, relay/spool_backend.h) only store and fetch records:
 *
 *   "journal"  relay/spool_journal.c, relay/spool_recover.c: the durable
 *              segment journal; its on-disk format and durability argument
 *              are documented at the top of relay/spool_journal.c
 *   "ram"      relay/spool_ram.c: memory only, for unit tests of callers
 *
 * A state record that changes what the queue holds (RCPT marks, DEFER,
 * DELETE) reaches the index only once the backend says it is stored (for
 * the journal: after the fdatasync covering it returned 0), just before the
 * caller's callback.  Otherwise a crash, or a failed fsync, could undo a
 * change that had already let a segment be unlinked or had been reported to
 * an operator.  While a DELETE is in flight the message is claimed, so the
 * drain cannot start a delivery of mail that is being deleted; a failed
 * DELETE releases it again.  A failed DEFER still backs off in memory (it
 * only delays a retry, and not applying it would hammer a primary that just
 * answered 4xx).  Tenant records (HOLD, CAPS) and WARNED change the index
 * at once: losing one costs a duplicate notice or a late hold, never mail.
 * Commits enter the index only once stored.
 *
 * Threading: loop thread only.  Library layer: returns statuses, never logs.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/spool.h"
#include "mxspool/util.h"
#include "spool_backend.h"
#include "spool_internal.h"

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
	case SPOOL_EBUSY: return "index still loading, try again later";
	default: return status < 0 ? strerror(-status) : "unknown status";
	}
}

/* ---- open and close ---------------------------------------------------- */

/* Backends by name; the first is the default. */
static const struct spool_ops *const spool_backends[] = {
	&spool_journal_ops,
	&spool_ram_ops,
};

static const struct spool_ops *
spool_backend_find(const char *name)
{
	size_t n = sizeof(spool_backends) / sizeof(spool_backends[0]);

	if (name == NULL)
		return spool_backends[0];
	for (size_t i = 0; i < n; i++)
		if (strcmp(spool_backends[i]->name, name) == 0)
			return spool_backends[i];
	return NULL;
}

int
spool_open(uv_loop_t *loop, const struct spool_options *opts,
    struct spool **out, struct spool_recovery_stats *stats)
{
	struct spool_recovery_stats local;
	const struct spool_ops *ops;
	struct spool *sp;
	int rc;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(*stats));
	if (loop == NULL || opts == NULL || out == NULL ||
	    (ops = spool_backend_find(opts->backend)) == NULL)
		return SPOOL_EINVAL;
	sp = calloc(1, sizeof(*sp));
	if (sp == NULL)
		return SPOOL_ENOMEM;
	sp->loop = loop;
	sp->ops = ops;
	sp->disk_reserve = opts->disk_reserve;
	sp->now_ms = opts->now_ms ? opts->now_ms : util_now_ms;
	sp->on_indexed = opts->on_indexed;
	sp->on_indexed_arg = opts->on_indexed_arg;
	sp->load_step = opts->index_step_records;
	sp->load_background = opts->index_background;
	sp->ix = spool_index_new(NULL);
	if (sp->ix == NULL) {
		free(sp);
		return SPOOL_ENOMEM;
	}
	if ((rc = ops->open(sp, opts, &sp->be, stats)) != 0) {
		spool_index_free(sp->ix);
		free(sp);
		return rc;
	}
	*out = sp;
	return 0;
}

static void
spool_close_finish(void *arg)
{
	struct spool *sp = arg;
	void (*done)(void *) = sp->close_done;
	void *done_arg = sp->close_arg;

	spool_index_free(sp->ix);
	free(sp);
	if (done != NULL)
		done(done_arg);
}

void
spool_close(struct spool *sp, void (*done)(void *arg), void *arg)
{
	if (sp->closing)
		return;               /* one close per spool */
	sp->closing = true;
	sp->close_done = done;
	sp->close_arg = arg;
	sp->ops->close(sp->be, spool_close_finish, sp);
}

/* ---- quotas and admission ---------------------------------------------- */

void
spool_set_quota(struct spool *sp, const char *tenant, uint64_t bytes,
    uint64_t messages)
{
	if (tenant != NULL)
		spool_index_set_quota(sp->ix, tenant, bytes, messages);
}

void
spool_set_disk_reserve(struct spool *sp, uint64_t bytes)
{
	sp->disk_reserve = bytes;
}

/*
 * LOADING: while a background load runs (spool_index_loading), what the old
 * segments hold is not known yet.  Mail is taken, but quotas count the
 * unscanned bytes as if all were the tenant's (spool_index_set_unknown);
 * nothing is claimed for delivery and the aged walk sees nothing, since a
 * message's DELETE, recipient and deferral records may be in a later,
 * unscanned segment (delivering it now could deliver it twice); and changes
 * to old messages, to hold flags and to capabilities are refused with
 * SPOOL_EBUSY, since an older record found later would be replayed over
 * them (a deleted message would come back from a compaction copy).  This
 * run's messages live in segments >= load_first_seg and change freely.
 */
bool
spool_index_loading(const struct spool *sp, uint64_t *done, uint64_t *total)
{
	if (done != NULL)
		*done = sp->loading ? sp->load_done : sp->load_total;
	if (total != NULL)
		*total = sp->load_total;
	return sp->loading;
}

static int
spool_admit(struct spool *sp, int tenant, uint64_t size)
{
	return spool_index_admit(sp->ix, tenant, size,
	    sp->ops->free_bytes(sp->be), sp->disk_reserve);
}

int
spool_check(struct spool *sp, const char *tenant, uint64_t size)
{
	if (sp->closing)
		return SPOOL_ECLOSED;
	/* No tenant yet (at MAIL): only the disk reserve can be checked. */
	if (tenant == NULL)
		return spool_admit(sp, -1, size);
	return spool_admit(sp, spool_index_tenant_find(sp->ix, tenant,
	    strlen(tenant)), size);
}

/* ---- transactions ------------------------------------------------------ */

uint64_t
spool__tx_bytes(const struct spool_tx *tx)
{
	return SPOOL_REC_HDR_LEN + tx->env_len + tx->spilled + tx->len;
}

void
spool__tx_free(struct spool_tx *tx)
{
	free(tx->env);
	free(tx->buf);
	free(tx);
}

static void
spool_tx_discard(struct spool_tx *tx)
{
	tx->sp->ops->tx_discard(tx->sp->be, tx);
}

int
spool_tx_begin(struct spool *sp, const struct spool_envelope *env,
    struct spool_tx **out)
{
	struct spool_tx *tx;
	int64_t arrival;
	int rc, t;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (env == NULL || env->tenant == NULL || env->tenant[0] == '\0' ||
	    env->sender == NULL || out == NULL)
		return SPOOL_EINVAL;
	tx = calloc(1, sizeof(*tx));
	if (tx == NULL)
		return SPOOL_ENOMEM;
	if ((t = spool_index_tenant_get(sp->ix, env->tenant,
	    strlen(env->tenant))) < 0) {
		free(tx);
		return SPOOL_EINVAL;
	}
	tx->sp = sp;
	tx->tenant = (uint16_t)t;
	tx->qid = spool_index_qid_next(sp->ix, sp->now_ms());
	tx->nrcpt = (uint32_t)env->nrcpt;
	arrival = env->arrival_ms != 0 ? env->arrival_ms : spool_qid_ms(tx->qid);
	if ((rc = spool_env_encode(env, arrival, &tx->env, &tx->env_len)) != 0) {
		free(tx);
		return rc;
	}
	if (sp->ops->tx_begin != NULL && (rc = sp->ops->tx_begin(sp->be, tx)) != 0) {
		spool__tx_free(tx);
		return rc;
	}
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

void
spool__tx_spilled(struct spool_tx *tx, int status)
{
	tx->spilling = false;
	if (tx->aborted) {
		spool_tx_discard(tx);
		return;
	}
	tx->cb(tx->arg, status);
}

int
spool_tx_write(struct spool_tx *tx, const void *buf, size_t len,
    spool_done_cb cb, void *arg)
{
	struct spool *sp = tx->sp;
	int rc;

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
	if (len > 0)
		memcpy(tx->buf + tx->len, buf, len);
	tx->len += len;
	if (tx->len < SPOOL_SPILL_THRESHOLD)
		return 0;
	/* The buffer is full: the backend takes it, and says when. */
	tx->cb = cb;
	tx->arg = arg;
	if ((rc = sp->ops->tx_spill(sp->be, tx)) != 0)
		return rc;
	tx->spilling = true;
	return SPOOL_PENDING;
}

int
spool_tx_commit(struct spool_tx *tx, spool_commit_cb cb, void *arg)
{
	struct spool *sp = tx->sp;
	uint64_t sz = spool__tx_bytes(tx);
	int rc;

	if (tx->spilling)
		return SPOOL_EINVAL;  /* misuse: the tx is not consumed */
	rc = sp->closing ? SPOOL_ECLOSED : spool_admit(sp, tx->tenant, sz);
	if (rc == 0) {
		/* Counted as pending now so concurrent commits see each other. */
		spool_index_reserve(sp->ix, tx->tenant, sz);
		if ((rc = sp->ops->tx_commit(sp->be, tx, cb, arg)) == 0)
			return 0;
		spool_index_unreserve(sp->ix, tx->tenant, sz);
	}
	spool_tx_discard(tx);
	return rc;
}

int
spool__tx_committed(struct spool_tx *tx, int status, uint32_t seg,
    uint32_t off)
{
	struct spool *sp = tx->sp;
	uint64_t sz = spool__tx_bytes(tx);

	spool_index_unreserve(sp->ix, tx->tenant, sz);
	if (status == 0 && spool_index_insert(sp->ix, tx->qid, tx->tenant,
	    tx->nrcpt, seg, off, (uint32_t)sz) != 0)
		status = SPOOL_ENOMEM;
	return status;
}

void
spool_tx_abort(struct spool_tx *tx)
{
	if (tx->spilling) {
		tx->aborted = true;   /* spool__tx_spilled discards it */
		return;
	}
	spool_tx_discard(tx);
}

/* ---- draining ---------------------------------------------------------- */

int
spool_claim_next(struct spool *sp, const char *tenant, int64_t now_ms,
    spool_qid *out)
{
	if (tenant == NULL || out == NULL)
		return SPOOL_EINVAL;
	if (sp->loading)
		return SPOOL_ENOENT;          /* LOADING */
	return spool_index_claim_next(sp->ix, tenant, now_ms, out);
}

void
spool_release(struct spool *sp, spool_qid qid)
{
	spool_index_release(sp->ix, qid);
}

int
spool_retry_now(struct spool *sp, const char *tenant)
{
	/*
	 * Memory only: the deferral records stay in the journal, so after a
	 * restart these messages wait out their back-off again.  That costs a
	 * late retry at worst, never a message, and a flush of millions of
	 * deferred messages writes nothing.
	 */
	return tenant == NULL ? 0 : spool_index_retry_now(sp->ix, tenant);
}

int64_t
spool_next_due_ms(struct spool *sp, const char *tenant)
{
	if (tenant == NULL)
		return -1;
	/* LOADING: look again in a moment; the load's end wakes nobody. */
	if (sp->loading)
		return sp->now_ms() + 500;
	return spool_index_next_due_ms(sp->ix, tenant);
}

/* ---- loading and reading ----------------------------------------------- */

int
spool_load(struct spool *sp, spool_qid qid, spool_load_cb cb, void *arg)
{
	uint32_t slot;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (cb == NULL)
		return SPOOL_EINVAL;
	if ((slot = spool_index_lookup(sp->ix, qid)) == SPOOL_INDEX_NONE)
		return SPOOL_ENOENT;
	return sp->ops->load(sp->be, spool_index_at(sp->ix, slot), cb, arg);
}

void
spool__load_finish(struct spool *sp, struct spool_msg *m, int status,
    spool_load_cb cb, void *arg)
{
	if (status == 0 && m != NULL && m->env != NULL) {
		uint32_t slot = spool_index_lookup(sp->ix, m->qid);
		const struct spool_index_ent *e = spool_index_at(sp->ix, slot);
		const uint8_t *st = e ? spool_index_rcpt_states(sp->ix, slot) : NULL;

		m->rst = calloc(m->env->nrcpt ? m->env->nrcpt : 1, 1);
		if (m->rst == NULL)
			status = SPOOL_ENOMEM;
		if (e != NULL)
			m->attempts = e->attempts;
		for (uint32_t i = 0; st != NULL && m->rst != NULL &&
		    i < spool_ent_nrcpt(e) && i < m->env->nrcpt; i++)
			m->rst[i] = st[i];
	}
	if (status != 0 && m != NULL) {
		m->ops->msg_destroy(m);
		m = NULL;
	}
	cb(arg, status, m);
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

int
spool_msg_read(struct spool_msg *m, uint64_t offset, size_t max,
    spool_read_cb cb, void *arg)
{
	int rc;

	if (m->reading > 0 || max == 0 || cb == NULL)
		return SPOOL_EINVAL;  /* one read at a time: BUF is shared */
	if (max > SPOOL_READ_CHUNK_MAX)
		max = SPOOL_READ_CHUNK_MAX;
	if ((rc = m->ops->msg_read(m, offset, max, cb, arg)) == 0)
		m->reading++;
	return rc;
}

void
spool__read_done(struct spool_msg *m, int status, const void *buf, size_t len,
    spool_read_cb cb, void *arg)
{
	m->reading--;
	if (m->freed) {
		/* The owner let go while we were reading: nobody to call. */
		if (m->reading == 0)
			m->ops->msg_destroy(m);
		return;
	}
	cb(arg, status, buf, len);
}

void
spool__msg_free_common(struct spool_msg *m)
{
	free(m->env);
	free(m->rst);
}

void
spool_msg_free(struct spool_msg *m)
{
	if (m == NULL)
		return;
	m->freed = true;
	if (m->reading == 0)
		m->ops->msg_destroy(m);
}

/* ---- state records ----------------------------------------------------- */

/* The slot of live message QID for a state record: 0, SPOOL_ECLOSED or
 * SPOOL_ENOENT. */
static int
spool_state_slot(struct spool *sp, spool_qid qid, uint32_t *slot)
{
	if (sp->closing)
		return SPOOL_ECLOSED;
	*slot = spool_index_lookup(sp->ix, qid);
	if (*slot == SPOOL_INDEX_NONE)
		return sp->loading ? SPOOL_EBUSY : SPOOL_ENOENT;
	if (sp->loading && spool_index_at(sp->ix, *slot)->seg < sp->load_first_seg)
		return SPOOL_EBUSY;           /* LOADING */
	return 0;
}

/* A state change waiting for its record to be stored. */
struct spool_sreq {
	struct spool *sp;
	uint8_t type;
	spool_qid qid;
	uint32_t rcpt;
	uint8_t state;
	bool claimed;                 /* DELETE claimed the entry itself */
	int64_t next_ms;
	spool_done_cb cb;
	void *arg;
};

/* The record is stored (STATUS 0) or not: apply the change, then tell the
 * caller.  The entry is looked up again, since it may have moved or gone
 * (delivered, deleted twice) while the record was being written. */
static void
spool_state_done(void *arg, int status)
{
	struct spool_sreq *r = arg;
	struct spool_index *ix = r->sp->ix;
	uint32_t slot = spool_index_lookup(ix, r->qid);
	const struct spool_index_ent *e = spool_index_at(ix, slot);

	if (e != NULL) {
		switch (r->type) {
		case SPOOL_REC_RCPT:
			if (status == 0 && r->rcpt < spool_ent_nrcpt(e))
				(void)spool_index_mark_rcpt(ix, slot, r->rcpt,
				    (enum spool_rcpt_state)r->state);
			break;
		case SPOOL_REC_DEFER:
			spool_index_defer(ix, slot, r->next_ms);
			break;
		case SPOOL_REC_DELETE:
			if (status == 0)
				spool_index_remove(ix, slot);
			else if (r->claimed)
				spool_index_release(ix, r->qid);
			break;
		}
	}
	if (r->cb != NULL)
		r->cb(r->arg, status);
	free(r);
}

/* Append a state record for QID whose index change spool_state_done makes;
 * R is consumed. */
static int
spool_state_append(struct spool *sp, struct spool_sreq *r, const uint8_t *body,
    size_t len)
{
	int rc = sp->ops->append_state(sp->be, r->type, r->qid, body, len,
	    spool_state_done, r);

	if (rc != 0)
		free(r);
	return rc;
}

static struct spool_sreq *
spool_sreq_new(struct spool *sp, uint8_t type, spool_qid qid, spool_done_cb cb,
    void *arg)
{
	struct spool_sreq *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->sp = sp;
	r->type = type;
	r->qid = qid;
	r->cb = cb;
	r->arg = arg;
	return r;
}

int
spool_mark_rcpt(struct spool *sp, spool_qid qid, size_t rcpt,
    enum spool_rcpt_state state, spool_done_cb cb, void *arg)
{
	struct spool_sreq *r;
	uint32_t slot;
	uint8_t b[SPOOL_RCPT_BODY_LEN];
	int rc;

	if ((rc = spool_state_slot(sp, qid, &slot)) != 0)
		return rc;
	if (rcpt >= spool_ent_nrcpt(spool_index_at(sp->ix, slot)) ||
	    state > SPOOL_RCPT_BOUNCED)
		return SPOOL_EINVAL;
	if ((r = spool_sreq_new(sp, SPOOL_REC_RCPT, qid, cb, arg)) == NULL)
		return SPOOL_ENOMEM;
	r->rcpt = (uint32_t)rcpt;
	r->state = (uint8_t)state;
	spool_rcpt_body_encode(b, (uint32_t)rcpt, state);
	return spool_state_append(sp, r, b, sizeof(b));
}

int
spool_defer(struct spool *sp, spool_qid qid, int64_t next_attempt_ms,
    spool_done_cb cb, void *arg)
{
	struct spool_sreq *r;
	uint32_t slot;
	uint8_t b[SPOOL_DEFER_BODY_LEN];
	int rc;

	if ((rc = spool_state_slot(sp, qid, &slot)) != 0)
		return rc;
	if ((r = spool_sreq_new(sp, SPOOL_REC_DEFER, qid, cb, arg)) == NULL)
		return SPOOL_ENOMEM;
	r->next_ms = next_attempt_ms;
	spool_defer_body_encode(b, next_attempt_ms,
	    spool_index_at(sp->ix, slot)->attempts + 1u);
	return spool_state_append(sp, r, b, sizeof(b));
}

int
spool_delete(struct spool *sp, spool_qid qid, spool_done_cb cb, void *arg)
{
	struct spool_sreq *r;
	uint32_t slot;
	bool claimed;
	int rc;

	if ((rc = spool_state_slot(sp, qid, &slot)) != 0)
		return rc;
	if ((r = spool_sreq_new(sp, SPOOL_REC_DELETE, qid, cb, arg)) == NULL)
		return SPOOL_ENOMEM;
	/* Nobody may start delivering it while the record is written. */
	claimed = r->claimed = spool_index_claim(sp->ix, slot);
	if ((rc = spool_state_append(sp, r, NULL, 0)) != 0 && claimed)
		spool_index_release(sp->ix, qid);
	return rc;
}

int
spool_set_held(struct spool *sp, const char *tenant, bool held,
    spool_done_cb cb, void *arg)
{
	uint8_t b[3 + 0xFFFF];
	int n, t, rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (tenant == NULL)
		return SPOOL_EINVAL;
	if (sp->loading)
		return SPOOL_EBUSY;           /* LOADING */
	n = spool_hold_body_encode(b, sizeof(b), tenant, held);
	if (n < 0)
		return n;
	if ((t = spool_index_tenant_get(sp->ix, tenant, strlen(tenant))) < 0)
		return SPOOL_EINVAL;
	if ((rc = sp->ops->append_state(sp->be, SPOOL_REC_HOLD, 0, b, (size_t)n,
	    cb, arg)) != 0)
		return rc;
	spool_index_tenant_set_held(sp->ix, (unsigned)t, held);
	return 0;
}

bool
spool_is_held(struct spool *sp, const char *tenant)
{
	int t = tenant == NULL ? -1 :
	    spool_index_tenant_find(sp->ix, tenant, strlen(tenant));

	return t >= 0 && spool_index_tenant_held(sp->ix, (unsigned)t);
}

/* A state change that is already recorded: nothing is written, CB still
 * runs later, as for a record. */
static int
spool_post(struct spool *sp, spool_done_cb cb, void *arg)
{
	return cb == NULL ? 0 : sp->ops->post(sp->be, cb, arg);
}

int
spool_mark_warned(struct spool *sp, spool_qid qid, spool_done_cb cb, void *arg)
{
	uint32_t slot;
	int rc;

	if ((rc = spool_state_slot(sp, qid, &slot)) != 0)
		return rc;
	if (spool_ent_flags(spool_index_at(sp->ix, slot)) & SPOOL_ENT_WARNED)
		return spool_post(sp, cb, arg);
	if ((rc = sp->ops->append_state(sp->be, SPOOL_REC_WARNED, qid, NULL, 0,
	    cb, arg)) != 0)
		return rc;
	spool_index_set_warned(sp->ix, slot);
	return 0;
}

unsigned
spool_walk_aged(struct spool *sp, const char *tenant, int64_t expire_before_ms,
    int64_t warn_before_ms, unsigned max, spool_age_cb cb, void *arg)
{
	if (sp->closing || sp->loading)   /* LOADING */
		return 0;
	return spool_index_walk_aged(sp->ix, tenant, expire_before_ms,
	    warn_before_ms, max, cb, arg);
}

/* Equal as far as the journal cares: seen_ms aside. */
static bool
spool_caps_equal(const struct spool_caps *a, const struct spool_caps *b)
{
	return a->ext == b->ext && a->size_max == b->size_max &&
	    a->rcpt_max == b->rcpt_max && a->mail_max == b->mail_max;
}

int
spool_set_caps(struct spool *sp, const char *tenant,
    const struct spool_caps *caps, spool_done_cb cb, void *arg)
{
	uint8_t b[SPOOL_CAPS_BODY_FIXED + 0xFFFF];
	struct spool_caps old;
	int n, t, rc;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (tenant == NULL || caps == NULL)
		return SPOOL_EINVAL;
	if (sp->loading)
		return SPOOL_EBUSY;           /* LOADING */
	if ((n = spool_caps_body_encode(b, sizeof(b), tenant, caps)) < 0)
		return n;
	if ((t = spool_index_tenant_get(sp->ix, tenant, strlen(tenant))) < 0)
		return SPOOL_EINVAL;
	if (spool_index_tenant_caps(sp->ix, (unsigned)t, &old) &&
	    spool_caps_equal(&old, caps)) {
		/* Unchanged: no record.  The newer time is kept in memory. */
		old.seen_ms = caps->seen_ms;
		spool_index_tenant_set_caps(sp->ix, (unsigned)t, &old);
		return spool_post(sp, cb, arg);
	}
	if ((rc = sp->ops->append_state(sp->be, SPOOL_REC_CAPS, 0, b, (size_t)n,
	    cb, arg)) != 0)
		return rc;
	spool_index_tenant_set_caps(sp->ix, (unsigned)t, caps);
	return 0;
}

bool
spool_get_caps(struct spool *sp, const char *tenant, struct spool_caps *out)
{
	int t = tenant == NULL ? -1 :
	    spool_index_tenant_find(sp->ix, tenant, strlen(tenant));

	return t >= 0 && spool_index_tenant_caps(sp->ix, (unsigned)t, out);
}

/* ---- figures ----------------------------------------------------------- */

void
spool_tenant_stats(struct spool *sp, const char *tenant,
    struct spool_tenant_stats *out)
{
	spool_index_tenant_stats(sp->ix, tenant, out);
}

uint64_t
spool_total_bytes(struct spool *sp)
{
	return spool_index_total_bytes(sp->ix);
}

uint64_t
spool_total_messages(struct spool *sp)
{
	return spool_index_total_messages(sp->ix);
}

void
spool_foreach(struct spool *sp, const char *tenant,
    int (*cb)(void *arg, const struct spool_item *item), void *arg)
{
	spool_index_foreach(sp->ix, tenant, cb, arg);
}

void
spool_set_last_reply(struct spool *sp, spool_qid qid, const char *reply)
{
	spool_index_set_reply(sp->ix, qid, reply);
}

const char *
spool_last_reply(struct spool *sp, spool_qid qid)
{
	return spool_index_reply(sp->ix, qid);
}

size_t
spool_page(struct spool *sp, const char *tenant, spool_qid after, size_t max,
    bool (*keep)(void *arg, const struct spool_item *item), void *arg,
    spool_qid *out)
{
	return spool_index_page(sp->ix, tenant, after, max, keep, arg, out);
}

int
spool_find(struct spool *sp, spool_qid qid, struct spool_item *out)
{
	return spool_index_find(sp->ix, qid, out);
}

uint64_t
spool_flush_count(const struct spool *sp)
{
	return sp->ops->flush_count != NULL ? sp->ops->flush_count(sp->be) : 0;
}

void
spool_reclaim_info(struct spool *sp, struct spool_reclaim *out)
{
	memset(out, 0, sizeof(*out));
	if (sp->ops->reclaim != NULL)
		sp->ops->reclaim(sp->be, out);
}

uint64_t
spool_compact_copies(const struct spool *sp)
{
	return sp->ops->compact_copies != NULL ?
	    sp->ops->compact_copies(sp->be) : 0;
}

size_t
spool_index_bytes(const struct spool *sp)
{
	return spool_index_mem_bytes(sp->ix);
}
