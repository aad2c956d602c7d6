/*
 * spool_backup.c - the online backup of the journal spool (spool_backup.h).
 *
 * Steps, each a job on the threadpool, chained from the loop thread:
 *
 *   1 prepare   create DIR, refuse one that holds a journal, start (or
 *               empty) DIR/journal.partial.
 *   2 barrier   (loop thread) wait until every flush job that holds a record
 *               queued before the backup began has returned from its
 *               fdatasync, and no unlink is in flight.  From the start the
 *               journal keeps every segment (j->backup is set: maint_check
 *               neither unlinks nor compacts).
 *   3 snapshot  (loop thread) the segment list and, for each segment, the
 *               size the journal knows durable: for a closed segment its
 *               whole length, for the active one the end of the last
 *               completed flush job.  Records appended later lie beyond it.
 *   4 segments  one job per closed segment (a hard link, or a copy when DIR
 *               is on another file system or the file is longer than its
 *               durable size), one job per 16 MiB of a copied segment; each
 *               copy is fdatasync'd.  Progress is reported after each job.
 *   5 finish    fsync DIR/journal.partial, write DIR/BACKUP (what was
 *               copied), rename journal.partial to journal, fsync DIR.  A
 *               directory with a `journal` in it is always complete.
 *
 * Why the copy is consistent: replay reads segments in number order and
 * needs, for a message, its MSG record and the state records after it.  A
 * message acknowledged before the backup began had its record covered by a
 * completed fdatasync, so it lies inside the snapshot sizes; a delivery or
 * deletion recorded before the backup began is inside them too (the
 * barrier).  Compaction cannot move a message out of the copied range or
 * unlink a segment not yet copied, because it does not run meanwhile.
 * Hard links share the inode with the live spool: the daemon never writes a
 * closed segment again (new records always go to a new segment after
 * recovery), so neither side can change what the other reads.  A hard link
 * is no protection against the loss of that file system: back up to another
 * one for that.
 *
 * The journal is touched only on the loop thread.  The backup holds one of
 * the journal's requests (nreqs) from start to end, so spool_close waits
 * for it; a close makes it stop after the job in flight, with
 * SPOOL_ECLOSED.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mxspool/spool.h"
#include "mxspool/spool_backup.h"
#include "mxspool/util.h"
#include "spool_backend.h"
#include "spool_journal.h"

#define BK_CHUNK       (16ull * 1024 * 1024)   /* bytes copied per job */
#define BK_BUF         (1u * 1024 * 1024)      /* read/write buffer */
#define BK_POLL_MS     2                       /* barrier check period */

enum bk_step { BK_PREPARE, BK_SEG, BK_FINISH };

struct bk_seg {
	uint64_t no;
	uint64_t len;                 /* durable bytes to take */
	bool active;                  /* copy up to LEN, never link */
};

struct spool_backup {
	struct spool *sp;
	struct journal *j;
	spool_backup_cb cb;           /* NULL once detached */
	void *arg;
	char *dir, *partial, *final, *src_jdir;
	uv_work_t req;
	uv_timer_t timer;
	enum bk_step step;
	int status;                   /* of the job just done */
	uint64_t target_syncs;        /* the barrier: j->nsyncs to reach */
	struct bk_seg *segs;
	size_t nsegs, cur;
	uint64_t off;                 /* within segs[cur] */
	bool no_link;                 /* link() refused once: copy the rest */
	bool did_link;                /* the job just done linked its file */
	uint8_t *buf;
	int64_t t0;                   /* monotonic */
	int64_t started_ms;           /* wall clock */
	struct spool_backup_progress prog;
};

static void bk_next(struct spool_backup *b);

/* ---- threadpool ---------------------------------------------------------- */

static int
bk_fsync_path(const char *path, bool dir)
{
	int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* Empty a journal.partial left by a backup that failed or was cut short. */
static int
bk_empty_dir(const char *dir)
{
	char path[4096];
	int rc = 0;

	for (int pass = 0; pass < 2 && rc == 0; pass++) {
		DIR *d = opendir(dir);
		struct dirent *de;

		if (d == NULL)
			return errno == ENOENT ? 0 : -errno;
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			if (unlink(path) != 0 && errno != ENOENT)
				rc = -errno;
		}
		(void)closedir(d);
	}
	return rc;
}

static int
bk_prepare(struct spool_backup *b)
{
	struct stat st;
	int rc;

	if (util_mkdir_p(b->dir, 0700) != 0)
		return -errno;
	if (stat(b->final, &st) == 0)
		return -EEXIST;   /* never mix two spools in one folder */
	if (errno != ENOENT)
		return -errno;
	if ((rc = bk_empty_dir(b->partial)) != 0)
		return rc;
	if (mkdir(b->partial, 0700) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Copy [b->off, b->off + n) of SRC into DST at the same offset. */
static int
bk_copy_range(struct spool_backup *b, int src, int dst, uint64_t n)
{
	uint64_t off = b->off, end = b->off + n;

	while (off < end) {
		size_t want = end - off < BK_BUF ? (size_t)(end - off) : BK_BUF;
		ssize_t r = pread(src, b->buf, want, (off_t)off), w = 0;

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : SPOOL_EIO;   /* shorter than durable */
		while (w < r) {
			ssize_t k = pwrite(dst, b->buf + w, (size_t)(r - w), (off_t)(off + (uint64_t)w));

			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				return k < 0 ? -errno : SPOOL_EIO;
			w += k;
		}
		off += (uint64_t)r;
	}
	return 0;
}

/* One job of segment segs[cur]: a link, or the next chunk of a copy. */
static int
bk_seg_job(struct spool_backup *b)
{
	const struct bk_seg *s = &b->segs[b->cur];
	char src[4096], dst[4096];
	uint64_t n;
	struct stat st;
	int sfd, dfd, rc = 0;

	b->did_link = false;
	spool__seg_path(src, sizeof(src), b->src_jdir, s->no);
	spool__seg_path(dst, sizeof(dst), b->partial, s->no);
	if (b->off == 0 && !s->active && !b->no_link &&
	    stat(src, &st) == 0 && (uint64_t)st.st_size == s->len) {
		if (link(src, dst) == 0) {
			b->did_link = true;
			return 0;
		}
		if (errno != EXDEV && errno != EPERM && errno != EMLINK &&
		    errno != EOPNOTSUPP)
			return -errno;
		b->no_link = true;   /* another file system: copy from now on */
	}
	if ((sfd = open(src, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	dfd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC | (b->off == 0 ? O_TRUNC : 0), 0600);
	if (dfd < 0) {
		rc = -errno;
		(void)close(sfd);
		return rc;
	}
	n = s->len - b->off < BK_CHUNK ? s->len - b->off : BK_CHUNK;
	rc = bk_copy_range(b, sfd, dfd, n);
	/* The copy is durable before the folder is called complete. */
	if (rc == 0 && b->off + n == s->len && fdatasync(dfd) != 0)
		rc = -errno;
	if (close(dfd) != 0 && rc == 0)
		rc = -errno;
	(void)close(sfd);
	return rc;
}

/* DIR/BACKUP: what the copy holds, for the operator (key=value lines). */
static int
bk_write_info(struct spool_backup *b)
{
	char path[4096], text[1024];
	int fd, n, rc = 0;

	snprintf(path, sizeof(path), "%s/BACKUP", b->dir);
	n = snprintf(text, sizeof(text),
	    "# mxspool online backup (mxspoolctl backup); start mxspoold with\n"
	    "# spool_dir set to this folder to serve from it (mxspoolctl(8)).\n"
	    "source=%s\nstarted_ms=%" PRId64 "\nmessages=%" PRIu64 "\n"
	    "segments=%" PRIu64 "\nbytes=%" PRIu64 "\nlinked=%" PRIu64 "\n"
	    "copied=%" PRIu64 "\nactive_segment=%" PRIu64 "\nactive_bytes=%" PRIu64 "\n",
	    b->src_jdir, b->started_ms, b->prog.messages, b->prog.segments, b->prog.bytes,
	    b->prog.linked, b->prog.copied, b->prog.snapshot_segno,
	    b->prog.snapshot_size);
	if (n < 0 || (size_t)n >= sizeof(text))
		return SPOOL_EINVAL;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (write(fd, text, (size_t)n) != n)
		rc = errno ? -errno : SPOOL_EIO;
	if (rc == 0 && fdatasync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	return rc;
}

static int
bk_finish(struct spool_backup *b)
{
	int rc;

	if ((rc = bk_fsync_path(b->partial, true)) != 0 ||
	    (rc = bk_write_info(b)) != 0)
		return rc;
	if (rename(b->partial, b->final) != 0)
		return -errno;
	return bk_fsync_path(b->dir, true);
}

static void
bk_work(uv_work_t *req)
{
	struct spool_backup *b = req->data;

	switch (b->step) {
	case BK_PREPARE: b->status = bk_prepare(b); break;
	case BK_SEG: b->status = bk_seg_job(b); break;
	case BK_FINISH: b->status = bk_finish(b); break;
	}
}

/* ---- loop thread --------------------------------------------------------- */

static void
bk_timer_closed(uv_handle_t *h)
{
	struct spool_backup *b = h->data;

	free(b->segs);
	free(b->buf);
	free(b->dir);
	free(b->partial);
	free(b->final);
	free(b->src_jdir);
	free(b);
}

static void
bk_report(struct spool_backup *b, int status, bool done)
{
	b->prog.elapsed_ms = (uint64_t)(util_mono_ms() - b->t0);
	if (b->cb != NULL)
		b->cb(b->arg, status, &b->prog, done);
}

/* The end: tell the caller, give the journal back its maintenance. */
static void
bk_end(struct spool_backup *b, int status)
{
	struct journal *j = b->j;

	bk_report(b, status, true);
	b->cb = NULL;
	j->backup = NULL;
	j->nreqs--;                   /* taken in spool_backup_start */
	spool__journal_poke(j);       /* may unlink now, or finish a close */
	uv_close((uv_handle_t *)&b->timer, bk_timer_closed);
}

static void
bk_after(uv_work_t *req, int uvstatus)
{
	struct spool_backup *b = req->data;
	int status = uvstatus != 0 ? SPOOL_EIO : b->status;

	if (status != 0) {
		bk_end(b, status);
		return;
	}
	switch (b->step) {
	case BK_PREPARE:
		bk_next(b);               /* the barrier check */
		return;
	case BK_SEG: {
		const struct bk_seg *s = &b->segs[b->cur];
		uint64_t n = s->len - b->off < BK_CHUNK ? s->len - b->off : BK_CHUNK;

		if (b->did_link)
			n = s->len;
		b->off += n;
		b->prog.bytes_done += n;
		if (b->off == s->len) {
			if (b->did_link)
				b->prog.linked++;
			else
				b->prog.copied++;
		}
		break;
	}
	case BK_FINISH:
		bk_end(b, 0);
		return;
	}
	bk_next(b);
}

static void
bk_queue(struct spool_backup *b, enum bk_step step)
{
	int rc;

	b->step = step;
	rc = uv_queue_work(b->sp->loop, &b->req, bk_work, bk_after);
	if (rc != 0)
		bk_end(b, SPOOL_ENOMEM);
}

/* Step 3: what "the spool when the backup began" is, in segment bytes. */
static void
bk_snapshot(struct spool_backup *b)
{
	struct journal *j = b->j;

	b->segs = xcalloc(j->nsegs ? j->nsegs : 1, sizeof(*b->segs));
	for (size_t i = 0; i < j->nsegs; i++) {
		const struct seg *s = &j->segs[i];
		struct bk_seg *d = &b->segs[b->nsegs++];

		d->no = s->no;
		d->len = s->size;
		d->active = s->no == j->active_segno;
		b->prog.bytes += s->size;
		if (d->active) {
			b->prog.snapshot_segno = s->no;
			b->prog.snapshot_size = s->size;
		}
	}
	b->prog.segments = b->nsegs;
	b->prog.messages = spool_total_messages(b->sp);
	bk_report(b, 0, false);
}

static void
bk_poll(uv_timer_t *t)
{
	bk_next(t->data);
}

/* Decide the next job, or wait for the barrier. */
static void
bk_next(struct spool_backup *b)
{
	struct journal *j = b->j;

	if (j->closing) {
		bk_end(b, SPOOL_ECLOSED);
		return;
	}
	if (b->segs == NULL) {
		if (j->nsyncs < b->target_syncs || j->maint_running) {
			if (uv_timer_start(&b->timer, bk_poll, BK_POLL_MS, 0) != 0)
				bk_end(b, SPOOL_ENOMEM);
			return;
		}
		bk_snapshot(b);
		b->cur = 0;
		b->off = 0;
	} else if (b->cur < b->nsegs) {
		const struct bk_seg *s = &b->segs[b->cur];

		if (b->off >= s->len) {
			b->prog.segments_done++;
			b->cur++;
			b->off = 0;
		}
		bk_report(b, 0, false);
	}
	if (b->cur < b->nsegs && b->segs[b->cur].len == 0) {
		/* A segment the journal has not written yet: nothing to take. */
		b->cur++;
		b->prog.segments_done++;
		bk_next(b);
		return;
	}
	bk_queue(b, b->cur < b->nsegs ? BK_SEG : BK_FINISH);
}

int
spool_backup_start(struct spool *sp, const char *dir, spool_backup_cb cb,
    void *arg, struct spool_backup **out)
{
	struct spool_backup *b;
	struct journal *j;
	size_t n;

	if (sp->closing)
		return SPOOL_ECLOSED;
	if (sp->ops != &spool_journal_ops || dir == NULL || dir[0] != '/')
		return SPOOL_EINVAL;
	j = sp->be;
	if (j->closing)
		return SPOOL_ECLOSED;
	if (j->backup != NULL)
		return -EBUSY;
	n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	b = xcalloc(1, sizeof(*b));
	b->sp = sp;
	b->j = j;
	b->cb = cb;
	b->arg = arg;
	b->dir = xstrndup(dir, n);
	b->partial = xmalloc(n + 32);
	snprintf(b->partial, n + 32, "%s/journal.partial", b->dir);
	b->final = xmalloc(n + 32);
	snprintf(b->final, n + 32, "%s/journal", b->dir);
	b->src_jdir = xstrdup(j->jdir);
	b->buf = xmalloc(BK_BUF);
	b->req.data = b;
	b->t0 = util_mono_ms();
	b->started_ms = util_now_ms();
	/* The barrier: the running job, and the one that will take what is
	 * queued now, must both have returned from their fdatasync. */
	b->target_syncs = j->nsyncs + (j->flush_running ? 1 : 0) +
	    (j->pq_head != NULL ? 1 : 0);
	(void)uv_timer_init(sp->loop, &b->timer);
	b->timer.data = b;
	j->backup = b;                /* no unlink, no compaction from now on */
	j->nreqs++;                   /* released in bk_end */
	*out = b;
	bk_queue(b, BK_PREPARE);
	return 0;
}

void
spool_backup_detach(struct spool_backup *b)
{
	if (b != NULL)
		b->cb = NULL;
}
