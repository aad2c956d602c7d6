/*
 * stats.h - the relay's counters: accepted, delivered and bounced messages,
 * in total and per tenant, as `mxspoolctl status` and /metrics report them.
 *
 * Owned by relay.c and handed to the modules that count (smtp_server counts
 * accepted messages, drain delivered and bounced ones), so no module has to
 * know struct relay to count.  Tenants are kept by name: a reload that
 * removes and re-adds a tenant keeps its totals, as Postfix's counters
 * survive a "postfix reload".
 */
#ifndef MXSPOOL_STATS_H
#define MXSPOOL_STATS_H

#include <stddef.h>
#include <stdint.h>

enum stat_kind {
	STAT_ACCEPTED,                /* a message committed to the spool */
	STAT_DELIVERED,               /* a recipient the primary took (250) */
	STAT_BOUNCED,                 /* a recipient returned to its sender */
	STAT_PROBE_OK,                /* a probe of the primary that got 250 to EHLO */
	STAT_PROBE_FAIL,              /* a probe that did not */
	STAT__COUNT
};

/* Latency histograms, Prometheus style: cumulative buckets with fixed upper
 * bounds (seconds), a sum and a count.  Fixed bounds keep every tenant's
 * histogram the same shape, which is what lets PromQL aggregate them. */
enum stat_hist {
	STAT_HIST_ACCEPT,             /* end of DATA -> 250 (the durable commit) */
	STAT_HIST_DELIVERY,           /* one delivery transaction at the primary */
	STAT_HIST_QUEUE_DELAY,        /* arrival -> delivered: how long mail waited */
	STAT_HIST__COUNT
};

#define STATS_HIST_BUCKETS_MAX 16
struct stats_hist {
	uint64_t bucket[STATS_HIST_BUCKETS_MAX];  /* observations <= le[i], not cumulative */
	uint64_t count;                /* including those above every bound (+Inf) */
	double sum;                    /* seconds */
};

struct stats;

/* NULL only when out of memory. */
struct stats *stats_new(void);
void stats_free(struct stats *st);

/* Add N to KIND for TENANT and to the total.  A tenant is created on first
 * use; past STATS_TENANTS_MAX names (a bound far above any config) only the
 * total counts. */
#define STATS_TENANTS_MAX 4096
void stats_add(struct stats *st, const char *tenant, enum stat_kind kind,
    uint64_t n);
uint64_t stats_total(const struct stats *st, enum stat_kind kind);
/* 0 for a tenant never counted. */
uint64_t stats_tenant(const struct stats *st, const char *tenant,
    enum stat_kind kind);

/* The upper bounds of hist H, in seconds, ascending; *N gets their number. */
const double *stats_hist_bounds(enum stat_hist h, size_t *n);
/* Record one observation of SECONDS (negative counts as 0). */
void stats_observe(struct stats *st, const char *tenant, enum stat_hist h,
    double seconds);
/* NULL for a tenant never observed (or an H out of range). */
const struct stats_hist *stats_hist_tenant(const struct stats *st,
    const char *tenant, enum stat_hist h);
const struct stats_hist *stats_hist_total(const struct stats *st,
    enum stat_hist h);

#endif
