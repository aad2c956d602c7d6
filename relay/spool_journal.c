/*
 * spool_journal.c - the "journal" storage backend of the spool: the durable
 * writer (group commit flush jobs, segments, spills), reads and loads,
 * maintenance (unlink of empty segments, compaction), free-space refresh,
 * open and close.  Recovery at open is in relay/spool_recover.c; the index
 * the journal keeps current is relay/spool_index.c, owned by the wrapper
 * (relay/spool.c), which calls this file through struct spool_ops.
 *
 * This comment is the one description of the on-disk format: the codec
 * (relay/spool_internal.h), recovery, the unit tests and the crash-test
 * driver all cite it.
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
 *   16 8  queue id (0 for HOLD and CAPS)
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
 *   6 WARNED empty: the message's delay notice is done (spool_mark_warned);
 *            replay sets the flag, compaction repeats it after a copy.
 *   7 CAPS   u16 length, tenant; u32 SMTP extension bits; u64 SIZE (0 =
 *            none); u32 RCPTMAX, u32 MAILMAX (0 = none); i64 when that
 *            EHLO was read (ms).  A tenant's primary capabilities; the last
 *            one replayed wins.  Every new segment starts (after its HOLD
 *            records) with one CAPS record per tenant whose capabilities
 *            are known, as for HOLD.  A change of seen_ms alone writes none.
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
 * in a torn tail, because the fdatasync covering it did not return.  After
 * a bad record the scan resumes at the next byte that starts a valid record
 * (never at the end its possibly damaged length claims).  A damaged segment
 * header does not condemn the segment: the number comes from the file name,
 * the header is set aside and rewritten, and the records are scanned; only a
 * header of another format version, or a file with no valid record, is
 * moved to corrupt/ whole.
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
 * Space comes back only when a segment is unlinked.  So that deleting mail
 * on a full disk helps at once, an active segment under a quarter live with
 * at least 1 MiB dead (and an eighth of the segment size or a quarter of the
 * free space) is closed by the next flush job (roll_check), and becomes
 * fair game for the rules above.  Compaction starts only within a byte
 * budget (spool__compact_take: a quarter segment per second, one segment of
 * burst), so repeated write errors, each of which closes a segment, cannot
 * make it copy the same messages again and again; and only with room for
 * its copies above the disk reserve and the ballast (BALLAST, at
 * flush_work), which keeps 1 MiB free for the DELETE records themselves.
 *
 * THREADING.  See relay/spool_journal.h: struct journal belongs to the loop
 * thread except the active segment's write state, which only the running
 * flush job touches.  No file call runs on the loop thread after open.
 */
#include "config.h"

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
#include "spool_journal.h"

#define STAGE_CAP          (4u * 1024 * 1024)   /* flush job write buffer */
#define DEFAULT_SEG_SIZE   (64ull * 1024 * 1024)
#define MAX_SEG_SIZE       (1ull << 30)         /* offsets fit 32 bits */
#define STATVFS_PERIOD_MS  1000                 /* free-space refresh */
#define COMPACT_DIVISOR    4                    /* live < size/4: compact */
#define ROLL_MIN_BYTES     (1ull << 20)         /* dead bytes worth a roll */
#define ROLL_SEG_DIVISOR   8                    /* dead >= seg_size/8: roll */
#define ROLL_FREE_DIVISOR  4                    /* dead >= free/4: roll */
#define BALLAST_BYTES      (1ull << 20)         /* room kept for state records */
#define BALLAST_LOW        (256u * 1024)        /* free below this: release it */

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
	int status;                   /* this record's outcome */
	enum pend_cb cbkind;
	spool_done_cb done;
	spool_commit_cb commit;
	void *arg;
};

struct fjob {
	uv_work_t req;
	struct journal *j;
	struct pend *head;
	bool close_active;            /* close the active segment first */
	bool release_ballast;         /* free space is low: release it first */
	bool make_ballast;            /* (re)create the ballast file at the end */
	bool ballast_now;             /* whether it exists after the job */
	uint8_t *snap;                /* HOLD records for a new segment */
	size_t snap_len;
	int status;
	uint64_t *created;            /* segment numbers this job created */
	size_t ncreated, capcreated;
	uint64_t free_bytes;
	bool have_free;
};

/* The journal's part of a transaction (spool_tx.be). */
struct jtx {
	struct journal *j;
	uint32_t crc;                 /* over env + spilled bytes */
	int spill_fd;
	int spill_status;
	uv_work_t spill_req;          /* data: the spool_tx */
};

/* A loaded message. */
struct jmsg {
	struct spool_msg base;        /* first: spool_msg * <-> jmsg * */
	int fd;
	uint64_t data_off;
	uint8_t *rbuf;
	size_t rcap;
};

static void flush_maybe_start(struct journal *j);
static void maint_check(struct journal *j);
static void roll_check(struct journal *j);
static void close_maybe_finish(struct journal *j);

/* ---- segments ---------------------------------------------------------- */

struct seg *
spool__seg_find(struct journal *j, uint64_t no)
{
	size_t lo = 0, hi = j->nsegs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (j->segs[mid].no < no)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < j->nsegs && j->segs[lo].no == no ? &j->segs[lo] : NULL;
}

struct seg *
spool__seg_add(struct journal *j, uint64_t no)
{
	struct seg *s = spool__seg_find(j, no);

	if (s != NULL)
		return s;
	if (j->nsegs == j->capsegs) {
		j->capsegs = j->capsegs ? j->capsegs * 2 : 16;
		j->segs = xrealloc(j->segs, j->capsegs * sizeof(*j->segs));
	}
	s = &j->segs[j->nsegs++];
	memset(s, 0, sizeof(*s));
	s->no = no;
	return s;
}

void
spool__seg_path(char *buf, size_t len, const char *jdir, uint64_t no)
{
	snprintf(buf, len, "%s/%012" PRIu64 ".seg", jdir, no);
}

/* Index hooks: live bytes and messages per segment follow the index. */
static void
seg_account(struct journal *j, const struct spool_index_ent *e, int sign)
{
	struct seg *s = spool__seg_find(j, e->seg);

	if (s == NULL)
		return;
	if (sign > 0) {
		s->live_bytes += e->len;
		s->live_msgs++;
	} else {
		s->live_bytes -= e->len;
		s->live_msgs--;
	}
}

static void
seg_loc_add(void *arg, const struct spool_index_ent *e)
{
	seg_account(arg, e, +1);
}

static void
seg_loc_drop(void *arg, const struct spool_index_ent *e)
{
	seg_account(arg, e, -1);
}

/* ---- group commit: the flush job ----------------------------------------- */

static int
w_stage_flush(struct journal *j)
{
	struct wstate *w = &j->w;
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
w_write(struct journal *j, const void *p, size_t n)
{
	struct wstate *w = &j->w;
	int rc;

	if (w->stage_len + n > STAGE_CAP && (rc = w_stage_flush(j)) != 0)
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
w_copy(struct journal *j, int fd, uint64_t off, uint64_t len)
{
	struct wstate *w = &j->w;
	int rc;

	while (len > 0) {
		size_t room, want;
		ssize_t n;

		if (w->stage_len == STAGE_CAP && (rc = w_stage_flush(j)) != 0)
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
w_rotate(struct journal *j, struct fjob *job)
{
	struct wstate *w = &j->w;
	uint8_t hdr[SPOOL_SEG_HDR_LEN];
	char path[4096];
	int rc;

	if (w->fd >= 0) {
		if ((rc = w_stage_flush(j)) != 0)
			return rc;
		if (fdatasync(w->fd) != 0)
			return -errno;
		(void)close(w->fd);
		w->fd = -1;
	}
	w->segno = w->next_segno++;
	spool__seg_path(path, sizeof(path), j->jdir, w->segno);
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
	w->synced = 0;
	w->stage_len = 0;
	spool_seg_hdr_encode(hdr, w->segno);
	if ((rc = w_write(j, hdr, sizeof(hdr))) != 0)
		return rc;
	return job->snap_len ? w_write(j, job->snap, job->snap_len) : 0;
}

/* A transaction's record: header, envelope, spilled bytes, buffer. */
static int
w_tx(struct journal *j, struct pend *p)
{
	struct spool_tx *tx = p->tx;
	struct jtx *jt = tx->be;
	uint32_t crc = spool_crc32c(jt->crc, tx->buf, tx->len);
	int rc;

	p->h.len = (uint32_t)(tx->env_len + tx->spilled + tx->len);
	p->h.crc = spool_rec_crc(crc, &p->h);
	spool_rec_hdr_encode(p->hdr, &p->h);
	if ((rc = w_write(j, p->hdr, SPOOL_REC_HDR_LEN)) != 0 ||
	    (rc = w_write(j, tx->env, tx->env_len)) != 0)
		return rc;
	if (tx->spilled > 0 && (rc = w_copy(j, jt->spill_fd, 0, tx->spilled)) != 0)
		return rc;
	return w_write(j, tx->buf, tx->len);
}

static int
w_pend(struct journal *j, struct fjob *job, struct pend *p, int *srcfd,
    uint64_t *srcno)
{
	struct wstate *w = &j->w;
	int rc;

	if ((w->fd < 0 || w->size >= j->seg_size) && (rc = w_rotate(j, job)) != 0)
		return rc;
	p->seg = (uint32_t)w->segno;
	p->off = (uint32_t)w->size;
	if (p->is_copy) {
		char path[4096];

		if (*srcfd < 0 || *srcno != p->src_seg) {
			if (*srcfd >= 0)
				(void)close(*srcfd);
			spool__seg_path(path, sizeof(path), j->jdir, p->src_seg);
			*srcno = p->src_seg;
			*srcfd = open(path, O_RDONLY | O_CLOEXEC);
			if (*srcfd < 0)
				return -errno;
		}
		return w_copy(j, *srcfd, p->src_off, p->src_len);
	}
	if (p->tx != NULL)
		return w_tx(j, p);
	if ((rc = w_write(j, p->hdr, SPOOL_REC_HDR_LEN)) != 0)
		return rc;
	return w_write(j, p->body, p->body_len);
}

static void
tmp_path(char *buf, size_t len, const char *tdir, spool_qid qid)
{
	char q[SPOOL_QID_STRLEN + 1];

	spool_qid_format(qid, q);
	snprintf(buf, len, "%s/%s", tdir, q);
}

/*
 * BALLAST.  A full disk must not stop the postmaster from deleting mail,
 * but a DELETE is a record that needs space, and so does the new segment it
 * may start.  The journal therefore keeps DIR/ballast, BALLAST_BYTES
 * allocated while the disk has room.  A flush job that starts while the
 * last free-space figure is under BALLAST_LOW unlinks it before writing, and
 * one that fails with ENOSPC anyway unlinks it after (its records still
 * fail: their callers were told SPOOL_EIO), so the state records fit;
 * admission keeps refusing messages while free space is under the disk
 * reserve.  A later flush job makes the ballast again once free space is
 * above the reserve plus its size plus twice BALLAST_LOW (so that making it
 * does not bring the release threshold back at once).  Only flush jobs
 * touch the file, one at a time.
 */
static void
ballast_path(char *buf, size_t len, const struct journal *j)
{
	snprintf(buf, len, "%s/ballast", j->dir);
}

static bool
ballast_make(const struct journal *j)
{
	char path[4096];
	int fd, rc;

	ballast_path(path, sizeof(path), j);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return false;
	rc = posix_fallocate(fd, 0, (off_t)BALLAST_BYTES);
	(void)close(fd);
	if (rc != 0)
		(void)unlink(path);
	return rc == 0;
}

/* Threadpool: unlink the ballast if it is there. */
static void
ballast_release(const struct journal *j, struct fjob *job)
{
	char path[4096];

	if (!job->ballast_now)
		return;
	ballast_path(path, sizeof(path), j);
	if (unlink(path) == 0 || errno == ENOENT)
		job->ballast_now = false;
}

/* Threadpool, end of a flush job that ended with RC. */
static void
ballast_work(struct journal *j, struct fjob *job, int rc)
{
	if (rc == -ENOSPC)
		ballast_release(j, job);
	else if (rc == 0 && job->make_ballast && !job->ballast_now)
		job->ballast_now = ballast_make(j);
}

/* Write every record of JOB, fdatasync, fsync journal/ for a new segment.
 * On failure the active descriptor is closed and never used again. */
static int
flush_write(struct journal *j, struct fjob *job, int *srcfd, uint64_t *srcno)
{
	struct wstate *w = &j->w;
	int rc = 0;

	for (struct pend *p = job->head; p != NULL && rc == 0; p = p->next)
		rc = w_pend(j, job, p, srcfd, srcno);
	if (rc == 0 && w->fd >= 0 && (rc = w_stage_flush(j)) == 0) {
		if (fdatasync(w->fd) != 0)
			rc = -errno;
		else
			w->synced = w->size;
	}
	/* A new directory entry is durable only once the directory is. */
	if (rc == 0 && job->ncreated > 0)
		rc = fsync_dir(j->jdir);
	if (rc != 0 && w->fd >= 0) {
		/* Never write to or fsync this descriptor again.  What it got
		 * after the last good fdatasync was never acknowledged: cut it
		 * off, so that a full disk gets that space back now rather than
		 * when the segment dies (best effort; recovery would cut it as a
		 * torn tail anyway). */
		(void)ftruncate(w->fd, (off_t)w->synced);
		(void)close(w->fd);
		w->fd = -1;
		w->stage_len = 0;
	}
	return rc;
}

static void
flush_work(uv_work_t *req)
{
	struct fjob *job = req->data;
	struct journal *j = job->j;
	struct wstate *w = &j->w;
	struct statvfs vfs;
	uint64_t srcno = 0;
	int srcfd = -1, rc;

	/* A roll: everything in the active segment was fdatasync'd by the job
	 * that wrote it, so closing it is all there is to do; the next record
	 * starts a new segment, and maintenance may now reclaim this one. */
	if (job->close_active && w->fd >= 0) {
		(void)close(w->fd);
		w->fd = -1;
		w->stage_len = 0;
	}
	if (job->release_ballast)
		ballast_release(j, job);
	rc = flush_write(j, job, &srcfd, &srcno);
	/*
	 * Out of space with the ballast still there: release it and write the
	 * whole job again, into a new segment (the old descriptor is closed
	 * and never used again).  Records of the first attempt that reached
	 * the old segment are harmless twice: replay keeps the later copy of a
	 * message, and every state record is idempotent.
	 */
	if (rc == -ENOSPC && job->ballast_now) {
		ballast_release(j, job);
		if (!job->ballast_now)
			rc = flush_write(j, job, &srcfd, &srcno);
	}
	if (srcfd >= 0)
		(void)close(srcfd);
	for (struct pend *p = job->head; p != NULL; p = p->next) {
		struct jtx *jt = p->tx != NULL ? p->tx->be : NULL;
		char path[4096];

		if (jt == NULL || jt->spill_fd < 0)
			continue;
		(void)close(jt->spill_fd);
		jt->spill_fd = -1;
		tmp_path(path, sizeof(path), j->tdir, p->tx->qid);
		(void)unlink(path);
	}
	ballast_work(j, job, rc);
	job->status = rc == 0 ? 0 : SPOOL_EIO;
	if (statvfs(j->dir, &vfs) == 0) {
		job->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		job->have_free = true;
	}
}

static void
journal_tx_free(struct spool_tx *tx)
{
	free(tx->be);
	spool__tx_free(tx);
}

static void
pend_free(struct pend *p)
{
	if (p->tx != NULL)
		journal_tx_free(p->tx);
	free(p->own);
	free(p);
}

/* A compaction copy is durable: move the index entry if nothing moved or
 * removed the message meanwhile. */
static void
copy_done(struct journal *j, struct pend *p, int status)
{
	struct seg *s = spool__seg_find(j, p->src_seg);
	uint32_t slot = spool_index_lookup(j->ix, p->h.qid);
	const struct spool_index_ent *e = spool_index_at(j->ix, slot);

	if (s != NULL) {
		s->copies_out--;
		if (status != 0)
			s->copy_failed = true;
		if (s->copies_out == 0)
			s->compacting = false;
	}
	if (status == 0 && e != NULL && e->seg == p->src_seg &&
	    e->off == p->src_off)
		spool_index_relocate(j->ix, slot, p->seg, p->off);
}

/* Loop thread: fold a finished job into the index, then run callbacks. */
static void
flush_after(uv_work_t *req, int uvstatus)
{
	struct fjob *job = req->data;
	struct journal *j = job->j;
	int status = uvstatus != 0 ? SPOOL_EIO : job->status;
	struct pend *p, *next;

	j->nreqs--;
	j->flush_running = false;
	j->run_head = NULL;
	j->nsyncs++;
	j->ballast = job->ballast_now;
	for (size_t i = 0; i < job->ncreated; i++)
		spool__seg_add(j, job->created[i]);
	j->active_segno = j->w.fd >= 0 ? j->w.segno : 0;
	if (j->active_segno != 0)
		spool__seg_find(j, j->active_segno)->size = j->w.size;
	if (job->have_free)
		j->free_bytes = job->free_bytes;

	for (p = job->head; p != NULL; p = p->next) {
		uint64_t end = (uint64_t)p->off + SPOOL_REC_HDR_LEN + p->h.len;
		struct seg *s;

		p->status = status;
		if (status == 0 && (s = spool__seg_find(j, p->seg)) != NULL &&
		    s->size < end)
			s->size = end;
		if (p->tx != NULL)
			p->status = spool__tx_committed(p->tx, status, p->seg, p->off);
		else if (p->is_copy)
			copy_done(j, p, status);
	}
	/* Callbacks last: they may append, claim or close the spool. */
	for (p = job->head; p != NULL; p = next) {
		next = p->next;
		if (p->cbkind == CB_COMMIT)
			p->commit(p->arg, p->status, p->h.qid);
		else if (p->cbkind == CB_DONE && p->done != NULL)
			p->done(p->arg, p->status);
		pend_free(p);
	}
	free(job->created);
	free(job->snap);
	free(job);
	flush_maybe_start(j);
	maint_check(j);
	close_maybe_finish(j);
}

/* Room for one more snapshot record of NEED bytes; its start. */
static uint8_t *
snap_room(struct fjob *job, size_t *cap, size_t need)
{
	if (job->snap_len + need > *cap) {
		*cap = (job->snap_len + need) * 2;
		job->snap = xrealloc(job->snap, *cap);
	}
	return job->snap + job->snap_len;
}

/* Seal the snapshot record of TYPE whose body of N bytes is at P. */
static void
snap_seal(struct fjob *job, uint8_t *p, uint8_t type, int n)
{
	struct spool_rec_hdr h = { .type = type };

	if (n < 0)
		return;
	h.len = (uint32_t)n;
	h.crc = spool_rec_crc(spool_crc32c(0, p + SPOOL_REC_HDR_LEN, h.len), &h);
	spool_rec_hdr_encode(p, &h);
	job->snap_len += SPOOL_REC_HDR_LEN + h.len;
}

/* HOLD records for every held tenant, then CAPS records for every tenant
 * whose primary's capabilities are known, to open a new segment with. */
static void
build_snapshot(struct journal *j, struct fjob *job)
{
	uint32_t nt = spool_index_tenant_count(j->ix);
	struct spool_caps caps;
	size_t cap = 0;

	for (uint32_t i = 0; i < nt; i++) {
		const char *name = spool_index_tenant_name(j->ix, i);
		size_t need = SPOOL_REC_HDR_LEN + 3 + strlen(name);
		uint8_t *p;

		if (!spool_index_tenant_held(j->ix, i))
			continue;
		p = snap_room(job, &cap, need);
		snap_seal(job, p, SPOOL_REC_HOLD, spool_hold_body_encode(
		    p + SPOOL_REC_HDR_LEN, need - SPOOL_REC_HDR_LEN, name, true));
	}
	for (uint32_t i = 0; i < nt; i++) {
		const char *name = spool_index_tenant_name(j->ix, i);
		size_t need = SPOOL_REC_HDR_LEN + SPOOL_CAPS_BODY_FIXED + strlen(name);
		uint8_t *p;

		if (!spool_index_tenant_caps(j->ix, i, &caps))
			continue;
		p = snap_room(job, &cap, need);
		snap_seal(job, p, SPOOL_REC_CAPS, spool_caps_body_encode(
		    p + SPOOL_REC_HDR_LEN, need - SPOOL_REC_HDR_LEN, name, &caps));
	}
}

static void
flush_start(struct journal *j)
{
	struct fjob *job = xcalloc(1, sizeof(*job));
	int rc;

	job->j = j;
	job->req.data = job;
	job->head = j->run_head = j->pq_head;
	job->close_active = j->roll_wanted;
	j->roll_wanted = false;
	job->ballast_now = j->ballast;
	job->release_ballast = j->ballast && j->free_bytes < BALLAST_LOW;
	job->make_ballast = !j->ballast && !j->closing &&
	    j->free_bytes > j->sp->disk_reserve + BALLAST_BYTES + 2 * BALLAST_LOW;
	j->pq_head = NULL;
	j->pq_tail = &j->pq_head;
	build_snapshot(j, job);
	j->flush_running = true;
	rc = uv_queue_work(j->loop, &job->req, flush_work, flush_after);
	j->nreqs++;
	if (rc != 0) {
		/* Cannot happen with a valid loop; fail the batch visibly. */
		job->status = SPOOL_EIO;
		flush_after(&job->req, rc);
	}
}

static void
window_cb(uv_timer_t *t)
{
	struct journal *j = t->data;

	j->window_armed = false;
	/* The window has been waited out: start now, do not wait again. */
	if (!j->flush_running && (j->pq_head != NULL || j->roll_wanted))
		flush_start(j);
}

static void
flush_maybe_start(struct journal *j)
{
	if (j->flush_running || (j->pq_head == NULL && !j->roll_wanted) ||
	    j->window_armed)
		return;
	if (j->window_ms > 0 && !j->closing &&
	    uv_timer_start(&j->window_timer, window_cb, j->window_ms, 0) == 0) {
		j->window_armed = true;
		return;
	}
	flush_start(j);
}

static void
pend_enqueue(struct journal *j, struct pend *p)
{
	p->next = NULL;
	*j->pq_tail = p;
	j->pq_tail = &p->next;
	flush_maybe_start(j);
}

/* A state record whose body is copied into P->small or P->own. */
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
journal_append_state(void *be, uint8_t type, spool_qid qid,
    const uint8_t *body, size_t len, spool_done_cb cb, void *arg)
{
	struct journal *j = be;
	struct pend *p = pend_state(type, qid, body, len);

	if (p == NULL)
		return SPOOL_ENOMEM;
	p->cbkind = CB_DONE;
	p->done = cb;
	p->arg = arg;
	pend_enqueue(j, p);
	return 0;
}

/* Nothing to write: CB runs from the threadpool's after-callback, later,
 * and close waits for it (nreqs). */
struct pjob {
	uv_work_t req;
	struct journal *j;
	spool_done_cb cb;
	void *arg;
};

static void
post_work(uv_work_t *req)
{
	(void)req;                    /* only here to come back later */
}

static void
post_after(uv_work_t *req, int uvstatus)
{
	struct pjob *pj = req->data;
	struct journal *j = pj->j;

	(void)uvstatus;
	j->nreqs--;
	pj->cb(pj->arg, 0);
	free(pj);
	close_maybe_finish(j);
}

static int
journal_post(void *be, spool_done_cb cb, void *arg)
{
	struct journal *j = be;
	struct pjob *pj = calloc(1, sizeof(*pj));

	if (pj == NULL)
		return SPOOL_ENOMEM;
	pj->req.data = pj;
	pj->j = j;
	pj->cb = cb;
	pj->arg = arg;
	if (uv_queue_work(j->loop, &pj->req, post_work, post_after) != 0) {
		free(pj);
		return SPOOL_ENOMEM;
	}
	j->nreqs++;
	return 0;
}

/* ---- maintenance: unlink and compaction ---------------------------------- */

struct mjob {
	uv_work_t req;
	struct journal *j;
	uint64_t segno;
	int status;
};

static void
unlink_work(uv_work_t *req)
{
	struct mjob *m = req->data;
	char path[4096];

	spool__seg_path(path, sizeof(path), m->j->jdir, m->segno);
	m->status = 0;
	if (unlink(path) != 0 && errno != ENOENT)
		m->status = -errno;
	else
		m->status = fsync_dir(m->j->jdir);
}

static void
unlink_after(uv_work_t *req, int uvstatus)
{
	struct mjob *m = req->data;
	struct journal *j = m->j;
	struct seg *s = spool__seg_find(j, m->segno);

	j->nreqs--;
	j->maint_running = false;
	if (uvstatus != 0 || m->status != 0)
		j->maint_stuck = true;    /* keep the in-order rule intact */
	else if (s != NULL) {
		size_t i = (size_t)(s - j->segs);

		memmove(s, s + 1, (j->nsegs - i - 1) * sizeof(*s));
		j->nsegs--;
	}
	free(m);
	maint_check(j);
	close_maybe_finish(j);
}

/* Queue the current state of the message at SLOT after its copy. */
static void
compact_state(struct journal *j, uint32_t slot, const struct spool_index_ent *e)
{
	const uint8_t *st = spool_index_rcpt_states(j->ix, slot);
	spool_qid qid = e->qid;

	for (uint32_t r = 0; st != NULL && r < spool_ent_nrcpt(e); r++) {
		uint8_t b[SPOOL_RCPT_BODY_LEN];

		if (st[r] == SPOOL_RCPT_PENDING)
			continue;
		spool_rcpt_body_encode(b, r, st[r]);
		(void)journal_append_state(j, SPOOL_REC_RCPT, qid, b, sizeof(b),
		    NULL, NULL);
	}
	if (e->attempts > 0 || e->next_ms != 0) {
		uint8_t b[SPOOL_DEFER_BODY_LEN];

		spool_defer_body_encode(b, e->next_ms, e->attempts);
		(void)journal_append_state(j, SPOOL_REC_DEFER, qid, b, sizeof(b),
		    NULL, NULL);
	}
	if (spool_ent_flags(e) & SPOOL_ENT_WARNED)
		(void)journal_append_state(j, SPOOL_REC_WARNED, qid, NULL, 0,
		    NULL, NULL);
}

/* Queue ids with a state record queued or being written, sorted; *N of
 * them (free() the result). */
static uint64_t *
busy_qids(const struct journal *j, size_t *n)
{
	const struct pend *lists[2] = { j->pq_head, j->run_head };
	uint64_t *v = NULL;
	size_t cap = 0;

	*n = 0;
	for (int l = 0; l < 2; l++)
		for (const struct pend *p = lists[l]; p != NULL; p = p->next) {
			if (p->h.type == SPOOL_REC_MSG || p->h.qid == 0)
				continue;
			if (*n == cap) {
				cap = cap ? cap * 2 : 16;
				v = xrealloc(v, cap * sizeof(*v));
			}
			v[(*n)++] = p->h.qid;
		}
	if (*n > 1)
		qsort(v, *n, sizeof(*v), spool__u64_cmp);
	return v;
}

/*
 * Queue copies of every live message of S, each followed by its state.  A
 * message with a state record still in flight is left for a later pass:
 * that record goes to the journal before the copy would, and replay would
 * apply it to the old copy and then let the new one bring the message back
 * (a DELETE undone, a delivered message queued again), since the index
 * takes the change only once the record is stored.
 */
static void
compact_start(struct journal *j, struct seg *s)
{
	uint32_t segno = (uint32_t)s->no;
	size_t nbusy;
	uint64_t *busy = busy_qids(j, &nbusy);

	s->compacting = true;
	s->copy_failed = false;
	for (uint32_t i = 0; i < spool_index_slots(j->ix); i++) {
		const struct spool_index_ent *e = spool_index_at(j->ix, i);
		struct pend *p;

		if (e == NULL || e->seg != segno)
			continue;
		if (nbusy > 0 && bsearch(&e->qid, busy, nbusy, sizeof(*busy),
		    spool__u64_cmp) != NULL)
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
		j->ncopies++;
		pend_enqueue(j, p);
		compact_state(j, i, e);
	}
	free(busy);
	if (s->copies_out == 0)
		s->compacting = false;
}

static void
maint_check(struct journal *j)
{
	struct seg *s;
	struct mjob *m;

	roll_check(j);
	if (j->maint_running || j->maint_stuck || j->closing || j->nsegs == 0 ||
	    j->backup != NULL ||  /* a backup holds every segment in place */
	    j->loader != NULL)    /* liveness is known at the load's end */
		return;
	/* Only the oldest segment: see DELETION at the top of this file. */
	s = &j->segs[0];
	if (s->no == j->active_segno || s->compacting)
		return;
	if (s->live_msgs == 0) {
		m = xcalloc(1, sizeof(*m));
		m->j = j;
		m->segno = s->no;
		m->req.data = m;
		if (uv_queue_work(j->loop, &m->req, unlink_work, unlink_after) != 0) {
			free(m);
			return;
		}
		j->nreqs++;
		j->maint_running = true;
		return;
	}
	/* Retry a failed compaction only after a later flush succeeded. */
	if (s->copy_failed) {
		s->copy_failed = false;
		return;
	}
	if (s->live_bytes >= j->seg_size / COMPACT_DIVISOR)
		return;
	/* Copies need room: never let them eat the disk reserve or the
	 * ballast's share (a full disk would fail them, and the space they
	 * took until the job failed is what a DELETE needs). */
	if (j->free_bytes < j->sp->disk_reserve + s->live_bytes + BALLAST_BYTES)
		return;
	/* Within the budget only: the statvfs tick comes back each second. */
	if (!spool__compact_take(&j->cbudget, j->sp->now_ms(), j->seg_size,
	    s->live_bytes))
		return;
	compact_start(j, s);
}

bool
spool__roll_wanted(uint64_t size, uint64_t live, uint64_t seg_size,
    uint64_t free_bytes)
{
	uint64_t dead = size > live ? size - live : 0;

	if (live >= size / COMPACT_DIVISOR || dead < ROLL_MIN_BYTES)
		return false;
	return dead >= seg_size / ROLL_SEG_DIVISOR ||
	    dead >= free_bytes / ROLL_FREE_DIVISOR;
}

bool
spool__compact_take(struct compact_budget *b, int64_t now_ms,
    uint64_t seg_size, uint64_t bytes)
{
	int64_t rate = (int64_t)(seg_size / COMPACT_DIVISOR);  /* per second */
	int64_t burst = (int64_t)seg_size;

	if (!b->started) {
		b->started = true;
		b->tokens = burst;
		b->last_ms = now_ms;
	}
	if (now_ms > b->last_ms) {
		int64_t add = (now_ms - b->last_ms) > 1000 * (burst / rate + 1) ?
		    burst : rate * (now_ms - b->last_ms) / 1000;

		b->tokens = b->tokens + add > burst ? burst : b->tokens + add;
		b->last_ms = now_ms;
	}
	if (b->tokens <= 0)
		return false;
	b->tokens -= (int64_t)bytes;   /* may go into debt: one at a time */
	return true;
}

/*
 * Space comes back only when a segment is unlinked, and the active one
 * never is: when deletions (or deliveries) left the active segment mostly
 * dead and that is a good share of the segment size or of the free space,
 * close it so that maintenance can unlink or compact it.  This is what
 * gives a postmaster space back when deleting mail on a full disk.
 */
static void
roll_check(struct journal *j)
{
	struct seg *a;

	if (j->closing || j->roll_wanted || j->active_segno == 0 ||
	    j->backup != NULL || j->loader != NULL ||
	    (a = spool__seg_find(j, j->active_segno)) == NULL)
		return;
	if (!spool__roll_wanted(a->size, a->live_bytes, j->seg_size, j->free_bytes))
		return;
	j->roll_wanted = true;
	flush_maybe_start(j);
}

/* ---- free space -------------------------------------------------------- */

struct vjob {
	uv_work_t req;
	struct journal *j;
	uint64_t free_bytes;
	int status;
};

static void
statvfs_work(uv_work_t *req)
{
	struct vjob *v = req->data;
	struct statvfs vfs;

	v->status = statvfs(v->j->dir, &vfs) == 0 ? 0 : -errno;
	if (v->status == 0)
		v->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
}

static void
statvfs_after(uv_work_t *req, int uvstatus)
{
	struct vjob *v = req->data;
	struct journal *j = v->j;

	j->nreqs--;
	j->statvfs_running = false;
	if (uvstatus == 0 && v->status == 0)
		j->free_bytes = v->free_bytes;
	free(v);
	maint_check(j);          /* a compaction may have waited for budget */
	close_maybe_finish(j);
}

static void
statvfs_timer_cb(uv_timer_t *t)
{
	struct journal *j = t->data;
	struct vjob *v;

	if (j->statvfs_running || j->closing)
		return;
	v = xcalloc(1, sizeof(*v));
	v->j = j;
	v->req.data = v;
	if (uv_queue_work(j->loop, &v->req, statvfs_work, statvfs_after) != 0) {
		free(v);
		return;
	}
	j->nreqs++;
	j->statvfs_running = true;
}

static uint64_t
journal_free_bytes(void *be)
{
	return ((struct journal *)be)->free_bytes;
}

static uint64_t
journal_flush_count(const void *be)
{
	return ((const struct journal *)be)->nsyncs;
}

/* spool_reclaim_info: walk the segments oldest first; one that will not
 * go now keeps every later one (DELETION at the top of this file). */
static void
journal_reclaim(const void *be, struct spool_reclaim *out)
{
	const struct journal *j = be;
	bool chain = j->backup == NULL && !j->maint_stuck;

	for (size_t i = 0; i < j->nsegs; i++) {
		const struct seg *s = &j->segs[i];
		uint64_t dead = s->size > s->live_bytes ? s->size - s->live_bytes : 0;
		bool going;

		if (s->no == j->active_segno)
			going = spool__roll_wanted(s->size, s->live_bytes, j->seg_size,
			    j->free_bytes);
		else
			going = s->live_msgs == 0 ||
			    (s->live_bytes < j->seg_size / COMPACT_DIVISOR &&
			    j->free_bytes >= j->sp->disk_reserve + s->live_bytes +
			    BALLAST_BYTES);
		chain = chain && going;
		out->dead_bytes += dead;
		if (chain)
			out->soon_bytes += dead;
	}
}

static uint64_t
journal_compact_copies(const void *be)
{
	return ((const struct journal *)be)->ncopies;
}

/* ---- transactions: spill, commit, discard ------------------------------ */

static int
journal_tx_begin(void *be, struct spool_tx *tx)
{
	struct jtx *jt = calloc(1, sizeof(*jt));

	if (jt == NULL)
		return SPOOL_ENOMEM;
	jt->j = be;
	jt->spill_fd = -1;
	jt->crc = spool_crc32c(0, tx->env, tx->env_len);
	jt->spill_req.data = tx;
	tx->be = jt;
	return 0;
}

static void
tmp_cleanup_work(uv_work_t *req)
{
	struct spool_tx *tx = req->data;
	struct jtx *jt = tx->be;
	char path[4096];

	if (jt->spill_fd >= 0)
		(void)close(jt->spill_fd);
	tmp_path(path, sizeof(path), jt->j->tdir, tx->qid);
	(void)unlink(path);
}

static void
tmp_cleanup_after(uv_work_t *req, int uvstatus)
{
	struct spool_tx *tx = req->data;
	struct journal *j = ((struct jtx *)tx->be)->j;

	(void)uvstatus;
	j->nreqs--;
	journal_tx_free(tx);
	close_maybe_finish(j);
}

/* Free an aborted tx, removing its spill file off the loop thread. */
static void
journal_tx_discard(void *be, struct spool_tx *tx)
{
	struct journal *j = be;
	struct jtx *jt = tx->be;

	if (jt->spill_fd < 0 && tx->spilled == 0) {
		journal_tx_free(tx);
		return;
	}
	if (uv_queue_work(j->loop, &jt->spill_req, tmp_cleanup_work,
	    tmp_cleanup_after) != 0) {
		journal_tx_free(tx);  /* the file stays until the next open */
		return;
	}
	j->nreqs++;
}

static void
spill_work(uv_work_t *req)
{
	struct spool_tx *tx = req->data;
	struct jtx *jt = tx->be;
	size_t done = 0;

	jt->spill_status = 0;
	if (jt->spill_fd < 0) {
		char path[4096];

		tmp_path(path, sizeof(path), jt->j->tdir, tx->qid);
		jt->spill_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (jt->spill_fd < 0) {
			jt->spill_status = -errno;
			return;
		}
	}
	while (done < tx->len) {
		ssize_t n = pwrite(jt->spill_fd, tx->buf + done, tx->len - done,
		    (off_t)(tx->spilled + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			jt->spill_status = n < 0 ? -errno : SPOOL_EIO;
			return;
		}
		done += (size_t)n;
	}
	jt->crc = spool_crc32c(jt->crc, tx->buf, tx->len);
	tx->spilled += tx->len;
	tx->len = 0;
}

static void
spill_after(uv_work_t *req, int uvstatus)
{
	struct spool_tx *tx = req->data;
	struct jtx *jt = tx->be;
	struct journal *j = jt->j;
	int status = uvstatus != 0 ? SPOOL_EIO : jt->spill_status;

	j->nreqs--;
	if (status != 0)
		status = status == -ENOSPC ? SPOOL_ENOSPC : SPOOL_EIO;
	spool__tx_spilled(tx, status);
	close_maybe_finish(j);
}

/* The buffer is full: write it to tmp/<qid> on the threadpool. */
static int
journal_tx_spill(void *be, struct spool_tx *tx)
{
	struct journal *j = be;
	struct jtx *jt = tx->be;

	if (uv_queue_work(j->loop, &jt->spill_req, spill_work, spill_after) != 0)
		return SPOOL_EIO;
	j->nreqs++;
	return 0;
}

static int
journal_tx_commit(void *be, struct spool_tx *tx, spool_commit_cb cb, void *arg)
{
	struct journal *j = be;
	struct pend *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return SPOOL_ENOMEM;
	p->tx = tx;
	p->h.type = SPOOL_REC_MSG;
	p->h.qid = tx->qid;
	p->h.len = (uint32_t)(spool__tx_bytes(tx) - SPOOL_REC_HDR_LEN);
	p->cbkind = CB_COMMIT;
	p->commit = cb;
	p->arg = arg;
	pend_enqueue(j, p);
	return 0;
}

/* ---- loading and reading ----------------------------------------------- */

struct ljob {
	uv_work_t req;
	struct journal *j;
	struct jmsg *m;
	uint32_t seg, off, len;
	int status;
	bool retried;
	spool_load_cb cb;
	void *arg;
};

/* Read the whole record at J's location, verify its CRC and keep a copy of
 * the envelope part in *ENV (PF describes it). */
static int
load_verify(struct ljob *j, struct spool_rec_hdr *h, struct spool_msg_prefix *pf,
    uint8_t **env)
{
	int fd = j->m->fd;
	uint8_t hdr[SPOOL_REC_HDR_LEN], *chunk;
	uint64_t pos, end;
	uint32_t crc = 0;
	ssize_t n;
	int rc = 0;

	n = pread(fd, hdr, sizeof(hdr), j->off);
	if (n != (ssize_t)sizeof(hdr) || spool_rec_hdr_decode(hdr, h) != 0 ||
	    h->type != SPOOL_REC_MSG || SPOOL_REC_HDR_LEN + h->len != j->len ||
	    h->len < SPOOL_MSG_FIXED_LEN)
		return n < 0 ? SPOOL_EIO : SPOOL_ECORRUPT;
	/* Verify the whole record, streaming, before anyone trusts it. */
	chunk = malloc(h->len < SPOOL_READ_CHUNK_MAX ? h->len : SPOOL_READ_CHUNK_MAX);
	if (chunk == NULL)
		return SPOOL_ENOMEM;
	pos = (uint64_t)j->off + SPOOL_REC_HDR_LEN;
	end = pos + h->len;
	while (pos < end && rc == 0) {
		size_t want = end - pos > SPOOL_READ_CHUNK_MAX ?
		    SPOOL_READ_CHUNK_MAX : (size_t)(end - pos);

		n = pread(fd, chunk, want, (off_t)pos);
		if (n <= 0) {
			rc = SPOOL_EIO;
			break;
		}
		if (pos == (uint64_t)j->off + SPOOL_REC_HDR_LEN) {
			/* The encoder keeps envelopes within SPOOL_ENV_MAX,
			 * inside the first chunk. */
			if (spool_msg_prefix_decode(chunk, (size_t)n, h->len, pf) != 0 ||
			    (size_t)n < pf->env_len)
				rc = SPOOL_ECORRUPT;
			else if ((*env = malloc(pf->env_len)) == NULL)
				rc = SPOOL_ENOMEM;
			else
				memcpy(*env, chunk, pf->env_len);
		}
		crc = spool_crc32c(crc, chunk, (size_t)n);
		pos += (uint64_t)n;
	}
	free(chunk);
	if (rc == 0 && spool_rec_crc(crc, h) != h->crc)
		rc = SPOOL_ECORRUPT;
	return rc;
}

static void
load_work(uv_work_t *req)
{
	struct ljob *j = req->data;
	struct jmsg *m = j->m;
	struct spool_rec_hdr h;
	struct spool_msg_prefix pf;
	uint8_t *env = NULL;
	char path[4096];
	int rc;

	spool__seg_path(path, sizeof(path), j->j->jdir, j->seg);
	m->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (m->fd < 0) {
		j->status = errno == ENOENT ? SPOOL_ENOENT : SPOOL_EIO;
		return;
	}
	rc = load_verify(j, &h, &pf, &env);
	if (rc == 0)
		rc = spool_env_decode(env, pf.env_len, &m->base.env);
	if (rc == 0) {
		m->base.size = h.len - pf.env_len;
		m->data_off = (uint64_t)j->off + SPOOL_REC_HDR_LEN + pf.env_len;
	} else {
		(void)close(m->fd);
		m->fd = -1;
	}
	free(env);
	j->status = rc;
}

static void load_after(uv_work_t *req, int uvstatus);

static int
load_queue(struct ljob *lj)
{
	struct journal *j = lj->j;
	const struct spool_index_ent *e =
	    spool_index_at(j->ix, spool_index_lookup(j->ix, lj->m->base.qid));

	if (e == NULL)
		return SPOOL_ENOENT;
	lj->seg = e->seg;
	lj->off = e->off;
	lj->len = e->len;
	if (uv_queue_work(j->loop, &lj->req, load_work, load_after) != 0)
		return SPOOL_EIO;
	j->nreqs++;
	return 0;
}

static void
load_after(uv_work_t *req, int uvstatus)
{
	struct ljob *lj = req->data;
	struct journal *j = lj->j;
	int status = uvstatus != 0 ? SPOOL_EIO : lj->status;
	const struct spool_index_ent *e;

	j->nreqs--;
	e = spool_index_at(j->ix, spool_index_lookup(j->ix, lj->m->base.qid));
	/* Compaction may have moved it and unlinked the old segment. */
	if (status == SPOOL_ENOENT && !lj->retried && e != NULL &&
	    (e->seg != lj->seg || e->off != lj->off)) {
		lj->retried = true;
		if (load_queue(lj) == 0)
			return;
	}
	spool__load_finish(j->sp, &lj->m->base, status, lj->cb, lj->arg);
	free(lj);
	close_maybe_finish(j);
}

static int
journal_load(void *be, const struct spool_index_ent *e, spool_load_cb cb,
    void *arg)
{
	struct journal *j = be;
	struct ljob *lj = calloc(1, sizeof(*lj));
	struct jmsg *m = calloc(1, sizeof(*m));
	int rc;

	if (lj == NULL || m == NULL) {
		free(lj);
		free(m);
		return SPOOL_ENOMEM;
	}
	m->base.ops = &spool_journal_ops;
	m->base.loop = j->loop;
	m->base.qid = e->qid;
	m->fd = -1;
	lj->j = j;
	lj->m = m;
	lj->cb = cb;
	lj->arg = arg;
	lj->req.data = lj;
	if ((rc = load_queue(lj)) != 0) {
		free(m);
		free(lj);
	}
	return rc;
}

struct rjob {
	uv_work_t req;
	struct jmsg *m;
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
	struct jmsg *m = r->m;
	size_t want = r->max;

	if (r->offset >= m->base.size) {
		r->got = 0;
		return;
	}
	if (want > m->base.size - r->offset)
		want = (size_t)(m->base.size - r->offset);
	do
		r->got = pread(m->fd, m->rbuf, want, (off_t)(m->data_off + r->offset));
	while (r->got < 0 && errno == EINTR);
	if (r->got == 0)
		r->got = -1;          /* the record promised more bytes */
}

static void
read_after(uv_work_t *req, int uvstatus)
{
	struct rjob *r = req->data;
	int status = uvstatus != 0 || r->got < 0 ? SPOOL_EIO : 0;

	spool__read_done(&r->m->base, status, status ? NULL : r->m->rbuf,
	    status ? 0 : (size_t)r->got, r->cb, r->arg);
	free(r);
}

static int
journal_msg_read(struct spool_msg *base, uint64_t offset, size_t max,
    spool_read_cb cb, void *arg)
{
	struct jmsg *m = (struct jmsg *)base;
	struct rjob *r;

	/* The buffer is sized for this message, at most READ_CHUNK_MAX. */
	if (m->rbuf == NULL) {
		m->rcap = base->size < SPOOL_READ_CHUNK_MAX ? (size_t)base->size + 1 :
		    SPOOL_READ_CHUNK_MAX;
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
	if (uv_queue_work(base->loop, &r->req, read_work, read_after) != 0) {
		free(r);
		return SPOOL_EIO;
	}
	return 0;
}

static void
msg_close_cb(uv_fs_t *req)
{
	uv_fs_req_cleanup(req);
	free(req);
}

static void
journal_msg_destroy(struct spool_msg *base)
{
	struct jmsg *m = (struct jmsg *)base;

	if (m->fd >= 0) {
		uv_fs_t *req = malloc(sizeof(*req));

		/* close() runs on the threadpool like every other file call. */
		if (req == NULL || uv_fs_close(base->loop, req, m->fd, msg_close_cb) != 0)
			free(req);
	}
	spool__msg_free_common(base);
	free(m->rbuf);
	free(m);
}

/* ---- open and close ---------------------------------------------------- */

/* fsync the directory that holds PATH (PATH itself is not touched). */
static int
fsync_parent(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return SPOOL_EINVAL;
	memcpy(buf, path, n + 1);
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	while (n > 0 && buf[n - 1] != '/')
		n--;
	if (n == 0)
		return fsync_dir(".");
	buf[n > 1 ? n - 1 : 1] = '\0';
	return fsync_dir(buf);
}

/*
 * mkdir -p, and every directory this call creates is made durable: its
 * entry lives in the parent, which is fsync'd right after the mkdir.  On a
 * file system that does not order metadata, a new spool tree could
 * otherwise vanish in a power cut together with the first segments written
 * into it, although those were fdatasync'd and acknowledged.
 */
static int
mkdir_p(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);
	int rc;

	if (n == 0 || n >= sizeof(buf))
		return SPOOL_EINVAL;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, 0700) == 0) {
			if ((rc = fsync_parent(buf)) != 0)
				return rc;
		} else if (errno != EEXIST)
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
journal_free(struct journal *j)
{
	free(j->segs);
	free(j->w.stage);
	free(j->dir);
	free(j->jdir);
	free(j->tdir);
	free(j->cdir);
	free(j);
}

/* Directories, recovery and the first free-space figure. */
static int
journal_prepare(struct journal *j, struct spool_recovery_stats *stats)
{
	struct statvfs vfs;
	struct stat sb;
	char path[4096];
	int64_t t0 = util_mono_ms();
	int rc;

	if ((rc = mkdir_p(j->jdir)) != 0 || (rc = mkdir_p(j->tdir)) != 0 ||
	    (rc = mkdir_p(j->cdir)) != 0)
		return rc;
	/* A previous start may have died between a mkdir and the fsync of
	 * its parent: make the tree durable now, before anything is written
	 * into it (two fsyncs per open). */
	if ((rc = fsync_dir(j->dir)) != 0 || (rc = fsync_parent(j->dir)) != 0)
		return rc;
	if ((rc = spool__journal_recover(j, stats)) != 0)
		return rc;
	if (statvfs(j->dir, &vfs) != 0)
		return -errno;
	j->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	/* The ballast of the last run is kept; otherwise made when there is
	 * room for it (BALLAST above). */
	ballast_path(path, sizeof(path), j);
	if (stat(path, &sb) == 0 && (uint64_t)sb.st_blocks * 512 >= BALLAST_BYTES)
		j->ballast = true;
	else if (j->free_bytes > j->sp->disk_reserve + BALLAST_BYTES + 2 * BALLAST_LOW &&
	    (j->ballast = ballast_make(j)) && statvfs(j->dir, &vfs) == 0)
		j->free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	stats->duration_ms = (uint64_t)(util_mono_ms() - t0);
	return 0;
}

static int
journal_open(struct spool *sp, const struct spool_options *opts, void **be,
    struct spool_recovery_stats *stats)
{
	struct spool_index_hooks hooks = { seg_loc_add, seg_loc_drop, NULL };
	struct journal *j;
	int rc;

	if (opts->dir == NULL || opts->segment_size > MAX_SEG_SIZE)
		return SPOOL_EINVAL;
	j = xcalloc(1, sizeof(*j));
	j->sp = sp;
	j->loop = sp->loop;
	j->ix = sp->ix;
	j->dir = xstrdup(opts->dir);
	j->jdir = path_join(opts->dir, "journal");
	j->tdir = path_join(opts->dir, "tmp");
	j->cdir = path_join(opts->dir, "corrupt");
	j->seg_size = opts->segment_size ? opts->segment_size : DEFAULT_SEG_SIZE;
	if (j->seg_size < 4096)
		j->seg_size = 4096;
	j->window_ms = opts->commit_window_ms;
	j->pq_tail = &j->pq_head;
	j->w.fd = -1;
	j->w.next_segno = 1;
	j->w.stage = xmalloc(STAGE_CAP);
	hooks.arg = j;
	spool_index_set_hooks(j->ix, &hooks);

	if ((rc = journal_prepare(j, stats)) != 0)
		goto fail;
	if ((rc = uv_timer_init(j->loop, &j->window_timer)) != 0)
		goto fail;
	j->window_timer.data = j;
	j->nhandles++;
	/* A failure below is only reachable with a broken loop. */
	if ((rc = uv_timer_init(j->loop, &j->statvfs_timer)) != 0)
		goto fail;
	j->statvfs_timer.data = j;
	j->nhandles++;
	if ((rc = uv_timer_start(&j->statvfs_timer, statvfs_timer_cb,
	    STATVFS_PERIOD_MS, STATVFS_PERIOD_MS)) != 0)
		goto fail;
	/* The refresh timer alone must not keep the loop running. */
	uv_unref((uv_handle_t *)&j->statvfs_timer);
	*be = j;
	maint_check(j);
	return 0;
fail:
	spool__load_stop(j);
	spool_index_set_hooks(j->ix, NULL);
	if (j->nhandles > 0) {
		/* Handles exist: they must be closed through the loop; the
		 * journal frees itself then, and touches nothing else. */
		j->closing = true;
		close_maybe_finish(j);
		return rc;
	}
	journal_free(j);
	return rc;
}

static void
journal_finish(struct journal *j)
{
	void (*finish)(void *) = j->finish;
	void *arg = j->finish_arg;

	journal_free(j);
	if (finish != NULL)
		finish(arg);
}

static void
handle_closed(uv_handle_t *h)
{
	struct journal *j = h->data;

	if (--j->nhandles == 0)
		journal_finish(j);
}

static void
close_fd_work(uv_work_t *req)
{
	struct journal *j = req->data;

	/* Everything in it was fdatasync'd by the job that wrote it. */
	if (j->w.fd >= 0)
		(void)close(j->w.fd);
	j->w.fd = -1;
}

static void
close_fd_after(uv_work_t *req, int uvstatus)
{
	struct journal *j = req->data;

	(void)uvstatus;
	free(req);
	j->nreqs--;
	close_maybe_finish(j);
}

static void
close_maybe_finish(struct journal *j)
{
	if (!j->closing || j->closed_handles || j->nreqs > 0 ||
	    j->flush_running || j->pq_head != NULL || j->window_armed)
		return;
	if (j->w.fd >= 0) {
		uv_work_t *req = xcalloc(1, sizeof(*req));

		req->data = j;
		if (uv_queue_work(j->loop, req, close_fd_work, close_fd_after) == 0) {
			j->nreqs++;
			return;
		}
		free(req);
		j->w.fd = -1;     /* leaked rather than closed on the loop */
	}
	j->closed_handles = true;
	if (j->nhandles == 0) {
		journal_finish(j);
		return;
	}
	uv_close((uv_handle_t *)&j->window_timer, handle_closed);
	if (j->nhandles > 1)
		uv_close((uv_handle_t *)&j->statvfs_timer, handle_closed);
}

void
spool__journal_poke(struct journal *j)
{
	maint_check(j);
	close_maybe_finish(j);
}

static void
journal_close(void *be, void (*finish)(void *arg), void *arg)
{
	struct journal *j = be;

	j->closing = true;
	j->finish = finish;
	j->finish_arg = arg;
	spool__load_stop(j);
	if (j->window_armed) {
		/* Do not make the last commits wait out the window. */
		(void)uv_timer_stop(&j->window_timer);
		j->window_armed = false;
	}
	flush_maybe_start(j);
	close_maybe_finish(j);
}

const struct spool_ops spool_journal_ops = {
	.name = "journal",
	.open = journal_open,
	.close = journal_close,
	.free_bytes = journal_free_bytes,
	.tx_begin = journal_tx_begin,
	.tx_spill = journal_tx_spill,
	.tx_commit = journal_tx_commit,
	.tx_discard = journal_tx_discard,
	.append_state = journal_append_state,
	.load = journal_load,
	.msg_read = journal_msg_read,
	.msg_destroy = journal_msg_destroy,
	.post = journal_post,
	.flush_count = journal_flush_count,
	.compact_copies = journal_compact_copies,
	.reclaim = journal_reclaim,
};
