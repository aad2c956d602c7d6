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

#include <stdint.h>

enum stat_kind {
	STAT_ACCEPTED,                /* a message committed to the spool */
	STAT_DELIVERED,               /* a recipient the primary took (250) */
	STAT_BOUNCED,                 /* a recipient returned to its sender */
	STAT__COUNT
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

#endif
