/*
 * spool_ram.c - the "ram" storage backend of the spool: messages and their
 * state live in memory only, nothing touches a disk, nothing survives
 * spool_close.  It exists for unit tests of the spool's callers (drain,
 * smtp_server): select it with spool_options.backend = "ram".
 *
 * It reuses the wrapper's index (relay/spool_index.c) like the journal does,
 * so queue order, claiming, deferral, quotas, held tenants, figures and
 * foreach behave exactly as with the journal; the index location of a
 * message is (0, slot in recs[]).  Sizes count what the journal would store
 * (record header + encoded envelope + bytes), so quotas match too.
 *
 * Every callback runs later on the loop, never inside the call: spills,
 * commits, state records and loads are queued as jobs and run in call order
 * from one zero-timeout uv_timer_t; reads complete through uv_queue_work
 * with an empty work function, so a loaded message may outlive its spool as
 * with the journal.  spool_close runs what is queued, then closes the timer.
 *
 * Test hooks (declared in include/mxspool/spool.h): spool_ram_fail_next()
 * makes the next commit or state record report a given status, and
 * spool_ram_set_free_bytes() sets the free-space figure that admission
 * compares with the disk reserve.
 *
 * Ownership: a stored message (struct ram_rec) is reference counted: one
 * reference for the index entry (dropped by the index's loc_drop hook when
 * the message is delivered or deleted, or at close), one per loaded
 * spool_msg.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "mxspool/spool.h"
#include "spool_backend.h"
#include "spool_internal.h"

#define RAM_DEFAULT_FREE  (1ull << 40)   /* 1 TiB free unless a test says */

struct ram_rec {
	unsigned refs;
	uint8_t *env;                 /* encoded envelope */
	size_t env_len;
	uint8_t *data;                /* message bytes */
	size_t len;
};

/* The RAM backend's part of a transaction: the bytes spilled so far. */
struct ram_tx {
	uint8_t *data;
	size_t len, cap;
};

struct ram_msg {
	struct spool_msg base;        /* first: spool_msg * <-> ram_msg * */
	struct ram_rec *rec;
};

enum ram_job_kind { RAM_JOB_SPILL, RAM_JOB_COMMIT, RAM_JOB_STATE, RAM_JOB_LOAD };

struct ram_job {
	struct ram_job *next;
	enum ram_job_kind kind;
	int status;                   /* decided at the call (fail_next) */
	struct spool_tx *tx;          /* SPILL, COMMIT */
	struct ram_msg *m;            /* LOAD */
	spool_done_cb done;
	spool_commit_cb commit;
	spool_load_cb load;
	void *arg;
};

struct ram {
	struct spool *sp;
	struct spool_index *ix;
	uv_timer_t timer;
	bool timer_armed;
	struct ram_job *head, **tail;
	struct ram_rec **recs;        /* by slot; NULL = free */
	uint32_t nrecs, caprecs;
	uint32_t *free_slots;
	uint32_t nfree;
	uint64_t free_base;           /* free bytes = free_base - stored */
	uint64_t stored;
	int fail_next;                /* 0 = none */
	uint64_t nruns;
	bool closing;
	void (*finish)(void *);
	void *finish_arg;
};

static void ram_run(uv_timer_t *t);

/* ---- stored messages ----------------------------------------------------- */

static void
ram_rec_unref(struct ram_rec *r)
{
	if (r == NULL || --r->refs > 0)
		return;
	free(r->env);
	free(r->data);
	free(r);
}

/* A slot for REC; SPOOL_INDEX_NONE when out of memory. */
static uint32_t
ram_slot_alloc(struct ram *ram, struct ram_rec *rec)
{
	uint32_t slot;

	if (ram->nfree > 0)
		slot = ram->free_slots[--ram->nfree];
	else {
		if (ram->nrecs == ram->caprecs) {
			uint32_t ncap = ram->caprecs ? ram->caprecs * 2 : 64;
			struct ram_rec **nr = realloc(ram->recs, ncap * sizeof(*nr));
			uint32_t *nf;

			if (nr == NULL)
				return SPOOL_INDEX_NONE;
			ram->recs = nr;
			nf = realloc(ram->free_slots, ncap * sizeof(*nf));
			if (nf == NULL)
				return SPOOL_INDEX_NONE;
			ram->free_slots = nf;
			ram->caprecs = ncap;
		}
		slot = ram->nrecs++;
	}
	ram->recs[slot] = rec;
	return slot;
}

static void
ram_slot_free(struct ram *ram, uint32_t slot)
{
	ram_rec_unref(ram->recs[slot]);
	ram->recs[slot] = NULL;
	ram->free_slots[ram->nfree++] = slot;
}

/* Index hooks: follow the live bytes, drop the index's reference. */
static void
ram_loc_add(void *arg, const struct spool_index_ent *e)
{
	((struct ram *)arg)->stored += e->len;
}

static void
ram_loc_drop(void *arg, const struct spool_index_ent *e)
{
	struct ram *ram = arg;

	ram->stored -= e->len;
	ram_slot_free(ram, e->off);
}

/* ---- the job queue ------------------------------------------------------- */

static struct ram_job *
ram_job_new(enum ram_job_kind kind)
{
	struct ram_job *job = calloc(1, sizeof(*job));

	if (job != NULL)
		job->kind = kind;
	return job;
}

static void
ram_job_queue(struct ram *ram, struct ram_job *job)
{
	job->next = NULL;
	*ram->tail = job;
	ram->tail = &job->next;
	if (!ram->timer_armed && uv_timer_start(&ram->timer, ram_run, 0, 0) == 0)
		ram->timer_armed = true;
}

/* The status the next commit or state record reports (one shot). */
static int
ram_take_fail(struct ram *ram)
{
	int status = ram->fail_next;

	ram->fail_next = 0;
	return status;
}

static void
ram_tx_free(struct spool_tx *tx)
{
	struct ram_tx *rt = tx->be;

	if (rt != NULL)
		free(rt->data);
	free(rt);
	spool__tx_free(tx);
}

/* Move the transaction's buffer to its spilled bytes. */
static int
ram_tx_absorb(struct spool_tx *tx)
{
	struct ram_tx *rt = tx->be;

	if (rt->len + tx->len > rt->cap) {
		size_t ncap = rt->cap ? rt->cap : 4096;
		uint8_t *n;

		while (ncap < rt->len + tx->len)
			ncap *= 2;
		if ((n = realloc(rt->data, ncap)) == NULL)
			return SPOOL_ENOMEM;
		rt->data = n;
		rt->cap = ncap;
	}
	if (tx->len > 0)
		memcpy(rt->data + rt->len, tx->buf, tx->len);
	rt->len += tx->len;
	tx->spilled += tx->len;
	tx->len = 0;
	return 0;
}

/* Store a committed transaction; its slot in *SLOT. */
static int
ram_store(struct ram *ram, struct spool_tx *tx, uint32_t *slot)
{
	struct ram_tx *rt = tx->be;
	struct ram_rec *rec;
	int rc;

	if ((rc = ram_tx_absorb(tx)) != 0)
		return rc;
	if ((rec = calloc(1, sizeof(*rec))) == NULL)
		return SPOOL_ENOMEM;
	rec->refs = 1;                /* the index entry's */
	rec->env = tx->env;
	rec->env_len = tx->env_len;
	rec->data = rt->data;
	rec->len = rt->len;
	if ((*slot = ram_slot_alloc(ram, rec)) == SPOOL_INDEX_NONE) {
		free(rec);
		return SPOOL_ENOMEM;
	}
	tx->env = NULL;               /* now the record's */
	rt->data = NULL;
	return 0;
}

static void
ram_run_commit(struct ram *ram, struct ram_job *job)
{
	struct spool_tx *tx = job->tx;
	uint32_t slot = SPOOL_INDEX_NONE;
	int status = job->status;

	if (status == 0)
		status = ram_store(ram, tx, &slot);
	status = spool__tx_committed(tx, status, 0, slot);
	if (status != 0 && slot != SPOOL_INDEX_NONE && ram->recs[slot] != NULL &&
	    spool_index_lookup(ram->ix, tx->qid) == SPOOL_INDEX_NONE)
		ram_slot_free(ram, slot);   /* the index could not take it */
	job->commit(job->arg, status, tx->qid);
	ram_tx_free(tx);
}

static void
ram_run_load(struct ram *ram, struct ram_job *job)
{
	struct ram_msg *m = job->m;
	int status = spool_env_decode(m->rec->env, m->rec->env_len, &m->base.env);

	m->base.size = m->rec->len;
	spool__load_finish(ram->sp, &m->base, status, job->load, job->arg);
}

static void
ram_run_job(struct ram *ram, struct ram_job *job)
{
	switch (job->kind) {
	case RAM_JOB_SPILL:
		spool__tx_spilled(job->tx, ram_tx_absorb(job->tx));
		break;
	case RAM_JOB_COMMIT:
		ram_run_commit(ram, job);
		break;
	case RAM_JOB_STATE:
		if (job->done != NULL)
			job->done(job->arg, job->status);
		break;
	case RAM_JOB_LOAD:
		ram_run_load(ram, job);
		break;
	}
}

static void
ram_closed(uv_handle_t *h)
{
	struct ram *ram = h->data;
	void (*finish)(void *) = ram->finish;
	void *arg = ram->finish_arg;

	/* The index goes without dropping its entries: drop their records. */
	for (uint32_t i = 0; i < ram->nrecs; i++)
		ram_rec_unref(ram->recs[i]);
	free(ram->recs);
	free(ram->free_slots);
	free(ram);
	if (finish != NULL)
		finish(arg);
}

/* Run every job queued so far, in order; jobs queued by their callbacks
 * wait for the next turn of the loop. */
static void
ram_run(uv_timer_t *t)
{
	struct ram *ram = t->data;
	struct ram_job *job = ram->head, *next;

	ram->timer_armed = false;
	ram->head = NULL;
	ram->tail = &ram->head;
	ram->nruns++;
	for (; job != NULL; job = next) {
		next = job->next;
		ram_run_job(ram, job);
		free(job);
	}
	if (ram->closing && ram->head == NULL)
		uv_close((uv_handle_t *)&ram->timer, ram_closed);
}

/* ---- operations ---------------------------------------------------------- */

static int
ram_open(struct spool *sp, const struct spool_options *opts, void **be,
    struct spool_recovery_stats *stats)
{
	struct spool_index_hooks hooks = { ram_loc_add, ram_loc_drop, NULL };
	struct ram *ram = calloc(1, sizeof(*ram));
	int rc;

	(void)opts;
	(void)stats;                  /* nothing to recover: all zero */
	if (ram == NULL)
		return SPOOL_ENOMEM;
	if ((rc = uv_timer_init(sp->loop, &ram->timer)) != 0) {
		free(ram);
		return rc;
	}
	ram->timer.data = ram;
	ram->sp = sp;
	ram->ix = sp->ix;
	ram->tail = &ram->head;
	ram->free_base = RAM_DEFAULT_FREE;
	hooks.arg = ram;
	spool_index_set_hooks(sp->ix, &hooks);
	*be = ram;
	return 0;
}

static void
ram_close(void *be, void (*finish)(void *arg), void *arg)
{
	struct ram *ram = be;

	ram->closing = true;
	ram->finish = finish;
	ram->finish_arg = arg;
	if (!ram->timer_armed)
		uv_close((uv_handle_t *)&ram->timer, ram_closed);
}

static uint64_t
ram_free_bytes(void *be)
{
	struct ram *ram = be;

	return ram->free_base > ram->stored ? ram->free_base - ram->stored : 0;
}

static uint64_t
ram_flush_count(const void *be)
{
	return ((const struct ram *)be)->nruns;
}

static int
ram_tx_begin(void *be, struct spool_tx *tx)
{
	(void)be;
	tx->be = calloc(1, sizeof(struct ram_tx));
	return tx->be == NULL ? SPOOL_ENOMEM : 0;
}

static int
ram_tx_spill(void *be, struct spool_tx *tx)
{
	struct ram_job *job = ram_job_new(RAM_JOB_SPILL);

	if (job == NULL)
		return SPOOL_ENOMEM;
	job->tx = tx;
	ram_job_queue(be, job);
	return 0;
}

static int
ram_tx_commit(void *be, struct spool_tx *tx, spool_commit_cb cb, void *arg)
{
	struct ram *ram = be;
	struct ram_job *job = ram_job_new(RAM_JOB_COMMIT);

	if (job == NULL)
		return SPOOL_ENOMEM;
	job->tx = tx;
	job->commit = cb;
	job->arg = arg;
	job->status = ram_take_fail(ram);
	ram_job_queue(ram, job);
	return 0;
}

static void
ram_tx_discard(void *be, struct spool_tx *tx)
{
	(void)be;
	ram_tx_free(tx);
}

static int
ram_append_state(void *be, uint8_t type, spool_qid qid, const uint8_t *body,
    size_t len, spool_done_cb cb, void *arg)
{
	struct ram *ram = be;
	struct ram_job *job = ram_job_new(RAM_JOB_STATE);

	/* The index holds the state; only the outcome is left to report. */
	(void)type;
	(void)qid;
	(void)body;
	(void)len;
	if (job == NULL)
		return SPOOL_ENOMEM;
	job->done = cb;
	job->arg = arg;
	job->status = ram_take_fail(ram);
	ram_job_queue(ram, job);
	return 0;
}

static int
ram_post(void *be, spool_done_cb cb, void *arg)
{
	struct ram_job *job = ram_job_new(RAM_JOB_STATE);

	/* Nothing stored, so nothing to fail: fail_next is left alone. */
	if (job == NULL)
		return SPOOL_ENOMEM;
	job->done = cb;
	job->arg = arg;
	ram_job_queue(be, job);
	return 0;
}

static int
ram_load(void *be, const struct spool_index_ent *e, spool_load_cb cb, void *arg)
{
	struct ram *ram = be;
	struct ram_job *job = ram_job_new(RAM_JOB_LOAD);
	struct ram_msg *m = calloc(1, sizeof(*m));

	if (job == NULL || m == NULL) {
		free(job);
		free(m);
		return SPOOL_ENOMEM;
	}
	m->base.ops = &spool_ram_ops;
	m->base.loop = ram->sp->loop;
	m->base.qid = e->qid;
	m->rec = ram->recs[e->off];
	m->rec->refs++;               /* the message's own */
	job->m = m;
	job->load = cb;
	job->arg = arg;
	ram_job_queue(ram, job);
	return 0;
}

struct ram_read {
	uv_work_t req;
	struct ram_msg *m;
	uint64_t offset;
	size_t max;
	spool_read_cb cb;
	void *arg;
};

static void
ram_read_work(uv_work_t *req)
{
	(void)req;                    /* only here to come back later */
}

static void
ram_read_after(uv_work_t *req, int uvstatus)
{
	struct ram_read *r = req->data;
	struct ram_rec *rec = r->m->rec;
	size_t n = 0;

	if (uvstatus == 0 && r->offset < rec->len)
		n = rec->len - r->offset < r->max ? (size_t)(rec->len - r->offset) :
		    r->max;
	spool__read_done(&r->m->base, uvstatus != 0 ? SPOOL_EIO : 0,
	    n > 0 ? rec->data + r->offset : NULL, n, r->cb, r->arg);
	free(r);
}

static int
ram_msg_read(struct spool_msg *base, uint64_t offset, size_t max,
    spool_read_cb cb, void *arg)
{
	struct ram_read *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return SPOOL_ENOMEM;
	r->m = (struct ram_msg *)base;
	r->offset = offset;
	r->max = max;
	r->cb = cb;
	r->arg = arg;
	r->req.data = r;
	if (uv_queue_work(base->loop, &r->req, ram_read_work, ram_read_after) != 0) {
		free(r);
		return SPOOL_EIO;
	}
	return 0;
}

static void
ram_msg_destroy(struct spool_msg *base)
{
	struct ram_msg *m = (struct ram_msg *)base;

	ram_rec_unref(m->rec);
	spool__msg_free_common(base);
	free(m);
}

const struct spool_ops spool_ram_ops = {
	.name = "ram",
	.open = ram_open,
	.close = ram_close,
	.free_bytes = ram_free_bytes,
	.tx_begin = ram_tx_begin,
	.tx_spill = ram_tx_spill,
	.tx_commit = ram_tx_commit,
	.tx_discard = ram_tx_discard,
	.append_state = ram_append_state,
	.load = ram_load,
	.msg_read = ram_msg_read,
	.msg_destroy = ram_msg_destroy,
	.post = ram_post,
	.flush_count = ram_flush_count,
};

/* ---- test hooks (include/mxspool/spool.h) -------------------------------- */

int
spool_ram_fail_next(struct spool *sp, int status)
{
	if (sp == NULL || sp->ops != &spool_ram_ops || status > 0)
		return SPOOL_EINVAL;
	((struct ram *)sp->be)->fail_next = status;
	return 0;
}

int
spool_ram_set_free_bytes(struct spool *sp, uint64_t bytes)
{
	struct ram *ram;

	if (sp == NULL || sp->ops != &spool_ram_ops)
		return SPOOL_EINVAL;
	ram = sp->be;
	/* Bytes stored from now on use the room up; deletions give it back. */
	ram->free_base = bytes + ram->stored;
	return 0;
}
