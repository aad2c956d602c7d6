/*
 * fleet_policy.h - the arithmetic of the fleet's shared drain budget, as
 * pure functions (no clock, no Redis, no libuv): how many tokens a node
 * asks Redis for at once, what it may send on its own while Redis is out
 * of reach, when a drop of the local limit is a cut to share, the tokens
 * a node holds between grants, and the text each node publishes about
 * itself.  fleet.c does the I/O and calls these; the unit tests drive them
 * on a fake clock.
 */
#ifndef MXSPOOL_FLEET_POLICY_H
#define MXSPOOL_FLEET_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/drain_policy.h"

/* A node asks for this share of a second's worth of tokens per call, so
 * Redis sees about ten grant calls a second per draining node. */
#define FLEET_BATCH_FRACTION 0.1
#define FLEET_BATCH_MAX 50
/* A drop of the local limit below this share of the last one (same
 * drain_rate) is an AIMD cut or a ramp restart: it is shared. */
#define FLEET_CUT_RATIO 0.75

/* Message tokens per grant call at LIMIT msg/s: ceil(LIMIT * 0.1), 1 to
 * FLEET_BATCH_MAX. */
unsigned fleet_batch(double limit);
/* Byte tokens per call at BANDWIDTH bytes/s (0: unlimited, 0 returned). */
uint64_t fleet_batch_bytes(uint64_t bandwidth);
/* Redis unreachable: what one node of NODES (last seen alive; 0 counts as
 * 1) may send on its own: min(LIMIT, RATE / NODES).  Never more, so the
 * fleet stays within drain_rate while it cannot agree. */
double fleet_fallback_rate(double rate, double limit, unsigned nodes);
uint64_t fleet_fallback_bandwidth(uint64_t bandwidth, unsigned nodes);
/* The same for connections: CONC / NODES, but at least 1 (a node that may
 * open none could never drain its own spool). */
unsigned fleet_fallback_concurrency(unsigned conc, unsigned nodes);
/* Is LIMIT (with RATE) a cut from PREV_LIMIT (with PREV_RATE)?  A changed
 * drain_rate (reload, mxspoolctl set) is a new ceiling, not a cut. */
bool fleet_limit_cut(double prev_rate, double prev_limit, double rate,
    double limit);

/* Reconnects to Redis back off from 100 ms, doubling, to 5 s. */
#define FLEET_BACKOFF_MIN_MS 100
#define FLEET_BACKOFF_MAX_MS 5000
/* The delay before the next connect after one that failed PREV_MS after
 * the one before (0: the first failure since the last success). */
uint64_t fleet_backoff_next(uint64_t prev_ms);

/* ---- the tokens a node holds between grants ----------------------------- */

struct fleet_reservoir {
	unsigned msgs;
	uint64_t bytes;
};

/* One message of SIZE bytes (bytes counted only when BYTES_LIMITED): true
 * and taken, or false and nothing taken. */
bool fleet_reservoir_take(struct fleet_reservoir *r, uint64_t size,
    bool bytes_limited);
/* What to ask Redis for so that the next message of SIZE fits: *MSGS and
 * *BYTES (0 when nothing of that kind is missing). */
void fleet_reservoir_want(const struct fleet_reservoir *r, uint64_t size,
    unsigned batch, uint64_t batch_bytes, bool bytes_limited, unsigned *msgs,
    uint64_t *bytes);

/* ---- Redis unreachable: the node's own bucket --------------------------- */

struct fleet_fallback {
	struct drain_bucket msgs, bytes;
	double rate;                  /* in force, msg/s */
	uint64_t bandwidth;           /* in force, bytes/s; 0 = unlimited */
	bool init;
};

/* Reset: the next take starts a fresh bucket (after Redis came back). */
void fleet_fallback_reset(struct fleet_fallback *fb);
/* May one message of SIZE leave at NOW (ms) at RATE msg/s and BANDWIDTH
 * bytes/s (0 unlimited)?  The message bucket holds one token at most, so
 * going degraded never releases a burst.  0 = taken, else the ms to wait. */
int64_t fleet_fallback_take(struct fleet_fallback *fb, double rate,
    uint64_t bandwidth, uint64_t size, int64_t now);

/* ---- what a node publishes ---------------------------------------------- */

#define FLEET_NODE_MAX 64             /* node name, bytes with the NUL */
#define FLEET_TENANT_MAX 65
#define FLEET_FIGURES_MAX 64          /* tenants per node in the view */
#define FLEET_PAYLOAD_MAX 16384           /* 64 tenants with 64-byte names fit */

/* One tenant on one node. */
struct fleet_figures {
	char tenant[FLEET_TENANT_MAX];
	char primary_state[8];        /* "up" | "down" | "unknown" */
	bool held;
	uint64_t queued_messages;
	uint64_t queued_bytes;
	int64_t oldest_age_s;
	double drain_rate;            /* measured, msg/s */
	double drain_rate_limit;      /* the node's own limit */
	unsigned connections;         /* delivery connections (leases) in use */
};

/* Encode N figures into BUF (LEN bytes): the length written, or -1 when
 * it does not fit.  Lines "t NAME STATE HELD QUEUED BYTES OLDEST RATE
 * LIMIT CONNS" after a "mxspool-fleet 1" line; names are [a-z0-9_-]. */
int fleet_payload_encode(const struct fleet_figures *fig, size_t n,
    char *buf, size_t len);
/* Decode another node's payload (untrusted: bounded, every field checked)
 * into OUT (room for MAX).  Returns the number of figures, or -1 when the
 * payload is not one. */
int fleet_payload_decode(const char *buf, size_t len,
    struct fleet_figures *out, size_t max);

#endif
