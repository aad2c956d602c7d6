/*
 * metrics.c - /metrics: the Prometheus text exposition of a status snapshot
 * (struct control_status, control_internal.h).
 *
 * Pure: no loop, no spool, no struct relay.  Every metric is one row of
 * metrics_tenant[] or metrics_relay[]: its name, type, help text and where
 * its value sits in the snapshot.  The rows' order is the output's order,
 * which scrapers do not need but the tests pin, so a new metric goes at the
 * end of its table.  Per-tenant samples print as %.17g (a float that reads
 * back exactly), relay-wide ones as integers, as they always have.
 */
#include "config.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "mxspool/metrics.h"

#include "control_internal.h"

enum metrics_kind {
	METRICS_U64,            /* uint64_t */
	METRICS_I64,            /* int64_t */
	METRICS_UINT,           /* unsigned */
	METRICS_DOUBLE,         /* double */
	METRICS_MS_AS_S,        /* int64_t milliseconds, as fractional seconds */
	METRICS_IS_UP,          /* const char * state: 1 when "up", else 0 */
};

struct metrics_def {
	const char *name, *type, *help;
	enum metrics_kind kind;
	size_t off;             /* of the value in the snapshot row */
};

#define T(m) offsetof(struct control_tenant_row, m)
static const struct metrics_def metrics_tenant[] = {
	{ "mxspool_queue_messages", "gauge", "Messages queued for the tenant.",
	  METRICS_U64, T(queued_messages) },
	{ "mxspool_queue_bytes", "gauge", "Bytes queued for the tenant.",
	  METRICS_U64, T(queued_bytes) },
	{ "mxspool_queue_oldest_seconds", "gauge", "Age of the oldest queued message.",
	  METRICS_MS_AS_S, T(oldest_age_ms) },
	{ "mxspool_primary_up", "gauge", "1 when the tenant's primary is up.",
	  METRICS_IS_UP, T(primary_state) },
	{ "mxspool_drain_rate_limit", "gauge", "Messages per second the drain allows now.",
	  METRICS_DOUBLE, T(drain_rate_limit) },
	{ "mxspool_drain_rate", "gauge", "Messages per second delivered over the last 10 s.",
	  METRICS_DOUBLE, T(drain_rate) },
	{ "mxspool_drain_in_flight", "gauge", "Messages being delivered now.",
	  METRICS_UINT, T(in_flight) },
	{ "mxspool_messages_accepted_total", "counter", "Messages accepted (250 after DATA).",
	  METRICS_U64, T(accepted_total) },
	{ "mxspool_messages_delivered_total", "counter", "Messages delivered to the primary.",
	  METRICS_U64, T(delivered_total) },
	{ "mxspool_messages_bounced_total", "counter", "Messages returned to the sender.",
	  METRICS_U64, T(bounced_total) },
	{ "mxspool_queue_lifetime_seconds", "gauge", "The tenant's queue_lifetime in force.",
	  METRICS_I64, T(queue_lifetime_s) },
	{ "mxspool_delay_warning_seconds", "gauge", "The tenant's delay_warning in force (0 = off).",
	  METRICS_I64, T(delay_warning_s) },
	{ "mxspool_quota_bytes", "gauge", "The tenant's quota in bytes (0 = none).",
	  METRICS_U64, T(quota_bytes) },
	{ "mxspool_quota_messages", "gauge", "The tenant's quota in messages (0 = none).",
	  METRICS_U64, T(quota_messages) },
	{ "mxspool_quota_used_ratio", "gauge",
	  "Share of the tenant's quota in use, the fuller of bytes and messages (0 without a quota).",
	  METRICS_DOUBLE, T(quota_used) },
	{ "mxspool_drain_concurrency_limit", "gauge",
	  "Connections to the primary the drain allows now (concurrency feedback).",
	  METRICS_UINT, T(drain_concurrency_limit) },
	{ "mxspool_recipients_cached", "gauge",
	  "Recipients in the tenant's learned cache (recipients = learn; 0 otherwise).",
	  METRICS_U64, T(recipients_cached) },
};
#undef T

#define S(m) offsetof(struct control_status, m)
static const struct metrics_def metrics_relay[] = {
	{ "mxspool_connections", "gauge", "Inbound SMTP connections open now.",
	  METRICS_UINT, S(connections) },
	{ "mxspool_spool_bytes", "gauge", "Bytes of live messages in the spool.",
	  METRICS_U64, S(spool_bytes) },
	{ "mxspool_uptime_seconds", "gauge", "Seconds since mxspoold started.",
	  METRICS_I64, S(uptime_s) },
	{ "mxspool_journal_syncs_total", "counter",
	  "fdatasync calls of the journal, each a group commit of every message it covers.",
	  METRICS_U64, S(journal_syncs) },
	{ "mxspool_dnsbl_deferred_total", "counter",
	  "RCPTs answered 450 4.7.1 because a DNSBL lists the client.",
	  METRICS_U64, S(dnsbl_deferred_total) },
	{ "mxspool_client_rate_refused_total", "counter",
	  "MAILs and RCPTs answered 450 4.7.1 over client_message_rate or client_recipient_rate.",
	  METRICS_U64, S(client_rate_refused_total) },
};
#undef S

#define NDEFS(t) (sizeof(t) / sizeof((t)[0]))
#define VALUE(d, rec, type) (*(const type *)((const char *)(rec) + (d)->off))

static double
metrics_value(const struct metrics_def *d, const void *rec)
{
	switch (d->kind) {
	case METRICS_U64:
		return (double)VALUE(d, rec, uint64_t);
	case METRICS_I64:
		return (double)VALUE(d, rec, int64_t);
	case METRICS_UINT:
		return VALUE(d, rec, unsigned);
	case METRICS_DOUBLE:
		return VALUE(d, rec, double);
	case METRICS_MS_AS_S:
		return (double)VALUE(d, rec, int64_t) / 1000.0;
	case METRICS_IS_UP:
		return strcmp(VALUE(d, rec, char *), "up") == 0;
	}
	return 0;
}

/* A relay-wide sample, printed as the integer it is. */
static void
metrics_relay_sample(struct control_buf *b, const struct metrics_def *d,
    const struct control_status *st)
{
	switch (d->kind) {
	case METRICS_U64:
		control_buf_printf(b, "%s %" PRIu64 "\n", d->name, VALUE(d, st, uint64_t));
		return;
	case METRICS_I64:
		control_buf_printf(b, "%s %lld\n", d->name, (long long)VALUE(d, st, int64_t));
		return;
	case METRICS_UINT:
		control_buf_printf(b, "%s %u\n", d->name, VALUE(d, st, unsigned));
		return;
	default:
		control_buf_printf(b, "%s %.17g\n", d->name, metrics_value(d, st));
		return;
	}
}

static void
metrics_head(struct control_buf *b, const struct metrics_def *d)
{
	control_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help,
	    d->name, d->type);
}

void
metrics_label_value(struct control_buf *b, const char *s)
{
	for (const char *p = s ? s : ""; *p; p++) {
		if (*p == '\\' || *p == '"')
			control_buf_printf(b, "\\%c", *p);
		else if (*p == '\n')
			control_buf_printf(b, "\\n");
		else
			control_buf_printf(b, "%c", *p);
	}
}

/* NAME SUFFIX{tenant="..." -- the caller adds further labels and the value. */
static void
metrics_tenant_label(struct control_buf *b, const char *name, const char *suffix,
    const struct control_tenant_row *row)
{
	control_buf_printf(b, "%s%s{tenant=\"", name, suffix);
	metrics_label_value(b, row->name);
	control_buf_printf(b, "\"");
}

/* Probes by result: one counter with a result label, so that
 * rate(mxspool_probes_total{result="failed"}[5m]) reads as it should. */
static void
metrics_probes(const struct control_status *st, struct control_buf *b)
{
	control_buf_printf(b, "# HELP mxspool_probes_total Probes of the tenant's "
	    "primary, by result.\n# TYPE mxspool_probes_total counter\n");
	for (size_t i = 0; i < st->ntenants; i++) {
		const struct control_tenant_row *row = &st->tenants[i];

		metrics_tenant_label(b, "mxspool_probes_total", "", row);
		control_buf_printf(b, ",result=\"ok\"} %" PRIu64 "\n", row->probes_ok);
		metrics_tenant_label(b, "mxspool_probes_total", "", row);
		control_buf_printf(b, ",result=\"failed\"} %" PRIu64 "\n",
		    row->probes_failed);
	}
}

static const struct {
	const char *name, *help;
} metrics_hists[STAT_HIST__COUNT] = {
	[STAT_HIST_ACCEPT] = { "mxspool_accept_latency_seconds",
	    "End of DATA to the 250: the journal's durable commit." },
	[STAT_HIST_DELIVERY] = { "mxspool_delivery_latency_seconds",
	    "One delivery transaction to the primary, start to final reply." },
	[STAT_HIST_QUEUE_DELAY] = { "mxspool_queue_delay_seconds",
	    "Arrival to delivery of each message the primary took." },
};

/* The exposition format's histogram: cumulative _bucket{le} samples ending
 * in le="+Inf" (= _count), then _sum and _count. */
static void
metrics_histograms(const struct control_status *st, struct control_buf *b)
{
	for (int h = 0; h < STAT_HIST__COUNT; h++) {
		const char *name = metrics_hists[h].name;
		size_t n;
		const double *le = stats_hist_bounds(h, &n);

		control_buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name,
		    metrics_hists[h].help, name);
		for (size_t i = 0; i < st->ntenants; i++) {
			const struct control_tenant_row *row = &st->tenants[i];
			const struct stats_hist *sh = &row->hist[h];
			uint64_t cum = 0;

			for (size_t k = 0; k < n; k++) {
				cum += sh->bucket[k];
				metrics_tenant_label(b, name, "_bucket", row);
				control_buf_printf(b, ",le=\"%g\"} %" PRIu64 "\n", le[k], cum);
			}
			metrics_tenant_label(b, name, "_bucket", row);
			control_buf_printf(b, ",le=\"+Inf\"} %" PRIu64 "\n", sh->count);
			metrics_tenant_label(b, name, "_sum", row);
			control_buf_printf(b, "} %.17g\n", sh->sum);
			metrics_tenant_label(b, name, "_count", row);
			control_buf_printf(b, "} %" PRIu64 "\n", sh->count);
		}
	}
}

void
metrics_render(const struct control_status *st, struct control_buf *b)
{
	for (size_t m = 0; m < NDEFS(metrics_tenant); m++) {
		const struct metrics_def *d = &metrics_tenant[m];

		metrics_head(b, d);
		for (size_t i = 0; i < st->ntenants; i++) {
			control_buf_printf(b, "%s{tenant=\"", d->name);
			metrics_label_value(b, st->tenants[i].name);
			control_buf_printf(b, "\"} %.17g\n", metrics_value(d, &st->tenants[i]));
		}
	}
	for (size_t m = 0; m < NDEFS(metrics_relay); m++) {
		metrics_head(b, &metrics_relay[m]);
		metrics_relay_sample(b, &metrics_relay[m], st);
	}
	metrics_probes(st, b);
	metrics_histograms(st, b);
}
