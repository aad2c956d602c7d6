/*
 * spool_recover.c - the journal backend's recovery at open: scan the
 * segments in number order, verify every record's CRC, replay the good ones
 * into the index, set corrupt records in the middle of a segment aside
 * (copied to corrupt/, counted, skipped) and cut a torn tail.  The rules and
 * the byte layouts are those of the ON-DISK FORMAT comment at the top of
 * relay/spool_journal.c; read that first.
 *
 * It runs either synchronously inside spool_open, before the loop serves
 * anyone, or (spool_options.index_background) in slices of a few
 * milliseconds on the loop while the daemon already takes mail: plain
 * pread/ftruncate on the loop thread, bounded by the slice.  The index is
 * filled in bulk mode (relay/spool_index.h) either way: heaps and segment
 * liveness are built once at the end.  What the rest of the spool refuses
 * or counts conservatively meanwhile is described in relay/spool.c
 * (LOADING).
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
#include <sys/types.h>
#include <unistd.h>

#include "mxspool/util.h"
#include "spool_internal.h"
#include "spool_journal.h"

#define RECOVER_BUF  (8u * 1024 * 1024)   /* recovery read window */
#define LOAD_BUF     (1u * 1024 * 1024)   /* ... in the background: one read
                                           * of it stalls the loop (cold
                                           * disk: about 10 ms) */
#define PROBE_CHUNK  (1u << 20)           /* resync scan and set-aside copy */

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
	struct rwin probe = { .fd = fd, .cap = PROBE_CHUNK };
	uint8_t *chunk = xmalloc(PROBE_CHUNK);
	uint64_t found = 0, end;

	probe.buf = xmalloc(probe.cap);
	while (from + SPOOL_REC_HDR_LEN <= size && found == 0) {
		ssize_t n = pread(fd, chunk, PROBE_CHUNK, (off_t)from);
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
set_aside(struct journal *j, int fd, uint64_t no, uint64_t off, uint64_t end)
{
	char path[4096];
	uint8_t *buf = xmalloc(PROBE_CHUNK);
	int out;

	snprintf(path, sizeof(path), "%s/%012" PRIu64 "-%" PRIu64, j->cdir, no, off);
	out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	while (out >= 0 && off < end) {
		size_t want = end - off > PROBE_CHUNK ? PROBE_CHUNK : (size_t)(end - off);
		ssize_t n = pread(fd, buf, want, (off_t)off);

		if (n <= 0 || write(out, buf, (size_t)n) != n)
			break;
		off += (uint64_t)n;
	}
	if (out >= 0)
		(void)close(out);
	free(buf);
}

/* ---- replay ------------------------------------------------------------ */

static void
replay_msg(struct journal *j, const struct spool_rec_hdr *h,
    const struct spool_msg_prefix *pf, uint64_t segno, uint64_t off)
{
	uint32_t slot = spool_index_lookup(j->ix, h->qid);
	int t;

	if (slot != SPOOL_INDEX_NONE) {
		/* A compaction copy: the later one wins, the state stays. */
		spool_index_relocate(j->ix, slot, (uint32_t)segno, (uint32_t)off);
		return;
	}
	if ((t = spool_index_tenant_get(j->ix, pf->tenant, pf->tenant_len)) < 0)
		return;
	(void)spool_index_insert(j->ix, h->qid, (unsigned)t, pf->nrcpt,
	    (uint32_t)segno, (uint32_t)off, SPOOL_REC_HDR_LEN + h->len);
}

/* A CAPS record: the last one replayed wins. */
static int
replay_caps(struct spool_index *ix, const uint8_t *body, size_t len)
{
	struct spool_caps caps;
	const char *tn;
	size_t tl;
	int t;

	if (spool_caps_body_decode(body, len, &tn, &tl, &caps) != 0)
		return SPOOL_ECORRUPT;
	if ((t = spool_index_tenant_get(ix, tn, tl)) >= 0)
		spool_index_tenant_set_caps(ix, (unsigned)t, &caps);
	return 0;
}

/* Apply one verified record.  Returns SPOOL_ECORRUPT when a record with a
 * good CRC does not parse (a bug or a foreign writer): it is set aside. */
static int
replay(struct journal *j, const struct spool_rec_hdr *h, const uint8_t *body,
    size_t avail, uint64_t segno, uint64_t off)
{
	struct spool_index *ix = j->ix;
	struct spool_msg_prefix pf;
	enum spool_rcpt_state st;
	const struct spool_index_ent *e;
	uint32_t slot, r, attempts;
	const char *tn;
	size_t tl;
	int64_t next;
	bool held, tenant_rec = h->type == SPOOL_REC_HOLD ||
	    h->type == SPOOL_REC_CAPS;
	int t;

	spool_index_qid_seen(ix, h->qid);
	if (!tenant_rec && h->qid == 0)
		return SPOOL_ECORRUPT;
	slot = tenant_rec ? SPOOL_INDEX_NONE : spool_index_lookup(ix, h->qid);
	e = slot == SPOOL_INDEX_NONE ? NULL : spool_index_at(ix, slot);
	/* While the daemon already takes mail (a background load), an old
	 * record never touches a message this run wrote: qid_floor keeps their
	 * ids apart, and should a clock have made them meet, the old message
	 * is set aside rather than merged into the new one. */
	if (e != NULL && j->loader != NULL &&
	    e->seg >= spool__load_first_new(j->loader)) {
		if (h->type == SPOOL_REC_MSG)
			return SPOOL_ECORRUPT;
		e = NULL;
	}
	switch (h->type) {
	case SPOOL_REC_MSG:
		if (spool_msg_prefix_decode(body, avail, h->len, &pf) != 0)
			return SPOOL_ECORRUPT;
		/* Compaction copies a record verbatim: a second MSG of a known
		 * queue id with another length or recipient count is no copy
		 * (a foreign writer, a reused id).  Moving the index to it would
		 * keep the first one's length, and the next compaction would
		 * write a cut copy and lose the message (fuzz_spool_segment,
		 * seed 23-not-a-copy); keep the first and set this one aside. */
		if (e != NULL && (e->len != SPOOL_REC_HDR_LEN + (uint64_t)h->len ||
		    spool_ent_nrcpt(e) != pf.nrcpt))
			return SPOOL_ECORRUPT;
		replay_msg(j, h, &pf, segno, off);
		return 0;
	case SPOOL_REC_RCPT:
		if (spool_rcpt_body_decode(body, h->len, &r, &st) != 0)
			return SPOOL_ECORRUPT;
		if (e != NULL && r < spool_ent_nrcpt(e))
			(void)spool_index_mark_rcpt(ix, slot, r, st);
		return 0;
	case SPOOL_REC_DEFER:
		if (spool_defer_body_decode(body, h->len, &next, &attempts) != 0)
			return SPOOL_ECORRUPT;
		if (e != NULL)
			spool_index_set_retry(ix, slot, next, attempts);
		return 0;
	case SPOOL_REC_DELETE:
		if (h->len != 0)
			return SPOOL_ECORRUPT;
		if (e != NULL)
			spool_index_remove(ix, slot);
		return 0;
	case SPOOL_REC_HOLD:
		if (spool_hold_body_decode(body, h->len, &tn, &tl, &held) != 0)
			return SPOOL_ECORRUPT;
		if ((t = spool_index_tenant_get(ix, tn, tl)) >= 0)
			spool_index_tenant_set_held(ix, (unsigned)t, held);
		return 0;
	case SPOOL_REC_WARNED:
		if (h->len != 0)
			return SPOOL_ECORRUPT;
		if (e != NULL)
			spool_index_set_warned(ix, slot);
		return 0;
	case SPOOL_REC_CAPS:
		return replay_caps(ix, body, h->len);
	}
	return SPOOL_ECORRUPT;
}

/* ---- one segment ------------------------------------------------------- */

/* Outcome of looking at the record at an offset. */
enum rec_look { REC_GOOD, REC_BAD, REC_IOERR };

/* Verify and replay the record at OFF of segment NO; *WHOLE is its length
 * when the header could be read (0 otherwise). */
static enum rec_look
recover_rec(struct journal *j, struct rwin *w, uint64_t no, uint64_t off,
    uint64_t size, uint64_t *whole)
{
	struct spool_rec_hdr h;
	const uint8_t *p;
	uint32_t crc;
	size_t avail;

	*whole = 0;
	if (off + SPOOL_REC_HDR_LEN > size)
		return REC_BAD;
	if ((p = rwin_get(w, off, SPOOL_REC_HDR_LEN)) == NULL)
		return REC_IOERR;
	if (spool_rec_hdr_decode(p, &h) != 0 || off + SPOOL_REC_HDR_LEN + h.len > size)
		return REC_BAD;
	*whole = SPOOL_REC_HDR_LEN + (uint64_t)h.len;
	if (*whole <= w->cap) {
		/* The common case: one look at the bytes in the window. */
		if ((p = rwin_get(w, off, (size_t)*whole)) == NULL)
			return REC_IOERR;
		crc = spool_crc32c(0, p + SPOOL_REC_HDR_LEN, h.len);
	} else if (rwin_crc(w, off + SPOOL_REC_HDR_LEN, h.len, &crc) != 0)
		return REC_IOERR;
	if (spool_rec_crc(crc, &h) != h.crc)
		return REC_BAD;
	/* Enough for a MSG prefix, or a whole HOLD or CAPS body. */
	avail = h.len < SPOOL_CAPS_BODY_FIXED + 0xFFFF ? h.len :
	    SPOOL_CAPS_BODY_FIXED + 0xFFFF;
	p = rwin_get(w, off + SPOOL_REC_HDR_LEN, avail);
	if (p == NULL && avail > 0)
		return REC_IOERR;
	return replay(j, &h, p, avail, no, off) == 0 ? REC_GOOD : REC_BAD;
}

/*
 * A bad record at OFF (of length WHOLE if its header was readable).  If a
 * valid record follows, the bad bytes are set aside and *NEXT is where to go
 * on; otherwise it is a torn tail: the segment is cut at OFF, *NEXT is 0 and
 * *SIZE the new size.
 */
static int
recover_bad(struct journal *j, struct rwin *w, uint64_t no, uint64_t off,
    uint64_t whole, uint64_t *size, uint64_t *next,
    struct spool_recovery_stats *st)
{
	uint64_t end;

	/*
	 * Resynchronise from the next byte, never from OFF + WHOLE: a damaged
	 * length that happens to end on a later record boundary would
	 * otherwise swallow the intact records in between.  Every record has
	 * its own magic and CRC, so the forward search finds the first one.
	 */
	end = find_next_valid(w->fd, off + 1, *size);
	if (end != 0) {
		set_aside(j, w->fd, no, off, end);
		st->corrupt_records++;
		*next = end;
		return 0;
	}
	/* Nothing valid follows: a torn tail.  A record that looks whole but
	 * fails its CRC is kept as evidence first. */
	if (whole > 0 && off + whole == *size) {
		set_aside(j, w->fd, no, off, *size);
		st->corrupt_records++;
	} else
		st->torn_bytes += *size - off;
	if (ftruncate(w->fd, (off_t)off) != 0 || fsync(w->fd) != 0)
		return -errno;
	*size = off;
	spool__seg_find(j, no)->size = off;
	w->len = 0;
	*next = 0;
	return 0;
}

/* A file too short or foreign to be a segment: remove or move it aside. */
static int
recover_not_seg(struct journal *j, const char *path, uint64_t no, uint64_t size,
    struct spool_recovery_stats *st)
{
	char dst[4096];

	if (size < SPOOL_SEG_HDR_LEN) {
		/* Torn while being created: nothing in it was acknowledged,
		 * because the first fdatasync covers the header too. */
		st->torn_bytes += size;
		return unlink(path) != 0 ? -errno : 0;
	}
	/* Not ours or not this version: keep it out of the way. */
	snprintf(dst, sizeof(dst), "%s/%012" PRIu64 ".seg", j->cdir, no);
	st->corrupt_records++;
	return rename(path, dst) != 0 ? -errno : 0;
}

/*
 * The header of segment NO (a file of SIZE >= 32 bytes) does not verify.
 * A header of another format version with a good CRC is a foreign file:
 * *SCAN is false and the caller moves it aside.  Any other damage (magic,
 * CRC, reserved bytes, the number) is a damaged header on our own segment:
 * the segment number is in the file name and every record carries its own
 * magic and CRC, so when a valid record follows, the 32 header bytes are set
 * aside, a fresh header is written (so the next open finds it whole) and
 * *SCAN is true.  A file with no valid record at all is not scanned.
 */
static int
recover_bad_header(struct journal *j, int fd, uint64_t no, const uint8_t *p,
    uint64_t size, bool *scan, struct spool_recovery_stats *st)
{
	uint8_t hdr[SPOOL_SEG_HDR_LEN];

	*scan = false;
	if (memcmp(p, SPOOL_SEG_MAGIC, 8) == 0 &&
	    spool_get32(p + 28) == spool_crc32c(0, p, 28) &&
	    spool_get32(p + 8) != SPOOL_SEG_VERSION)
		return 0;
	if (find_next_valid(fd, SPOOL_SEG_HDR_LEN, size) == 0)
		return 0;
	set_aside(j, fd, no, 0, SPOOL_SEG_HDR_LEN);
	st->corrupt_records++;
	spool_seg_hdr_encode(hdr, no);
	if (pwrite(fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr) ||
	    fsync(fd) != 0)
		return SPOOL_EIO;
	*scan = true;
	return 0;
}

/*
 * Open segment NO and check its header: *FD is the open file and *SIZE its
 * length when it is a segment to scan (added to the segment table), or -1
 * when it was removed or moved aside.
 */
static int
seg_open(struct journal *j, uint64_t no, struct rwin *w, int *fdp,
    uint64_t *sizep, struct spool_recovery_stats *st)
{
	char path[4096];
	struct stat sb;
	uint64_t size, segno;
	const uint8_t *p;
	int fd, rc = 0;

	*fdp = -1;
	spool__seg_path(path, sizeof(path), j->jdir, no);
	if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
		return -errno;
	if (fstat(fd, &sb) != 0) {
		rc = -errno;
		goto fail;
	}
	size = (uint64_t)sb.st_size;
	w->fd = fd;
	w->base = 0;
	w->len = 0;
	p = size < SPOOL_SEG_HDR_LEN ? NULL : rwin_get(w, 0, SPOOL_SEG_HDR_LEN);
	if (p != NULL && (spool_seg_hdr_decode(p, &segno) != 0 || segno != no)) {
		bool scan;

		if ((rc = recover_bad_header(j, fd, no, p, size, &scan, st)) != 0)
			goto fail;
		w->len = 0;          /* the window holds the old header */
		if (!scan)
			p = NULL;
	}
	if (p == NULL) {
		rc = recover_not_seg(j, path, no, size, st);
		goto fail;
	}
	spool__seg_add(j, no)->size = size;
	st->segments++;
	*fdp = fd;
	*sizep = size;
	return 0;
fail:
	(void)close(fd);
	return rc;
}

/*
 * Verify and replay the records of the open segment NO from *OFF on, at most
 * MAX of them (0: all).  *OFF is where the next call goes on and *SIZE the
 * segment's length (a torn tail cuts it); *DONE is set at its end.
 */
static int
seg_scan(struct journal *j, struct rwin *w, uint64_t no, uint64_t *offp,
    uint64_t *sizep, uint64_t max, bool *done, struct spool_recovery_stats *st)
{
	uint64_t off = *offp, whole, next = 0, n = 0;
	bool cut = false;
	int rc = 0;

	*done = false;
	while (off < *sizep && (max == 0 || n < max)) {
		n++;
		switch (recover_rec(j, w, no, off, *sizep, &whole)) {
		case REC_GOOD:
			st->records++;
			off += whole;
			continue;
		case REC_IOERR:
			return SPOOL_EIO;
		case REC_BAD:
			break;
		}
		if ((rc = recover_bad(j, w, no, off, whole, sizep, &next, st)) != 0)
			return rc;
		if (next == 0) {
			cut = true;      /* a torn tail: the segment ends here */
			break;
		}
		off = next;
	}
	if (off >= *sizep || cut) {
		*done = true;
		st->bytes += *sizep;
	}
	*offp = off;
	return 0;
}

/* ---- the whole journal ------------------------------------------------- */

/* Remove leftovers of transactions that were in progress at the crash. */
static int
clean_tmp(struct journal *j)
{
	DIR *d = opendir(j->tdir);
	struct dirent *de;
	char path[4096];

	if (d == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", j->tdir, de->d_name);
		(void)unlink(path);
	}
	(void)closedir(d);
	return 0;
}

/* The segment numbers in journal/, sorted; *N of them in *OUT (free()). */
static int
list_segments(struct journal *j, uint64_t **out, size_t *n)
{
	DIR *d = opendir(j->jdir);
	struct dirent *de;
	size_t cap = 0;

	*out = NULL;
	*n = 0;
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
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			*out = xrealloc(*out, cap * sizeof(**out));
		}
		(*out)[(*n)++] = v;
	}
	(void)closedir(d);
	if (*n > 0)
		qsort(*out, *n, sizeof(**out), spool__u64_cmp);
	return 0;
}

/* The recovery in progress: what spool__load_begin found, and where the
 * scan is. */
struct spool_loader {
	uint64_t *nos, *sizes;        /* segments to scan, their lengths */
	size_t n, i;
	int fd;                       /* segment nos[i] while it is open */
	uint64_t off, size;
	struct rwin w;
	uint64_t first_new;           /* segments from here on are this run's */
	uint64_t total_bytes, done_bytes;
	struct spool_recovery_stats st;
	int64_t t0;
	uv_idle_t idle;               /* a background load's steps */
	bool idle_open;
	struct journal *j;
};

/* A background load: new queue ids must be above every one the old
 * segments hold, before those are read.  Queue ids are
 * taken from the clock when a message begins, before its record is
 * written, so none is later than the newest segment's modification time
 * (one second of margin for file systems with coarse times). */
static void
qid_floor(struct journal *j, const struct stat *sb)
{
	int64_t ms = (int64_t)sb->st_mtim.tv_sec * 1000 +
	    sb->st_mtim.tv_nsec / 1000000 + 1000;

	if (ms > 0)
		spool_index_qid_seen(j->ix, (spool_qid)ms << 20);
}

int
spool__load_begin(struct journal *j, struct spool_loader **out)
{
	struct spool_loader *L = xcalloc(1, sizeof(*L));
	uint64_t *nos, maxno = 0;
	size_t n, k = 0;
	int rc;

	*out = NULL;
	if ((rc = list_segments(j, &nos, &n)) != 0) {
		free(L);
		return rc;
	}
	L->t0 = util_mono_ms();
	L->fd = -1;
	L->w.fd = -1;
	L->w.cap = j->sp->load_background ? LOAD_BUF : RECOVER_BUF;
	L->w.buf = xmalloc(L->w.cap);
	L->nos = nos;
	L->sizes = xcalloc(n > 0 ? n : 1, sizeof(*L->sizes));
	/* Headers first, so that the segment table is complete (and in
	 * order) before this run adds a segment of its own. */
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct stat sb;
		int fd;

		maxno = nos[i];
		if ((rc = seg_open(j, nos[i], &L->w, &fd, &L->sizes[k], &L->st)) != 0 ||
		    fd < 0)
			continue;
		if (j->sp->load_background && fstat(fd, &sb) == 0)
			qid_floor(j, &sb);
		(void)close(fd);
		L->total_bytes += L->sizes[k];
		nos[k++] = nos[i];
	}
	L->n = k;
	L->w.fd = -1;
	L->w.len = 0;
	L->first_new = maxno + 1;
	j->w.next_segno = maxno + 1;
	if (rc == 0)
		rc = clean_tmp(j);
	spool_index_bulk_begin(j->ix);
	*out = L;
	return rc;
}

int
spool__load_step(struct journal *j, struct spool_loader *L, uint64_t budget_ns,
    uint32_t max_records, bool *done)
{
	uint64_t t0 = uv_hrtime();
	bool seg_done;
	int rc;

	*done = false;
	while (L->i < L->n) {
		uint64_t no = L->nos[L->i];

		if (L->fd < 0) {
			char path[4096];

			spool__seg_path(path, sizeof(path), j->jdir, no);
			if ((L->fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
				return -errno;
			L->w.fd = L->fd;
			L->w.base = 0;
			L->w.len = 0;
			L->off = SPOOL_SEG_HDR_LEN;
			L->size = L->sizes[L->i];
		}
		rc = seg_scan(j, &L->w, no, &L->off, &L->size,
		    max_records != 0 ? max_records : budget_ns == 0 ? 0 : 4096,
		    &seg_done, &L->st);
		if (rc != 0)
			return rc;
		if (seg_done) {
			(void)close(L->fd);
			L->fd = -1;
			L->done_bytes += L->sizes[L->i];
			L->i++;
		}
		if (max_records != 0 ||
		    (budget_ns != 0 && uv_hrtime() - t0 >= budget_ns))
			return 0;
	}
	*done = true;
	return 0;
}

/* The idle handle is closed: free the loader, and nothing else (the
 * journal may be gone by now). */
static void
loader_closed(uv_handle_t *h)
{
	free(h->data);
}

void
spool__load_end(struct journal *j, struct spool_loader *L,
    struct spool_recovery_stats *st)
{
	if (L == NULL)
		return;
	if (L->fd >= 0)
		(void)close(L->fd);
	if (st != NULL) {
		/* Segment liveness, heaps and oldest figures, in one pass. */
		L->st.messages = spool_index_bulk_end(j->ix);
		L->st.duration_ms = (uint64_t)(util_mono_ms() - L->t0);
		*st = L->st;
	}
	free(L->w.buf);
	free(L->nos);
	free(L->sizes);
	L->w.buf = NULL;
	L->nos = L->sizes = NULL;
	if (L->idle_open)
		uv_close((uv_handle_t *)&L->idle, loader_closed);
	else
		free(L);
}

void
spool__load_progress(const struct spool_loader *L, uint64_t *done,
    uint64_t *total)
{
	*done = L->done_bytes + (L->fd >= 0 ? L->off : 0);
	*total = L->total_bytes;
}

uint64_t
spool__load_first_new(const struct spool_loader *L)
{
	return L->first_new;
}

int
spool__journal_recover(struct journal *j, struct spool_recovery_stats *st)
{
	struct spool_loader *L;
	bool done;
	int rc;

	if (j->sp->load_background)
		return spool__load_start(j, st);
	rc = spool__load_begin(j, &L);
	if (rc == 0)
		rc = spool__load_step(j, L, 0, 0, &done);
	spool__load_end(j, L, rc == 0 ? st : NULL);
	return rc;
}

/* ---- the background load ------------------------------------------------ */

#define LOAD_SLICE_NS  (4u * 1000 * 1000)   /* loop time per step */
#define LOAD_MIN_REC   64u                  /* unscanned bytes per message,
                                             * at most (LOADING quotas) */

static void
load_publish(struct journal *j)
{
	uint64_t done, total;

	spool__load_progress(j->loader, &done, &total);
	j->sp->load_done = done;
	j->sp->load_total = total;
	spool_index_set_unknown(j->ix, total - done, (total - done) / LOAD_MIN_REC);
}

static void
load_idle_cb(uv_idle_t *h)
{
	struct spool_loader *L = h->data;
	struct journal *j = L->j;
	struct spool *sp = j->sp;
	struct spool_recovery_stats st;
	bool done = false;
	int rc = spool__load_step(j, L, LOAD_SLICE_NS, sp->load_step, &done);

	load_publish(j);
	if (rc == 0 && !done)
		return;
	(void)uv_idle_stop(h);
	memset(&st, 0, sizeof(st));
	j->loader = NULL;
	spool__load_end(j, L, rc == 0 ? &st : NULL);
	if (rc == 0) {
		/* Only now may the drain, the aged walk and maintenance see the
		 * old messages: every later record of theirs has been read. */
		spool_index_set_unknown(j->ix, 0, 0);
		sp->load_done = sp->load_total;
		sp->loading = false;
		spool__journal_poke(j);
	}
	if (sp->on_indexed != NULL)
		sp->on_indexed(sp->on_indexed_arg, rc, &st);
}

int
spool__load_start(struct journal *j, struct spool_recovery_stats *st)
{
	struct spool_loader *L;
	int rc;

	if ((rc = spool__load_begin(j, &L)) != 0) {
		spool__load_end(j, L, NULL);
		return rc;
	}
	*st = L->st;
	L->j = j;
	j->loader = L;
	j->sp->loading = true;
	j->sp->load_first_seg = (uint32_t)L->first_new;
	load_publish(j);
	if ((rc = uv_idle_init(j->loop, &L->idle)) != 0)
		return rc;            /* the journal's open fails: load_stop */
	L->idle.data = L;
	L->idle_open = true;
	return uv_idle_start(&L->idle, load_idle_cb);
}

void
spool__load_stop(struct journal *j)
{
	struct spool_loader *L = j->loader;

	if (L == NULL)
		return;
	if (L->idle_open)
		(void)uv_idle_stop(&L->idle);
	j->loader = NULL;
	spool__load_end(j, L, NULL);
}
