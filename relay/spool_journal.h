/*
 * spool_journal.h - internals shared by the journal backend's two files:
 * relay/spool_journal.c (the writer, reads, maintenance, open and close) and
 * relay/spool_recover.c (the scan at open).  The on-disk format they both
 * follow is documented at the top of relay/spool_journal.c.
 *
 * THREADING.  Everything in struct journal is owned by the loop thread,
 * except struct wstate (the active segment's descriptor and size), which
 * only the running flush job touches; the loop thread reads it in the job's
 * after-callback, which libuv orders after the work function.
 */
#ifndef MXSPOOL_SPOOL_JOURNAL_H
#define MXSPOOL_SPOOL_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool_backend.h"

struct seg {
	uint64_t no;
	uint64_t size;
	uint64_t live_bytes;
	uint32_t live_msgs;
	uint32_t copies_out;          /* compaction copies not yet committed */
	bool compacting;
	bool copy_failed;
};

struct wstate {
	int fd;                       /* active segment, -1 if none */
	uint64_t segno, size, next_segno;
	uint64_t synced;              /* bytes of it the last fdatasync covered */
	uint8_t *stage;
	size_t stage_len;
};

struct pend;

/* Compaction's byte budget (spool__compact_take). */
struct compact_budget {
	bool started;
	int64_t tokens;               /* bytes; may be negative (debt) */
	int64_t last_ms;
};

struct journal {
	struct spool *sp;             /* the wrapper: index and loop */
	uv_loop_t *loop;
	struct spool_index *ix;
	char *dir, *jdir, *tdir, *cdir;
	uint64_t seg_size;
	uint64_t window_ms;

	/* segments, oldest first */
	struct seg *segs;
	size_t nsegs, capsegs;
	uint64_t active_segno;        /* 0 = none */

	/* group commit */
	struct pend *pq_head, **pq_tail;
	struct pend *run_head;        /* the running flush job's records */
	bool flush_running;
	bool window_armed;
	struct wstate w;
	uv_timer_t window_timer;

	/* disk space */
	uv_timer_t statvfs_timer;
	bool statvfs_running;
	uint64_t free_bytes;

	bool maint_running;
	bool maint_stuck;             /* an unlink failed: stop deleting */
	bool roll_wanted;             /* the next flush job closes the active
	                               * segment (roll_check) */
	struct compact_budget cbudget;
	bool ballast;                 /* DIR/ballast holds its room (flush jobs
	                               * release and remake it) */
	uint64_t ncopies;             /* messages compaction set out to copy */

	uint64_t nsyncs;              /* flush jobs that reached fdatasync */
	struct spool_backup *backup;  /* running (spool_backup.c): no unlink
	                               * and no compaction while set */
	struct spool_loader *loader;  /* background load running, or NULL */
	unsigned nreqs;               /* work requests in flight */
	unsigned nhandles;            /* open handles */
	bool closing, closed_handles;
	void (*finish)(void *);
	void *finish_arg;
};

struct seg *spool__seg_find(struct journal *j, uint64_t no);
/* Segments are only ever added with a number above every existing one. */
struct seg *spool__seg_add(struct journal *j, uint64_t no);
void spool__seg_path(char *buf, size_t len, const char *jdir, uint64_t no);

/*
 * Recovery (relay/spool_recover.c): scan every segment of J in number
 * order, verify, replay into J's index, set corrupt records aside, cut torn
 * tails, empty tmp/, and set J's next segment number.  Runs on the calling
 * thread before the loop serves anyone.  0 or a negative status / -errno.
 * With sp->load_background, only the header pass runs here and the scan
 * goes on in the background (spool__load_start).
 */
int spool__journal_recover(struct journal *j, struct spool_recovery_stats *st);

/*
 * The same in steps (a background load): begin checks every segment header,
 * fills the segment table, sets the next segment number and the queue-id
 * floor, empties tmp/ and puts the index in bulk mode; each step scans
 * records for about BUDGET_NS (0: to the end; MAX_RECORDS != 0: at most
 * that many, for tests) and sets *DONE at the end; end leaves bulk mode and fills *ST (NULL: after a failure, nothing is
 * built) and frees L (NULL is fine).  Segments numbered first_new and up
 * are this run's; progress counts scanned bytes of the old ones.
 */
struct spool_loader;
int spool__load_begin(struct journal *j, struct spool_loader **out);
int spool__load_step(struct journal *j, struct spool_loader *L,
    uint64_t budget_ns, uint32_t max_records, bool *done);
void spool__load_end(struct journal *j, struct spool_loader *L,
    struct spool_recovery_stats *st);
void spool__load_progress(const struct spool_loader *L, uint64_t *done,
    uint64_t *total);
uint64_t spool__load_first_new(const struct spool_loader *L);
/* spool_options.index_background: load_begin, then steps from an idle
 * handle of the loader's own until the end, which clears sp->loading (on
 * success), pokes maintenance and calls sp->on_indexed.  *ST gets the
 * header pass's figures.  stop (at close, or a failed open) abandons a
 * running load; the handle's close frees the loader and touches nothing
 * else, so the journal may be gone by then. */
int spool__load_start(struct journal *j, struct spool_recovery_stats *st);
void spool__load_stop(struct journal *j);

/*
 * Pure policy, unit-tested on given numbers and clocks.
 *
 * spool__roll_wanted: should the active segment of SIZE bytes, LIVE of
 * them still queued, be closed so that its space can be reclaimed?  Yes
 * when under a quarter of it is live and the dead bytes are at least 1 MiB
 * and at least an eighth of SEG_SIZE or a quarter of FREE_BYTES.
 *
 * spool__compact_take: may a compaction copying BYTES start at NOW_MS?
 * The budget refills at SEG_SIZE/4 bytes per second up to SEG_SIZE (a
 * compactable segment holds under SEG_SIZE/4 live bytes, so one per second
 * at least); a start is allowed while the budget is positive and takes
 * BYTES from it.  This bounds the copying after repeated write errors,
 * which close a segment each time.
 */
bool spool__roll_wanted(uint64_t size, uint64_t live, uint64_t seg_size,
    uint64_t free_bytes);
bool spool__compact_take(struct compact_budget *b, int64_t now_ms,
    uint64_t seg_size, uint64_t bytes);

/* Loop thread: start maintenance if it is due and finish a close that was
 * waiting, after J->backup or J->nreqs changed outside spool_journal.c. */
void spool__journal_poke(struct journal *j);

#endif
