/*
 * spool.h - the message spool: the durable message journal, behind a small
 * storage backend interface.
 *
 * Every accepted message is one record in an append-only journal of segment
 * files under DIR/journal/; later records change recipient state (delivered,
 * bounced, deferred), hold a tenant, or delete a message.  The on-disk format
 * and the durability argument are documented at the top of
 * relay/spool_journal.c.
 *
 * Backends (spool_options.backend): "journal" (the default) is the real,
 * durable one; "ram" keeps everything in memory for unit tests of the
 * spool's callers, with the same queue order, quotas, figures and callback
 * timing, plus the test hooks at the end of this header.
 *
 * Threading: every function here is called on the loop thread.  Disk I/O runs
 * on the libuv threadpool; callbacks come back on the loop thread, always
 * later, never inside the call that asked for them.
 *
 * The spool knows nothing of SMTP: an envelope is strings and flags.
 */
#ifndef MXSPOOL_SPOOL_H
#define MXSPOOL_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/envelope.h"
#include <uv.h>

struct spool;
struct spool_tx;
struct spool_msg;

/* Queue ids are time ordered and unique: ms since the epoch << 20 | sequence. */
typedef uint64_t spool_qid;
#define SPOOL_QID_STRLEN 16           /* uppercase hex, no NUL */
void spool_qid_format(spool_qid qid, char buf[SPOOL_QID_STRLEN + 1]);
int spool_qid_parse(const char *s, spool_qid *out);

enum spool_status {
	SPOOL_OK = 0,
	SPOOL_PENDING = 1,            /* spool_tx_write: wait for the callback */
	SPOOL_EQUOTA = -1001,         /* tenant quota (bytes or messages) full */
	SPOOL_ENOSPC = -1002,         /* free disk space below disk_reserve */
	SPOOL_EIO = -1003,            /* write or fsync failed: not stored */
	SPOOL_ENOENT = -1004,         /* no such queue id / nothing due */
	SPOOL_ECORRUPT = -1005,       /* record failed its CRC on read */
	SPOOL_ENOMEM = -1006,
	SPOOL_EINVAL = -1007,
	SPOOL_ECLOSED = -1008,        /* spool is shutting down */
	SPOOL_EBUSY = -1009,          /* the index is still loading: not yet */
};
const char *spool_strerror(int status);


struct spool_rcpt {
	char *addr;                   /* forward-path without <> */
	char *orcpt;                  /* DSN ORCPT value as received, or NULL */
	unsigned notify;              /* ENV_NOTIFY_* bits */
};

struct spool_envelope {
	char *tenant;
	char *sender;                 /* "" is the null reverse-path */
	char *envid;                  /* DSN ENVID as received, or NULL */
	enum env_ret ret;
	enum env_body body;
	bool smtputf8;
	int64_t arrival_ms;           /* 0: the spool sets it at begin (= the
	                                 * queue id's time) */
	char *client;                 /* "helo [addr]" for logs and DSNs, or NULL */
	size_t nrcpt;
	struct spool_rcpt *rcpt;
};

enum spool_rcpt_state {
	SPOOL_RCPT_PENDING,
	SPOOL_RCPT_DELIVERED,
	SPOOL_RCPT_BOUNCED,
};

struct spool_recovery_stats;

struct spool_options {
	const char *dir;              /* spool_dir; journal/ and tmp/ go below */
	uint64_t disk_reserve;        /* bytes of free space to keep */
	uint64_t commit_window_ms;    /* extra wait to batch fsyncs; 0 = none */
	uint64_t segment_size;        /* 0 = default (64 MiB) */
	int64_t (*now_ms)(void);      /* wall clock; NULL = real time */
	const char *backend;          /* NULL or "journal": the journal under
	                               * DIR; "ram": memory only (DIR, the
	                               * segment size and the commit window are
	                               * ignored).  Another name: SPOOL_EINVAL */
	bool index_background;        /* journal: scan the old segments on the
	                               * loop after spool_open returns (see
	                               * spool_index_loading) */
	/* Called once when a background load ends: STATUS 0 and the figures,
	 * or the error that stopped it (the index then holds only what this
	 * run wrote and what was scanned; the caller should stop).  Not called
	 * when the spool is closed first. */
	void (*on_indexed)(void *arg, int status,
	    const struct spool_recovery_stats *st);
	void *on_indexed_arg;
	uint32_t index_step_records;  /* tests: records per loop iteration of
	                               * a background load; 0 = 4 ms of work */
};

struct spool_recovery_stats {
	uint64_t segments, records, messages, bytes;
	uint64_t torn_bytes;          /* cut from a segment's tail */
	uint64_t corrupt_records;     /* set aside from a segment's middle */
	uint64_t duration_ms;
};

/*
 * Open the spool at opts->dir, creating it if needed, and recover it
 * synchronously (before the loop serves anyone).  Returns 0 or a negative
 * spool_status / -errno; SPOOL_EINVAL for an unknown opts->backend.  Takes
 * no lock: the daemon locks spool_dir itself.
 */
int spool_open(uv_loop_t *loop, const struct spool_options *opts,
    struct spool **out, struct spool_recovery_stats *stats);
/*
 * A background load (index_background) is running: the index holds this
 * run's messages and those of the old segments scanned so far.  Meanwhile
 * mail is accepted (quotas count every unscanned byte as the tenant's, and
 * an unscanned message count of bytes / 64), nothing is claimed for
 * delivery, the aged walk finds nothing, and changes to messages of the old
 * segments, hold/release and capabilities answer SPOOL_EBUSY; a later
 * record in an old segment could otherwise undo them.  DONE/TOTAL (may be
 * NULL) get the old segments' scanned and total bytes.
 */
bool spool_index_loading(const struct spool *sp, uint64_t *done,
    uint64_t *total);
/* Stop taking work, wait for in-flight commits, then call DONE (may be NULL). */
void spool_close(struct spool *sp, void (*done)(void *arg), void *arg);

/* Per-tenant limits, from the config; a tenant never set has no limit, and
 * 0 means no limit for that figure.  Quota bytes count journal bytes. */
void spool_set_quota(struct spool *sp, const char *tenant, uint64_t bytes,
    uint64_t messages);
void spool_set_disk_reserve(struct spool *sp, uint64_t bytes);

/* Admission: could TENANT take one more message of SIZE bytes right now?
 * TENANT NULL checks the disk reserve only (MAIL, before any RCPT).
 * Returns 0, SPOOL_EQUOTA or SPOOL_ENOSPC. */
int spool_check(struct spool *sp, const char *tenant, uint64_t size);

/*
 * Writing a message.  begin copies ENV; its queue id is known at once.  write
 * absorbs data into a bounded buffer and returns 0 (write more), SPOOL_PENDING
 * (absorbed, but the buffer is being spilled: make no call on this tx until CB
 * runs with the status of the spill) or a negative error.  commit hands the tx
 * to the journal and consumes it: CB runs exactly once, later, with 0 only
 * after the fdatasync covering the record returned success.  abort consumes
 * the tx and leaves no live record, whatever state it is in.
 *
 * commit returns 0 (CB will run), or a negative status (SPOOL_EQUOTA,
 * SPOOL_ENOSPC, SPOOL_ECLOSED, SPOOL_ENOMEM): then the tx is consumed too and
 * CB never runs.  The one exception is SPOOL_EINVAL while a spill is pending
 * (misuse): the tx is not consumed.  A write buffers up to 64 KiB per tx plus
 * whatever a single call passes; beyond that the data goes to DIR/tmp/<qid>.
 */
typedef void (*spool_done_cb)(void *arg, int status);
typedef void (*spool_commit_cb)(void *arg, int status, spool_qid qid);
int spool_tx_begin(struct spool *sp, const struct spool_envelope *env,
    struct spool_tx **out);
spool_qid spool_tx_qid(const struct spool_tx *tx);
uint64_t spool_tx_size(const struct spool_tx *tx);
int spool_tx_write(struct spool_tx *tx, const void *buf, size_t len,
    spool_done_cb cb, void *arg);
int spool_tx_commit(struct spool_tx *tx, spool_commit_cb cb, void *arg);
void spool_tx_abort(struct spool_tx *tx);

/*
 * Draining.  claim_next returns the oldest message of TENANT whose next
 * attempt is due at NOW_MS and that nobody has claimed, and marks it claimed;
 * SPOOL_ENOENT when there is none.  A claimed message stays claimed until
 * spool_release(), spool_defer() or its last recipient is finished.
 */
int spool_claim_next(struct spool *sp, const char *tenant, int64_t now_ms,
    spool_qid *out);
void spool_release(struct spool *sp, spool_qid qid);
/* ETRN / flush: make every deferred message of TENANT due now (in memory;
 * the back-off comes back after a restart).  Returns how many moved. */
int spool_retry_now(struct spool *sp, const char *tenant);
/* Earliest next attempt among TENANT's unclaimed messages, or -1 if none. */
int64_t spool_next_due_ms(struct spool *sp, const char *tenant);

/* Load a message's envelope and recipient states (threadpool read). */
typedef void (*spool_load_cb)(void *arg, int status, struct spool_msg *msg);
int spool_load(struct spool *sp, spool_qid qid, spool_load_cb cb, void *arg);
const struct spool_envelope *spool_msg_envelope(const struct spool_msg *m);
enum spool_rcpt_state spool_msg_rcpt_state(const struct spool_msg *m, size_t i);
unsigned spool_msg_attempts(const struct spool_msg *m);
spool_qid spool_msg_qid(const struct spool_msg *m);
uint64_t spool_msg_size(const struct spool_msg *m);  /* message bytes */
/* Read up to MAX message bytes from OFFSET; CB gets len 0 at the end.  BUF
 * is valid only during CB. */
typedef void (*spool_read_cb)(void *arg, int status, const void *buf,
    size_t len);
int spool_msg_read(struct spool_msg *m, uint64_t offset, size_t max,
    spool_read_cb cb, void *arg);
void spool_msg_free(struct spool_msg *m);

/*
 * State records.  They are journaled and group-committed like messages; CB
 * (may be NULL) gets the commit status.  Losing one in a crash may cause a
 * duplicate delivery, never a loss.  mark_rcpt, defer and delete change the
 * queue only once their record is stored, just before CB runs (a failed
 * record changes nothing, except that a failed defer still backs off in
 * memory); until then spool_find and the figures show the old state.  A
 * message being deleted is claimed meanwhile, so spool_claim_next skips it.
 * When every recipient of a message is delivered or bounced the message is
 * gone from the index.
 */
int spool_mark_rcpt(struct spool *sp, spool_qid qid, size_t rcpt,
    enum spool_rcpt_state state, spool_done_cb cb, void *arg);
int spool_defer(struct spool *sp, spool_qid qid, int64_t next_attempt_ms,
    spool_done_cb cb, void *arg);
int spool_delete(struct spool *sp, spool_qid qid, spool_done_cb cb, void *arg);
int spool_set_held(struct spool *sp, const char *tenant, bool held,
    spool_done_cb cb, void *arg);
bool spool_is_held(struct spool *sp, const char *tenant);

/* Figures for status, metrics and quota. */
struct spool_tenant_stats {
	uint64_t messages;
	uint64_t bytes;
	int64_t oldest_arrival_ms;    /* -1 when empty */
};
void spool_tenant_stats(struct spool *sp, const char *tenant,
    struct spool_tenant_stats *out);
/*
 * Disk space held by mail that is gone (delivered or deleted): DEAD_BYTES
 * in all, of which SOON_BYTES is in segments maintenance gives back now
 * (within seconds: a roll of the active segment, an unlink, a compaction);
 * the rest waits until the older segments holding live mail are reclaimed
 * or the active segment fills.  Zero for the RAM backend.
 */
struct spool_reclaim {
	uint64_t dead_bytes;
	uint64_t soon_bytes;
};
void spool_reclaim_info(struct spool *sp, struct spool_reclaim *out);
uint64_t spool_total_bytes(struct spool *sp);
/* Flush jobs run so far, each one fdatasync of the journal (a group
 * commit): /metrics and the benchmarks divide accepted messages by it. */
uint64_t spool_flush_count(const struct spool *sp);
uint64_t spool_total_messages(struct spool *sp);

struct spool_item {
	spool_qid qid;
	const char *tenant;
	int64_t arrival_ms;           /* the queue id's time (see envelope) */
	int64_t next_attempt_ms;      /* 0 = due at once */
	uint64_t size;                /* journal bytes: record incl. envelope */
	unsigned attempts;
	bool claimed;
	bool warned;                  /* spool_mark_warned() was journaled */
};
/* Visit TENANT's messages (all tenants if NULL), oldest first; stop when CB
 * returns non-zero. */
void spool_foreach(struct spool *sp, const char *tenant,
    int (*cb)(void *arg, const struct spool_item *item), void *arg);
int spool_find(struct spool *sp, spool_qid qid, struct spool_item *out);
/* One page of TENANT's queue (all tenants if NULL): the MAX smallest queue
 * ids above AFTER whose item KEEP accepts (NULL = every one), ascending, in
 * OUT (room for MAX); returns how many.  One pass over the index with a
 * MAX-sized heap: no snapshot or sort of the whole queue. */
/* The primary's last reply to a deferred message (memory only, up to 119
 * bytes kept): NULL when not known, which it may not be after a restart or
 * when another message's reply took its slot.  Valid until the next set. */
void spool_set_last_reply(struct spool *sp, spool_qid qid, const char *reply);
const char *spool_last_reply(struct spool *sp, spool_qid qid);
size_t spool_page(struct spool *sp, const char *tenant, spool_qid after,
    size_t max, bool (*keep)(void *arg, const struct spool_item *item),
    void *arg, spool_qid *out);

/*
 * The clock-driven walk (queue_lifetime, delay_warning), cheap enough to run
 * every second on a queue of millions: it costs the messages it visits, not
 * the queue.  Per tenant, oldest first (arrival = queue id time):
 *   SPOOL_AGE_EXPIRED for every live message with arrival_ms at or before
 *     EXPIRE_BEFORE_MS, on every call until the message is gone (the caller
 *     bounces it; a claimed one is visited with item->claimed set and left
 *     to the delivery in flight);
 *   SPOOL_AGE_WARN once per message and spool_open() for a message that is
 *     not warned, not expired, and arrived at or before WARN_BEFORE_MS
 *     (INT64_MIN: no warnings).  The caller sends the notice (or decides
 *     the sender wants none) and calls spool_mark_warned() to make that
 *     survive a restart.
 * At most MAX callbacks per call; CB returning non-zero stops the walk, and
 * the message it was called for is offered again on the next call (the
 * walk does not move past it).  Returns the number of callbacks made.
 * Expired messages left in place are called back on every call and count
 * against MAX, so MAX should exceed the number a caller leaves in place.
 * "Oldest first" is commit order (queue id order after spool_open): a
 * message whose DATA took long may come up to that long late.  Each call
 * examines at most 16384 queue ids per tenant and pass beyond what it calls
 * back (the rest wait for the next call).  CB may remove, defer or mark
 * messages.  TENANT NULL walks every tenant, sharing MAX.
 */
enum spool_age { SPOOL_AGE_EXPIRED, SPOOL_AGE_WARN };
typedef int (*spool_age_cb)(void *arg, const struct spool_item *item,
    enum spool_age what);
/* (MAX applies to each of the two passes on its own, so expired messages a
 * caller leaves in place never keep warnings from being offered.) */
unsigned spool_walk_aged(struct spool *sp, const char *tenant,
    int64_t expire_before_ms, int64_t warn_before_ms, unsigned max,
    spool_age_cb cb, void *arg);
/* Journal that QID's delay notice is done (a WARNED record): from now on,
 * and after any restart, spool_item.warned is true and the walk skips it. */
int spool_mark_warned(struct spool *sp, spool_qid qid, spool_done_cb cb,
    void *arg);

/*
 * The primary's capabilities as its last EHLO announced them, kept per
 * tenant in the journal (a CAPS record; each new segment repeats the current
 * ones, as it does HOLD) so that intake knows them after a restart while the
 * primary is still down.  The spool does not interpret EXT.
 */
struct spool_caps {
	unsigned ext;                 /* SMTP_EXT_* bits of smtp_proto.h */
	uint64_t size_max;            /* SIZE value; 0 = none announced */
	uint32_t rcpt_max, mail_max;  /* RFC 9422 LIMITS; 0 = none */
	int64_t seen_ms;              /* when that EHLO was read */
};
/* Record CAPS for TENANT; caps equal to the known ones (seen_ms aside)
 * write nothing and CB (may be NULL) gets 0 later all the same. */
int spool_set_caps(struct spool *sp, const char *tenant,
    const struct spool_caps *caps, spool_done_cb cb, void *arg);
/* true and *OUT when TENANT's caps are known; false otherwise. */
bool spool_get_caps(struct spool *sp, const char *tenant,
    struct spool_caps *out);

/*
 * Test hooks of the "ram" backend, for unit tests of smtp_server, drain and
 * control that must see the spool fail.  Both return 0, or SPOOL_EINVAL when
 * SP was not opened with backend "ram" (or STATUS is positive).
 *
 * spool_ram_fail_next: the next spool_tx_commit or state record (mark_rcpt,
 * defer, delete, set_held) called after this one reports STATUS (e.g.
 * SPOOL_EIO, what a failed fsync gives: the 451 path) in its callback
 * instead of 0.  One shot; 0 cancels.  As with a failed journal write, a
 * failed commit stores nothing (the message never enters the queue), and a
 * failed mark_rcpt or delete leaves the queue as it was.
 *
 * spool_ram_set_free_bytes: the free space admission sees is BYTES now;
 * messages stored afterwards use it up and removed ones give it back (the
 * default is 1 TiB).  spool_check and spool_tx_commit return SPOOL_ENOSPC
 * (the 452 path) when free space < disk reserve + bytes being committed +
 * the new message, as with the journal.
 *
 *	struct spool_options o = { .backend = "ram", .disk_reserve = 1000 };
 *	spool_open(&loop, &o, &sp, NULL);
 *	spool_ram_set_free_bytes(sp, 500);      // below the reserve
 *	assert(spool_check(sp, NULL, 1) == SPOOL_ENOSPC);
 *	spool_ram_set_free_bytes(sp, 1 << 30);
 *	spool_ram_fail_next(sp, SPOOL_EIO);
 *	spool_tx_commit(tx, on_commit, &w);     // returns 0 ...
 *	uv_run(&loop, UV_RUN_DEFAULT);          // ... on_commit gets SPOOL_EIO
 */
int spool_ram_fail_next(struct spool *sp, int status);
int spool_ram_set_free_bytes(struct spool *sp, uint64_t bytes);

#endif
