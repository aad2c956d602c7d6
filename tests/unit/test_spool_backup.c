/*
 * test_spool_backup.c - unit tests of the online backup of the journal
 * spool (relay/spool_backup.c): what the copy holds, links against copies,
 * backups while the spool is written, refusals, and a close in the middle.
 *
 * Every test runs a real libuv loop over fresh directories under /tmp with
 * 4 KiB segments (so a few dozen messages make many segments), and ends by
 * asserting that the loop closes with no live handle or request.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mxspool/spool.h"
#include "mxspool/spool_backup.h"

#define NMSG 30
#define MSG_BYTES 1000

struct ctx {
	uv_loop_t loop;
	struct spool *sp;
	char dir[64], bk[96];
	struct spool_options opts;
};

struct bwait {
	int done, progress, status;
	struct spool_backup_progress last;
};

static int
rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb; (void)type; (void)ftw;
	return remove(path);
}

static void
on_flag(void *arg)
{
	*(int *)arg = 1;
}

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
		assert_true(uv_now(&c->loop) - t0 < 20000);
	}
}

static void
ctx_init(struct ctx *c, const char *bkbase)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->dir, "/tmp/mxspool-bk-XXXXXX");
	assert_non_null(mkdtemp(c->dir));
	snprintf(c->bk, sizeof(c->bk), "%s/copy", bkbase ? bkbase : c->dir);
	assert_int_equal(uv_loop_init(&c->loop), 0);
	c->opts.dir = c->dir;
	c->opts.segment_size = 4096;
	assert_int_equal(spool_open(&c->loop, &c->opts, &c->sp, NULL), 0);
}

static void
sp_close(struct ctx *c, struct spool **sp)
{
	int done = 0;

	spool_close(*sp, on_flag, &done);
	run_until(c, &done);
	*sp = NULL;
}

static void
ctx_end(struct ctx *c)
{
	if (c->sp != NULL)
		sp_close(c, &c->sp);
	assert_int_equal(uv_run(&c->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&c->loop), 0);
	(void)nftw(c->bk, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	(void)nftw(c->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

struct wait {
	int done, status;
};

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
	(void)qid;
	on_done(arg, status);
}

/* One message of MSG_BYTES, one recipient; its queue id once durable. */
static spool_qid
append(struct ctx *c)
{
	struct spool_rcpt r = { "a@example.test", NULL, 0 };
	struct spool_envelope env = { .tenant = "t", .sender = "s@example.org",
	    .nrcpt = 1, .rcpt = &r };
	uint8_t data[MSG_BYTES];
	struct spool_tx *tx;
	struct wait w = { 0, -1 };
	spool_qid qid;

	memset(data, 'm', sizeof(data));
	assert_int_equal(spool_tx_begin(c->sp, &env, &tx), 0);
	assert_int_equal(spool_tx_write(tx, data, sizeof(data), on_done, &w), 0);
	qid = spool_tx_qid(tx);
	assert_int_equal(spool_tx_commit(tx, on_commit, &w), 0);
	run_until(c, &w.done);
	assert_int_equal(w.status, 0);
	return qid;
}

static void
on_backup(void *arg, int status, const struct spool_backup_progress *p, bool done)
{
	struct bwait *b = arg;

	b->last = *p;
	b->status = status;
	if (done)
		b->done = 1;
	else
		b->progress++;
}

/* The copy at C->bk, opened: how many messages, and is each of IDS there. */
static uint64_t
copy_check(struct ctx *c, const spool_qid *ids, size_t n, bool want)
{
	struct spool_options o = { .dir = c->bk, .segment_size = 4096 };
	struct spool *cp;
	struct spool_item it;
	uint64_t total;

	assert_int_equal(spool_open(&c->loop, &o, &cp, NULL), 0);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(spool_find(cp, ids[i], &it) == 0, want);
	total = spool_total_messages(cp);
	sp_close(c, &cp);
	return total;
}

/* The copy holds every live message and none deleted or delivered; closed
 * segments are hard links, the active one a copy cut at its durable end. */
static void
test_backup_holds_live_not_gone(void **state)
{
	struct ctx c;
	struct bwait b = { 0 };
	struct spool_backup *h;
	spool_qid ids[NMSG];
	struct wait w = { 0 };
	struct stat a, l;
	char p1[256], p2[256];

	(void)state;
	ctx_init(&c, NULL);
	for (size_t i = 0; i < NMSG; i++)
		ids[i] = append(&c);
	for (size_t i = 0; i < 5; i++) {
		w.done = 0;
		assert_int_equal(spool_delete(c.sp, ids[i], on_done, &w), 0);
		run_until(&c, &w.done);
	}
	w.done = 0;
	assert_int_equal(spool_mark_rcpt(c.sp, ids[10], 0, SPOOL_RCPT_DELIVERED,
	    on_done, &w), 0);
	run_until(&c, &w.done);

	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	run_until(&c, &b.done);
	assert_int_equal(b.status, 0);
	assert_true(b.progress >= 2);
	assert_int_equal(b.last.messages, NMSG - 6);
	assert_int_equal(b.last.segments_done, b.last.segments);
	assert_int_equal(b.last.bytes_done, b.last.bytes);
	assert_true(b.last.linked >= 3);
	assert_int_equal(b.last.copied, 1);            /* the active segment */
	assert_true(b.last.snapshot_segno > 0);
	/* A closed segment is the live file itself (same inode). */
	snprintf(p1, sizeof(p1), "%s/journal/%012llu.seg", c.dir,
	    (unsigned long long)b.last.snapshot_segno - 1);
	snprintf(p2, sizeof(p2), "%s/journal/%012llu.seg", c.bk,
	    (unsigned long long)b.last.snapshot_segno - 1);
	assert_int_equal(stat(p1, &a), 0);
	assert_int_equal(stat(p2, &l), 0);
	assert_true(a.st_ino == l.st_ino);
	snprintf(p2, sizeof(p2), "%s/BACKUP", c.bk);
	assert_int_equal(access(p2, R_OK), 0);

	assert_int_equal(copy_check(&c, ids + 11, NMSG - 11, true), NMSG - 6);
	assert_int_equal(copy_check(&c, ids, 5, false), NMSG - 6);
	assert_int_equal(copy_check(&c, ids + 10, 1, false), NMSG - 6);
	/* A second backup into a folder that holds a spool is refused. */
	b.done = 0;
	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	run_until(&c, &b.done);
	assert_int_equal(b.status, -EEXIST);
	ctx_end(&c);
}

/* Written while it runs: everything acknowledged before the start is in the
 * copy, and the live spool goes on taking mail. */
static void
test_backup_while_writing(void **state)
{
	struct ctx c;
	struct bwait b = { 0 };
	struct spool_backup *h;
	spool_qid ids[NMSG], more[10];

	(void)state;
	ctx_init(&c, NULL);
	for (size_t i = 0; i < NMSG; i++)
		ids[i] = append(&c);
	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	for (size_t i = 0; i < 10; i++)
		more[i] = append(&c);   /* runs the loop: the backup goes on too */
	run_until(&c, &b.done);
	assert_int_equal(b.status, 0);
	assert_true(copy_check(&c, ids, NMSG, true) >= NMSG);
	assert_int_equal(spool_total_messages(c.sp), NMSG + 10);
	(void)more;
	ctx_end(&c);
}

/* The barrier: a deletion queued (not yet durable, the commit window holds
 * it back 100 ms) when the backup starts is in the copy all the same. */
static void
test_backup_waits_for_queued_records(void **state)
{
	struct ctx c;
	struct bwait b = { 0 };
	struct spool_backup *h;
	struct wait w = { 0 };
	spool_qid ids[5];

	(void)state;
	ctx_init(&c, NULL);
	for (size_t i = 0; i < 5; i++)
		ids[i] = append(&c);
	sp_close(&c, &c.sp);
	c.opts.commit_window_ms = 100;
	assert_int_equal(spool_open(&c.loop, &c.opts, &c.sp, NULL), 0);
	assert_int_equal(spool_delete(c.sp, ids[2], on_done, &w), 0);
	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	run_until(&c, &b.done);
	assert_int_equal(b.status, 0);
	assert_int_equal(w.done, 1);    /* the delete was durable first */
	assert_int_equal(b.last.messages, 4);
	assert_int_equal(copy_check(&c, ids + 2, 1, false), 4);
	ctx_end(&c);
}

/* One at a time; only the journal; only absolute folders; a caller that
 * detaches hears nothing more; a close stops the backup with ECLOSED. */
static void
test_backup_refusals_and_close(void **state)
{
	struct ctx c;
	struct bwait b = { 0 }, b2 = { 0 };
	struct spool_backup *h, *h2;
	struct spool_options ro = { .backend = "ram" };
	struct spool *ram;
	int closed = 0;

	(void)state;
	ctx_init(&c, NULL);
	for (size_t i = 0; i < NMSG; i++)
		(void)append(&c);
	assert_int_equal(spool_backup_start(c.sp, "relative/dir", on_backup, &b, &h),
	    SPOOL_EINVAL);
	assert_int_equal(spool_open(&c.loop, &ro, &ram, NULL), 0);
	assert_int_equal(spool_backup_start(ram, c.bk, on_backup, &b, &h), SPOOL_EINVAL);
	sp_close(&c, &ram);

	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b2, &h2), -EBUSY);
	spool_backup_detach(h);
	spool_close(c.sp, on_flag, &closed);
	run_until(&c, &closed);
	c.sp = NULL;
	assert_int_equal(b.done, 0);   /* detached: never called */
	ctx_end(&c);

	/* Not detached: the close ends it with SPOOL_ECLOSED (or it finished). */
	memset(&b, 0, sizeof(b));
	ctx_init(&c, NULL);
	for (size_t i = 0; i < NMSG; i++)
		(void)append(&c);
	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	closed = 0;
	spool_close(c.sp, on_flag, &closed);
	run_until(&c, &closed);
	c.sp = NULL;
	assert_int_equal(b.done, 1);
	assert_true(b.status == SPOOL_ECLOSED || b.status == 0);
	ctx_end(&c);
}

/* On another file system every segment is copied, none linked. */
static void
test_backup_other_fs_copies(void **state)
{
	struct ctx c;
	struct bwait b = { 0 };
	struct spool_backup *h;
	struct stat s1, s2;
	char base[64] = "/dev/shm/mxspool-bk-XXXXXX";

	(void)state;
	if (stat("/dev/shm", &s2) != 0 || stat("/tmp", &s1) != 0 ||
	    s1.st_dev == s2.st_dev || mkdtemp(base) == NULL) {
		skip();
		return;
	}
	ctx_init(&c, base);
	for (size_t i = 0; i < NMSG; i++)
		(void)append(&c);
	assert_int_equal(spool_backup_start(c.sp, c.bk, on_backup, &b, &h), 0);
	run_until(&c, &b.done);
	assert_int_equal(b.status, 0);
	assert_int_equal(b.last.linked, 0);
	assert_int_equal(b.last.copied, b.last.segments);
	assert_int_equal(copy_check(&c, NULL, 0, true), NMSG);
	ctx_end(&c);
	(void)rmdir(base);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backup_holds_live_not_gone),
		cmocka_unit_test(test_backup_while_writing),
		cmocka_unit_test(test_backup_waits_for_queued_records),
		cmocka_unit_test(test_backup_refusals_and_close),
		cmocka_unit_test(test_backup_other_fs_copies),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
