/*
 * fleet.h - several relays, one drain budget per tenant, through Redis.
 *
 * With [fleet] redis = ADDR:PORT every relay of the fleet takes its
 * tenants' message and byte tokens from one GCRA bucket per tenant kept in
 * Redis (one atomic Lua script per grant, tokens in small batches), holds
 * a lease in Redis for each delivery connection (leases expire when a node
 * dies), and shares AIMD cuts through a limit stored next to the bucket.
 * Each node publishes its per-tenant figures with a TTL and reads the
 * others' back, for `mxspoolctl status --fleet` and /metrics.
 *
 * Redis out of reach: each node paces itself at drain_rate / N (N = nodes
 * last seen alive) and concurrency / N, and says "degraded".  Intake and
 * the journal never wait for Redis: only the drain asks the fleet, and the
 * fleet answers at once from what it holds (a refill is asked for in the
 * background; DEPS->wake runs the tenant's scheduler when it arrives).
 *
 * hiredis 0.14 (Debian 12) runs on the libuv loop through its adapter; it
 * has no TLS.  Everything here runs on the loop thread.
 */
#ifndef MXSPOOL_FLEET_H
#define MXSPOOL_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mxspool/fleet_policy.h"

struct config;
struct fleet;

struct fleet_deps {
	uv_loop_t *loop;
	void *arg;
	/* Tokens or a lease for TENANT arrived: run its scheduler (soon, not
	 * from inside this call's caller). */
	void (*wake)(void *arg, const char *tenant);
	/* This node's figures, at most MAX tenants, for the fleet view;
	 * returns how many were written. */
	size_t (*figures)(void *arg, struct fleet_figures *out, size_t max);
};

/* What the drain tells the fleet with every ask (its settings in force). */
struct fleet_ask {
	double rate;                  /* drain_rate, the ceiling */
	double limit;                 /* the tenant's limit now: ramp x AIMD */
	double burst;                 /* drain_burst (0: one batch) */
	uint64_t bandwidth;           /* drain_bandwidth, 0 = unlimited */
	unsigned concurrency;         /* drain_concurrency */
	uint64_t size;                /* the message's bytes */
	bool new_conn;                /* it needs one more connection */
};

/* Start connecting to CFG's [fleet] redis (CFG->has_fleet must be set);
 * the node name and password are copied.  0, or -1 (out of memory). */
int fleet_new(const struct fleet_deps *deps, const struct config *cfg,
    struct fleet **out);
/* Stop: leases and pending calls are dropped, DONE runs once every handle
 * is closed. */
void fleet_close(struct fleet *f, void (*done)(void *arg), void *arg);

/*
 * May TENANT send one message now (and open one more connection, with
 * ASK->new_conn)?  0: yes, the tokens (and the lease) are taken.  Else the
 * milliseconds after which to ask again; DEPS->wake may come earlier.
 */
int64_t fleet_take(struct fleet *f, const char *tenant,
    const struct fleet_ask *ask);
/* A delivery connection of TENANT ended (FAILED: the primary failed it:
 * 421, timeout, refused): its lease goes back; a failure cuts the shared
 * limit, so one node's 421 slows them all. */
void fleet_conn_done(struct fleet *f, const char *tenant, bool failed);

/* What TENANT may send now with LOCAL its own limit (msg/s): the lower of
 * LOCAL and the shared limit last read from Redis, or while degraded of
 * LOCAL and drain_rate / N.  LOCAL when the fleet knows nothing yet. */
double fleet_limit(const struct fleet *f, const char *tenant, double local);

/* "ok" (Redis answers) or "degraded". */
const char *fleet_state(const struct fleet *f);

/* ---- the fleet view ----------------------------------------------------- */

struct fleet_node_view {
	char node[FLEET_NODE_MAX];
	bool self;
	int64_t age_ms;               /* since the node last published */
	size_t ntenants;
	struct fleet_figures tenants[FLEET_FIGURES_MAX];
};

/* One tenant summed over the fleet. */
struct fleet_tenant_sum {
	char tenant[FLEET_TENANT_MAX];
	unsigned nodes;               /* nodes that serve it */
	uint64_t queued_messages, queued_bytes;
	int64_t oldest_age_s;         /* the oldest anywhere */
	double drain_rate;            /* measured, summed */
	double shared_limit;          /* the fleet's limit (Redis), or -1 */
	unsigned connections;
};

struct fleet_view {
	const char *state;            /* fleet_state() */
	const char *node;             /* ours */
	char redis[300];              /* "addr:port" */
	unsigned nodes_alive;         /* N of the fallback */
	size_t nnodes;
	struct fleet_node_view *nodes;
	size_t nsums;
	struct fleet_tenant_sum *sums;
};

/* The last view read from Redis (nodes alive then), with sums; while
 * degraded, the last one seen.  Free with fleet_view_free(). */
int fleet_view_get(struct fleet *f, struct fleet_view *out);
void fleet_view_free(struct fleet_view *v);

#endif
