/*
 * test_spool_index.c - unit tests of the spool's pure in-memory index
 * (relay/spool_index.c).  No loop, no disk, no clock: every time is an
 * argument, so each test states its own "now".
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../../relay/spool_index.h"

#define T0 ((spool_qid)1700000000000 << 20)   /* a queue id of 2023 */

struct hooks_seen {
	int adds, drops;
	uint64_t live_bytes;
};

static void
on_add(void *arg, const struct spool_index_ent *e)
{
	struct hooks_seen *h = arg;

	h->adds++;
	h->live_bytes += e->len;
}

static void
on_drop(void *arg, const struct spool_index_ent *e)
{
	struct hooks_seen *h = arg;

	h->drops++;
	h->live_bytes -= e->len;
}

static struct spool_index *
ix_new(struct hooks_seen *seen)
{
	struct spool_index_hooks hk = { on_add, on_drop, seen };
	struct spool_index *ix = spool_index_new(seen ? &hk : NULL);

	assert_non_null(ix);
	return ix;
}

/* Insert QID for tenant NAME with NRCPT recipients and 100 bytes. */
static void
put(struct spool_index *ix, const char *name, spool_qid qid, uint32_t nrcpt)
{
	int t = spool_index_tenant_get(ix, name, strlen(name));

	assert_true(t >= 0);
	assert_int_equal(spool_index_insert(ix, qid, (unsigned)t, nrcpt, 1,
	    (uint32_t)(qid - T0), 100), 0);
}

static void
test_claim_oldest_first(void **state)
{
	/* claim_next hands out the smallest queue id first whatever the
	 * insertion order, never twice, and release puts it back in order. */
	struct spool_index *ix = ix_new(NULL);
	spool_qid order[] = { T0 + 5, T0 + 1, T0 + 9, T0 + 3, T0 + 7 }, got;
	(void)state;

	for (size_t i = 0; i < 5; i++)
		put(ix, "t", order[i], 1);
	assert_int_equal(spool_index_claim_next(ix, "nobody", 0, &got), SPOOL_ENOENT);
	for (spool_qid want = T0 + 1; want <= T0 + 9; want += 2) {
		assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), 0);
		assert_int_equal(got, want);
	}
	assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), SPOOL_ENOENT);
	spool_index_release(ix, T0 + 7);
	spool_index_release(ix, T0 + 3);
	spool_index_release(ix, T0 + 3);          /* twice: no effect */
	spool_index_release(ix, T0 + 4);          /* unknown: no effect */
	assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), 0);
	assert_int_equal(got, T0 + 3);
	assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), 0);
	assert_int_equal(got, T0 + 7);
	assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), SPOOL_ENOENT);
	spool_index_free(ix);
}

static void
test_defer_due_and_retry_now(void **state)
{
	/* A deferred message is due exactly at its time, counts its attempts,
	 * next_due reports the earliest, and retry_now makes all due at once. */
	struct spool_index *ix = ix_new(NULL);
	const int64_t now = 1700000100000;
	struct spool_item it;
	spool_qid got;
	(void)state;

	put(ix, "t", T0 + 1, 1);
	put(ix, "t", T0 + 2, 1);
	put(ix, "t", T0 + 3, 1);
	assert_int_equal(spool_index_next_due_ms(ix, "t"), 0);
	assert_int_equal(spool_index_next_due_ms(ix, "nobody"), -1);
	for (int i = 0; i < 3; i++)
		assert_int_equal(spool_index_claim_next(ix, "t", now, &got), 0);
	spool_index_defer(ix, spool_index_lookup(ix, T0 + 1), now + 60000);
	spool_index_defer(ix, spool_index_lookup(ix, T0 + 2), now + 30000);
	assert_int_equal(spool_index_next_due_ms(ix, "t"), now + 30000);
	assert_int_equal(spool_index_claim_next(ix, "t", now + 29999, &got), SPOOL_ENOENT);
	assert_int_equal(spool_index_claim_next(ix, "t", now + 30000, &got), 0);
	assert_int_equal(got, T0 + 2);
	assert_int_equal(spool_index_find(ix, T0 + 2, &it), 0);
	assert_int_equal(it.attempts, 1);
	assert_true(it.claimed);
	spool_index_defer(ix, spool_index_lookup(ix, T0 + 2), now + 90000);
	assert_int_equal(spool_index_find(ix, T0 + 2, &it), 0);
	assert_int_equal(it.attempts, 2);
	assert_int_equal(it.next_attempt_ms, now + 90000);
	assert_false(it.claimed);
	/* Due at once, oldest first, without waiting. */
	assert_int_equal(spool_index_retry_now(ix, "t"), 2);
	assert_int_equal(spool_index_retry_now(ix, "nobody"), 0);
	assert_int_equal(spool_index_next_due_ms(ix, "t"), 0);
	assert_int_equal(spool_index_claim_next(ix, "t", now, &got), 0);
	assert_int_equal(got, T0 + 1);
	assert_int_equal(spool_index_claim_next(ix, "t", now, &got), 0);
	assert_int_equal(got, T0 + 2);
	/* T0+3 is still claimed: nothing is left. */
	assert_int_equal(spool_index_claim_next(ix, "t", INT64_MAX, &got), SPOOL_ENOENT);
	assert_int_equal(spool_index_next_due_ms(ix, "t"), -1);
	spool_index_free(ix);
}

static void
test_mark_rcpt_until_gone(void **state)
{
	/* Recipient states are kept per recipient, a state set back to pending
	 * is undone, and the last finished recipient removes the message and
	 * tells the backend through the drop hook. */
	struct hooks_seen seen = { 0 };
	struct spool_index *ix = ix_new(&seen);
	const uint8_t *st;
	uint32_t slot;
	(void)state;

	put(ix, "t", T0 + 1, 3);
	put(ix, "t", T0 + 2, 1);
	assert_int_equal(seen.adds, 2);
	assert_int_equal(seen.live_bytes, 200);
	slot = spool_index_lookup(ix, T0 + 1);
	assert_null(spool_index_rcpt_states(ix, slot));
	assert_false(spool_index_mark_rcpt(ix, slot, 1, SPOOL_RCPT_DELIVERED));
	assert_false(spool_index_mark_rcpt(ix, slot, 0, SPOOL_RCPT_BOUNCED));
	assert_false(spool_index_mark_rcpt(ix, slot, 0, SPOOL_RCPT_PENDING));
	st = spool_index_rcpt_states(ix, slot);
	assert_non_null(st);
	assert_int_equal(st[0], SPOOL_RCPT_PENDING);
	assert_int_equal(st[1], SPOOL_RCPT_DELIVERED);
	assert_int_equal(st[2], SPOOL_RCPT_PENDING);
	assert_false(spool_index_mark_rcpt(ix, slot, 2, SPOOL_RCPT_DELIVERED));
	assert_false(spool_index_mark_rcpt(ix, slot, 2, SPOOL_RCPT_BOUNCED));
	assert_true(spool_index_mark_rcpt(ix, slot, 0, SPOOL_RCPT_DELIVERED));
	assert_int_equal(spool_index_lookup(ix, T0 + 1), SPOOL_INDEX_NONE);
	assert_null(spool_index_at(ix, slot));
	assert_int_equal(seen.drops, 1);
	assert_int_equal(seen.live_bytes, 100);
	assert_int_equal(spool_index_total_messages(ix), 1);
	assert_int_equal(spool_index_total_bytes(ix), 100);
	/* Remove and relocate call the hooks too. */
	slot = spool_index_lookup(ix, T0 + 2);
	spool_index_relocate(ix, slot, 7, 8);
	assert_int_equal(spool_index_at(ix, slot)->seg, 7);
	assert_int_equal(seen.adds, 3);
	assert_int_equal(seen.drops, 2);
	spool_index_remove(ix, slot);
	assert_int_equal(seen.live_bytes, 0);
	assert_int_equal(spool_index_total_messages(ix), 0);
	spool_index_free(ix);
}

static void
test_quota_and_admission(void **state)
{
	/* Byte and message quotas count committed and reserved messages, the
	 * disk figure counts reserved bytes, and a tenant never limited (or
	 * no tenant) is limited by the disk only. */
	struct spool_index *ix = ix_new(NULL);
	const uint64_t big = 1ull << 40;
	int t, u;
	(void)state;

	spool_index_set_quota(ix, "t", 250, 3);
	t = spool_index_tenant_find(ix, "t", 1);
	assert_true(t >= 0);
	assert_int_equal(spool_index_admit(ix, t, 100, big, 0), 0);
	spool_index_reserve(ix, (unsigned)t, 100);
	put(ix, "t", T0 + 1, 1);                 /* 100 bytes committed */
	assert_int_equal(spool_index_admit(ix, t, 50, big, 0), 0);
	assert_int_equal(spool_index_admit(ix, t, 51, big, 0), SPOOL_EQUOTA);
	spool_index_unreserve(ix, (unsigned)t, 100);
	assert_int_equal(spool_index_admit(ix, t, 150, big, 0), 0);
	spool_index_set_quota(ix, "t", 0, 2);
	put(ix, "t", T0 + 2, 1);
	assert_int_equal(spool_index_admit(ix, t, 1, big, 0), SPOOL_EQUOTA);
	spool_index_remove(ix, spool_index_lookup(ix, T0 + 2));
	assert_int_equal(spool_index_admit(ix, t, 1, big, 0), 0);

	u = spool_index_tenant_get(ix, "u", 1);
	assert_true(u >= 0 && u != t);
	assert_int_equal(spool_index_admit(ix, u, 1000, 1000, 0), 0);
	assert_int_equal(spool_index_admit(ix, u, 1000, 1999, 1000), SPOOL_ENOSPC);
	assert_int_equal(spool_index_admit(ix, -1, 1, 1000, 1000), SPOOL_ENOSPC);
	spool_index_reserve(ix, (unsigned)u, 500);
	assert_int_equal(spool_index_admit(ix, -1, 1, 1500, 1000), SPOOL_ENOSPC);
	assert_int_equal(spool_index_admit(ix, -1, 1, 1501, 1000), 0);
	spool_index_unreserve(ix, (unsigned)u, 500);
	assert_int_equal(spool_index_admit(ix, -1, 1, 1001, 1000), 0);
	spool_index_free(ix);
}

static void
test_held_tenant(void **state)
{
	/* A held tenant yields nothing to claim_next; other tenants are not
	 * affected and release brings the queue back. */
	struct spool_index *ix = ix_new(NULL);
	spool_qid got;
	int t;
	(void)state;

	put(ix, "h", T0 + 1, 1);
	put(ix, "o", T0 + 2, 1);
	t = spool_index_tenant_find(ix, "h", 1);
	spool_index_tenant_set_held(ix, (unsigned)t, true);
	assert_true(spool_index_tenant_held(ix, (unsigned)t));
	assert_int_equal(spool_index_claim_next(ix, "h", INT64_MAX, &got), SPOOL_ENOENT);
	assert_int_equal(spool_index_claim_next(ix, "o", INT64_MAX, &got), 0);
	assert_int_equal(got, T0 + 2);
	spool_index_tenant_set_held(ix, (unsigned)t, false);
	assert_int_equal(spool_index_claim_next(ix, "h", INT64_MAX, &got), 0);
	assert_int_equal(got, T0 + 1);
	assert_string_equal(spool_index_tenant_name(ix, (unsigned)t), "h");
	assert_int_equal(spool_index_tenant_count(ix), 2);
	spool_index_free(ix);
}

struct visit {
	spool_qid seen[16];
	int n, stop_after;
};

static int
visit_cb(void *arg, const struct spool_item *it)
{
	struct visit *v = arg;

	v->seen[v->n++] = it->qid;
	return v->n == v->stop_after;
}

static void
test_foreach_find_and_stats(void **state)
{
	/* foreach lists one tenant or all, oldest first, and stops when the
	 * callback says so; find and the tenant figures agree with them. */
	struct spool_index *ix = ix_new(NULL);
	struct visit v = { .stop_after = 0 };
	struct spool_tenant_stats ts;
	struct spool_item it;
	(void)state;

	put(ix, "a", T0 + 4, 1);
	put(ix, "b", T0 + 2, 1);
	put(ix, "a", T0 + 3, 1);
	put(ix, "b", T0 + 1, 1);
	spool_index_foreach(ix, NULL, visit_cb, &v);
	assert_int_equal(v.n, 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(v.seen[i], T0 + 1 + (spool_qid)i);
	memset(&v, 0, sizeof(v));
	spool_index_foreach(ix, "a", visit_cb, &v);
	assert_int_equal(v.n, 2);
	assert_int_equal(v.seen[0], T0 + 3);
	assert_int_equal(v.seen[1], T0 + 4);
	memset(&v, 0, sizeof(v));
	v.stop_after = 1;
	spool_index_foreach(ix, NULL, visit_cb, &v);
	assert_int_equal(v.n, 1);
	memset(&v, 0, sizeof(v));
	spool_index_foreach(ix, "nobody", visit_cb, &v);
	assert_int_equal(v.n, 0);

	assert_int_equal(spool_index_find(ix, T0 + 3, &it), 0);
	assert_string_equal(it.tenant, "a");
	assert_int_equal(it.arrival_ms, spool_qid_ms(T0 + 3));
	assert_int_equal(it.size, 100);
	assert_int_equal(spool_index_find(ix, T0 + 9, &it), SPOOL_ENOENT);

	spool_index_tenant_stats(ix, "a", &ts);
	assert_int_equal(ts.messages, 2);
	assert_int_equal(ts.bytes, 200);
	assert_int_equal(ts.oldest_arrival_ms, spool_qid_ms(T0 + 3));
	spool_index_remove(ix, spool_index_lookup(ix, T0 + 3));
	spool_index_tenant_stats(ix, "a", &ts);
	assert_int_equal(ts.oldest_arrival_ms, spool_qid_ms(T0 + 4));
	spool_index_tenant_stats(ix, "nobody", &ts);
	assert_int_equal(ts.messages, 0);
	assert_int_equal(ts.oldest_arrival_ms, -1);
	spool_index_free(ix);
}

static void
test_bulk_load_and_qids(void **state)
{
	/* A bulk load (recovery) builds the heaps and calls the add hook once
	 * per live entry at the end; queue ids stay unique and ordered even
	 * when the clock steps back or recovery saw a later id. */
	struct hooks_seen seen = { 0 };
	struct spool_index *ix = ix_new(&seen);
	spool_qid got, a, b;
	int t;
	(void)state;

	spool_index_bulk_begin(ix);
	t = spool_index_tenant_get(ix, "t", 1);
	for (uint32_t i = 0; i < 100; i++)
		assert_int_equal(spool_index_insert(ix, T0 + 100 - i, (unsigned)t, 1,
		    1, i, 10), 0);
	spool_index_remove(ix, spool_index_lookup(ix, T0 + 50));
	spool_index_set_retry(ix, spool_index_lookup(ix, T0 + 1), 5000, 3);
	assert_int_equal(seen.adds, 0);
	assert_int_equal(spool_index_bulk_end(ix), 99);
	assert_int_equal(seen.adds, 99);
	assert_int_equal(seen.live_bytes, 990);
	assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), 0);
	assert_int_equal(got, T0 + 2);           /* T0+1 waits until 5000 */
	assert_int_equal(spool_index_claim_next(ix, "t", 5000, &got), 0);
	assert_int_equal(got, T0 + 1);

	spool_index_qid_seen(ix, T0 + 1000);
	a = spool_index_qid_next(ix, 1700000000000);
	b = spool_index_qid_next(ix, 1600000000000);
	assert_int_equal(a, T0 + 1001);
	assert_true(b > a);
	assert_int_equal(spool_index_qid_next(ix, 1800000000000),
	    (spool_qid)1800000000000 << 20);
	spool_index_free(ix);
}

static void
test_entry_stays_compact(void **state)
{
	/* The index costs tens of bytes per message (DESIGN.md): 40 for the
	 * entry plus the hash and heap slots, for 100,000 messages. */
	struct spool_index *ix = ix_new(NULL);
	enum { N = 100000 };
	size_t per;
	int t;
	(void)state;

	assert_int_equal(sizeof(struct spool_index_ent), 40);
	spool_index_bulk_begin(ix);
	t = spool_index_tenant_get(ix, "t", 1);
	for (uint32_t i = 0; i < N; i++)
		assert_int_equal(spool_index_insert(ix, T0 + i, (unsigned)t, 1, 1,
		    i, 1000), 0);
	assert_int_equal(spool_index_bulk_end(ix), N);
	per = spool_index_mem_bytes(ix) / N;
	assert_true(per >= 40);
	assert_true(per <= 64);
	assert_int_equal(spool_index_total_messages(ix), N);
	spool_index_free(ix);
}


/* ---- the clock-driven walk ------------------------------------------------ */

/* The queue id of a message that arrived MS after T0 (sequence SEQ). */
static spool_qid
qat(int64_t ms, unsigned seq)
{
	return T0 + ((spool_qid)ms << 20) + seq;
}

static int64_t
ms_of(int64_t ms)
{
	return spool_qid_ms(T0) + ms;
}

struct aged {
	unsigned n, stop_at;          /* stop_at: return 1 on that call (1-based) */
	spool_qid qid[64];
	enum spool_age what[64];
	bool claimed[64], warned[64];
	struct spool_index *ix;
	bool mark;                    /* set the warned flag of WARN items */
};

static int
aged_cb(void *arg, const struct spool_item *it, enum spool_age what)
{
	struct aged *a = arg;

	if (a->n < 64) {
		a->qid[a->n] = it->qid;
		a->what[a->n] = what;
		a->claimed[a->n] = it->claimed;
		a->warned[a->n] = it->warned;
	}
	a->n++;
	if (a->mark && what == SPOOL_AGE_WARN)
		spool_index_set_warned(a->ix, spool_index_lookup(a->ix, it->qid));
	return a->stop_at != 0 && a->n == a->stop_at;
}

static void
test_walk_order_and_cursor(void **state)
{
	/* Ten messages one second apart.  Expired ones come first, oldest
	 * first, on every call; warnings once each (the cursor), never for an
	 * expired or warned one; a claimed expired one is visited, flagged. */
	struct spool_index *ix = ix_new(NULL);
	struct aged a = { 0 };
	spool_qid got;
	(void)state;

	for (unsigned i = 0; i < 10; i++)
		put(ix, "t", qat(i * 1000, 0), 1);
	put(ix, "other", qat(500, 0), 1);
	assert_int_equal(spool_index_claim_next(ix, "t", 0, &got), 0);
	assert_int_equal(got, qat(0, 0));
	spool_index_set_warned(ix, spool_index_lookup(ix, qat(4000, 0)));
	a.ix = ix;
	assert_int_equal(spool_index_walk_aged(ix, "t", ms_of(2500), ms_of(6500),
	    100, aged_cb, &a), 6);
	for (unsigned i = 0; i < 3; i++) {
		assert_int_equal(a.qid[i], qat(i * 1000, 0));
		assert_int_equal(a.what[i], SPOOL_AGE_EXPIRED);
		assert_int_equal(a.claimed[i], i == 0);
	}
	/* 3, 5, 6 warned; 4 already was. */
	assert_int_equal(a.qid[3], qat(3000, 0));
	assert_int_equal(a.qid[4], qat(5000, 0));
	assert_int_equal(a.qid[5], qat(6000, 0));
	for (unsigned i = 3; i < 6; i++) {
		assert_int_equal(a.what[i], SPOOL_AGE_WARN);
		assert_false(a.warned[i]);
	}
	/* Again: the expired ones again, no warning again (not marked, but
	 * the cursor passed them); a later warn_before offers the next. */
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_index_walk_aged(ix, "t", ms_of(2500), ms_of(6500),
	    100, aged_cb, &a), 3);
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_index_walk_aged(ix, "t", INT64_MIN, ms_of(7000),
	    100, aged_cb, &a), 1);
	assert_int_equal(a.qid[0], qat(7000, 0));
	/* MAX and a callback that stops: the stopping one is offered again. */
	memset(&a, 0, sizeof(a));
	a.stop_at = 1;
	assert_int_equal(spool_index_walk_aged(ix, "t", INT64_MIN, INT64_MAX,
	    100, aged_cb, &a), 1);
	assert_int_equal(a.qid[0], qat(8000, 0));
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_index_walk_aged(ix, "t", INT64_MIN, INT64_MAX,
	    1, aged_cb, &a), 1);
	assert_int_equal(a.qid[0], qat(8000, 0));
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_index_walk_aged(ix, "t", INT64_MIN, INT64_MAX,
	    100, aged_cb, &a), 1);
	assert_int_equal(a.qid[0], qat(9000, 0));
	/* NULL: every tenant; an unknown tenant: nothing. */
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_index_walk_aged(ix, NULL, ms_of(600), INT64_MIN,
	    100, aged_cb, &a), 2);
	assert_int_equal(spool_index_walk_aged(ix, "nobody", INT64_MAX, INT64_MAX,
	    100, aged_cb, &a), 0);
	spool_index_free(ix);
}

static int
count_cb(void *arg, const struct spool_item *it, enum spool_age what)
{
	unsigned *n = arg;

	(void)it;
	(void)what;
	(*n)++;
	return 0;
}

static void
test_walk_cost_100k(void **state)
{
	/* 100 000 messages, one per ms.  The warn cursor hands out each once
	 * across calls of MAX 1000; a call with nothing new visits nothing;
	 * delivered messages at the front are dropped when the expiry passes
	 * them; after 90% are gone the FIFO and the index memory shrink. */
	enum { N = 100000 };
	struct spool_index *ix = ix_new(NULL);
	unsigned total = 0, calls = 0, n;
	size_t mem_full, mem_after;
	(void)state;

	for (unsigned i = 0; i < N; i++)
		put(ix, "t", qat(i, 0), 1);
	mem_full = spool_index_mem_bytes(ix);
	while ((n = spool_index_walk_aged(ix, "t", INT64_MIN, ms_of(N), 1000,
	    count_cb, &total)) > 0) {
		assert_int_equal(n, 1000);
		calls++;
	}
	assert_int_equal(total, N);
	assert_int_equal(calls, N / 1000);
	assert_int_equal(spool_index_walk_aged(ix, "t", INT64_MIN, ms_of(N), 1000,
	    count_cb, &total), 0);
	/* Deliver the oldest 1000: a walk over them drops their ids. */
	for (unsigned i = 0; i < 1000; i++)
		assert_true(spool_index_mark_rcpt(ix, spool_index_lookup(ix,
		    qat(i, 0)), 0, SPOOL_RCPT_DELIVERED));
	assert_int_equal(spool_index_fifo_len(ix, "t"), N);
	total = 0;
	assert_int_equal(spool_index_walk_aged(ix, "t", ms_of(1009), INT64_MIN,
	    1000, count_cb, &total), 10);
	assert_int_equal(spool_index_fifo_len(ix, "t"), N - 1000);
	/* Deliver 90% in all (every id i % 10 != 9): dead ids never outnumber
	 * the live ones for long. */
	for (unsigned i = 1000; i < N; i++) {
		uint32_t slot = spool_index_lookup(ix, qat(i, 0));

		if (i % 10 != 9)
			assert_true(spool_index_mark_rcpt(ix, slot, 0,
			    SPOOL_RCPT_DELIVERED));
		assert_true(spool_index_fifo_len(ix, "t") <=
		    2 * spool_index_total_messages(ix) + 32);
	}
	assert_int_equal(spool_index_total_messages(ix), 9900);
	mem_after = spool_index_mem_bytes(ix);
	/* The FIFO gave back its room (the entry array and hash keep theirs). */
	assert_true(mem_after < mem_full);
	total = 0;
	assert_int_equal(spool_index_walk_aged(ix, "t", ms_of(N), INT64_MIN,
	    100000, count_cb, &total), 9900);
	spool_index_free(ix);
}

static void
test_walk_after_bulk_load(void **state)
{
	/* A bulk load (recovery) inserts in replay order; the walk still goes
	 * by queue id, and removals during the bulk leave nothing behind. */
	struct spool_index *ix = ix_new(NULL);
	struct aged a = { 0 };
	unsigned order[] = { 5, 1, 9, 3, 7, 2 };
	(void)state;

	spool_index_bulk_begin(ix);
	for (unsigned i = 0; i < 6; i++)
		put(ix, "t", qat(order[i] * 1000, 0), 1);
	spool_index_remove(ix, spool_index_lookup(ix, qat(2000, 0)));
	spool_index_set_warned(ix, spool_index_lookup(ix, qat(3000, 0)));
	assert_int_equal(spool_index_bulk_end(ix), 5);
	assert_int_equal(spool_index_fifo_len(ix, "t"), 5);
	a.ix = ix;
	assert_int_equal(spool_index_walk_aged(ix, "t", ms_of(1000), INT64_MAX,
	    100, aged_cb, &a), 4);
	assert_int_equal(a.qid[0], qat(1000, 0));
	assert_int_equal(a.what[0], SPOOL_AGE_EXPIRED);
	assert_int_equal(a.qid[1], qat(5000, 0));
	assert_int_equal(a.qid[2], qat(7000, 0));
	assert_int_equal(a.qid[3], qat(9000, 0));
	assert_int_equal(a.what[3], SPOOL_AGE_WARN);
	spool_index_free(ix);
}

static void
test_caps_per_tenant(void **state)
{
	struct spool_index *ix = ix_new(NULL);
	struct spool_caps c = { .ext = 5, .size_max = 1000, .rcpt_max = 7,
	    .mail_max = 3, .seen_ms = 42 }, got;
	int t = spool_index_tenant_get(ix, "t", 1);
	(void)state;

	assert_false(spool_index_tenant_caps(ix, (unsigned)t, &got));
	spool_index_tenant_set_caps(ix, (unsigned)t, &c);
	assert_true(spool_index_tenant_caps(ix, (unsigned)t, &got));
	assert_int_equal(got.ext, c.ext);
	assert_int_equal(got.size_max, c.size_max);
	assert_int_equal(got.rcpt_max, c.rcpt_max);
	assert_int_equal(got.mail_max, c.mail_max);
	assert_int_equal(got.seen_ms, c.seen_ms);
	spool_index_free(ix);
}

static int
keep_cb(void *arg, const struct spool_item *it, enum spool_age what)
{
	unsigned *n = arg;

	(void)it;
	n[what == SPOOL_AGE_WARN]++;
	return 0;
}

/* 1500 expired messages the caller leaves in place (bounces in back-off)
 * fill the expiry pass's MAX on every call; the warnings behind them are
 * still offered, from their own budget. */
static void
test_walk_expired_do_not_starve_warnings(void **state)
{
	struct spool_index *ix = ix_new(NULL);
	unsigned n[2] = { 0, 0 };
	(void)state;

	for (unsigned i = 0; i < 1500; i++)
		put(ix, "t", qat(i, 0), 1);
	for (unsigned i = 0; i < 10; i++)
		put(ix, "t", qat(5000 + i, 0), 1);
	for (int call = 0; call < 3; call++)
		(void)spool_index_walk_aged(ix, "t", ms_of(2000), ms_of(6000), 1000,
		    keep_cb, n);
	assert_int_equal(n[0], 3 * 1000);
	assert_int_equal(n[1], 10);
	spool_index_free(ix);
}

static bool
keep_odd(void *arg, const struct spool_item *it)
{
	(void)arg;
	return (it->qid & 1) != 0;
}

static void
test_page(void **state)
{
	/* spool_index_page: the MAX smallest ids above AFTER, ascending, for
	 * one tenant or all, filtered by KEEP; pages are disjoint and cover
	 * the queue whatever the insertion order. */
	struct spool_index *ix = ix_new(NULL);
	spool_qid out[64], all[64];
	size_t n, total = 0;
	spool_qid after = 0;
	(void)state;

	for (int i = 0; i < 40; i++)
		put(ix, i % 3 ? "a" : "b", T0 + (spool_qid)((i * 17) % 40) + 1, 1);
	assert_int_equal(spool_index_page(ix, NULL, 0, 5, NULL, NULL, out), 5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(out[i], T0 + 1 + (spool_qid)i);
	while ((n = spool_index_page(ix, NULL, after, 7, NULL, NULL, out)) > 0) {
		for (size_t i = 0; i < n; i++) {
			if (total > 0)
				assert_true(out[i] > all[total - 1]);
			all[total++] = out[i];
		}
		after = out[n - 1];
	}
	assert_int_equal(total, 40);
	assert_int_equal(all[39], T0 + 40);
	n = spool_index_page(ix, NULL, T0 + 10, 100, keep_odd, NULL, out);
	for (size_t i = 0; i < n; i++)
		assert_true((out[i] & 1) && out[i] > T0 + 10);
	assert_int_equal(n, 15);
	n = spool_index_page(ix, "b", 0, 100, NULL, NULL, out);
	assert_int_equal(n, 14);
	assert_int_equal(spool_index_page(ix, "nobody", 0, 10, NULL, NULL, out), 0);
	assert_int_equal(spool_index_page(ix, NULL, 0, 0, NULL, NULL, out), 0);
	spool_index_free(ix);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_claim_oldest_first),
		cmocka_unit_test(test_page),
		cmocka_unit_test(test_defer_due_and_retry_now),
		cmocka_unit_test(test_mark_rcpt_until_gone),
		cmocka_unit_test(test_quota_and_admission),
		cmocka_unit_test(test_held_tenant),
		cmocka_unit_test(test_foreach_find_and_stats),
		cmocka_unit_test(test_bulk_load_and_qids),
		cmocka_unit_test(test_entry_stays_compact),
		cmocka_unit_test(test_walk_order_and_cursor),
		cmocka_unit_test(test_walk_cost_100k),
		cmocka_unit_test(test_walk_after_bulk_load),
		cmocka_unit_test(test_walk_expired_do_not_starve_warnings),
		cmocka_unit_test(test_caps_per_tenant),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
