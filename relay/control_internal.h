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
	/* Appended in the second round (DESIGN.md "The long outage"). */
	int64_t queue_lifetime_s;     /* the tenant's value in force */
	int64_t delay_warning_s;      /* 0 = no delay notices */
	struct control_caps primary_caps;
};

struct control_status {
	const char *version;
	int64_t uptime_s;
	uint64_t accepted_total;
	uint64_t delivered_total;
	uint64_t bounced_total;
	unsigned connections;
	uint64_t spool_bytes;
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
};

struct control_queue {
	size_t nrows, cap;
	struct control_queue_row *rows;
	bool truncated;               /* CONTROL_QUEUE_LIST_MAX reached */
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
};

/* ---- renderers: snapshot -> buffer, no I/O ------------------------------ */

/* Each appends the whole answer, "ok\n" line included, to OUT. */
void control_render_status(const struct control_status *st, bool json,
    struct control_buf *out);
void control_render_queue(const struct control_queue *q, bool json,
    struct control_buf *out);
void control_render_message(const struct control_message *m, bool json,
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
};
struct control_ack {
	enum control_ack_kind kind;
	const char *tenant;
	int count;
	const char *restart_keys;     /* RELOAD: "listen dns_servers", or NULL */
};
void control_render_ack(const struct control_ack *a, bool json,
    struct control_buf *out);

/* Replace OUT's content with "error MESSAGE\n". */
void control_render_error(struct control_buf *out, const char *msg);

#endif
