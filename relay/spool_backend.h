/*
 * spool_backend.h - the storage backend interface of the spool, internal to
 * relay/spool*.c (shape of OpenSMTPD's queue_backend.c: a table of
 * operations chosen by name).
 *
 * The split of work:
 *   relay/spool.c          the wrapper: the public API of mxspool/spool.h,
 *                          argument and state checks, admission (quotas and
 *                          disk reserve), queue ids, envelope encoding, and
 *                          the index (relay/spool_index.h), which it owns and
 *                          keeps up to date for every backend
 *   struct spool_ops       where the bytes live: message records, state
 *                          records, spills, loads, reads, free space
 *   relay/spool_journal.c  "journal": the durable segment journal
 *   relay/spool_ram.c      "ram": memory only, for unit tests of callers
 *
 * Rules every backend keeps, so that callers see the same behaviour:
 *   - No callback runs inside the call that asked for it; all run later on
 *     the loop thread.
 *   - A commit ends with spool__tx_committed() (which inserts the message
 *     into the index) and then the caller's callback.  A state record's
 *     index change is made by the wrapper in the record's callback, once
 *     the backend reports it stored; the backend only reports whether it
 *     was, and must run those callbacks in the order of the records.
 *   - A load ends with spool__load_finish(); a read with spool__read_done().
 *   - close finishes what is in flight, closes every handle, then calls
 *     FINISH(ARG) once; after that the backend state is freed.
 */
#ifndef MXSPOOL_SPOOL_BACKEND_H
#define MXSPOOL_SPOOL_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/spool.h"
#include "spool_index.h"

#define SPOOL_SPILL_THRESHOLD  (64u * 1024)     /* per-tx buffer before spill */
#define SPOOL_READ_CHUNK_MAX   (1u * 1024 * 1024) /* largest spool_msg_read */

struct spool_ops;

struct spool {
	uv_loop_t *loop;
	const struct spool_ops *ops;
	void *be;                     /* the backend's state */
	struct spool_index *ix;
	uint64_t disk_reserve;
	int64_t (*now_ms)(void);
	bool closing;
	/* A background load (spool_index_loading): set by the backend. */
	bool loading;
	uint32_t load_first_seg;      /* entries below: old segments */
	uint64_t load_done, load_total;
	uint32_t load_step;           /* spool_options.index_step_records */
	bool load_background;         /* spool_options.index_background */
	void (*on_indexed)(void *, int, const struct spool_recovery_stats *);
	void *on_indexed_arg;
	void (*close_done)(void *);
	void *close_arg;
};

/* A transaction: the wrapper's part; BE is the backend's own. */
struct spool_tx {
	struct spool *sp;
	spool_qid qid;
	uint16_t tenant;
	uint32_t nrcpt;
	uint8_t *env;                 /* encoded envelope (spool_env_encode) */
	size_t env_len;
	uint8_t *buf;                 /* bytes not yet handed to a spill */
	size_t len, cap;
	uint64_t spilled;             /* bytes the backend absorbed */
	bool spilling;
	bool aborted;                 /* abort came during a spill */
	spool_done_cb cb;             /* the pending spill's callback */
	void *arg;
	void *be;
};

/* A loaded message: the common part, first member of the backend's. */
struct spool_msg {
	const struct spool_ops *ops;  /* a message may outlive its spool */
	uv_loop_t *loop;
	struct spool_envelope *env;
	uint8_t *rst;                 /* recipient states */
	spool_qid qid;
	unsigned attempts;
	uint64_t size;                /* message bytes */
	int reading;                  /* reads in flight (0 or 1) */
	bool freed;                   /* the owner let go during a read */
};

struct spool_ops {
	const char *name;
	/* Prepare storage under OPTS (the journal recovers into sp->ix) and
	 * set *BE.  0 or a negative status; on failure nothing is left that
	 * the wrapper must free but sp->ix. */
	int (*open)(struct spool *sp, const struct spool_options *opts,
	    void **be, struct spool_recovery_stats *stats);
	void (*close)(void *be, void (*finish)(void *arg), void *arg);
	/* Free bytes for admission. */
	uint64_t (*free_bytes)(void *be);
	/* Per-tx setup after the wrapper filled TX (may be NULL). */
	int (*tx_begin)(void *be, struct spool_tx *tx);
	/* Absorb tx->buf[0..len) later, then spool__tx_spilled().  0, or a
	 * negative status and nothing was started. */
	int (*tx_spill)(void *be, struct spool_tx *tx);
	/* Store TX (already admitted and reserved); see the rules above.
	 * 0, or SPOOL_ENOMEM and nothing was started (the wrapper then
	 * releases the reservation and discards TX). */
	int (*tx_commit)(void *be, struct spool_tx *tx, spool_commit_cb cb,
	    void *arg);
	/* Drop TX with nothing stored; ends with spool__tx_free(), maybe
	 * later. */
	void (*tx_discard)(void *be, struct spool_tx *tx);
	/* Store one state record (type and body per relay/spool_internal.h);
	 * CB (may be NULL) gets the status later.  0 or SPOOL_ENOMEM. */
	int (*append_state)(void *be, uint8_t type, spool_qid qid,
	    const uint8_t *body, size_t len, spool_done_cb cb, void *arg);
	/* Load the message at index entry E. */
	int (*load)(void *be, const struct spool_index_ent *e, spool_load_cb cb,
	    void *arg);
	/* Read, after the wrapper's checks; ends with spool__read_done(). */
	int (*msg_read)(struct spool_msg *m, uint64_t offset, size_t max,
	    spool_read_cb cb, void *arg);
	/* Free the backend's part of M, then spool__msg_free_common(M). */
	void (*msg_destroy)(struct spool_msg *m);
	/* Run CB(ARG, 0) later with nothing stored (a state change that was
	 * already recorded); close waits for it.  0 or SPOOL_ENOMEM. */
	int (*post)(void *be, spool_done_cb cb, void *arg);
	/* Durable flushes so far (benchmark), or 0. */
	uint64_t (*flush_count)(const void *be);
	/* Messages compaction set out to copy so far (tests), or NULL. */
	uint64_t (*compact_copies)(const void *be);
	/* spool_reclaim_info(), or NULL (nothing held). */
	void (*reclaim)(const void *be, struct spool_reclaim *out);
};

extern const struct spool_ops spool_journal_ops;
extern const struct spool_ops spool_ram_ops;

/* Bytes a message takes in quotas and figures: a record header plus the
 * encoded envelope plus the message bytes (the journal's record size; the
 * RAM backend counts the same so both give the same figures). */
uint64_t spool__tx_bytes(const struct spool_tx *tx);
/* End of a spill: clears spilling, then runs the caller's callback, or
 * discards the tx if it was aborted meanwhile. */
void spool__tx_spilled(struct spool_tx *tx, int status);
/* Fold a finished commit into the index: releases the reservation and, on
 * STATUS 0, inserts the message at (SEG, OFF).  Returns the status for the
 * caller's callback (SPOOL_ENOMEM if the index could not grow). */
int spool__tx_committed(struct spool_tx *tx, int status, uint32_t seg,
    uint32_t off);
/* Free the wrapper's part of TX (the backend freed its own). */
void spool__tx_free(struct spool_tx *tx);
/* End of a load: on success fills recipient states and attempts from the
 * index, then calls CB; on failure frees M (may be NULL) and calls CB. */
void spool__load_finish(struct spool *sp, struct spool_msg *m, int status,
    spool_load_cb cb, void *arg);
/* End of a read: calls CB unless the message was freed meanwhile, in which
 * case M is destroyed. */
void spool__read_done(struct spool_msg *m, int status, const void *buf,
    size_t len, spool_read_cb cb, void *arg);
void spool__msg_free_common(struct spool_msg *m);

#endif
