/*
 * control_render.c - the control socket's answers as text and as JSON,
 * rendered from the snapshots of control_internal.h, and the growable
 * buffer they are written into.
 *
 * Pure functions: no loop, no spool, no struct relay.  Every answer's fields
 * are named once, in one table per answer (status_tenant_fields,
 * status_fields, queue_fields, message_fields, rcpt_fields): a row gives the
 * JSON key, the text column header or label (NULL: JSON only), the text
 * width (negative: left-aligned), the value's kind and its offset in the
 * snapshot.  The JSON renderer writes every row in table order; the text
 * renderer writes the rows that have a label, in the same order.  The
 * output bytes are pinned by tests/integration and by external tools, so a
 * change of key, order, width or precision here is a contract change.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/config.h"
#include "mxspool/envelope.h"
#include "mxspool/util.h"

#include "control_internal.h"

/* ---- buffer ------------------------------------------------------------- */

void
control_buf_printf(struct control_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		b->cap = b->cap * 2 + (size_t)n + 256;
		b->data = xrealloc(b->data, b->cap);
	}
}

void
control_buf_json_string(struct control_buf *b, const char *s)
{
	control_buf_printf(b, "\"");
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (*p == '"' || *p == '\\')
			control_buf_printf(b, "\\%c", *p);
		else if (*p < 0x20)
			control_buf_printf(b, "\\u%04x", *p);
		else
			control_buf_printf(b, "%c", *p);
	}
	control_buf_printf(b, "\"");
}

void
control_buf_free(struct control_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

struct control_queue_row *
control_queue_add(struct control_queue *q)
{
	if (q->nrows == q->cap) {
		q->cap = q->cap ? q->cap * 2 : 64;
		q->rows = xrealloc(q->rows, q->cap * sizeof(*q->rows));
	}
	memset(&q->rows[q->nrows], 0, sizeof(q->rows[0]));
	return &q->rows[q->nrows++];
}

void
control_queue_free(struct control_queue *q)
{
	for (size_t i = 0; i < q->nrows; i++) {
		free(q->rows[i].sender);
		free(q->rows[i].recipients);
		free(q->rows[i].last_reply);
	}
	free(q->rows);
	memset(q, 0, sizeof(*q));
}

/* ---- field tables --------------------------------------------------------- */

enum control_kind {
	CONTROL_K_STR,          /* const char *: JSON "" and text "-" for NULL */
	CONTROL_K_STR_NULL,     /* const char *: JSON null for NULL */
	CONTROL_K_QID,          /* char[]: the queue id */
	CONTROL_K_ADDR,         /* const char *: text in <> */
	CONTROL_K_STRV,         /* char *const *, count at AUX: JSON array */
	CONTROL_K_BOOL,         /* bool: text yes / no */
	CONTROL_K_MARK,         /* bool: text " *" after the row, no column */
	CONTROL_K_U64,
	CONTROL_K_I64,
	CONTROL_K_UINT,
	CONTROL_K_MS_AS_S,      /* int64_t milliseconds, shown as whole seconds */
	CONTROL_K_RATE,         /* double: JSON 3 decimals, text 2 */
	CONTROL_K_ETA,          /* int64_t seconds, -1: JSON null, text "-" */
	CONTROL_K_NOTIFY,       /* unsigned ENV_NOTIFY_* bits: JSON array */
	CONTROL_K_CAPS,         /* struct control_caps: JSON object or null */
};

struct control_field {
	const char *key;        /* JSON key */
	const char *label;      /* text header or label; NULL = JSON only */
	int width;              /* text width; negative = left-aligned */
	enum control_kind kind;
	size_t off;             /* of the value in the snapshot row */
	size_t aux;             /* CONTROL_K_STRV: offset of the size_t count */
};

#define NFIELDS(t) (sizeof(t) / sizeof((t)[0]))
#define ROW(type, m) offsetof(struct type, m)

static const struct control_field status_fields[] = {
	{ "version", NULL, 0, CONTROL_K_STR, ROW(control_status, version), 0 },
	{ "uptime_s", NULL, 0, CONTROL_K_I64, ROW(control_status, uptime_s), 0 },
	{ "accepted_total", NULL, 0, CONTROL_K_U64, ROW(control_status, accepted_total), 0 },
	{ "delivered_total", NULL, 0, CONTROL_K_U64, ROW(control_status, delivered_total), 0 },
	{ "bounced_total", NULL, 0, CONTROL_K_U64, ROW(control_status, bounced_total), 0 },
	{ "connections", NULL, 0, CONTROL_K_UINT, ROW(control_status, connections), 0 },
	{ "spool_bytes", NULL, 0, CONTROL_K_U64, ROW(control_status, spool_bytes), 0 },
};

#define T(m) ROW(control_tenant_row, m)
static const struct control_field status_tenant_fields[] = {
	{ "name", "TENANT", -16, CONTROL_K_STR, T(name), 0 },
	{ "domains", NULL, 0, CONTROL_K_STRV, T(domains), T(ndomains) },
	{ "primary_state", "PRIMARY", -8, CONTROL_K_STR, T(primary_state), 0 },
	{ "held", "HELD", -5, CONTROL_K_BOOL, T(held), 0 },
	{ "queued_messages", "QUEUED", 10, CONTROL_K_U64, T(queued_messages), 0 },
	{ "queued_bytes", "BYTES", 12, CONTROL_K_U64, T(queued_bytes), 0 },
	{ "oldest_age_s", "OLDEST_S", 10, CONTROL_K_MS_AS_S, T(oldest_age_ms), 0 },
	{ "drain_rate", "RATE", 8, CONTROL_K_RATE, T(drain_rate), 0 },
	{ "drain_rate_limit", "LIMIT", 8, CONTROL_K_RATE, T(drain_rate_limit), 0 },
	{ "in_flight", "FLIGHT", 6, CONTROL_K_UINT, T(in_flight), 0 },
	{ "delivered_total", NULL, 0, CONTROL_K_U64, T(delivered_total), 0 },
	{ "bounced_total", NULL, 0, CONTROL_K_U64, T(bounced_total), 0 },
	{ "eta_s", "ETA_S", 10, CONTROL_K_ETA, T(eta_s), 0 },
	{ "queue_lifetime_s", "LIFETIME_S", 10, CONTROL_K_I64, T(queue_lifetime_s), 0 },
	{ "delay_warning_s", "WARN_S", 8, CONTROL_K_I64, T(delay_warning_s), 0 },
	{ "drain_concurrency_limit", "CONN", 4, CONTROL_K_UINT, T(drain_concurrency_limit), 0 },
	{ "primary_caps", "CAPS", 0, CONTROL_K_CAPS, T(primary_caps), 0 },
	{ "limit_reason", "CONN_REASON", 0, CONTROL_K_STR_NULL, T(limit_reason), 0 },
	{ "recipients_cached", NULL, 0, CONTROL_K_U64, T(recipients_cached), 0 },
};
#undef T

#define Q(m) ROW(control_queue_row, m)
static const struct control_field queue_fields[] = {
	{ "queue_id", "QUEUE_ID", -16, CONTROL_K_QID, Q(qid), 0 },
	{ "tenant", "TENANT", -16, CONTROL_K_STR, Q(tenant), 0 },
	{ "size", "SIZE", 10, CONTROL_K_U64, Q(size), 0 },
	{ "age_s", "AGE_S", 8, CONTROL_K_MS_AS_S, Q(age_ms), 0 },
	{ "attempts", "ATTEMPTS", 8, CONTROL_K_UINT, Q(attempts), 0 },
	{ "next_attempt_s", "NEXT_S", 8, CONTROL_K_MS_AS_S, Q(next_attempt_ms), 0 },
	{ "sender", "SENDER", -24, CONTROL_K_STR_NULL, Q(sender), 0 },
	{ "recipients", "RECIPIENTS", 0, CONTROL_K_STR_NULL, Q(recipients), 0 },
	{ "in_flight", "", 0, CONTROL_K_MARK, Q(in_flight), 0 },
	{ "last_reply", NULL, 0, CONTROL_K_STR_NULL, Q(last_reply), 0 },
};
#undef Q

/* "show": one "label: value" line per labelled field, labels padded to 11. */
#define M(m) ROW(control_message, m)
static const struct control_field message_fields[] = {
	{ "queue_id", "queue id:", -11, CONTROL_K_QID, M(qid), 0 },
	{ "tenant", "tenant:", -11, CONTROL_K_STR, M(tenant), 0 },
	{ "sender", "sender:", -11, CONTROL_K_ADDR, M(sender), 0 },
	{ "size", "size:", -11, CONTROL_K_U64, M(size), 0 },
	{ "arrival_ms", NULL, 0, CONTROL_K_I64, M(arrival_ms), 0 },
	{ "attempts", "attempts:", -11, CONTROL_K_UINT, M(attempts), 0 },
	{ "client", "client:", -11, CONTROL_K_STR, M(client), 0 },
	{ "envid", NULL, 0, CONTROL_K_STR_NULL, M(envid), 0 },
	{ "ret", NULL, 0, CONTROL_K_STR_NULL, M(ret), 0 },
	{ "smtputf8", NULL, 0, CONTROL_K_BOOL, M(smtputf8), 0 },
	{ "last_reply", NULL, 0, CONTROL_K_STR_NULL, M(last_reply), 0 },
};
#undef M

/* A recipient's text line is "recipient: <address> state". */
#define R(m) ROW(control_rcpt_row, m)
static const struct control_field rcpt_fields[] = {
	{ "address", "recipient:", 0, CONTROL_K_ADDR, R(address), 0 },
	{ "state", "state", 0, CONTROL_K_STR, R(state), 0 },
	{ "orcpt", NULL, 0, CONTROL_K_STR_NULL, R(orcpt), 0 },
	{ "notify", NULL, 0, CONTROL_K_NOTIFY, R(notify), 0 },
};
#undef R

/* mxspoolctl recipients TENANT: the address is a char[] like a queue id. */
#define C(m) ROW(control_rcache_row, m)
static const struct control_field rcache_fields[] = {
	{ "address", "ADDRESS", -40, CONTROL_K_QID, C(address), 0 },
	{ "state", "STATE", -8, CONTROL_K_STR, C(state), 0 },
	{ "learned_age_s", "AGE_S", 10, CONTROL_K_I64, C(learned_age_s), 0 },
	{ "expires_in_s", "EXPIRES_S", 10, CONTROL_K_I64, C(expires_in_s), 0 },
};
#undef C

/* NOTIFY names in the order RFC 3461 lists them. */
static const struct {
	unsigned bit;
	const char *name;
} control_notify_names[] = {
	{ ENV_NOTIFY_NEVER, "NEVER" },
	{ ENV_NOTIFY_SUCCESS, "SUCCESS" },
	{ ENV_NOTIFY_FAILURE, "FAILURE" },
	{ ENV_NOTIFY_DELAY, "DELAY" },
};

#define FIELD(f, rec, type) (*(const type *)((const char *)(rec) + (f)->off))

/* ---- the primary's capabilities ------------------------------------------ */

/* Text: "-", or "size=N,pipelining,...,age_s=N" (no spaces: one cell). */
static const char *
control_caps_text(const struct control_caps *c, char *buf, size_t len)
{
	if (!c->known)
		return "-";
	snprintf(buf, len, "size=%" PRIu64 "%s%s%s%s%s%s,rcptmax=%u,mailmax=%u,"
	    "age_s=%lld", c->size, c->pipelining ? ",pipelining" : "",
	    c->eightbitmime ? ",8bitmime" : "", c->smtputf8 ? ",smtputf8" : "",
	    c->dsn ? ",dsn" : "", c->chunking ? ",chunking" : "",
	    c->starttls ? ",starttls" : "", (unsigned)c->rcptmax,
	    (unsigned)c->mailmax, (long long)c->age_s);
	return buf;
}

/* JSON: null, or the object DESIGN.md names, 0 counts as null. */
static void
control_caps_json(struct control_buf *b, const struct control_caps *c)
{
	char size[32], rcpt[16], mail[16];

	if (!c->known) {
		control_buf_printf(b, "null");
		return;
	}
	snprintf(size, sizeof(size), "%" PRIu64, c->size);
	snprintf(rcpt, sizeof(rcpt), "%u", (unsigned)c->rcptmax);
	snprintf(mail, sizeof(mail), "%u", (unsigned)c->mailmax);
	control_buf_printf(b, "{\"size\": %s, \"pipelining\": %s, "
	    "\"8bitmime\": %s, \"smtputf8\": %s, \"dsn\": %s, \"chunking\": %s, "
	    "\"starttls\": %s, \"rcptmax\": %s, \"mailmax\": %s, \"age_s\": %lld}",
	    c->size ? size : "null", c->pipelining ? "true" : "false",
	    c->eightbitmime ? "true" : "false", c->smtputf8 ? "true" : "false",
	    c->dsn ? "true" : "false", c->chunking ? "true" : "false",
	    c->starttls ? "true" : "false", c->rcptmax ? rcpt : "null",
	    c->mailmax ? mail : "null", (long long)c->age_s);
}

/* ---- one value ------------------------------------------------------------ */

/*
 * The text of one value, without padding: a pointer into REC for strings,
 * else BUF.  The number formats are the contract's (see the file comment).
 */
static const char *
control_text_value(const struct control_field *f, const void *rec, char *buf,
    size_t len)
{
	const char *s;

	switch (f->kind) {
	case CONTROL_K_STR:
	case CONTROL_K_STR_NULL:
		s = FIELD(f, rec, char *);
		return s ? s : "-";
	case CONTROL_K_QID:
		return (const char *)rec + f->off;
	case CONTROL_K_ADDR:
		snprintf(buf, len, "<%s>", FIELD(f, rec, char *));
		return buf;
	case CONTROL_K_BOOL:
		return FIELD(f, rec, bool) ? "yes" : "no";
	case CONTROL_K_MARK:
		return FIELD(f, rec, bool) ? " *" : "";
	case CONTROL_K_U64:
		snprintf(buf, len, "%" PRIu64, FIELD(f, rec, uint64_t));
		return buf;
	case CONTROL_K_I64:
		snprintf(buf, len, "%lld", (long long)FIELD(f, rec, int64_t));
		return buf;
	case CONTROL_K_UINT:
		snprintf(buf, len, "%u", FIELD(f, rec, unsigned));
		return buf;
	case CONTROL_K_MS_AS_S:
		snprintf(buf, len, "%lld", (long long)(FIELD(f, rec, int64_t) / 1000));
		return buf;
	case CONTROL_K_RATE:
		snprintf(buf, len, "%.2f", FIELD(f, rec, double));
		return buf;
	case CONTROL_K_ETA:
		if (FIELD(f, rec, int64_t) < 0)
			return "-";
		snprintf(buf, len, "%lld", (long long)FIELD(f, rec, int64_t));
		return buf;
	case CONTROL_K_CAPS:
		return control_caps_text((const struct control_caps *)
		    ((const char *)rec + f->off), buf, len);
	case CONTROL_K_STRV:
	case CONTROL_K_NOTIFY:
		break;
	}
	return "";
}

static void
control_json_value(struct control_buf *b, const struct control_field *f,
    const void *rec)
{
	char num[64];

	switch (f->kind) {
	case CONTROL_K_STR:
	case CONTROL_K_QID:
	case CONTROL_K_ADDR:
		control_buf_json_string(b, f->kind == CONTROL_K_QID ?
		    (const char *)rec + f->off : FIELD(f, rec, char *));
		return;
	case CONTROL_K_STR_NULL:
		if (FIELD(f, rec, char *) == NULL)
			control_buf_printf(b, "null");
		else
			control_buf_json_string(b, FIELD(f, rec, char *));
		return;
	case CONTROL_K_STRV: {
		char *const *v = *(char *const *const *)((const char *)rec + f->off);
		size_t n = *(const size_t *)((const char *)rec + f->aux);

		control_buf_printf(b, "[");
		for (size_t i = 0; i < n; i++) {
			control_buf_printf(b, "%s", i ? ", " : "");
			control_buf_json_string(b, v[i]);
		}
		control_buf_printf(b, "]");
		return;
	}
	case CONTROL_K_NOTIFY: {
		unsigned bits = FIELD(f, rec, unsigned);
		const char *sep = "";

		control_buf_printf(b, "[");
		for (size_t i = 0; i < NFIELDS(control_notify_names); i++) {
			if (bits & control_notify_names[i].bit) {
				control_buf_printf(b, "%s\"%s\"", sep, control_notify_names[i].name);
				sep = ", ";
			}
		}
		control_buf_printf(b, "]");
		return;
	}
	case CONTROL_K_BOOL:
	case CONTROL_K_MARK:
		control_buf_printf(b, "%s", FIELD(f, rec, bool) ? "true" : "false");
		return;
	case CONTROL_K_CAPS:
		control_caps_json(b, (const struct control_caps *)
		    ((const char *)rec + f->off));
		return;
	case CONTROL_K_RATE:
		control_buf_printf(b, "%.3f", FIELD(f, rec, double));
		return;
	case CONTROL_K_ETA:
		if (FIELD(f, rec, int64_t) < 0) {
			control_buf_printf(b, "null");
			return;
		}
		break;
	default:
		break;
	}
	/* The other numbers print the same in JSON as in text. */
	control_buf_printf(b, "%s", control_text_value(f, rec, num, sizeof(num)));
}

/* ---- rows ----------------------------------------------------------------- */

/* The fields of REC as "key": value pairs, separated by ", ", no braces. */
static void
control_json_fields(struct control_buf *b, const struct control_field *fields,
    size_t n, const void *rec)
{
	for (size_t i = 0; i < n; i++) {
		control_buf_printf(b, "%s\"%s\": ", i ? ", " : "", fields[i].key);
		control_json_value(b, &fields[i], rec);
	}
}

/* "KEY": [{...}, ...] for the NROWS records of SIZE bytes at ROWS. */
static void
control_json_array(struct control_buf *b, const char *key,
    const struct control_field *fields, size_t n, const void *rows,
    size_t nrows, size_t size)
{
	control_buf_printf(b, "\"%s\": [", key);
	for (size_t i = 0; i < nrows; i++) {
		control_buf_printf(b, "%s{", i ? ", " : "");
		control_json_fields(b, fields, n, (const char *)rows + i * size);
		control_buf_printf(b, "}");
	}
	control_buf_printf(b, "]");
}

/* The column headers of a text table (a mark column has none). */
static void
control_text_header(struct control_buf *b, const struct control_field *fields,
    size_t n)
{
	const char *sep = "";

	for (size_t i = 0; i < n; i++) {
		if (fields[i].label == NULL || fields[i].kind == CONTROL_K_MARK)
			continue;
		control_buf_printf(b, "%s%*s", sep, fields[i].width, fields[i].label);
		sep = " ";
	}
	control_buf_printf(b, "\n");
}

/* The labelled fields of REC as one line of cells separated by a space. */
static void
control_text_row(struct control_buf *b, const struct control_field *fields,
    size_t n, const void *rec)
{
	const char *sep = "";
	char buf[1024];         /* an address is at most 254 bytes */

	for (size_t i = 0; i < n; i++) {
		const char *v;

		if (fields[i].label == NULL)
			continue;
		v = control_text_value(&fields[i], rec, buf, sizeof(buf));
		if (fields[i].kind == CONTROL_K_MARK) {
			control_buf_printf(b, "%s", v);
			continue;
		}
		control_buf_printf(b, "%s%*s", sep, fields[i].width, v);
		sep = " ";
	}
	control_buf_printf(b, "\n");
}

/* A text table: the header, then one row per record of SIZE bytes. */
static void
control_text_table(struct control_buf *b, const struct control_field *fields,
    size_t n, const void *rows, size_t nrows, size_t size)
{
	control_text_header(b, fields, n);
	for (size_t i = 0; i < nrows; i++)
		control_text_row(b, fields, n, (const char *)rows + i * size);
}

/* ---- answers -------------------------------------------------------------- */

static bool
control_index_loading(const struct control_status *st)
{
	return st->index_state != NULL && strcmp(st->index_state, "loading") == 0;
}

void
control_render_status(const struct control_status *st, bool json,
    struct control_buf *b)
{
	const size_t nt = NFIELDS(status_tenant_fields);

	control_buf_printf(b, "ok\n");
	if (json) {
		control_buf_printf(b, "{");
		control_json_fields(b, status_fields, NFIELDS(status_fields), st);
		/* Only while the old journal is read: a ready daemon's top-level
		 * keys are exactly the contract's (DESIGN.md), fleet_state aside. */
		if (control_index_loading(st))
			control_buf_printf(b, ", \"index_state\": \"loading\", "
			    "\"index_scanned_bytes\": %" PRIu64 ", \"index_old_bytes\": %"
			    PRIu64, st->index_scanned_bytes, st->index_old_bytes);
		if (st->fleet_state != NULL)
			control_buf_printf(b, ", \"fleet_state\": \"%s\"", st->fleet_state);
		control_buf_printf(b, ", ");
		control_json_array(b, "tenants", status_tenant_fields, nt, st->tenants,
		    st->ntenants, sizeof(st->tenants[0]));
		control_buf_printf(b, "}\n");
		return;
	}
	control_buf_printf(b, "mxspoold %s, up %lld s, %u connections, spool %" PRIu64
	    " bytes\naccepted %" PRIu64 ", delivered %" PRIu64 ", bounced %" PRIu64 "\n\n",
	    st->version, (long long)st->uptime_s, st->connections, st->spool_bytes,
	    st->accepted_total, st->delivered_total, st->bounced_total);
	if (control_index_loading(st))
		control_buf_printf(b, "index loading: %" PRIu64 " of %" PRIu64
		    " bytes of the old journal scanned; queued figures are partial,"
		    " the drain waits\n\n", st->index_scanned_bytes, st->index_old_bytes);
	if (st->fleet_state != NULL)
		control_buf_printf(b, "fleet %s (status --fleet shows every node)\n\n",
		    st->fleet_state);
	control_text_table(b, status_tenant_fields, nt, st->tenants, st->ntenants,
	    sizeof(st->tenants[0]));
}

void
control_render_queue(const struct control_queue *q, bool json,
    struct control_buf *b)
{
	const size_t nf = NFIELDS(queue_fields);

	control_buf_printf(b, "ok\n");
	if (json) {
		control_buf_printf(b, "{");
		control_json_array(b, "messages", queue_fields, nf, q->rows, q->nrows,
		    sizeof(q->rows[0]));
		control_buf_printf(b, ", \"count\": %zu, \"truncated\": %s}\n", q->nrows,
		    q->truncated ? "true" : "false");
		return;
	}
	/* Like mailq: the reason a message waits on its own line below it. */
	control_text_header(b, queue_fields, nf);
	for (size_t i = 0; i < q->nrows; i++) {
		control_text_row(b, queue_fields, nf, &q->rows[i]);
		if (q->rows[i].last_reply != NULL)
			control_buf_printf(b, "  (%s)\n", q->rows[i].last_reply);
	}
	if (q->truncated && q->limit)
		control_buf_printf(b, "... (more: --after %s)\n", q->nrows ?
		    q->rows[q->nrows - 1].qid : "-");
	else if (q->truncated)
		control_buf_printf(b, "... (listing stopped after %d messages)\n",
		    CONTROL_QUEUE_LIST_MAX);
	control_buf_printf(b, "-- %zu message%s (* = being delivered)\n", q->nrows,
	    q->nrows == 1 ? "" : "s");
}

void
control_render_recipients(const struct control_rcache *rc, bool json,
    struct control_buf *b)
{
	const size_t nf = NFIELDS(rcache_fields);

	control_buf_printf(b, "ok\n");
	if (json) {
		control_buf_printf(b, "{\"tenant\": ");
		control_buf_json_string(b, rc->tenant);
		control_buf_printf(b, ", ");
		control_json_array(b, "recipients", rcache_fields, nf, rc->rows,
		    rc->nrows, sizeof(rc->rows[0]));
		control_buf_printf(b, ", \"count\": %zu, \"truncated\": %s}\n",
		    rc->nrows, rc->truncated ? "true" : "false");
		return;
	}
	control_text_table(b, rcache_fields, nf, rc->rows, rc->nrows,
	    sizeof(rc->rows[0]));
	if (rc->truncated)
		control_buf_printf(b, "... (listing stopped after %d addresses)\n",
		    CONTROL_QUEUE_LIST_MAX);
	control_buf_printf(b, "-- %zu address%s learned by tenant %s\n", rc->nrows,
	    rc->nrows == 1 ? "" : "es", rc->tenant);
}

void
control_render_message(const struct control_message *m, bool json,
    struct control_buf *b)
{
	const size_t nr = NFIELDS(rcpt_fields);
	char buf[1024];         /* an address is at most 254 bytes */

	control_buf_printf(b, "ok\n");
	if (json) {
		control_buf_printf(b, "{");
		control_json_fields(b, message_fields, NFIELDS(message_fields), m);
		control_buf_printf(b, ", ");
		control_json_array(b, "recipients", rcpt_fields, nr, m->rcpt, m->nrcpt,
		    sizeof(m->rcpt[0]));
		if (m->headers != NULL) {
			control_buf_printf(b, ", \"headers\": ");
			control_buf_json_string(b, m->headers);
		}
		if (m->body != NULL) {
			control_buf_printf(b, ", \"body\": ");
			control_buf_json_string(b, m->body);
			control_buf_printf(b, ", \"body_truncated\": %s",
			    m->body_truncated ? "true" : "false");
		}
		control_buf_printf(b, "}\n");
		return;
	}
	for (size_t i = 0; i < NFIELDS(message_fields); i++) {
		const struct control_field *f = &message_fields[i];

		if (f->label != NULL)
			control_buf_printf(b, "%*s%s\n", f->width, f->label,
			    control_text_value(f, m, buf, sizeof(buf)));
	}
	if (m->last_reply != NULL)
		control_buf_printf(b, "last reply: %s\n", m->last_reply);
	for (size_t i = 0; i < m->nrcpt; i++) {
		control_buf_printf(b, "%s ", rcpt_fields[0].label);
		control_text_row(b, rcpt_fields, nr, &m->rcpt[i]);
	}
	if (m->headers != NULL)
		control_buf_printf(b, "\n%s", m->headers);
	if (m->body != NULL)
		control_buf_printf(b, "\n%s%s", m->body, m->body_truncated ?
		    "\n... (body cut here)\n" : "");
}

/* A reload that took effect, but not for everything: say which keys keep
 * their old values until a restart. */
static void
control_render_restart_keys(struct control_buf *b, const char *keys, bool json)
{
	const char *p = keys;

	if (!json) {
		control_buf_printf(b, "configuration reloaded\nrestart needed for: "
		    "%s (they keep their old values until then)\n", keys);
		return;
	}
	control_buf_printf(b, "{\"reload\": \"ok\", \"restart_needed\": [");
	while (*p != '\0') {
		size_t n = strcspn(p, " ");
		char key[64];

		snprintf(key, sizeof(key), "%.*s", (int)n, p);
		if (p != keys)
			control_buf_printf(b, ", ");
		control_buf_json_string(b, key);
		p += n;
		p += strspn(p, " ");
	}
	control_buf_printf(b, "]}\n");
}

/*
 * After a delete whose records are stored: how much mail went, and when its
 * disk space comes back (spool_reclaim_info: now = a roll, unlink or
 * compaction within seconds; later = when older segments holding live mail
 * go or the active segment fills).
 */
static void
control_render_freed(const struct control_freed *f, bool json, struct control_buf *b)
{
	if (json) {
		/* Appended to the object the caller opened. */
		control_buf_printf(b, ", \"bytes\": %" PRIu64 ", \"failed\": %d, "
		    "\"reclaim_now_bytes\": %" PRIu64 ", \"reclaim_later_bytes\": %" PRIu64,
		    f->bytes, f->failed, f->reclaim_soon, f->reclaim_later);
		return;
	}
	control_buf_printf(b, "%" PRIu64 " bytes of mail; journal space held by removed mail: "
	    "%" PRIu64 " bytes back within seconds, %" PRIu64 " bytes later (when older "
	    "segments with queued mail go, or the active one fills)\n",
	    f->bytes, f->reclaim_soon, f->reclaim_later);
	if (f->failed > 0)
		control_buf_printf(b, "%d message%s could not be deleted (journal write failed; "
		    "still queued)\n", f->failed, f->failed == 1 ? "" : "s");
}

void
control_render_delete_ack(const struct control_ack *a,
    const struct control_freed *f, bool json, struct control_buf *b)
{
	size_t mark;

	control_render_ack(a, json, b);
	if (f->bytes == 0 && f->failed == 0)
		return;          /* nothing went: the plain answer */
	if (!json) {
		control_render_freed(f, false, b);
		return;
	}
	/* Reopen the one-line object: drop its "}\n" and continue it. */
	mark = b->len;
	if (mark >= 2 && b->data[mark - 2] == '}' && b->data[mark - 1] == '\n') {
		b->len = mark - 2;
		control_render_freed(f, true, b);
		control_buf_printf(b, "}\n");
	}
}

/* The acknowledgement of a bulk action (delete/bounce by filter, requeue). */
static void
control_render_ack_bulk(const struct control_ack *a, bool json, struct control_buf *b)
{
	static const char *const key[] = { "deleted", "bounced", "requeued" };
	static const char *const verb[] = { "delete", "bounce", "requeue" };
	static const char *const done[] = { "deleted", "bouncing", "requeued" };
	int k = a->kind == CONTROL_ACK_DELETE_N ? 0 : a->kind == CONTROL_ACK_BOUNCE_N ? 1 : 2;
	const char *s = a->count == 1 ? "" : "s";

	if (json && a->dry_run)
		control_buf_printf(b, "{\"%s\": 0, \"matched\": %d, \"dry_run\": true}\n",
		    key[k], a->count);
	else if (json)
		control_buf_printf(b, "{\"%s\": %d}\n", key[k], a->count);
	else if (a->dry_run)
		control_buf_printf(b, "would %s %d message%s (dry run, nothing changed)\n",
		    verb[k], a->count, s);
	else
		control_buf_printf(b, "%s %d message%s\n", done[k], a->count, s);
}

void
control_render_ack(const struct control_ack *a, bool json, struct control_buf *b)
{
	control_buf_printf(b, "ok\n");
	switch (a->kind) {
	case CONTROL_ACK_RELOAD:
		if (a->restart_keys == NULL || a->restart_keys[0] == '\0') {
			control_buf_printf(b, "%s\n", json ? "{\"reload\": \"ok\"}" :
			    "configuration reloaded");
			break;
		}
		control_render_restart_keys(b, a->restart_keys, json);
		break;
	case CONTROL_ACK_DELETE:
		control_buf_printf(b, "%s\n", json ? "{\"deleted\": 1}" : "deleted");
		break;
	case CONTROL_ACK_BOUNCE:
		control_buf_printf(b, "%s\n", json ? "{\"bounced\": 1}" : "bounce queued");
		break;
	case CONTROL_ACK_SET:
		control_buf_printf(b, "%s\n", json ? "{\"set\": \"ok\"}" : "applied");
		break;
	case CONTROL_ACK_FLUSH:
		if (json)
			control_buf_printf(b, "{\"flushed_tenants\": %d}\n", a->count);
		else
			control_buf_printf(b, "probing the primary of %d tenant%s now\n",
			    a->count, a->count == 1 ? "" : "s");
		break;
	case CONTROL_ACK_DELETE_N:
	case CONTROL_ACK_BOUNCE_N:
	case CONTROL_ACK_REQUEUE:
		control_render_ack_bulk(a, json, b);
		break;
	case CONTROL_ACK_FORGET:
		if (!json) {
			control_buf_printf(b, "%s forgotten by tenant %s\n",
			    a->restart_keys, a->tenant);
			break;
		}
		control_buf_printf(b, "{\"tenant\": ");
		control_buf_json_string(b, a->tenant);
		control_buf_printf(b, ", \"forgotten\": ");
		control_buf_json_string(b, a->restart_keys);
		control_buf_printf(b, "}\n");
		break;
	case CONTROL_ACK_HOLD:
	case CONTROL_ACK_RELEASE: {
		bool hold = a->kind == CONTROL_ACK_HOLD;

		if (!json) {
			control_buf_printf(b, "tenant %s %s\n", a->tenant, hold ? "held" : "released");
			break;
		}
		control_buf_printf(b, "{\"tenant\": ");
		control_buf_json_string(b, a->tenant);
		control_buf_printf(b, ", \"held\": %s}\n", hold ? "true" : "false");
		break;
	}
	}
}

void
control_render_error(struct control_buf *b, const char *msg)
{
	b->len = 0;
	control_buf_printf(b, "error %s\n", msg);
}

/* ---- filters -------------------------------------------------------------- */

bool
control_icontains(const char *hay, const char *needle)
{
	size_t n = strlen(needle);

	if (hay == NULL)
		return n == 0;
	for (; ; hay++) {
		size_t i = 0;

		while (i < n && hay[i] != '\0' &&
		    tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
			i++;
		if (i == n)
			return true;
		if (*hay == '\0')
			return false;
	}
}

bool
control_filter_item(const struct control_filter *f, uint64_t qid,
    int64_t arrival_ms, unsigned attempts, int64_t next_attempt_ms, int64_t now)
{
	if (f->has_after && qid <= f->after)
		return false;
	if (f->older_than_ms >= 0 && now - arrival_ms < f->older_than_ms)
		return false;
	if (f->deferred && attempts == 0 && next_attempt_ms <= now)
		return false;
	return true;
}

/* A queue id: exactly 16 hex digits (as spool_qid_parse, without the
 * spool, so the unit tests link without it). */
static int
control_qid_parse(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (strlen(s) != 16)
		return -1;
	for (int i = 0; i < 16; i++) {
		int c = (unsigned char)s[i];

		if (!isxdigit(c))
			return -1;
		v = v << 4 | (uint64_t)(isdigit(c) ? c - '0' : tolower(c) - 'a' + 10);
	}
	*out = v;
	return 0;
}

/* The value of option ARGV[*I], or NULL with ERR set. */
static const char *
control_filter_value(int argc, char *const *argv, int *i, char *err, size_t errlen)
{
	if (*i + 1 >= argc) {
		snprintf(err, errlen, "%s needs a value", argv[*i]);
		return NULL;
	}
	return argv[++*i];
}

/* One --option of ARGV[*I]; 0, 1 = not an option of this command, -1 error. */
static int
control_filter_option(struct control_filter *f, int argc, char *const *argv,
    int *i, unsigned allow, char *err, size_t errlen)
{
	const char *o = argv[*i], *v;
	uint64_t u;
	char *end;

	if (strcmp(o, "--dry-run") == 0 && (allow & CONTROL_F_DRY_RUN)) {
		f->dry_run = true;
		return 0;
	}
	if (strcmp(o, "--deferred") == 0 && (allow & CONTROL_F_MATCH)) {
		f->deferred = true;
		return 0;
	}
	if (!((strcmp(o, "--tenant") == 0 && (allow & CONTROL_F_TENANT_OPT)) ||
	    ((strcmp(o, "--from") == 0 || strcmp(o, "--to") == 0 ||
	    strcmp(o, "--older-than") == 0) && (allow & CONTROL_F_MATCH)) ||
	    ((strcmp(o, "--limit") == 0 || strcmp(o, "--after") == 0) &&
	    (allow & CONTROL_F_PAGE))))
		return 1;
	if ((v = control_filter_value(argc, argv, i, err, errlen)) == NULL)
		return -1;
	if (strcmp(o, "--tenant") == 0) {
		f->tenant = v;
	} else if (strcmp(o, "--from") == 0) {
		f->from = v;
	} else if (strcmp(o, "--to") == 0) {
		f->to = v;
	} else if (strcmp(o, "--older-than") == 0) {
		if (config_parse_duration(v, &u) != 0 || u > INT64_MAX) {
			snprintf(err, errlen, "--older-than %s: not a duration (30s, 4h, 2d)", v);
			return -1;
		}
		f->older_than_ms = (int64_t)u;
	} else if (strcmp(o, "--limit") == 0) {
		errno = 0;
		u = strtoull(v, &end, 10);
		if (*end != '\0' || v[0] == '-' || v[0] == '\0' || errno != 0 || u == 0 ||
		    u > 10000000) {
			snprintf(err, errlen, "--limit %s: not a count (1 to 10000000)", v);
			return -1;
		}
		f->limit = (size_t)u;
	} else {
		if (control_qid_parse(v, &f->after) != 0) {
			snprintf(err, errlen, "--after %s: not a queue id (16 hex digits)", v);
			return -1;
		}
		f->has_after = true;
	}
	return 0;
}

int
control_filter_parse(struct control_filter *f, int argc, char *const *argv,
    unsigned allow, char *err, size_t errlen)
{
	const char *cmd = argc > 0 ? argv[0] : "?";

	memset(f, 0, sizeof(*f));
	f->older_than_ms = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int rc;

		if (strncmp(a, "--", 2) == 0) {
			rc = control_filter_option(f, argc, argv, &i, allow, err, errlen);
			if (rc < 0)
				return -1;
			if (rc > 0) {
				snprintf(err, errlen, "%s: unknown option %s", cmd, a);
				return -1;
			}
			continue;
		}
		if ((allow & CONTROL_F_QID) && !f->has_qid && f->tenant == NULL &&
		    control_qid_parse(a, &f->qid) == 0) {
			f->has_qid = true;
			continue;
		}
		if ((allow & CONTROL_F_TENANT_POS) && f->tenant == NULL) {
			f->tenant = a;
			continue;
		}
		snprintf(err, errlen, "%s: unexpected argument %s", cmd, a);
		return -1;
	}
	if (f->has_qid && (f->tenant != NULL || f->from != NULL || f->to != NULL ||
	    f->older_than_ms >= 0 || f->deferred)) {
		snprintf(err, errlen, "%s: give a queue id or --tenant with filters, not both", cmd);
		return -1;
	}
	if ((allow & CONTROL_F_QID) && !f->has_qid && f->tenant == NULL) {
		snprintf(err, errlen, "usage: %s QUEUEID | --tenant T [--from A] [--to A] "
		    "[--older-than D] [--deferred] [--dry-run]", cmd);
		return -1;
	}
	if (f->has_after && f->limit == 0)
		f->limit = CONTROL_PAGE_DEFAULT;
	return 0;
}
