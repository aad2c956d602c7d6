/*
 * spool_backup.h - an online backup of the journal spool
 * (`mxspoolctl backup DIR`), made while the daemon accepts and drains.
 *
 * What the copy holds: every segment that existed when the backup began,
 * closed ones whole (hard links when DIR is on the spool's file system, a
 * copy otherwise) and the active one up to the end of the last flush job
 * whose fdatasync had completed, after a barrier that waits for every record
 * queued before the backup began.  A daemon started on DIR therefore finds
 * every message acknowledged (250) before the backup began, and no message
 * whose delivery or deletion was recorded before it began.  Records written
 * after that point are not in the copy; replay keeps those messages, which is
 * a duplicate at worst, never a loss.
 *
 * While a backup runs the journal neither unlinks nor compacts a segment (the
 * backup's reference): a segment it still has to copy cannot disappear, and
 * a message cannot move out of the copied range.
 *
 * Everything here runs on the loop thread; the file work runs on the libuv
 * threadpool.  Only the journal backend can be backed up.
 */
#ifndef MXSPOOL_SPOOL_BACKUP_H
#define MXSPOOL_SPOOL_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

struct spool;
struct spool_backup;

struct spool_backup_progress {
	uint64_t segments_done, segments;     /* files finished / to do */
	uint64_t bytes_done, bytes;           /* journal bytes */
	uint64_t linked, copied;              /* segments hard-linked / copied */
	uint64_t messages;                    /* live messages when it began */
	uint64_t elapsed_ms;
	uint64_t snapshot_segno;              /* the active segment then, or 0 */
	uint64_t snapshot_size;               /* its bytes copied */
};

/*
 * Progress (DONE false, STATUS 0) after each file or chunk, then once the end
 * (DONE true): STATUS 0 when DIR holds a complete spool, or a negative
 * spool_status / -errno (SPOOL_ECLOSED when the spool closed meanwhile).
 * P is valid during the call only.
 */
typedef void (*spool_backup_cb)(void *arg, int status,
    const struct spool_backup_progress *p, bool done);

/*
 * Start a backup of SP into DIR (absolute; created if missing; must not hold
 * a journal already).  One at a time.  Returns 0 (CB runs later, at least
 * once, with DONE true at the end), SPOOL_EINVAL (not the journal backend, or
 * DIR not absolute), -EBUSY (a backup is running) or SPOOL_ECLOSED.
 * *OUT is the handle for spool_backup_detach().
 */
int spool_backup_start(struct spool *sp, const char *dir, spool_backup_cb cb,
    void *arg, struct spool_backup **out);

/* The caller goes away: CB is never called again; the backup runs to its
 * end (or to the spool's close) and frees itself. */
void spool_backup_detach(struct spool_backup *b);

#endif
