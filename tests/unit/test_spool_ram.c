/*
 * test_spool_ram.c - contract tests of the spool API run against both
 * storage backends ("journal" in a mkdtemp directory, "ram"), so that they
 * provably behave the same for callers; then the RAM backend's test hooks.
 *
 * Every test runs a real libuv loop, checks that no callback runs inside
 * the call that asked for it, and ends by asserting that the loop closes
 * with no live handle or request.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxspool/spool.h"

struct ctx {
	uv_loop_t loop;
	struct spool *sp;
	char dir[64];
	struct spool_options opts;
};

struct wait {
	int done;
	int status;
	spool_qid qid;
};

static int64_t fake_now = 1700000000000;
static int64_t fake_clock(void) { return fake_now; }

/* ---- helpers ----------------------------------------------------------- */

static int
rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb; (void)type; (void)ftw;
	return remove(path);
}

static void
ctx_open(struct ctx *c, void **state)
{
	memset(c, 0, sizeof(*c));
	assert_int_equal(uv_loop_init(&c->loop), 0);
	c->opts.backend = *state;
	c->opts.now_ms = fake_clock;
	if (strcmp(c->opts.backend, "journal") == 0) {
		strcpy(c->dir, "/tmp/mxspool-ram-XXXXXX");
		assert_non_null(mkdtemp(c->dir));
		c->opts.dir = c->dir;
	}
	assert_int_equal(spool_open(&c->loop, &c->opts, &c->sp, NULL), 0);
}

/* Run the loop until *FLAG is set; fails the test after 10 s. */
static void
run_until(struct ctx *c, volatile int *flag)
{
	uint64_t t0 = uv_now(&c->loop);

	while (!*flag) {
		uv_run(&c->loop, UV_RUN_NOWAIT);
		if (*flag)
			break;
		usleep(200);
		uv_update_time(&c->loop);
		assert_true(uv_now(&c->loop) - t0 < 10000);
	}
}

static void
on_closed(void *arg)
{
	*(int *)arg = 1;
}

static void
ctx_end(struct ctx *c)
{
	int done = 0;

	spool_close(c->sp, on_closed, &done);
	assert_int_equal(done, 0);                /* later, on the loop */
	run_until(c, &done);
	assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&c->loop), 0);
	if (c->dir[0] != '\0')
		(void)nftw(c->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void
on_done(void *arg, int status)
{
	struct wait *w = arg;

	w->status = status;
	w->done = 1;
}

static void
on_commit(void *arg, int status, spool_qid qid)
{
	struct wait *w = arg;

	w->status = status;
	w->qid = qid;
	w->done = 1;
}

static struct spool_rcpt rcpts[3] = {
	{ "a@example.test", "rfc822;a@example.test", ENV_NOTIFY_FAILURE },
	{ "b@example.test", NULL, 0 },
	{ "c@example.test", NULL, ENV_NOTIFY_NEVER },
};

/* Write LEN bytes (byte i = i * 7) to a new message of TENANT and commit;
 * returns the commit callback's status (or the call's). */
static int
append(struct ctx *c, const char *tenant, size_t nrcpt, size_t len,
    spool_qid *qid)
{
	struct spool_envelope env = {
		.tenant = (char *)tenant, .sender = "s@example.org",
		.envid = "ENV1", .ret = ENV_RET_HDRS, .body = ENV_BODY_8BITMIME,
		.client = "helo [127.0.0.1]", .nrcpt = nrcpt, .rcpt = rcpts,
	};
	uint8_t chunk[10000];
	struct spool_tx *tx;
	struct wait w = { 0 };
	int rc;

	rc = spool_tx_begin(c->sp, &env, &tx);
	if (rc != 0)
		return rc;
	for (size_t off = 0; off < len; off += sizeof(chunk)) {
		size_t n = len - off < sizeof(chunk) ? len - off : sizeof(chunk);

		for (size_t i = 0; i < n; i++)
			chunk[i] = (uint8_t)((off + i) * 7);
		rc = spool_tx_write(tx, chunk, n, on_done, &w);
		if (rc == SPOOL_PENDING) {
			assert_int_equal(w.done, 0);
			run_until(c, &w.done);
			assert_int_equal(w.status, 0);
			w.done = 0;
		} else
			assert_int_equal(rc, 0);
	}
	*qid = spool_tx_qid(tx);
	if ((rc = spool_tx_commit(tx, on_commit, &w)) != 0)
		return rc;
	assert_int_equal(w.done, 0);
	run_until(c, &w.done);
	assert_int_equal(w.qid, *qid);
	return w.status;
}

struct reader {
	struct spool_msg *m;
	int status, done;
	size_t len;
	bool bytes_ok;
};

static void
on_load(void *arg, int status, struct spool_msg *m)
{
	struct reader *r = arg;

	r->status = status;
	r->m = m;
	r->done = 1;
}

static void
on_read(void *arg, int status, const void *buf, size_t len)
{
	struct reader *r = arg;
	const uint8_t *p = buf;

	r->status = status;
	for (size_t i = 0; status == 0 && i < len; i++)
		if (p[i] != (uint8_t)((r->len + i) * 7))
			r->bytes_ok = false;
	r->len += len;
	r->done = len == 0 || status != 0 ? 2 : 1;
}

/* Load QID and read it all; the caller frees r->m. */
static void
load_all(struct ctx *c, spool_qid qid, struct reader *r)
{
	memset(r, 0, sizeof(*r));
	r->bytes_ok = true;
	assert_int_equal(spool_load(c->sp, qid, on_load, r), 0);
	assert_int_equal(r->done, 0);
	run_until(c, &r->done);
	assert_int_equal(r->status, 0);
	for (;;) {
		r->done = 0;
		assert_int_equal(spool_msg_read(r->m, r->len, 30000, on_read, r), 0);
		assert_int_equal(r->done, 0);
		run_until(c, &r->done);
		if (r->done == 2)
			break;
	}
	assert_int_equal(r->status, 0);
}

/* Run a state call's callback to completion and return its status. */
static int
settle(struct ctx *c, struct wait *w)
{
	assert_int_equal(w->done, 0);
	run_until(c, &w->done);
	w->done = 0;
	return w->status;
}

/* ---- contract tests, both backends ------------------------------------- */

static void
test_commit_load_read(void **state)
{
	/* A committed message (spilled past the 64 KiB buffer or not) loads
	 * with its envelope and reads back byte for byte, in chunks. */
	struct ctx c;
	struct reader r;
	const struct spool_envelope *e;
	spool_qid q1, q2;

	ctx_open(&c, state);
	assert_int_equal(append(&c, "t", 3, 1000, &q1), 0);
	assert_int_equal(append(&c, "t", 1, 200000, &q2), 0);
	assert_true(q2 > q1);
	load_all(&c, q1, &r);
	assert_int_equal(r.len, 1000);
	assert_true(r.bytes_ok);
	assert_int_equal(spool_msg_size(r.m), 1000);
	assert_int_equal(spool_msg_qid(r.m), q1);
	assert_int_equal(spool_msg_attempts(r.m), 0);
	e = spool_msg_envelope(r.m);
	assert_string_equal(e->tenant, "t");
	assert_string_equal(e->sender, "s@example.org");
	assert_string_equal(e->envid, "ENV1");
	assert_int_equal(e->nrcpt, 3);
	assert_string_equal(e->rcpt[0].orcpt, "rfc822;a@example.test");
	assert_int_equal(e->rcpt[2].notify, ENV_NOTIFY_NEVER);
	assert_int_equal(e->ret, ENV_RET_HDRS);
	assert_int_equal(e->body, ENV_BODY_8BITMIME);
	assert_int_equal(e->arrival_ms, fake_now);
	spool_msg_free(r.m);
	load_all(&c, q2, &r);
	assert_int_equal(r.len, 200000);
	assert_true(r.bytes_ok);
	spool_msg_free(r.m);
	assert_int_equal(spool_load(c.sp, q1 + 12345, on_load, &r), SPOOL_ENOENT);
	assert_int_equal(spool_total_messages(c.sp), 2);
	ctx_end(&c);
}

static void
test_claim_defer_hold(void **state)
{
	/* Claim order, deferral, release, retry_now and holding a tenant
	 * behave the same on both backends. */
	struct ctx c;
	spool_qid q[3], got;
	struct spool_item it;
	struct wait w = { 0 };

	ctx_open(&c, state);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(append(&c, "t", 1, 10, &q[i]), 0);
		fake_now += 10;
	}
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), 0);
	assert_int_equal(got, q[0]);
	assert_int_equal(spool_defer(c.sp, q[0], fake_now + 60000, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_find(c.sp, q[0], &it), 0);
	assert_int_equal(it.attempts, 1);
	assert_int_equal(it.next_attempt_ms, fake_now + 60000);
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), 0);
	assert_int_equal(got, q[1]);
	spool_release(c.sp, q[1]);
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), 0);
	assert_int_equal(got, q[1]);
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), 0);
	assert_int_equal(got, q[2]);
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), SPOOL_ENOENT);
	assert_int_equal(spool_next_due_ms(c.sp, "t"), fake_now + 60000);
	assert_int_equal(spool_retry_now(c.sp, "t"), 1);
	spool_release(c.sp, q[1]);
	spool_release(c.sp, q[2]);

	assert_int_equal(spool_set_held(c.sp, "t", true, on_done, &w), 0);
	assert_true(spool_is_held(c.sp, "t"));
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), SPOOL_ENOENT);
	assert_int_equal(spool_set_held(c.sp, "t", false, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_false(spool_is_held(c.sp, "t"));
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), 0);
	assert_int_equal(got, q[0]);
	spool_release(c.sp, q[0]);
	ctx_end(&c);
}

static int
count_cb(void *arg, const struct spool_item *it)
{
	(void)it;
	++*(int *)arg;
	return 0;
}

static void
test_mark_delete_stats(void **state)
{
	/* Recipient states show in a load, the last recipient and a delete
	 * remove the message, and the figures follow. */
	struct ctx c;
	struct spool_tenant_stats ts;
	struct wait w = { 0 };
	struct reader r;
	spool_qid q1, q2;
	int n = 0;

	ctx_open(&c, state);
	assert_int_equal(append(&c, "t", 3, 500, &q1), 0);
	assert_int_equal(append(&c, "t", 1, 500, &q2), 0);
	spool_tenant_stats(c.sp, "t", &ts);
	assert_int_equal(ts.messages, 2);
	assert_true(ts.bytes > 1000 && ts.bytes < 1400);
	assert_int_equal(ts.bytes, spool_total_bytes(c.sp));
	assert_int_equal(ts.oldest_arrival_ms, (int64_t)(q1 >> 20));
	assert_int_equal(spool_mark_rcpt(c.sp, q1, 1, SPOOL_RCPT_DELIVERED,
	    on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_mark_rcpt(c.sp, q1, 3, SPOOL_RCPT_DELIVERED,
	    on_done, &w), SPOOL_EINVAL);
	load_all(&c, q1, &r);
	assert_int_equal(spool_msg_rcpt_state(r.m, 0), SPOOL_RCPT_PENDING);
	assert_int_equal(spool_msg_rcpt_state(r.m, 1), SPOOL_RCPT_DELIVERED);
	/* Freeing a message whose spool entry goes away is fine either way. */
	assert_int_equal(spool_mark_rcpt(c.sp, q1, 0, SPOOL_RCPT_BOUNCED, NULL,
	    NULL), 0);
	assert_int_equal(spool_mark_rcpt(c.sp, q1, 2, SPOOL_RCPT_DELIVERED,
	    on_done, &w), 0);
	/* The last mark takes the message out once it is stored. */
	assert_int_equal(spool_find(c.sp, q1, &(struct spool_item){ 0 }), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_find(c.sp, q1, &(struct spool_item){ 0 }), SPOOL_ENOENT);
	spool_msg_free(r.m);
	assert_int_equal(spool_delete(c.sp, q2, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_delete(c.sp, q2, on_done, &w), SPOOL_ENOENT);
	spool_foreach(c.sp, NULL, count_cb, &n);
	assert_int_equal(n, 0);
	assert_int_equal(spool_total_messages(c.sp), 0);
	assert_int_equal(spool_total_bytes(c.sp), 0);
	spool_tenant_stats(c.sp, "t", &ts);
	assert_int_equal(ts.oldest_arrival_ms, -1);
	ctx_end(&c);
}

static void
test_quota_reserve_abort(void **state)
{
	/* Quotas refuse with SPOOL_EQUOTA, the disk reserve with SPOOL_ENOSPC,
	 * and an aborted transaction (spilled, or while spilling) leaves
	 * nothing behind. */
	struct ctx c;
	struct spool_envelope env = { .tenant = "t", .sender = "", .nrcpt = 1,
	    .rcpt = rcpts };
	static uint8_t big[100000];
	struct spool_tx *tx;
	struct wait w = { 0 };
	spool_qid q, x;

	ctx_open(&c, state);
	spool_set_quota(c.sp, "small", 0, 1);
	assert_int_equal(append(&c, "small", 1, 10, &q), 0);
	assert_int_equal(spool_check(c.sp, "small", 10), SPOOL_EQUOTA);
	assert_int_equal(append(&c, "small", 1, 10, &x), SPOOL_EQUOTA);
	assert_int_equal(spool_check(c.sp, "other", 10), 0);
	spool_set_disk_reserve(c.sp, UINT64_MAX / 4);
	assert_int_equal(spool_check(c.sp, NULL, 1), SPOOL_ENOSPC);
	assert_int_equal(append(&c, "other", 1, 10, &x), SPOOL_ENOSPC);
	spool_set_disk_reserve(c.sp, 0);

	assert_int_equal(spool_tx_begin(c.sp, &env, &tx), 0);
	assert_int_equal(spool_tx_write(tx, big, sizeof(big), on_done, &w), SPOOL_PENDING);
	assert_int_equal(spool_tx_write(tx, big, 1, on_done, &w), SPOOL_EINVAL);
	assert_int_equal(spool_tx_commit(tx, on_commit, &w), SPOOL_EINVAL);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_tx_size(tx), sizeof(big));
	spool_tx_abort(tx);
	assert_int_equal(spool_tx_begin(c.sp, &env, &tx), 0);
	assert_int_equal(spool_tx_write(tx, big, sizeof(big), on_done, &w), SPOOL_PENDING);
	spool_tx_abort(tx);                       /* the spill is running */
	assert_int_equal(spool_total_messages(c.sp), 1);
	ctx_end(&c);
}

static void
test_close_with_work_in_flight(void **state)
{
	/* Commits and state records issued just before spool_close still get
	 * their callbacks; calls after it get SPOOL_ECLOSED; the loop closes. */
	struct ctx c;
	struct spool_envelope env = { .tenant = "t", .sender = "a@b", .nrcpt = 1,
	    .rcpt = rcpts };
	struct wait w[3];
	struct spool_tx *tx;
	spool_qid q;
	int done = 0;

	ctx_open(&c, state);
	memset(w, 0, sizeof(w));
	assert_int_equal(append(&c, "t", 1, 10, &q), 0);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(spool_tx_begin(c.sp, &env, &tx), 0);
		assert_int_equal(spool_tx_write(tx, "x\r\n", 3, on_done, NULL), 0);
		assert_int_equal(spool_tx_commit(tx, on_commit, &w[i]), 0);
	}
	assert_int_equal(spool_defer(c.sp, q, fake_now + 1000, on_done, &w[2]), 0);
	spool_close(c.sp, on_closed, &done);
	assert_int_equal(spool_check(c.sp, NULL, 1), SPOOL_ECLOSED);
	assert_int_equal(spool_tx_begin(c.sp, &env, &tx), SPOOL_ECLOSED);
	assert_int_equal(spool_delete(c.sp, q, on_done, &w[2]), SPOOL_ECLOSED);
	run_until(&c, &done);
	for (int i = 0; i < 3; i++) {
		assert_true(w[i].done);
		assert_int_equal(w[i].status, 0);
	}
	assert_int_equal(uv_run(&c.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&c.loop), 0);
	if (c.dir[0] != '\0')
		(void)nftw(c.dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the backend choice and the RAM test hooks ------------------------- */

static void
test_backend_names(void **state)
{
	/* An unknown backend name is SPOOL_EINVAL; the hooks refuse a journal
	 * spool; the journal still needs a directory. */
	uv_loop_t loop;
	struct spool *sp = NULL;
	struct spool_options o = { .backend = "floppy" };
	char dir[] = "/tmp/mxspool-ram-XXXXXX";
	int done = 0;
	(void)state;

	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(spool_open(&loop, &o, &sp, NULL), SPOOL_EINVAL);
	o.backend = NULL;
	assert_int_equal(spool_open(&loop, &o, &sp, NULL), SPOOL_EINVAL);
	assert_non_null(mkdtemp(dir));
	o.dir = dir;
	o.backend = "journal";
	assert_int_equal(spool_open(&loop, &o, &sp, NULL), 0);
	assert_int_equal(spool_ram_fail_next(sp, SPOOL_EIO), SPOOL_EINVAL);
	assert_int_equal(spool_ram_set_free_bytes(sp, 0), SPOOL_EINVAL);
	spool_close(sp, on_closed, &done);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_true(done);
	assert_int_equal(uv_loop_close(&loop), 0);
	(void)nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void
test_ram_fail_next(void **state)
{
	/* fail_next makes the next commit report SPOOL_EIO with nothing
	 * stored, then the next state record, once each; later ones succeed. */
	struct ctx c;
	struct wait w = { 0 };
	spool_qid q, x;

	ctx_open(&c, state);
	assert_int_equal(spool_ram_fail_next(c.sp, 1), SPOOL_EINVAL);
	assert_int_equal(spool_ram_fail_next(c.sp, SPOOL_EIO), 0);
	assert_int_equal(append(&c, "t", 1, 10, &x), SPOOL_EIO);
	assert_int_equal(spool_find(c.sp, x, &(struct spool_item){ 0 }), SPOOL_ENOENT);
	assert_int_equal(spool_total_messages(c.sp), 0);
	assert_int_equal(append(&c, "t", 1, 10, &q), 0);
	assert_int_equal(spool_ram_fail_next(c.sp, SPOOL_EIO), 0);
	assert_int_equal(spool_defer(c.sp, q, fake_now + 5000, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), SPOOL_EIO);
	assert_int_equal(spool_next_due_ms(c.sp, "t"), fake_now + 5000);
	assert_int_equal(spool_ram_fail_next(c.sp, SPOOL_ENOSPC), 0);
	assert_int_equal(spool_ram_fail_next(c.sp, 0), 0);   /* cancelled */
	assert_int_equal(spool_delete(c.sp, q, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	ctx_end(&c);
}

static void
test_state_durable_before_index(void **state)
{
	/* A delete or recipient mark changes the queue only once its record is
	 * stored: while a DELETE is in flight the message stays listed but
	 * cannot be claimed, and a failed DELETE or mark (the fsync error
	 * path) leaves the message queued, claimable and unchanged. */
	struct ctx c;
	struct wait w = { 0 };
	struct spool_item it;
	spool_qid q, got;

	ctx_open(&c, state);
	assert_int_equal(append(&c, "t", 2, 10, &q), 0);
	assert_int_equal(spool_delete(c.sp, q, on_done, &w), 0);
	assert_int_equal(spool_find(c.sp, q, &it), 0);
	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), SPOOL_ENOENT);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_find(c.sp, q, &it), SPOOL_ENOENT);

	assert_int_equal(append(&c, "t", 2, 10, &q), 0);
	assert_int_equal(spool_ram_fail_next(c.sp, SPOOL_EIO), 0);
	assert_int_equal(spool_delete(c.sp, q, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), SPOOL_EIO);
	assert_int_equal(spool_find(c.sp, q, &it), 0);
	assert_false(it.claimed);
	assert_int_equal(spool_total_messages(c.sp), 1);

	assert_int_equal(spool_claim_next(c.sp, "t", fake_now, &got), 0);
	assert_int_equal(got, q);
	assert_int_equal(spool_mark_rcpt(c.sp, q, 0, SPOOL_RCPT_DELIVERED,
	    on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_ram_fail_next(c.sp, SPOOL_EIO), 0);
	assert_int_equal(spool_mark_rcpt(c.sp, q, 1, SPOOL_RCPT_DELIVERED,
	    on_done, &w), 0);
	assert_int_equal(settle(&c, &w), SPOOL_EIO);
	/* The second recipient is still to be delivered. */
	assert_int_equal(spool_find(c.sp, q, &it), 0);
	assert_int_equal(spool_mark_rcpt(c.sp, q, 1, SPOOL_RCPT_DELIVERED,
	    on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_find(c.sp, q, &it), SPOOL_ENOENT);
	ctx_end(&c);
}

static void
test_ram_free_bytes(void **state)
{
	/* set_free_bytes drives admission against the disk reserve, stored
	 * messages use the room up and deleted ones give it back. */
	struct ctx c;
	struct wait w = { 0 };
	struct spool_item it;
	spool_qid q, x;

	ctx_open(&c, state);
	spool_set_disk_reserve(c.sp, 1000);
	assert_int_equal(spool_ram_set_free_bytes(c.sp, 1500), 0);
	assert_int_equal(spool_check(c.sp, NULL, 400), 0);
	assert_int_equal(spool_check(c.sp, NULL, 501), SPOOL_ENOSPC);
	assert_int_equal(append(&c, "t", 1, 10, &q), 0);
	assert_int_equal(spool_find(c.sp, q, &it), 0);
	assert_int_equal(spool_check(c.sp, NULL, 500 - it.size), 0);
	assert_int_equal(spool_check(c.sp, NULL, 501 - it.size), SPOOL_ENOSPC);
	assert_int_equal(spool_ram_set_free_bytes(c.sp, 999), 0);
	assert_int_equal(spool_check(c.sp, "t", 1), SPOOL_ENOSPC);
	assert_int_equal(append(&c, "t", 1, 10, &x), SPOOL_ENOSPC);
	assert_int_equal(spool_delete(c.sp, q, on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	/* Free is 999 + the message's bytes again, the reserve 1000. */
	assert_int_equal(spool_check(c.sp, NULL, it.size - 1), 0);
	assert_int_equal(spool_check(c.sp, NULL, it.size), SPOOL_ENOSPC);
	ctx_end(&c);
}


struct age_seen {
	unsigned n;
	spool_qid qid[16];
	enum spool_age what[16];
	bool warned[16];
};

static int
age_cb(void *arg, const struct spool_item *it, enum spool_age what)
{
	struct age_seen *a = arg;

	if (a->n < 16) {
		a->qid[a->n] = it->qid;
		a->what[a->n] = what;
		a->warned[a->n] = it->warned;
	}
	a->n++;
	return 0;
}

static void
test_walk_aged_and_warned(void **state)
{
	/* Three messages 1 s apart: the oldest expired, the next two warned
	 * once each; mark_warned shows in find and skips the message from
	 * then on; marking twice writes nothing but still calls back later. */
	struct ctx c;
	struct age_seen a = { 0 };
	struct wait w = { 0 };
	struct spool_item it;
	spool_qid q[3];
	int64_t t0 = fake_now;

	ctx_open(&c, state);
	for (int i = 0; i < 3; i++) {
		fake_now = t0 + i * 1000;
		assert_int_equal(append(&c, "acme", 1, 10, &q[i]), 0);
	}
	fake_now = t0;
	assert_int_equal(spool_walk_aged(c.sp, "acme", t0, t0 + 2000, 10, age_cb,
	    &a), 3);
	assert_int_equal(a.qid[0], q[0]);
	assert_int_equal(a.what[0], SPOOL_AGE_EXPIRED);
	assert_int_equal(a.qid[1], q[1]);
	assert_int_equal(a.what[1], SPOOL_AGE_WARN);
	assert_int_equal(a.what[2], SPOOL_AGE_WARN);
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_walk_aged(c.sp, "acme", t0, t0 + 2000, 10, age_cb,
	    &a), 1);
	assert_int_equal(spool_find(c.sp, q[1], &it), 0);
	assert_false(it.warned);
	assert_int_equal(spool_mark_warned(c.sp, q[1], on_done, &w), 0);
	assert_int_equal(w.done, 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_find(c.sp, q[1], &it), 0);
	assert_true(it.warned);
	assert_int_equal(spool_mark_warned(c.sp, q[1], on_done, &w), 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(spool_mark_warned(c.sp, 12345, on_done, &w), SPOOL_ENOENT);
	memset(&a, 0, sizeof(a));
	assert_int_equal(spool_walk_aged(c.sp, "acme", t0 + 1000, INT64_MAX, 10,
	    age_cb, &a), 2);
	assert_true(a.warned[1]);
	assert_int_equal(a.what[1], SPOOL_AGE_EXPIRED);
	ctx_end(&c);
}

static void
test_caps_set_get(void **state)
{
	/* Unknown until set; equal caps (a newer seen_ms) write nothing but
	 * call back later, and get shows the newer time; a change is kept. */
	struct ctx c;
	struct wait w = { 0 };
	struct spool_caps caps = { .ext = 0x11, .size_max = 10485760,
	    .rcpt_max = 100, .mail_max = 0, .seen_ms = 1000 }, got;

	ctx_open(&c, state);
	assert_false(spool_get_caps(c.sp, "acme", &got));
	assert_int_equal(spool_set_caps(c.sp, "acme", &caps, on_done, &w), 0);
	assert_int_equal(w.done, 0);
	assert_true(spool_get_caps(c.sp, "acme", &got));
	assert_int_equal(settle(&c, &w), 0);
	assert_int_equal(got.ext, caps.ext);
	assert_int_equal(got.size_max, caps.size_max);
	assert_int_equal(got.rcpt_max, caps.rcpt_max);
	assert_int_equal(got.seen_ms, caps.seen_ms);
	caps.seen_ms = 2000;
	assert_int_equal(spool_set_caps(c.sp, "acme", &caps, on_done, &w), 0);
	assert_int_equal(w.done, 0);
	assert_int_equal(settle(&c, &w), 0);
	assert_true(spool_get_caps(c.sp, "acme", &got));
	assert_int_equal(got.seen_ms, 2000);
	caps.size_max = 0;
	assert_int_equal(spool_set_caps(c.sp, "acme", &caps, NULL, NULL), 0);
	assert_true(spool_get_caps(c.sp, "acme", &got));
	assert_int_equal(got.size_max, 0);
	assert_false(spool_get_caps(c.sp, "other", &got));
	assert_int_equal(spool_set_caps(c.sp, "", &caps, NULL, NULL), SPOOL_EINVAL);
	assert_int_equal(spool_set_caps(c.sp, NULL, &caps, NULL, NULL), SPOOL_EINVAL);
	ctx_end(&c);
}

#define BOTH(fn) \
	cmocka_unit_test_prestate(fn, "journal"), \
	cmocka_unit_test_prestate(fn, "ram")

int
main(void)
{
	const struct CMUnitTest tests[] = {
		BOTH(test_commit_load_read),
		BOTH(test_claim_defer_hold),
		BOTH(test_mark_delete_stats),
		BOTH(test_quota_reserve_abort),
		BOTH(test_close_with_work_in_flight),
		BOTH(test_walk_aged_and_warned),
		BOTH(test_caps_set_get),
		cmocka_unit_test(test_backend_names),
		cmocka_unit_test_prestate(test_ram_fail_next, "ram"),
		cmocka_unit_test_prestate(test_ram_free_bytes, "ram"),
		cmocka_unit_test_prestate(test_state_durable_before_index, "ram"),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
