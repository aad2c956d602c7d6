/*
 * drain.h - the per-tenant delivery scheduler.
 *
 * One scheduler per tenant probes the primary, and while it is up forwards
 * the tenant's queue oldest first under the rate limit, ramp and back-off of
 * drain_policy.h.  Tenants are kept by name: a reload re-applies settings.
 */
#ifndef MXSPOOL_DRAIN_H
#define MXSPOOL_DRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct config;
struct dns;
struct drain;
struct spool;
struct stats;
struct tls_ctx;

/* What the drain tells a shared budget (a fleet, fleet.h) before it sends:
 * the tenant's settings in force and the message. */
struct drain_gate_ask {
	double rate;                  /* drain_rate */
	double limit;                 /* the tenant's limit now (ramp x AIMD) */
	double burst;                 /* drain_burst */
	uint64_t bandwidth;           /* drain_bandwidth, 0 = unlimited */
	unsigned concurrency;         /* drain_concurrency */
	uint64_t size;                /* the message's bytes */
	bool new_conn;                /* sending it opens a new connection */
};

/* A budget shared with other relays, asked on top of the tenant's own
 * limits.  take: 0 = go (tokens, and with new_conn a connection lease,
 * are taken), else the ms after which to ask again (the gate's owner may
 * drain_kick() earlier).  done: a connection that got a lease ended;
 * FAILED when the primary failed it (421, timeout, refused). */
struct drain_gate {
	void *arg;
	int64_t (*take)(void *arg, const char *tenant,
	    const struct drain_gate_ask *ask);
	void (*done)(void *arg, const char *tenant, bool failed);
};

/* What the drain works with; owned by the caller (relay.c) and outliving
 * the drain. */
struct drain_deps {
	uv_loop_t *loop;
	struct spool *spool;
	struct dns *dns;              /* the one resolver of the relay */
	struct stats *stats;          /* delivered / bounced counters */
	/* Wall clock in ms since the epoch for spool times, queue lifetime,
	 * delay warnings and DSN dates; NULL = util_now_ms.  Tests pass a fake
	 * clock (give the spool the same one).  Timers and the rate limit run
	 * on the monotonic clock regardless. */
	int64_t (*now_ms)(void);
	/* Period of each tenant's expiry and delay-notice walk in ms (on the
	 * monotonic clock); 0 = once a second.  Tests shorten it. */
	uint64_t age_tick_ms;
	/* The fleet's shared budget, or NULL (one relay alone). */
	const struct drain_gate *gate;
	/* Each recipient the primary accepted (recipients = learn counts it
	 * as valid); NULL = nobody listens.  Strings valid during the call. */
	void (*on_delivered)(void *arg, const char *tenant, const char *rcpt);
	void *hook_arg;
};

/* CFG and TLS_CLIENT (NULL: no outbound TLS) stay the caller's; they must
 * live until the next drain_apply_config or drain_close. */
int drain_new(const struct drain_deps *deps, const struct config *cfg,
    struct tls_ctx *tls_client, struct drain **out);
/* (Re)apply a config: new tenants start, removed tenants stop, settings of
 * the others change at once; runtime "set" overrides are dropped.  After it
 * returns the drain holds no pointer into the previous config. */
void drain_apply_config(struct drain *d, const struct config *cfg,
    struct tls_ctx *tls_client);
/* A message was queued for TENANT: deliver at once if the primary is up. */
void drain_kick(struct drain *d, const char *tenant);
/* ETRN / mxspoolctl flush: probe now (TENANT NULL = all). Returns the number
 * of tenants affected. */
int drain_flush(struct drain *d, const char *tenant);
/* mxspoolctl set TENANT KEY=VALUE: 0, or -1 with ERR.  With CHECK_ONLY the
 * pair is validated and nothing changes (so a list applies all or nothing).
 * The keys and their rules are the config file's: config_runtime_keys(),
 * checked by config_tenant_set(). */
int drain_set(struct drain *d, const char *tenant, const char *key,
    const char *value, char *err, size_t errlen, bool check_only);
/* mxspoolctl bounce QUEUEID: return the message to its sender now.  Returns
 * 0 or a spool_status. */
int drain_bounce(struct drain *d, uint64_t qid);
void drain_close(struct drain *d, void (*done)(void *arg), void *arg);

struct drain_status {
	const char *primary_state;    /* "up" | "down" | "unknown" */
	double drain_rate;            /* measured over the last 10 s */
	double drain_rate_limit;      /* allowed right now */
	unsigned in_flight;
	int64_t eta_s;                /* -1 = null */
	uint64_t delivered_since_up;  /* recipients since the primary last came up */
	const char *last_probe;       /* "host: reply" of the last probe, or ""
	                               * (valid until the loop runs again) */
	unsigned concurrency_limit;   /* connections allowed now (feedback) */
	const char *limit_reason;     /* why that last changed (valid as
	                               * last_probe) */
};
int drain_status(struct drain *d, const char *tenant, struct drain_status *out);
/* For the recipient verifier (verify.h): while the primary that mail for
 * RCPT (an address of TENANT) goes to is up, the address its last good
 * probe reached (*ADDR, HOST) and the tenant's rate limit in force
 * (*RATE_LIMIT).  False when it is not up or TENANT is unknown. */
bool drain_primary_target(struct drain *d, const char *tenant, const char *rcpt,
    struct sockaddr_storage *addr, char *host, size_t hostlen,
    double *rate_limit);

#endif
