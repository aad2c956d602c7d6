/*
 * test_spool_load.c - the journal's background load
 * (spool_options.index_background, relay/spool_recover.c): the daemon takes
 * mail while the old segments are scanned on the loop.
 *
 * The load is slowed to one record per loop iteration
 * (index_step_records = 1) so that appends, deletes and refusals happen
 * while it runs; every test checks that the index it ends with is the one
 * the synchronous scan builds from the same files, plus this run's changes,
 * and that nothing comes back or goes missing at the next open.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mxspool/spool.h"

struct lctx {
	uv_loop_t loop;
	struct spool *sp;
	char dir[64];
	struct spool_options opts;
	struct spool_recovery_stats st;
	int indexed;                  /* on_indexed ran */
	int indexed_status;
	struct spool_recovery_stats indexed_st;
};

struct qset {
	spool_qid *v;
	size_t n, cap;
};

static int
unlink_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb; (void)type; (void)ftw;
	return remove(path);
}

static void
on_indexed(void *arg, int status, const struct spool_recovery_stats *st)
{
	struct lctx *c = arg;

	c->indexed = 1;
	c->indexed_status = status;
	c->indexed_st = *st;
}

static void
lctx_init(struct lctx *c)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->dir, "/tmp/mxspool-load-XXXXXX");
	assert_non_null(mkdtemp(c->dir));
	assert_int_equal(uv_loop_init(&c->loop), 0);
	c->opts.dir = c->dir;
	c->opts.segment_size = 16384;     /* many segments */
	c->opts.on_indexed = on_indexed;
	c->opts.on_indexed_arg = c;
}

/* Run the loop until *FLAG; fails the test after 20 s. */
static void
spin(struct lctx *c, volatile int *flag)
{
	uint64_t t0 = uv_now(&c->loop);

	while (!*flag) {
		uv_run(&c->loop, UV_RUN_NOWAIT);
		if (*flag)
			break;
		usleep(100);
		uv_update_time(&c->loop);
		assert_true(uv_now(&c->loop) - t0 < 20000);
	}
}

static void
set_flag(void *arg)
{
	*(int *)arg = 1;
}

static void
lopen(struct lctx *c, bool background)
{
	c->opts.index_background = background;
	c->opts.index_step_records = background ? 1 : 0;
	c->indexed = 0;
	assert_int_equal(spool_open(&c->loop, &c->opts, &c->sp, &c->st), 0);
}

static void
lclose(struct lctx *c)
{
	int done = 0;

	spool_close(c->sp, set_flag, &done);
	spin(c, &done);
	c->sp = NULL;
}

static void
lend(struct lctx *c)
{
	if (c->sp != NULL)
		lclose(c);
	assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&c->loop), 0);
	(void)nftw(c->dir, unlink_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- writing ----------------------------------------------------------- */

struct pending {
	int left;
	int failed;
};

static void
on_commit(void *arg, int status, spool_qid qid)
{
	struct pending *p = arg;

	(void)qid;
	if (status != 0)
		p->failed++;
	p->left--;
}

static void
on_state(void *arg, int status)
{
	struct pending *p = arg;

	if (status != 0)
		p->failed++;
	p->left--;
}

static void
wait_pending(struct lctx *c, struct pending *p)
{
	int done = 0;
	uint64_t t0 = uv_now(&c->loop);

	while (p->left > 0) {
		uv_run(&c->loop, UV_RUN_NOWAIT);
		usleep(100);
		uv_update_time(&c->loop);
		assert_true(uv_now(&c->loop) - t0 < 20000);
	}
	(void)done;
	assert_int_equal(p->failed, 0);
}

/* N messages of LEN bytes for TENANT with two recipients, committed
 * together (group commit); their queue ids go to OUT. */
static void
append_many(struct lctx *c, const char *tenant, size_t n, size_t len,
    spool_qid *out)
{
	struct spool_rcpt rc[2] = {
		{ "a@example.test", NULL, 0 }, { "b@example.test", NULL, 0 },
	};
	struct spool_envelope env = {
		.tenant = (char *)tenant, .sender = "s@example.org",
		.ret = ENV_RET_HDRS, .body = ENV_BODY_7BIT, .nrcpt = 2, .rcpt = rc,
	};
	struct pending p = { (int)n, 0 };
	uint8_t body[2048];

	assert_true(len <= sizeof(body));
	memset(body, 'x', len);
	for (size_t i = 0; i < n; i++) {
		struct spool_tx *tx;

		assert_int_equal(spool_tx_begin(c->sp, &env, &tx), 0);
		assert_int_equal(spool_tx_write(tx, body, len, NULL, NULL), 0);
		out[i] = spool_tx_qid(tx);
		assert_int_equal(spool_tx_commit(tx, on_commit, &p), 0);
	}
	wait_pending(c, &p);
}

/* ---- reading the index ------------------------------------------------- */

static int
collect_cb(void *arg, const struct spool_item *it)
{
	struct qset *s = arg;

	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 256;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		assert_non_null(s->v);
	}
	/* The attempt count rides in the low bits: deferrals must replay too. */
	s->v[s->n++] = it->qid ^ ((spool_qid)it->attempts << 60);
	return 0;
}

static int
qcmp(const void *a, const void *b)
{
	spool_qid x = *(const spool_qid *)a, y = *(const spool_qid *)b;

	return x < y ? -1 : x > y;
}

static struct qset
snapshot(struct lctx *c)
{
	struct qset s = { 0 };

	spool_foreach(c->sp, NULL, collect_cb, &s);
	if (s.n > 0)
		qsort(s.v, s.n, sizeof(*s.v), qcmp);
	return s;
}

static void
assert_same(const struct qset *a, const struct qset *b)
{
	assert_int_equal(a->n, b->n);
	for (size_t i = 0; i < a->n; i++)
		assert_true(a->v[i] == b->v[i]);
}

static void
qset_add(struct qset *s, spool_qid q)
{
	collect_cb(s, &(struct spool_item){ .qid = q });
	qsort(s->v, s->n, sizeof(*s->v), qcmp);
}

static void
qset_del(struct qset *s, spool_qid q)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->v[i] == q) {
			memmove(s->v + i, s->v + i + 1, (s->n - i - 1) * sizeof(*s->v));
			s->n--;
			return;
		}
	fail_msg("queue id not in the set");
}

/*
 * An old spool whose state records sit in later segments than their
 * messages: N messages, then every 5th deleted, every 3rd with one
 * recipient delivered, every 9th with both (gone), every 7th deferred.
 * OLD gets the queue ids written.
 */
enum { NOLD = 1200 };

static void
build_old(struct lctx *c, spool_qid *old)
{
	struct pending p = { 0, 0 };

	lopen(c, false);
	append_many(c, "acme", NOLD / 2, 300, old);
	append_many(c, "beta", NOLD / 2, 300, old + NOLD / 2);
	for (size_t i = 0; i < NOLD; i++) {
		int rc = 0;

		p.left++;
		if (i % 5 == 0)
			rc = spool_delete(c->sp, old[i], on_state, &p);
		else if (i % 9 == 0) {
			assert_int_equal(spool_mark_rcpt(c->sp, old[i], 0,
			    SPOOL_RCPT_DELIVERED, on_state, &p), 0);
			p.left++;
			rc = spool_mark_rcpt(c->sp, old[i], 1, SPOOL_RCPT_BOUNCED,
			    on_state, &p);
		} else if (i % 3 == 0)
			rc = spool_mark_rcpt(c->sp, old[i], 0, SPOOL_RCPT_DELIVERED,
			    on_state, &p);
		else if (i % 7 == 0)
			rc = spool_defer(c->sp, old[i], 4102444800000, on_state, &p);
		else
			p.left--;
		assert_int_equal(rc, 0);
		if (i % 100 == 99)
			wait_pending(c, &p);
	}
	wait_pending(c, &p);
	lclose(c);
}

/* ---- tests ------------------------------------------------------------- */

static void
test_background_equals_scan(void **state)
{
	struct lctx c;
	spool_qid old[NOLD], nq[4], got, maxold = 0;
	struct qset a, b, after;
	struct pending p = { 0, 0 };
	uint64_t done, total;
	(void)state;

	lctx_init(&c);
	build_old(&c, old);
	lopen(&c, false);
	a = snapshot(&c);
	assert_true(a.n > NOLD / 2 && a.n < NOLD);
	lclose(&c);
	for (size_t i = 0; i < NOLD; i++)
		if (old[i] > maxold)
			maxold = old[i];

	lopen(&c, true);
	assert_true(spool_index_loading(c.sp, &done, &total));
	assert_true(total > 0 && done < total);
	/* Nothing old is handed out, changed or expired meanwhile. */
	assert_int_equal(spool_claim_next(c.sp, "acme", 0, &got), SPOOL_ENOENT);
	assert_true(spool_next_due_ms(c.sp, "acme") > 0);
	assert_int_equal(spool_set_held(c.sp, "acme", true, NULL, NULL), SPOOL_EBUSY);
	assert_int_equal(spool_delete(c.sp, old[1], NULL, NULL), SPOOL_EBUSY);
	assert_int_equal(spool_delete(c.sp, old[NOLD - 1], NULL, NULL), SPOOL_EBUSY);
	/* New mail is taken, gets queue ids above every old one, and can be
	 * deleted while the load runs. */
	append_many(&c, "acme", 4, 500, nq);
	for (int i = 0; i < 4; i++)
		assert_true(nq[i] > maxold);
	assert_true(spool_index_loading(c.sp, NULL, NULL));
	p.left = 1;
	assert_int_equal(spool_delete(c.sp, nq[0], on_state, &p), 0);
	wait_pending(&c, &p);
	assert_true(spool_index_loading(c.sp, NULL, NULL));

	spin(&c, &c.indexed);
	assert_int_equal(c.indexed_status, 0);
	assert_false(spool_index_loading(c.sp, &done, &total));
	assert_int_equal(done, total);
	assert_int_equal(c.indexed_st.messages, a.n + 3);
	b = snapshot(&c);
	for (int i = 1; i < 4; i++)
		qset_add(&a, nq[i]);
	assert_same(&a, &b);
	/* Now the old mail drains, and may be changed again. */
	assert_int_equal(spool_claim_next(c.sp, "beta", 0, &got), 0);
	spool_release(c.sp, got);
	p.left = 1;
	assert_int_equal(spool_delete(c.sp, old[1], on_state, &p), 0);
	wait_pending(&c, &p);
	qset_del(&a, old[1]);
	lclose(&c);

	/* The next scan agrees: nothing deleted came back, nothing is lost. */
	lopen(&c, false);
	after = snapshot(&c);
	assert_same(&a, &after);
	lend(&c);
	free(a.v);
	free(b.v);
	free(after.v);
}

static void
test_quota_counts_unscanned(void **state)
{
	struct lctx c;
	spool_qid old[NOLD];
	(void)state;

	lctx_init(&c);
	build_old(&c, old);
	lopen(&c, true);
	/* About 700 messages are queued; the unscanned bytes could hold many
	 * more, so a message quota of 1000 is full until the scan knows. */
	spool_set_quota(c.sp, "acme", 0, 1000);
	spool_set_quota(c.sp, "gamma", 0, 0);
	assert_int_equal(spool_check(c.sp, "acme", 100), SPOOL_EQUOTA);
	assert_int_equal(spool_check(c.sp, "gamma", 100), 0);
	spin(&c, &c.indexed);
	assert_int_equal(spool_check(c.sp, "acme", 100), 0);
	lend(&c);
}

static void
test_close_while_loading(void **state)
{
	struct lctx c;
	spool_qid old[NOLD], nq[3];
	struct qset a, b;
	(void)state;

	lctx_init(&c);
	build_old(&c, old);
	lopen(&c, false);
	a = snapshot(&c);
	lclose(&c);

	lopen(&c, true);
	append_many(&c, "beta", 3, 100, nq);
	assert_true(spool_index_loading(c.sp, NULL, NULL));
	lclose(&c);                  /* a stop in the middle of the load */
	assert_int_equal(c.indexed, 0);

	lopen(&c, false);
	b = snapshot(&c);
	for (int i = 0; i < 3; i++)
		qset_add(&a, nq[i]);
	assert_same(&a, &b);
	lend(&c);
	free(a.v);
	free(b.v);
}

/* The newest segment's path (journal/NNNNNNNNNNNN.seg). */
static void
newest_segment(const char *dir, char *out, size_t len)
{
	char jdir[128];
	struct dirent *de;
	DIR *d;

	snprintf(jdir, sizeof(jdir), "%s/journal", dir);
	assert_non_null(d = opendir(jdir));
	out[0] = '\0';
	while ((de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".seg") != NULL &&
		    (out[0] == '\0' || strcmp(de->d_name, strrchr(out, '/') + 1) > 0))
			assert_true((size_t)snprintf(out, len, "%s/%.64s", jdir,
			    de->d_name) < len);
	(void)closedir(d);
	assert_true(out[0] != '\0');
}

static void
test_torn_tail_cut_in_background(void **state)
{
	struct lctx c;
	spool_qid q[40], nq[1];
	char path[512];
	struct stat sb;
	struct qset a;
	(void)state;

	lctx_init(&c);
	lopen(&c, false);
	append_many(&c, "acme", 40, 200, q);
	lclose(&c);
	/* A crash in the middle of the last record. */
	newest_segment(c.dir, path, sizeof(path));
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(truncate(path, sb.st_size - 10), 0);

	lopen(&c, true);
	append_many(&c, "acme", 1, 200, nq);
	spin(&c, &c.indexed);
	assert_int_equal(c.indexed_status, 0);
	assert_true(c.indexed_st.torn_bytes > 0);
	/* 39 old + the new one, whose commit may end after the load did. */
	assert_true(c.indexed_st.messages >= 39 && c.indexed_st.messages <= 40);
	assert_int_equal(spool_total_messages(c.sp), 40);
	lclose(&c);
	lopen(&c, false);
	a = snapshot(&c);
	assert_int_equal(a.n, 40);
	assert_int_equal(c.st.torn_bytes, 0);           /* cut once */
	lend(&c);
	free(a.v);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_background_equals_scan),
		cmocka_unit_test(test_quota_counts_unscanned),
		cmocka_unit_test(test_close_while_loading),
		cmocka_unit_test(test_torn_tail_cut_in_background),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
