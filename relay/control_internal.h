/*
 * control_internal.h - the snapshots the control socket answers from, and
 * the pure renderers that turn them into text, JSON and (metrics.h)
 * Prometheus exposition.  Shared by control.c, control_render.c and
 * metrics.c only.
 *
 * control.c fills one snapshot per answer from the relay (spool, drain,
 * counters, SMTP server); the renderers read nothing else, so the unit tests
 * build a snapshot by hand.  A snapshot borrows its strings (tenant names
 * from the config, envelope fields from the spool): it lives for one
 * synchronous fill-and-render and is never kept across a loop turn.
 *
 * Each answer's fields are named once, in a table of struct control_field
 * rows in control_render.c: the JSON key, the text column (or label), the
 * value kind and the offset of the value in the snapshot.  The text and
 * JSON renderers walk the same table, so a field cannot be renamed or
 * reordered in one output and forgotten in the other.
 */
#ifndef MXSPOOL_CONTROL_INTERNAL_H
#define MXSPOOL_CONTROL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/control.h"
#include "mxspool/stats.h"

#define CONTROL_QUEUE_LIST_MAX 10000  /* lines of "queue" before "... more" */

/* ---- status: one row per tenant ----------------------------------------- */

/* The primary's last EHLO, as the spool keeps it (spool_get_caps). */
struct control_caps {
	bool known;                   /* false: JSON null, text "-" */
	uint64_t size;                /* SIZE; 0 = none announced (null) */
	bool pipelining, eightbitmime, smtputf8, dsn, chunking, starttls;
	uint32_t rcptmax, mailmax;    /* RFC 9422 LIMITS; 0 = none (null) */
	int64_t age_s;                /* since that EHLO was read */
};

struct control_tenant_row {
	const char *name;
	char *const *domains;
	size_t ndomains;
	const char *primary_state;    /* "up" | "down" | "unknown" */
	bool held;
	uint64_t queued_messages;
	uint64_t queued_bytes;
	int64_t oldest_age_ms;        /* 0 when the queue is empty */
	double drain_rate;            /* measured over the last 10 s */
	double drain_rate_limit;      /* allowed right now */
	unsigned in_flight;
	uint64_t accepted_total;
	uint64_t delivered_total;
	uint64_t bounced_total;
	int64_t eta_s;                /* -1 = unknown (JSON null) */
	/* For watch only (not in status): the drain since the primary came
	 * up, and the last probe's "host: reply". */
	uint64_t delivered_since_up;
	const char *last_probe;
	/* Appended in the second round (DESIGN.md "The long outage"). */
	int64_t queue_lifetime_s;     /* the tenant's value in force */
	int64_t delay_warning_s;      /* 0 = no delay notices */
	struct control_caps primary_caps;
	/* Issue 9: the drain's connection limit now and why it last changed. */
	unsigned drain_concurrency_limit;
	const char *limit_reason;
	/* For /metrics (issue 12): the tenant's quotas (0 = none) and the
	 * larger share of either in use; probes; latency histograms. */
	uint64_t quota_bytes, quota_messages;
	double quota_used;
	uint64_t probes_ok, probes_failed;
	/* recipients = learn: entries in the tenant's cache (0 otherwise). */
	uint64_t recipients_cached;
	struct stats_hist hist[STAT_HIST__COUNT];
};

struct control_status {
	const char *version;
	int64_t uptime_s;
	uint64_t accepted_total;
	uint64_t delivered_total;
	uint64_t bounced_total;
	unsigned connections;
	uint64_t spool_bytes;
	/* "loading" while the old segments are scanned after a start
	 * (spool_index_loading), then "ready"; their bytes scanned and all. */
	const char *index_state;
	uint64_t index_scanned_bytes, index_old_bytes;
	uint64_t journal_syncs;       /* spool_flush_count */
	/* Intake refusals (issue 11), for /metrics only: RCPTs deferred for
	 * a DNSBL listing, MAILs and RCPTs over a client's rate. */
	uint64_t dnsbl_deferred_total;
	uint64_t client_rate_refused_total;
	const char *fleet_state;      /* "ok" | "degraded"; NULL: no fleet */
	size_t ntenants;
	struct control_tenant_row *tenants;
};

/* ---- queue: one row per message ----------------------------------------- */

struct control_queue_row {
	char qid[17];                 /* SPOOL_QID_STRLEN + 1 */
	const char *tenant;
	uint64_t size;
	int64_t age_ms;
	unsigned attempts;
	int64_t next_attempt_ms;      /* from now; 0 = due */
	bool in_flight;
	/* Appended for the queue view, from the envelope; owned by the row
	 * (control_queue_free frees them); NULL = not read (text "-"). */
	char *sender;                 /* "" is the null reverse-path */
	char *recipients;             /* the pending ones, comma-separated */
	char *last_reply;             /* the primary's, when deferred; NULL = none
	                               * known (memory only: none after a restart) */
};

struct control_queue {
	size_t nrows, cap;
	struct control_queue_row *rows;
	bool truncated;               /* CONTROL_QUEUE_LIST_MAX reached */
	size_t limit;                 /* --limit in force (0 = none): truncated
	                               * then means "more after the last row" */
};

/* Append a zeroed row (the array grows) and return it. */
struct control_queue_row *control_queue_add(struct control_queue *q);
void control_queue_free(struct control_queue *q);

/* ---- show: one message -------------------------------------------------- */

struct control_rcpt_row {
	const char *address;
	const char *state;            /* "pending" | "delivered" | "bounced" */
	const char *orcpt;            /* NULL = not given */
	unsigned notify;              /* ENV_NOTIFY_* bits */
};

struct control_message {
	char qid[17];
	const char *tenant;
	const char *sender;           /* "" is the null reverse-path */
	uint64_t size;
	int64_t arrival_ms;
	unsigned attempts;
	const char *client;           /* NULL = unknown */
	const char *envid;            /* NULL = not given */
	const char *ret;              /* "FULL" | "HDRS" | NULL */
	bool smtputf8;
	size_t nrcpt;
	struct control_rcpt_row *rcpt;
	/* Appended for the queue view: the header section (NULL = not read:
	 * nothing shown) and, with show --body, the body up to
	 * CONTROL_SHOW_BODY_MAX bytes (NULL = not asked). */
	const char *headers;
	const char *body;
	bool body_truncated;
	const char *last_reply;       /* as in the queue row; NULL = not known */
};

#define CONTROL_SHOW_HEADERS_MAX (64 * 1024)
#define CONTROL_SHOW_BODY_MAX (256 * 1024)

/* ---- filters of queue, delete, bounce ----------------------------------- */

/* What a command's arguments may hold (control_filter_parse ALLOW bits). */
#define CONTROL_F_TENANT_POS 0x01u   /* a bare TENANT word */
#define CONTROL_F_TENANT_OPT 0x02u   /* --tenant T */
#define CONTROL_F_QID        0x04u   /* a bare QUEUEID instead of --tenant */
#define CONTROL_F_PAGE       0x08u   /* --limit N, --after QID */
#define CONTROL_F_DRY_RUN    0x10u   /* --dry-run */
#define CONTROL_F_MATCH      0x20u   /* --from, --to, --older-than, --deferred */

#define CONTROL_PAGE_DEFAULT 1000     /* --limit when --after is given alone */

/* Strings are borrowed from the argument vector. */
struct control_filter {
	const char *tenant;           /* NULL = every tenant */
	const char *from;             /* sender contains, case-insensitive */
	const char *to;               /* a pending recipient contains */
	int64_t older_than_ms;        /* -1 = no age filter */
	bool deferred;                /* attempts > 0 or next attempt later */
	bool dry_run;
	bool has_qid;
	uint64_t qid;
	size_t limit;                 /* 0 = no limit */
	bool has_after;
	uint64_t after;               /* list queue ids > AFTER */
};

/* Parse ARGV[1..ARGC-1] (ARGV[0] is the command word) into F.  Returns 0,
 * or -1 with a message in ERR. */
int control_filter_parse(struct control_filter *f, int argc, char *const *argv,
    unsigned allow, char *err, size_t errlen);
/* Does HAY contain NEEDLE, ASCII case-insensitively? ("" matches.) */
bool control_icontains(const char *hay, const char *needle);
/* The index-only part of F: age, deferred, paging. */
bool control_filter_item(const struct control_filter *f, uint64_t qid,
    int64_t arrival_ms, unsigned attempts, int64_t next_attempt_ms, int64_t now);

/* ---- renderers: snapshot -> buffer, no I/O ------------------------------ */

/* Each appends the whole answer, "ok\n" line included, to OUT. */
void control_render_status(const struct control_status *st, bool json,
    struct control_buf *out);
void control_render_queue(const struct control_queue *q, bool json,
    struct control_buf *out);
void control_render_message(const struct control_message *m, bool json,
    struct control_buf *out);

/* ---- recipients: one tenant's learned cache ----------------------------- */

struct control_rcache_row {
	char address[256];            /* RCACHE_ADDR_MAX + 1 */
	const char *state;            /* "valid" | "invalid" */
	int64_t learned_age_s;        /* since the answer was learned */
	int64_t expires_in_s;
};

struct control_rcache {
	const char *tenant;
	size_t nrows, cap;
	struct control_rcache_row *rows;
	bool truncated;               /* CONTROL_QUEUE_LIST_MAX rows shown */
};

void control_render_recipients(const struct control_rcache *rc, bool json,
    struct control_buf *out);

/* The acknowledgement of a command that changed something. */
enum control_ack_kind {
	CONTROL_ACK_RELOAD,
	CONTROL_ACK_DELETE,
	CONTROL_ACK_BOUNCE,
	CONTROL_ACK_FLUSH,            /* COUNT tenants probed */
	CONTROL_ACK_HOLD,             /* TENANT */
	CONTROL_ACK_RELEASE,          /* TENANT */
	CONTROL_ACK_SET,
	/* Appended for the bulk actions: COUNT messages (dry_run: would be). */
	CONTROL_ACK_DELETE_N,
	CONTROL_ACK_BOUNCE_N,
	CONTROL_ACK_REQUEUE,
	CONTROL_ACK_FORGET,           /* TENANT: ADDRESS in restart_keys' place */
};
struct control_ack {
	enum control_ack_kind kind;
	const char *tenant;
	int count;
	const char *restart_keys;     /* RELOAD: "listen dns_servers", or NULL */
	bool dry_run;                 /* DELETE_N, BOUNCE_N: nothing changed */
};
void control_render_ack(const struct control_ack *a, bool json,
    struct control_buf *out);

/* What a delete (DELETE or DELETE_N, records stored) freed: message bytes,
 * deletes that failed, and the spool's spool_reclaim_info() as the journal
 * space back within seconds and later. */
struct control_freed {
	uint64_t bytes;
	int failed;
	uint64_t reclaim_soon, reclaim_later;
};
/* control_render_ack() of A followed by F: text gets a line (two with
 * failures), JSON the keys bytes, failed, reclaim_now_bytes and
 * reclaim_later_bytes. */
void control_render_delete_ack(const struct control_ack *a,
    const struct control_freed *f, bool json, struct control_buf *out);

/* Replace OUT's content with "error MESSAGE\n". */
void control_render_error(struct control_buf *out, const char *msg);

#endif
