/*
 * control.c - the control socket (mxspoolctl) and the /metrics listener:
 * the connections, the command table, and the filling of the snapshots the
 * answers are rendered from.
 *
 * Both listeners are tiny request/response servers on the loop: read one
 * bounded request, answer, close.  A request that does not fit
 * CONTROL_REQUEST_MAX (control) or 8 KiB (HTTP) is refused, so a stuck or
 * hostile client costs one fixed buffer.  Commands that need the disk (show)
 * answer asynchronously through the spool's threadpool reads.
 *
 * Every answer is made in two steps: a control_fill_* function reads the
 * relay (spool, drain, counters, SMTP server) into one snapshot of
 * control_internal.h, then a pure renderer (control_render.c for text and
 * JSON, metrics.c for Prometheus) writes it out.  This is the only file of
 * the three that sees struct relay.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <pwd.h>
#include <grp.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/control.h"
#include "mxspool/drain.h"
#include "mxspool/handover.h"
#include "mxspool/fleet.h"
#include "mxspool/fleet_render.h"
#include "mxspool/log.h"
#include "mxspool/metrics.h"
#include "mxspool/relay.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/spool_backup.h"
#include "mxspool/stats.h"
#include "mxspool/util.h"
#include "mxspool/verify.h"

#include "control_internal.h"
#include "control_proto.h"
#include "control_watch.h"

#define CONTROL_HTTP_MAX 8192
#define CONTROL_IDLE_MS 10000

struct control {
	struct relay *relay;
	gid_t gid;                    /* control_group's, if has_group */
	bool has_group;
	uv_pipe_t pipe;
	uv_tcp_t http;
	bool has_http;
	unsigned open_handles;
	unsigned nclients;
	LIST_HEAD(, control_client) clients;
	void (*done)(void *);
	void *done_arg;
	bool closing;
};

/* A filtered command that loads envelopes (--from, --to) or acts on many
 * messages: queue, delete, bounce. */
enum control_bulk_verb { CONTROL_BULK_QUEUE, CONTROL_BULK_DELETE, CONTROL_BULK_BOUNCE };

struct control_match {
	spool_qid qid;
	uint64_t size;                /* message bytes, as show reports them */
	char *sender, *recipients;    /* given to the row */
};

#define CONTROL_BULK_LOADS 16         /* envelopes loading at once */

struct control_bulk {
	struct control_client *cl;    /* NULL once the client went away */
	struct relay *relay;
	enum control_bulk_verb verb;
	struct control_filter f;      /* strings borrowed from cl->req */
	spool_qid *cand;              /* candidates that passed the index filters */
	size_t ncand, cap, next;
	struct control_match *match;  /* queue: the matches, for the rows */
	size_t nmatch;
	unsigned loading;
	unsigned deleting;            /* DELETE records not yet stored */
	bool pumping;
	bool starting;                /* in control_bulk_start: the caller sends */
	bool single;                  /* delete QUEUEID: answer as before */
	int done;                     /* messages deleted / bounced / matched */
	int failed;                   /* DELETE records that could not be stored */
	uint64_t bytes;               /* message bytes deleted */
	int64_t now;
};

/* One DELETE in flight for a bulk (or single) delete. */
struct control_del {
	struct control_bulk *b;
	spool_qid qid;
	uint64_t size;
};

struct control_client {
	struct control *ctl;
	LIST_ENTRY(control_client) entry;
	union {
		uv_stream_t stream;
		uv_pipe_t pipe;
		uv_tcp_t tcp;
	} h;
	uv_timer_t timer;
	bool is_http;
	bool answered;
	unsigned closing_handles;
	size_t len;
	char req[CONTROL_HTTP_MAX];
	struct control_buf out;
	uv_write_t wreq;
	struct spool_msg *msg;        /* "show": envelope being loaded */
	struct control_bulk *bulk;    /* filtered queue/delete/bounce loading */
	struct spool_backup *backup;  /* backup DIR running for this client */
	char *backup_dir;
	bool show_body;               /* show --body */
	bool show_loading;            /* show: spool_load has not called back */
	bool orphan;                  /* closed while loading: the load frees */
	char *show;                   /* show: the message's first bytes */
	size_t show_len;
	bool want_json;
	bool have_cred;               /* SO_PEERCRED of a control client */
	struct ucred cred;
};

/* ---- snapshots ---------------------------------------------------------- */

/* The primary's capabilities as the spool keeps them (known = false when
 * its EHLO was never read, in this run or any before). */
static void
control_fill_caps(struct relay *r, const char *tenant, int64_t now,
    struct control_caps *out)
{
	struct spool_caps c;

	memset(out, 0, sizeof(*out));
	if (r->spool == NULL || !spool_get_caps(r->spool, tenant, &c))
		return;
	out->known = true;
	out->size = c.size_max;
	out->pipelining = (c.ext & SMTP_EXT_PIPELINING) != 0;
	out->eightbitmime = (c.ext & SMTP_EXT_8BITMIME) != 0;
	out->smtputf8 = (c.ext & SMTP_EXT_SMTPUTF8) != 0;
	out->dsn = (c.ext & SMTP_EXT_DSN) != 0;
	out->chunking = (c.ext & SMTP_EXT_CHUNKING) != 0;
	out->starttls = (c.ext & SMTP_EXT_STARTTLS) != 0;
	out->rcptmax = c.rcpt_max;
	out->mailmax = c.mail_max;
	out->age_s = c.seen_ms > 0 && c.seen_ms < now ? (now - c.seen_ms) / 1000 : 0;
}

/* One tenant's figures; strings are borrowed from the config (T). */
/* What only /metrics shows: quota use, probe counts, latency histograms. */
static void
control_fill_metrics_only(struct relay *r, const struct config_tenant *t,
    struct control_tenant_row *row)
{
	row->quota_bytes = t->quota;
	row->quota_messages = t->quota_messages;
	if (t->quota > 0)
		row->quota_used = (double)row->queued_bytes / (double)t->quota;
	if (t->quota_messages > 0 &&
	    (double)row->queued_messages / (double)t->quota_messages > row->quota_used)
		row->quota_used = (double)row->queued_messages / (double)t->quota_messages;
	row->probes_ok = stats_tenant(r->stats, t->name, STAT_PROBE_OK);
	row->probes_failed = stats_tenant(r->stats, t->name, STAT_PROBE_FAIL);
	row->recipients_cached = verify_cached(r->verify, t->name);
	for (int h = 0; h < STAT_HIST__COUNT; h++) {
		const struct stats_hist *sh = stats_hist_tenant(r->stats, t->name, h);

		if (sh != NULL)
			row->hist[h] = *sh;
	}
}

static void
control_fill_tenant(struct relay *r, const struct config_tenant *t, int64_t now,
    struct control_tenant_row *row)
{
	struct spool_tenant_stats ss;
	struct drain_status ds;

	memset(&ss, 0, sizeof(ss));
	ss.oldest_arrival_ms = -1;
	if (r->spool)
		spool_tenant_stats(r->spool, t->name, &ss);
	memset(&ds, 0, sizeof(ds));
	ds.primary_state = "unknown";
	ds.eta_s = -1;
	if (r->drain == NULL || drain_status(r->drain, t->name, &ds) != 0) {
		ds.primary_state = "unknown";
		ds.eta_s = -1;
	}
	memset(row, 0, sizeof(*row));
	row->name = t->name;
	row->domains = t->domains;
	row->ndomains = t->ndomains;
	row->primary_state = ds.primary_state ? ds.primary_state : "unknown";
	row->held = r->spool ? spool_is_held(r->spool, t->name) : false;
	row->queued_messages = ss.messages;
	row->queued_bytes = ss.bytes;
	/* A message stamped in the future (the clock stepped back) is age 0. */
	if (ss.oldest_arrival_ms >= 0 && ss.oldest_arrival_ms < now)
		row->oldest_age_ms = now - ss.oldest_arrival_ms;
	row->drain_rate = ds.drain_rate;
	row->drain_rate_limit = ds.drain_rate_limit;
	if (r->fleet != NULL && ds.drain_rate_limit > 0)
		row->drain_rate_limit = fleet_limit(r->fleet, t->name,
		    ds.drain_rate_limit);   /* the fleet's share is the bound */
	row->in_flight = ds.in_flight;
	row->delivered_since_up = ds.delivered_since_up;
	row->last_probe = ds.last_probe ? ds.last_probe : "";
	row->drain_concurrency_limit = ds.concurrency_limit;
	row->limit_reason = ds.limit_reason ? ds.limit_reason : "";
	/* Counters are kept by tenant name: they survive a reload. */
	row->accepted_total = stats_tenant(r->stats, t->name, STAT_ACCEPTED);
	row->delivered_total = stats_tenant(r->stats, t->name, STAT_DELIVERED);
	row->bounced_total = stats_tenant(r->stats, t->name, STAT_BOUNCED);
	row->eta_s = ds.eta_s;
	row->queue_lifetime_s = (int64_t)(t->queue_lifetime_ms / 1000);
	row->delay_warning_s = (int64_t)(t->delay_warning_ms / 1000);
	control_fill_caps(r, t->name, now, &row->primary_caps);
	control_fill_metrics_only(r, t, row);
}

/* The figures of status and /metrics; free ST->tenants afterwards. */
static void
control_fill_status(struct relay *r, struct control_status *st)
{
	const struct config *cfg = r->cfg;
	int64_t now = util_now_ms();

	memset(st, 0, sizeof(*st));
	st->version = PACKAGE_VERSION;
	st->uptime_s = (now - r->started_ms) / 1000;
	st->accepted_total = stats_total(r->stats, STAT_ACCEPTED);
	st->delivered_total = stats_total(r->stats, STAT_DELIVERED);
	st->bounced_total = stats_total(r->stats, STAT_BOUNCED);
	st->connections = r->server ? smtp_server_connections(r->server) : 0;
	st->spool_bytes = r->spool ? spool_total_bytes(r->spool) : 0;
	st->index_state = r->spool != NULL && spool_index_loading(r->spool,
	    &st->index_scanned_bytes, &st->index_old_bytes) ? "loading" : "ready";
	st->journal_syncs = r->spool ? spool_flush_count(r->spool) : 0;
	if (r->server != NULL) {
		struct smtp_server_abuse ab;

		smtp_server_abuse_counts(r->server, &ab);
		st->dnsbl_deferred_total = ab.dnsbl_deferred;
		st->client_rate_refused_total = ab.rate_refused;
	}
	st->fleet_state = r->fleet ? fleet_state(r->fleet) : NULL;
	st->ntenants = cfg->ntenants;
	st->tenants = xcalloc(cfg->ntenants ? cfg->ntenants : 1, sizeof(*st->tenants));
	for (size_t i = 0; i < cfg->ntenants; i++)
		control_fill_tenant(r, &cfg->tenants[i], now, &st->tenants[i]);
}

struct control_queue_walk {
	struct control_queue *q;
	int64_t now;
	const struct control_filter *f;   /* NULL: every message */
};

static void
control_queue_row_fill(struct control_queue_row *row, const struct spool_item *it,
    int64_t now)
{
	spool_qid_format(it->qid, row->qid);
	row->tenant = it->tenant;     /* the spool's: valid until the loop runs */
	row->size = it->size;
	row->age_ms = now - it->arrival_ms;
	row->attempts = it->attempts;
	if (it->next_attempt_ms > now)
		row->next_attempt_ms = it->next_attempt_ms - now;
	row->in_flight = it->claimed;
}

static int
control_fill_queue_row(void *arg, const struct spool_item *it)
{
	struct control_queue_walk *w = arg;
	struct control_queue_row *row;
	size_t max = w->f && w->f->limit ? w->f->limit : CONTROL_QUEUE_LIST_MAX;

	if (w->f && !control_filter_item(w->f, it->qid, it->arrival_ms, it->attempts,
	    it->next_attempt_ms, w->now))
		return 0;
	if (w->q->nrows == max) {
		w->q->truncated = true;
		return 1;
	}
	row = control_queue_add(w->q);
	control_queue_row_fill(row, it, w->now);
	return 0;
}

/* TENANT's messages (all if NULL) that pass F's index filters (F may be
 * NULL), in queue id order, at most F's limit or CONTROL_QUEUE_LIST_MAX;
 * control_queue_free() afterwards. */
static void
control_fill_queue(struct relay *r, const char *tenant,
    const struct control_filter *f, struct control_queue *q)
{
	struct control_queue_walk w = { q, util_now_ms(), f };

	memset(q, 0, sizeof(*q));
	q->limit = f ? f->limit : 0;
	spool_foreach(r->spool, tenant, control_fill_queue_row, &w);
}

/* A loaded message; strings borrowed from M, free CM->rcpt afterwards. */
static void
control_fill_message(const struct spool_msg *m, struct control_message *cm)
{
	static const char *const state[] = {
		[SPOOL_RCPT_PENDING] = "pending",
		[SPOOL_RCPT_DELIVERED] = "delivered",
		[SPOOL_RCPT_BOUNCED] = "bounced",
	};
	const struct spool_envelope *e = spool_msg_envelope(m);

	memset(cm, 0, sizeof(*cm));
	spool_qid_format(spool_msg_qid(m), cm->qid);
	cm->tenant = e->tenant;
	cm->sender = e->sender;
	cm->size = spool_msg_size(m);
	cm->arrival_ms = e->arrival_ms;
	cm->attempts = spool_msg_attempts(m);
	cm->client = e->client;
	cm->envid = e->envid;
	cm->ret = e->ret == ENV_RET_FULL ? "FULL" : e->ret == ENV_RET_HDRS ? "HDRS" : NULL;
	cm->smtputf8 = e->smtputf8;
	cm->nrcpt = e->nrcpt;
	cm->rcpt = xcalloc(e->nrcpt ? e->nrcpt : 1, sizeof(*cm->rcpt));
	for (size_t i = 0; i < e->nrcpt; i++) {
		cm->rcpt[i].address = e->rcpt[i].addr;
		cm->rcpt[i].state = state[spool_msg_rcpt_state(m, i)];
		cm->rcpt[i].orcpt = e->rcpt[i].orcpt;
		cm->rcpt[i].notify = e->rcpt[i].notify;
	}
}

/* ---- commands ---------------------------------------------------------- */

struct control_req {
	struct relay *relay;
	struct control_client *client; /* NULL in unit tests: no async commands */
	int argc;
	char *argv[CONTROL_PROTO_ARGV_MAX];
	bool json;
	struct control_buf *out;
};

static void
control_error(struct control_req *q, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
control_error(struct control_req *q, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	control_render_error(q->out, msg);
}

static void
control_ack(struct control_req *q, enum control_ack_kind kind,
    const char *tenant, int count)
{
	struct control_ack a = { kind, tenant, count, NULL, false };

	control_render_ack(&a, q->json, q->out);
}

/* The tenant named by ARGV[I], or an error answered and NULL. */
static const struct config_tenant *
control_tenant_arg(struct control_req *q, int i)
{
	const struct config_tenant *t = config_tenant_by_name(q->relay->cfg, q->argv[i]);

	if (t == NULL)
		control_error(q, "no tenant named %s", q->argv[i]);
	return t;
}

/* `status --fleet`: every live node of the fleet and the sums. */
static void
control_cmd_status_fleet(struct control_req *q)
{
	struct fleet_view v;

	if (q->relay->fleet == NULL) {
		control_error(q, "no fleet: [fleet] redis is not set");
		return;
	}
	if (fleet_view_get(q->relay->fleet, &v) != 0) {
		control_error(q, "out of memory");
		return;
	}
	fleet_render_status(&v, q->json, q->out);
	fleet_view_free(&v);
}

static void
control_cmd_status(struct control_req *q)
{
	struct control_status st;

	if (q->argc == 2) {
		if (strcmp(q->argv[1], "--fleet") != 0) {
			control_error(q, "status: unknown option %s (status [--fleet])",
			    q->argv[1]);
			return;
		}
		control_cmd_status_fleet(q);
		return;
	}
	control_fill_status(q->relay, &st);
	control_render_status(&st, q->json, q->out);
	free(st.tenants);
}

static void
control_cmd_reload(struct control_req *q)
{
	struct control_ack a = { CONTROL_ACK_RELOAD, NULL, 0, NULL, false };
	char err[1024];

	if (relay_reload(q->relay, err, sizeof(err)) != 0) {
		control_error(q, "reload refused, old config kept: %s", err);
		return;
	}
	a.restart_keys = q->relay->restart_keys;
	control_render_ack(&a, q->json, q->out);
}

/* `watch [WIDTH]`: the status drawn as mxspoolctl watch paints it. */
static void
control_cmd_watch(struct control_req *q)
{
	struct control_status st;
	unsigned long width = 80;
	char clock[16], *end;
	time_t now = time(NULL);
	struct tm tm;

	if (q->argc > 1) {
		width = strtoul(q->argv[1], &end, 10);
		if (*end != '\0' || q->argv[1][0] == '-' || width == 0 || width > 100000) {
			control_error(q, "usage: watch [WIDTH]");
			return;
		}
	}
	if (localtime_r(&now, &tm) == NULL || strftime(clock, sizeof(clock),
	    "%H:%M:%S", &tm) == 0)
		snprintf(clock, sizeof(clock), "-");
	control_fill_status(q->relay, &st);
	control_render_watch(&st, (unsigned)width, clock, q->out);
	free(st.tenants);
}

/* The filter of ARGV, or an error answered and -1; a tenant named must exist. */
static int
control_req_filter(struct control_req *q, unsigned allow, struct control_filter *f)
{
	char err[512];

	if (control_filter_parse(f, q->argc, q->argv, allow, err, sizeof(err)) != 0) {
		control_error(q, "%s", err);
		return -1;
	}
	if (f->tenant && config_tenant_by_name(q->relay->cfg, f->tenant) == NULL) {
		control_error(q, "no tenant named %s", f->tenant);
		return -1;
	}
	return 0;
}

static void control_bulk_start(struct control_req *q, const struct control_filter *f,
    enum control_bulk_verb verb);

static void
control_cmd_queue(struct control_req *q)
{
	struct control_filter f;
	struct control_queue list;

	if (control_req_filter(q, CONTROL_F_TENANT_POS | CONTROL_F_MATCH |
	    CONTROL_F_PAGE, &f) != 0)
		return;
	/* With a connection the rows show their envelopes: load them. */
	if (q->client != NULL) {
		control_bulk_start(q, &f, CONTROL_BULK_QUEUE);
		return;
	}
	control_fill_queue(q->relay, f.tenant, &f, &list);
	control_render_queue(&list, q->json, q->out);
	control_queue_free(&list);
}

static int
control_parse_qid(struct control_req *q, spool_qid *qid)
{
	if (q->argc != 2) {
		control_error(q, "usage: %s QUEUEID", q->argv[0]);
		return -1;
	}
	if (spool_qid_parse(q->argv[1], qid) != 0) {
		control_error(q, "%s is not a queue id (16 hex digits)", q->argv[1]);
		return -1;
	}
	return 0;
}

static void control_show_loaded(void *arg, int status, struct spool_msg *m);

static void
control_cmd_show(struct control_req *q)
{
	bool body = false;
	spool_qid qid;
	int rc;

	/* show QUEUEID [--body] (either order) */
	for (int i = 1; i < q->argc; i++) {
		if (strcmp(q->argv[i], "--body") == 0) {
			body = true;
			memmove(&q->argv[i], &q->argv[i + 1],
			    (size_t)(q->argc - i - 1) * sizeof(q->argv[0]));
			q->argc--;
			break;
		}
	}
	if (control_parse_qid(q, &qid) != 0)
		return;
	if (q->client == NULL) {
		control_error(q, "show needs a connection");
		return;
	}
	q->client->show_body = body;
	q->client->show_loading = true;
	rc = spool_load(q->relay->spool, qid, control_show_loaded, q->client);
	if (rc != 0) {
		q->client->show_loading = false;
		control_error(q, "%s: %s", q->argv[1], spool_strerror(rc));
	}
}

static void control_delete_async(struct control_req *q, spool_qid qid);

/* delete and bounce of one queue id, as before the filters. */
static void
control_delete_one(struct control_req *q, bool bounce, spool_qid qid, bool dry_run)
{
	char id[SPOOL_QID_STRLEN + 1];
	struct spool_item it;
	int rc;

	spool_qid_format(qid, id);
	if (dry_run) {
		rc = spool_find(q->relay->spool, qid, &it);
		if (rc != 0) {
			control_error(q, "%s: %s", id, spool_strerror(rc));
			return;
		}
		struct control_ack a = { bounce ? CONTROL_ACK_BOUNCE_N : CONTROL_ACK_DELETE_N,
		    NULL, 1, NULL, true };
		control_render_ack(&a, q->json, q->out);
		return;
	}
	if (!bounce && q->client != NULL) {
		/* Answered once the DELETE record is stored. */
		if ((rc = spool_find(q->relay->spool, qid, &it)) != 0)
			control_error(q, "%s: %s", id, spool_strerror(rc));
		else
			control_delete_async(q, qid);
		return;
	}
	rc = bounce ? drain_bounce(q->relay->drain, qid) :
	    spool_delete(q->relay->spool, qid, NULL, NULL);
	if (rc != 0) {
		control_error(q, "%s: %s", id, spool_strerror(rc));
		return;
	}
	if (!bounce)
		log_event(LOG_LEVEL_INFO, "delete", "qid=%s by=mxspoolctl", id);
	control_ack(q, bounce ? CONTROL_ACK_BOUNCE : CONTROL_ACK_DELETE, NULL, 0);
}

/* delete and bounce: QUEUEID, or --tenant T with filters (--dry-run). */
static void
control_cmd_delete(struct control_req *q)
{
	bool bounce = strcmp(q->argv[0], "bounce") == 0;
	struct control_filter f;

	if (control_req_filter(q, CONTROL_F_QID | CONTROL_F_TENANT_OPT |
	    CONTROL_F_MATCH | CONTROL_F_DRY_RUN, &f) != 0)
		return;
	if (f.has_qid) {
		control_delete_one(q, bounce, f.qid, f.dry_run);
		return;
	}
	control_bulk_start(q, &f, bounce ? CONTROL_BULK_BOUNCE : CONTROL_BULK_DELETE);
}

/* requeue [TENANT]: every deferred message due now, without a probe. */
static void
control_cmd_requeue(struct control_req *q)
{
	const char *tenant = q->argc > 1 ? q->argv[1] : NULL;
	const struct config *cfg = q->relay->cfg;
	int n = 0;

	if (tenant && control_tenant_arg(q, 1) == NULL)
		return;
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const char *t = cfg->tenants[i].name;

		if (tenant != NULL && strcmp(t, tenant) != 0)
			continue;
		n += spool_retry_now(q->relay->spool, t);
		drain_kick(q->relay->drain, t);
	}
	log_event(LOG_LEVEL_INFO, "requeue", "tenant=%s messages=%d by=mxspoolctl",
	    tenant ? tenant : "*", n);
	control_ack(q, CONTROL_ACK_REQUEUE, NULL, n);
}

static void
control_cmd_flush(struct control_req *q)
{
	const char *tenant = q->argc > 1 ? q->argv[1] : NULL;
	int n;

	if (tenant && control_tenant_arg(q, 1) == NULL)
		return;
	n = drain_flush(q->relay->drain, tenant);
	log_event(LOG_LEVEL_INFO, "flush", "tenant=%s by=mxspoolctl", tenant ? tenant : "*");
	control_ack(q, CONTROL_ACK_FLUSH, NULL, n);
}

static void
control_cmd_hold(struct control_req *q)
{
	bool hold = strcmp(q->argv[0], "hold") == 0;
	int rc;

	if (q->argc != 2) {
		control_error(q, "usage: %s TENANT", q->argv[0]);
		return;
	}
	if (control_tenant_arg(q, 1) == NULL)
		return;
	rc = spool_set_held(q->relay->spool, q->argv[1], hold, NULL, NULL);
	if (rc != 0) {
		control_error(q, "%s: %s", q->argv[1], spool_strerror(rc));
		return;
	}
	log_event(LOG_LEVEL_INFO, hold ? "hold" : "release", "tenant=%s by=mxspoolctl", q->argv[1]);
	if (!hold)
		drain_kick(q->relay->drain, q->argv[1]);
	control_ack(q, hold ? CONTROL_ACK_HOLD : CONTROL_ACK_RELEASE, q->argv[1], 0);
}

static void
control_cmd_set(struct control_req *q)
{
	char err[512];

	if (q->argc < 3) {
		control_error(q, "usage: set TENANT KEY=VALUE...");
		return;
	}
	if (control_tenant_arg(q, 1) == NULL)
		return;
	/* Validate every pair before applying any: all or nothing. */
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 2; i < q->argc; i++) {
			char *eq = strchr(q->argv[i], '=');

			if (eq == NULL || eq == q->argv[i]) {
				control_error(q, "%s: expected KEY=VALUE", q->argv[i]);
				return;
			}
			*eq = '\0';
			int rc = drain_set(q->relay->drain, q->argv[1], q->argv[i], eq + 1,
			    err, sizeof(err), pass == 0);
			*eq = '=';
			if (rc != 0) {
				control_error(q, "%s", err);
				return;
			}
		}
	}
	control_ack(q, CONTROL_ACK_SET, NULL, 0);
}

/* One cache entry into the listing (rcache_walk's callback). */
static int
control_rcache_row_add(void *arg, const struct rcache_entry *e)
{
	struct control_rcache *rc = arg;
	struct control_rcache_row *row;
	int64_t now = util_now_ms();

	if (rc->nrows >= CONTROL_QUEUE_LIST_MAX) {
		rc->truncated = true;
		return 1;
	}
	if (rc->nrows == rc->cap) {
		size_t cap = rc->cap ? 2 * rc->cap : 64;
		struct control_rcache_row *p = realloc(rc->rows, cap * sizeof(*p));

		if (p == NULL) {
			rc->truncated = true;
			return 1;
		}
		rc->rows = p;
		rc->cap = cap;
	}
	row = &rc->rows[rc->nrows++];
	snprintf(row->address, sizeof(row->address), "%s", e->addr);
	row->state = e->state == RCACHE_VALID ? "valid" : "invalid";
	row->learned_age_s = e->learned_ms < now ? (now - e->learned_ms) / 1000 : 0;
	row->expires_in_s = e->expires_ms > now ? (e->expires_ms - now) / 1000 : 0;
	return 0;
}

/* `recipients TENANT`: the learned cache, newest first.  Not read-only:
 * it lists the partner's real users (control_cmds). */
static void
control_cmd_recipients(struct control_req *q)
{
	struct control_rcache rc;
	const struct config_tenant *t = control_tenant_arg(q, 1);

	if (t == NULL)
		return;
	memset(&rc, 0, sizeof(rc));
	rc.tenant = t->name;
	if (verify_walk(q->relay->verify, t->name, control_rcache_row_add, &rc) < 0) {
		control_error(q, "tenant %s does not learn recipients (recipients = "
		    "learn or learn+FILE)", t->name);
		return;
	}
	control_render_recipients(&rc, q->json, q->out);
	free(rc.rows);
}

/* `forget TENANT ADDRESS`: the next RCPT for it is verified again. */
static void
control_cmd_forget(struct control_req *q)
{
	const struct config_tenant *t = control_tenant_arg(q, 1);
	struct control_ack a = { CONTROL_ACK_FORGET, NULL, 0, NULL, false };
	int rc;

	if (t == NULL)
		return;
	rc = verify_forget(q->relay->verify, t->name, q->argv[2]);
	if (rc < 0) {
		control_error(q, "tenant %s does not learn recipients (recipients = "
		    "learn or learn+FILE)", t->name);
		return;
	}
	if (rc > 0) {
		control_error(q, "%s is not in the recipient cache of tenant %s",
		    q->argv[2], t->name);
		return;
	}
	log_event(LOG_LEVEL_INFO, "forget", "tenant=%s rcpt=<%s> by=mxspoolctl",
	    t->name, q->argv[2]);
	a.tenant = t->name;
	a.restart_keys = q->argv[2];
	control_render_ack(&a, q->json, q->out);
}

static void control_cmd_backup(struct control_req *q);

static const struct control_cmd {
	const char *name;
	int min_args, max_args;        /* after the command word */
	bool changes;                  /* changes state: never for everybody */
	void (*run)(struct control_req *);
} control_cmds[] = {
	{ "status", 0, 1, false, control_cmd_status },
	{ "reload", 0, 0, true, control_cmd_reload },
	{ "queue", 0, 16, false, control_cmd_queue },
	{ "show", 1, 2, false, control_cmd_show },
	{ "delete", 1, 16, true, control_cmd_delete },
	{ "bounce", 1, 16, true, control_cmd_delete },
	{ "requeue", 0, 1, true, control_cmd_requeue },
	{ "flush", 0, 1, true, control_cmd_flush },
	{ "hold", 1, 1, true, control_cmd_hold },
	{ "release", 1, 1, true, control_cmd_hold },
	{ "set", 2, 30, true, control_cmd_set },
	{ "watch", 0, 1, false, control_cmd_watch },
	{ "backup", 1, 1, true, control_cmd_backup },
	{ "recipients", 1, 1, true, control_cmd_recipients },
	{ "forget", 2, 2, true, control_cmd_forget },
};

/*
 * Who may run what, from the peer's SO_PEERCRED: root, the daemon's own
 * user, and members of control_group (the daemon's group when unset) may
 * run everything; with control_readonly = any, everybody else the
 * read-only commands.  The socket's mode (0660, or 0666 for "any") already
 * keeps others out at connect(); this is the check that does not depend on
 * a file mode nobody changed.  The group lookup may ask NSS, once per
 * refused-by-uid command, which is rare and short.
 */
static bool
control_peer_in_group(const struct control *c, const struct ucred *cr)
{
	/* Unset control_group: the daemon's group as it is now, after the
	 * privilege drop (the socket was given to it then). */
	gid_t g = c->has_group ? c->gid : getegid(), groups[256];
	int n = (int)(sizeof(groups) / sizeof(groups[0]));
	struct passwd pw, *res = NULL;
	char buf[4096];

	if (cr->gid == g)
		return true;
	if (getpwuid_r(cr->uid, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
		return false;
	if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
		return false;   /* more than 256 groups: not worth the guess */
	for (int i = 0; i < n; i++)
		if (groups[i] == g)
			return true;
	return false;
}

static bool
control_allowed(const struct control_req *q, const struct control_cmd *cmd)
{
	const struct control_client *cl = q->client;
	const struct ucred *cr;

	if (cl == NULL)
		return true;   /* control_execute() from a unit test */
	if (!cl->have_cred)
		return false;
	cr = &cl->cred;
	if (cr->uid == 0 || cr->uid == geteuid())
		return true;
	if (!cmd->changes && q->relay->cfg->control_readonly_any)
		return true;
	return control_peer_in_group(cl->ctl, cr);
}

/* Returns 1 when the answer will come asynchronously. */
static int
control_run(struct relay *r, struct control_client *cl, char *line,
    struct control_buf *out)
{
	struct control_req q;
	struct control_request words;
	int rc;

	memset(&q, 0, sizeof(q));
	q.relay = r;
	q.client = cl;
	q.out = out;
	/* The words are parsed in control_proto.c (fuzzed on its own). */
	rc = control_proto_split(line, &words);
	if (rc == CONTROL_PROTO_TOO_MANY) {
		control_error(&q, "too many arguments");
		return 0;
	}
	if (rc == CONTROL_PROTO_EMPTY) {
		control_error(&q, "empty command");
		return 0;
	}
	q.json = words.json;
	q.argc = words.argc;
	memcpy(q.argv, words.argv, sizeof(q.argv));
	for (size_t i = 0; i < sizeof(control_cmds) / sizeof(control_cmds[0]); i++) {
		const struct control_cmd *c = &control_cmds[i];

		if (strcmp(c->name, q.argv[0]) != 0)
			continue;
		if (q.argc - 1 < c->min_args || q.argc - 1 > c->max_args) {
			control_error(&q, "%s: wrong number of arguments", c->name);
			return 0;
		}
		if (cl)
			cl->want_json = q.json;
		if (!control_allowed(&q, c)) {
			log_event(LOG_LEVEL_WARN, "control", "command=%s uid=%ld "
			    "result=denied", c->name, cl && cl->have_cred ?
			    (long)cl->cred.uid : -1L);
			control_error(&q, "permission denied: %s needs root, the "
			    "daemon's user or a member of its control group", c->name);
			return 0;
		}
		c->run(&q);
		return out->len == 0 ? 1 : 0;
	}
	control_error(&q, "unknown command %s (status, queue, show, watch, flush, "
	    "hold, release, delete, bounce, requeue, set, reload, backup)", q.argv[0]);
	return 0;
}

void
control_execute(struct relay *r, const char *line, struct control_buf *out)
{
	char buf[CONTROL_REQUEST_MAX];

	snprintf(buf, sizeof(buf), "%s", line);
	(void)control_run(r, NULL, buf, out);
}

/* ---- metrics ----------------------------------------------------------- */

/* The fleet's families, after the node's own (fleet_render.c). */
static void
control_metrics_fleet(struct relay *r, struct control_buf *b)
{
	struct fleet_view v;

	if (r->fleet == NULL || fleet_view_get(r->fleet, &v) != 0)
		return;
	fleet_render_metrics(&v, b);
	fleet_view_free(&v);
}

void
control_metrics(struct relay *r, struct control_buf *b)
{
	struct control_status st;

	control_fill_status(r, &st);
	metrics_render(&st, b);
	free(st.tenants);
	control_metrics_fleet(r, b);
}

/* ---- connections ------------------------------------------------------- */

/* The control struct goes when its listeners and its last client are closed. */
static void
control_maybe_done(struct control *c)
{
	void (*done)(void *) = c->done;
	void *arg = c->done_arg;

	if (!c->closing || c->open_handles > 0 || c->nclients > 0)
		return;
	free(c);
	if (done)
		done(arg);
}

static void
control_client_free(uv_handle_t *h)
{
	struct control_client *cl = h->data;
	struct control *c = cl->ctl;

	if (--cl->closing_handles > 0)
		return;
	if (cl->bulk != NULL)
		cl->bulk->cl = NULL;   /* freed when its last load comes back */
	spool_backup_detach(cl->backup);   /* it runs on and frees itself */
	free(cl->backup_dir);
	if (cl->msg != NULL)
		spool_msg_free(cl->msg);   /* a read in flight then calls nobody */
	cl->msg = NULL;
	free(cl->show);
	cl->show = NULL;
	LIST_REMOVE(cl, entry);
	c->nclients--;
	control_buf_free(&cl->out);
	if (cl->show_loading)
		cl->orphan = true;   /* control_show_loaded frees it */
	else
		free(cl);
	control_maybe_done(c);
}

static void
control_client_close(struct control_client *cl)
{
	if (cl->closing_handles)
		return;
	cl->closing_handles = 2;
	uv_close((uv_handle_t *)&cl->timer, control_client_free);
	uv_close((uv_handle_t *)&cl->h.stream, control_client_free);
}

static void
control_written(uv_write_t *w, int status)
{
	control_client_close(w->data);
}

static void
control_send(struct control_client *cl)
{
	uv_buf_t b = uv_buf_init(cl->out.data, (unsigned)cl->out.len);

	cl->answered = true;
	uv_read_stop(&cl->h.stream);
	cl->wreq.data = cl;
	if (cl->out.len == 0 || uv_write(&cl->wreq, &cl->h.stream, &b, 1, control_written) != 0)
		control_client_close(cl);
}

/* Drop the CRs of CRLF line ends, in place: show is read by people. */
static void
control_strip_cr(char *s)
{
	char *w = s;

	for (; *s != '\0'; s++)
		if (!(s[0] == '\r' && s[1] == '\n'))
			*w++ = *s;
	*w = '\0';
}

/* The envelope loaded and the first bytes read: answer. */
static void
control_show_answer(struct control_client *cl)
{
	struct spool_msg *m = cl->msg;
	struct control_message cm;
	char *buf = cl->show, *end;

	control_fill_message(m, &cm);
	cm.last_reply = spool_last_reply(cl->ctl->relay->spool, spool_msg_qid(m));
	if (buf != NULL) {
		buf[cl->show_len] = '\0';
		end = strstr(buf, "\r\n\r\n");
		if (end != NULL) {
			end[2] = '\0';
			if (cl->show_body) {
				cm.body = end + 4;
				cm.body_truncated = cl->show_len < spool_msg_size(m);
				control_strip_cr(end + 4);
			}
		}
		control_strip_cr(buf);
		cm.headers = buf;
	}
	control_render_message(&cm, cl->want_json, &cl->out);
	free(cm.rcpt);
	cl->msg = NULL;
	spool_msg_free(m);
	control_send(cl);
}

static void control_show_next(struct control_client *cl);

static void
control_show_chunk(void *arg, int status, const void *buf, size_t len)
{
	struct control_client *cl = arg;
	size_t cap = CONTROL_SHOW_HEADERS_MAX + (cl->show_body ? CONTROL_SHOW_BODY_MAX : 0);

	if (cl->closing_handles)
		return;   /* control_client_free lets the message go */
	if (status < 0 || len == 0) {
		control_show_answer(cl);
		return;
	}
	if (len > cap - cl->show_len)
		len = cap - cl->show_len;
	memcpy(cl->show + cl->show_len, buf, len);
	cl->show_len += len;
	cl->show[cl->show_len] = '\0';
	if (cl->show_len == cap || cl->show_len >= spool_msg_size(cl->msg) ||
	    (!cl->show_body && strstr(cl->show, "\r\n\r\n") != NULL)) {
		control_show_answer(cl);
		return;
	}
	control_show_next(cl);
}

static void
control_show_next(struct control_client *cl)
{
	size_t cap = CONTROL_SHOW_HEADERS_MAX + (cl->show_body ? CONTROL_SHOW_BODY_MAX : 0);

	if (spool_msg_read(cl->msg, cl->show_len, cap - cl->show_len,
	    control_show_chunk, cl) != 0)
		control_show_answer(cl);
}

static void
control_show_loaded(void *arg, int status, struct spool_msg *m)
{
	struct control_client *cl = arg;
	size_t cap;

	cl->show_loading = false;
	if (cl->orphan) {
		spool_msg_free(m);
		free(cl);
		return;
	}
	if (cl->closing_handles) {
		if (m)
			spool_msg_free(m);
		return;
	}
	if (status != 0 || m == NULL) {
		control_render_error(&cl->out, spool_strerror(status));
		control_send(cl);
		return;
	}
	cl->msg = m;
	cap = CONTROL_SHOW_HEADERS_MAX + (cl->show_body ? CONTROL_SHOW_BODY_MAX : 0);
	cl->show = xmalloc(cap + 1);
	cl->show_len = 0;
	if (spool_msg_size(m) == 0) {
		control_show_answer(cl);
		return;
	}
	control_show_next(cl);
}

/* ---- backup DIR ---------------------------------------------------------- */

/*
 * The one streamed answer: "progress ..." lines while the backup runs (each
 * its own write, so mxspoolctl shows them as they come), then the usual
 * "ok" + summary or "error MESSAGE", and the connection closes.
 */
struct control_line {
	uv_write_t w;
	char buf[256];
};

static void
control_line_written(uv_write_t *w, int status)
{
	(void)status;
	free(w->data);
}

static void
control_backup_progress(struct control_client *cl,
    const struct spool_backup_progress *p)
{
	struct control_line *l = malloc(sizeof(*l));
	uv_buf_t b;
	int n;

	if (l == NULL)
		return;   /* a progress line is not worth failing the backup */
	n = snprintf(l->buf, sizeof(l->buf), "progress segments=%" PRIu64 "/%" PRIu64
	    " bytes=%" PRIu64 "/%" PRIu64 " messages=%" PRIu64 " elapsed_ms=%" PRIu64 "\n",
	    p->segments_done, p->segments, p->bytes_done, p->bytes, p->messages,
	    p->elapsed_ms);
	l->w.data = l;
	b = uv_buf_init(l->buf, (unsigned)n);
	if (uv_write(&l->w, &cl->h.stream, &b, 1, control_line_written) != 0)
		free(l);
}

static void
control_backup_summary(struct control_client *cl,
    const struct spool_backup_progress *p)
{
	struct control_buf *b = &cl->out;
	double s = (double)p->elapsed_ms / 1000.0;
	double rate = p->elapsed_ms ? (double)p->bytes / s : 0.0;

	control_buf_printf(b, "ok\n");
	if (cl->want_json) {
		control_buf_printf(b, "{\"dir\": ");
		control_buf_json_string(b, cl->backup_dir);
		control_buf_printf(b, ", \"messages\": %" PRIu64 ", \"segments\": %" PRIu64
		    ", \"linked\": %" PRIu64 ", \"copied\": %" PRIu64 ", \"bytes\": %" PRIu64
		    ", \"duration_ms\": %" PRIu64 ", \"bytes_per_s\": %.0f"
		    ", \"active_segment\": %" PRIu64 ", \"active_bytes\": %" PRIu64 "}\n",
		    p->messages, p->segments, p->linked, p->copied, p->bytes,
		    p->elapsed_ms, rate, p->snapshot_segno, p->snapshot_size);
		return;
	}
	control_buf_printf(b, "backup %s complete\n", cl->backup_dir);
	control_buf_printf(b, "  messages  %" PRIu64 " (queued when the backup began)\n",
	    p->messages);
	control_buf_printf(b, "  segments  %" PRIu64 " (%" PRIu64 " hard-linked, %" PRIu64
	    " copied)\n", p->segments, p->linked, p->copied);
	control_buf_printf(b, "  bytes     %" PRIu64 " (%.1f MiB)\n", p->bytes,
	    (double)p->bytes / 1048576.0);
	control_buf_printf(b, "  time      %.3f s (%.1f MiB/s)\n", s, rate / 1048576.0);
}

static void
control_backup_cb(void *arg, int status, const struct spool_backup_progress *p,
    bool done)
{
	struct control_client *cl = arg;
	char q[1200];

	if (cl->closing_handles) {
		if (done)
			cl->backup = NULL;
		return;   /* control_client_free detaches it */
	}
	if (!done) {
		control_backup_progress(cl, p);
		return;
	}
	cl->backup = NULL;
	log_event(status == 0 ? LOG_LEVEL_INFO : LOG_LEVEL_ERR, "backup",
	    "dir=%s result=%s messages=%" PRIu64 " segments=%" PRIu64 " linked=%" PRIu64
	    " copied=%" PRIu64 " bytes=%" PRIu64 " duration_ms=%" PRIu64 "%s%s",
	    log_quote(q, sizeof(q), cl->backup_dir), status == 0 ? "ok" : "failed",
	    p->messages, p->segments, p->linked, p->copied, p->bytes, p->elapsed_ms,
	    status == 0 ? "" : " error=", status == 0 ? "" :
	    (status < -1000 ? spool_strerror(status) : strerror(-status)));
	if (status == 0) {
		control_backup_summary(cl, p);
	} else {
		char msg[1400];

		snprintf(msg, sizeof(msg), "backup to %s failed: %s (nothing in it is "
		    "a usable spool)", cl->backup_dir, status < -1000 ?
		    spool_strerror(status) : strerror(-status));
		control_render_error(&cl->out, msg);
	}
	control_send(cl);
}

static void
control_cmd_backup(struct control_req *q)
{
	struct control_client *cl = q->client;
	const char *dir = q->argv[1];
	int rc;

	if (cl == NULL || cl->is_http) {
		control_error(q, "backup: needs a control connection");
		return;
	}
	if (dir[0] != '/') {
		control_error(q, "backup: %s: the folder must be an absolute path", dir);
		return;
	}
	cl->backup_dir = xstrdup(dir);
	rc = spool_backup_start(q->relay->spool, dir, control_backup_cb, cl, &cl->backup);
	if (rc != 0) {
		control_error(q, "backup: %s", rc == -EBUSY ? "another backup is running" :
		    rc == SPOOL_EINVAL ? "this spool backend cannot be backed up" :
		    rc < -1000 ? spool_strerror(rc) : strerror(-rc));
		return;
	}
	log_event(LOG_LEVEL_INFO, "backup", "dir=%s result=started by=mxspoolctl", dir);
	/* A backup takes as long as the copy: no idle limit for this client. */
	uv_timer_stop(&cl->timer);
}

/* ---- bulk: filtered queue, delete and bounce ----------------------------- */

/* Rows of one queue answer. */
static size_t
control_bulk_want(const struct control_bulk *b)
{
	return b->f.limit ? b->f.limit : CONTROL_QUEUE_LIST_MAX;
}

static bool
control_bulk_keep(void *arg, const struct spool_item *it)
{
	struct control_bulk *b = arg;

	return control_filter_item(&b->f, it->qid, it->arrival_ms, it->attempts,
	    it->next_attempt_ms, b->now);
}

static int
control_bulk_collect(void *arg, const struct spool_item *it)
{
	struct control_bulk *b = arg;

	if (!control_filter_item(&b->f, it->qid, it->arrival_ms, it->attempts,
	    it->next_attempt_ms, b->now))
		return 0;
	if (b->ncand == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 256;
		b->cand = xrealloc(b->cand, b->cap * sizeof(*b->cand));
	}
	b->cand[b->ncand++] = it->qid;
	/* Without envelope filters a page is its first LIMIT candidates (one
	 * more tells whether another page follows). */
	if (b->verb == CONTROL_BULK_QUEUE && b->f.from == NULL && b->f.to == NULL &&
	    b->ncand > control_bulk_want(b))
		return 1;
	return 0;
}

static void
control_bulk_free(struct control_bulk *b)
{
	for (size_t i = 0; b->match != NULL && i < b->nmatch; i++) {
		free(b->match[i].sender);
		free(b->match[i].recipients);
	}
	free(b->cand);
	free(b->match);
	free(b);
}

/* The pending recipients of M, comma-separated. */
static char *
control_pending_rcpts(const struct spool_msg *m)
{
	const struct spool_envelope *e = spool_msg_envelope(m);
	struct control_buf out = { 0 };
	char *s;

	for (size_t i = 0; i < e->nrcpt; i++)
		if (spool_msg_rcpt_state(m, i) == SPOOL_RCPT_PENDING)
			control_buf_printf(&out, "%s%s", out.len ? "," : "", e->rcpt[i].addr);
	s = xstrdup(out.data ? out.data : "");
	control_buf_free(&out);
	return s;
}

/* Does the loaded message pass the envelope filters? */
static bool
control_bulk_match(const struct control_bulk *b, const struct spool_msg *m)
{
	const struct spool_envelope *e = spool_msg_envelope(m);

	if (b->f.from != NULL && !control_icontains(e->sender, b->f.from))
		return false;
	if (b->f.to == NULL)
		return true;
	for (size_t i = 0; i < e->nrcpt; i++)
		if (spool_msg_rcpt_state(m, i) == SPOOL_RCPT_PENDING &&
		    control_icontains(e->rcpt[i].addr, b->f.to))
			return true;
	return false;
}

static void control_bulk_pump(struct control_bulk *b);

/* A DELETE record is stored (STATUS 0: the message is gone from the queue)
 * or could not be: counted either way; the answer waits for the last. */
static void
control_bulk_deleted(void *arg, int status)
{
	struct control_del *x = arg;
	struct control_bulk *b = x->b;
	char id[SPOOL_QID_STRLEN + 1];

	b->deleting--;
	spool_qid_format(x->qid, id);
	if (status == 0) {
		b->done++;
		b->bytes += x->size;
		log_event(LOG_LEVEL_INFO, "delete", "qid=%s size=%" PRIu64 " by=mxspoolctl",
		    id, x->size);
	} else {
		b->failed++;
		log_event(LOG_LEVEL_WARN, "delete", "qid=%s result=failed error=\"%s\" by=mxspoolctl",
		    id, spool_strerror(status));
	}
	free(x);
	control_bulk_pump(b);
}

/* Start the DELETE of QID; the answer comes after its record is stored. */
static void
control_bulk_delete(struct control_bulk *b, spool_qid qid)
{
	struct control_del *x = xcalloc(1, sizeof(*x));
	struct spool_item it;

	x->b = b;
	x->qid = qid;
	if (spool_find(b->relay->spool, qid, &it) == 0)
		x->size = it.size;
	if (spool_delete(b->relay->spool, qid, control_bulk_deleted, x) != 0) {
		free(x);      /* gone meanwhile: not counted */
		return;
	}
	b->deleting++;
}

/* A match: listed (M: its envelope), counted, or deleted / bounced now. */
static void
control_bulk_act(struct control_bulk *b, spool_qid qid, const struct spool_msg *m)
{
	int rc;

	if (b->verb == CONTROL_BULK_QUEUE) {
		struct control_match *x = &b->match[b->nmatch++];

		x->qid = qid;
		x->size = spool_msg_size(m);
		x->sender = xstrdup(spool_msg_envelope(m)->sender);
		x->recipients = control_pending_rcpts(m);
		return;
	}
	if (b->f.dry_run) {
		b->done++;
		return;
	}
	if (b->verb == CONTROL_BULK_DELETE) {
		control_bulk_delete(b, qid);
		return;
	}
	rc = drain_bounce(b->relay->drain, qid);
	if (rc != 0)
		return;   /* being delivered, or gone meanwhile: not counted */
	b->done++;
}

static int
control_match_cmp(const void *a, const void *b)
{
	spool_qid x = ((const struct control_match *)a)->qid;
	spool_qid y = ((const struct control_match *)b)->qid;

	return x < y ? -1 : x > y;
}

/* The answer is in the client's buffer: send it, unless control_run will
 * (everything was answered before control_bulk_start returned). */
static void
control_bulk_send(struct control_bulk *b)
{
	struct control_client *cl = b->cl;
	bool starting = b->starting;

	control_bulk_free(b);
	if (!starting)
		control_send(cl);
}

/* Everything loaded: answer. */
static void
control_bulk_finish(struct control_bulk *b)
{
	struct control_client *cl = b->cl;
	struct control_queue list;
	struct spool_item it;

	cl->bulk = NULL;
	if (b->single && b->done == 0) {
		char id[SPOOL_QID_STRLEN + 1], msg[128];

		spool_qid_format(b->f.qid, id);
		snprintf(msg, sizeof(msg), "%s: %s", id, b->failed ?
		    "journal write failed, the message is still queued" :
		    spool_strerror(SPOOL_ENOENT));
		control_render_error(&cl->out, msg);
		control_bulk_send(b);
		return;
	}
	if (b->verb != CONTROL_BULK_QUEUE) {
		struct control_ack a = { b->verb == CONTROL_BULK_BOUNCE ?
		    CONTROL_ACK_BOUNCE_N : CONTROL_ACK_DELETE_N, NULL, b->done, NULL,
		    b->f.dry_run };
		struct spool_reclaim ri;

		if (b->single)
			a.kind = CONTROL_ACK_DELETE;
		if (b->verb == CONTROL_BULK_DELETE && !b->f.dry_run) {
			struct control_freed fr = { b->bytes, b->failed, 0, 0 };

			spool_reclaim_info(b->relay->spool, &ri);
			fr.reclaim_soon = ri.soon_bytes;
			fr.reclaim_later = ri.dead_bytes - ri.soon_bytes;
			control_render_delete_ack(&a, &fr, cl->want_json, &cl->out);
		} else
			control_render_ack(&a, cl->want_json, &cl->out);
		control_bulk_send(b);
		return;
	}
	/* Loads finish out of order: the page is the first LIMIT matches. */
	qsort(b->match, b->nmatch, sizeof(*b->match), control_match_cmp);
	memset(&list, 0, sizeof(list));
	for (size_t i = 0; i < b->nmatch; i++) {
		struct control_queue_row *row;

		if (list.nrows == control_bulk_want(b)) {
			list.truncated = true;
			break;
		}
		if (spool_find(b->relay->spool, b->match[i].qid, &it) != 0)
			continue;   /* delivered while we read */
		row = control_queue_add(&list);
		control_queue_row_fill(row, &it, b->now);
		row->size = b->match[i].size;   /* as show says, not the stored record */
		row->sender = b->match[i].sender;
		row->recipients = b->match[i].recipients;
		if (spool_last_reply(b->relay->spool, it.qid) != NULL)
			row->last_reply = xstrdup(spool_last_reply(b->relay->spool, it.qid));
		b->match[i].sender = b->match[i].recipients = NULL;
	}
	if (b->nmatch >= control_bulk_want(b) && b->next < b->ncand)
		list.truncated = true;   /* more may match: ask for the next page */
	list.limit = b->f.limit;
	control_render_queue(&list, cl->want_json, &cl->out);
	control_queue_free(&list);
	control_bulk_send(b);
}

static void control_bulk_loaded(void *arg, int status, struct spool_msg *m);

/* Keep CONTROL_BULK_LOADS envelopes loading; answer when all are in. */
static void
control_bulk_pump(struct control_bulk *b)
{
	size_t want = control_bulk_want(b);

	if (b->pumping)
		return;
	b->pumping = true;
	while (b->cl != NULL && b->loading < CONTROL_BULK_LOADS && b->next < b->ncand &&
	    !(b->verb == CONTROL_BULK_QUEUE && b->nmatch >= want)) {
		spool_qid qid = b->cand[b->next++];

		b->loading++;
		if (spool_load(b->relay->spool, qid, control_bulk_loaded, b) != 0)
			b->loading--;
	}
	b->pumping = false;
	if (b->loading > 0 || b->deleting > 0)
		return;
	if (b->cl == NULL)
		control_bulk_free(b);
	else
		control_bulk_finish(b);
}

static void
control_bulk_loaded(void *arg, int status, struct spool_msg *m)
{
	struct control_bulk *b = arg;

	b->loading--;
	/* Delete and bounce act after the envelope is let go. */
	if (status == 0 && m != NULL && b->cl != NULL && control_bulk_match(b, m)) {
		spool_qid qid = spool_msg_qid(m);

		if (b->verb == CONTROL_BULK_QUEUE) {
			control_bulk_act(b, qid, m);
		} else {
			spool_msg_free(m);
			m = NULL;
			control_bulk_act(b, qid, NULL);
		}
	}
	if (m != NULL)
		spool_msg_free(m);
	control_bulk_pump(b);
}

/* Delete every candidate of B (a new bulk for Q's client) and answer once
 * every DELETE record is stored: the operator's "deleted" means the mail
 * will not come back after a crash. */
static void
control_bulk_delete_all(struct control_req *q, struct control_bulk *b)
{
	uv_timer_stop(&q->client->timer);
	q->client->bulk = b;
	b->starting = true;
	b->pumping = true;
	for (size_t i = 0; i < b->ncand; i++)
		control_bulk_act(b, b->cand[i], NULL);
	b->next = b->ncand;
	b->pumping = false;
	control_bulk_pump(b);
	/* Answered at once (B is gone, the answer in q->out) or later. */
	if (q->client->bulk != NULL)
		b->starting = false;
}

/* delete QUEUEID on a connection: as a bulk of one. */
static void
control_delete_async(struct control_req *q, spool_qid qid)
{
	struct control_bulk *b = xcalloc(1, sizeof(*b));

	b->cl = q->client;
	b->relay = q->relay;
	b->verb = CONTROL_BULK_DELETE;
	b->single = true;
	b->f.qid = qid;
	b->f.has_qid = true;
	b->now = util_now_ms();
	b->cand = xcalloc(1, sizeof(*b->cand));
	b->cand[0] = qid;
	b->ncand = b->cap = 1;
	control_bulk_delete_all(q, b);
}

static void
control_bulk_start(struct control_req *q, const struct control_filter *f,
    enum control_bulk_verb verb)
{
	struct control_bulk *b;

	if (q->client == NULL) {
		control_error(q, "%s with filters needs a connection", q->argv[0]);
		return;
	}
	b = xcalloc(1, sizeof(*b));
	b->cl = q->client;
	b->relay = q->relay;
	b->verb = verb;
	b->f = *f;
	b->now = util_now_ms();
	if (verb == CONTROL_BULK_QUEUE && f->from == NULL && f->to == NULL) {
		/* A page from the index alone: one pass, no sort of the queue. */
		b->cap = control_bulk_want(b) + 1;
		b->cand = xcalloc(b->cap, sizeof(*b->cand));
		b->ncand = spool_page(q->relay->spool, f->tenant, f->has_after ? f->after : 0,
		    b->cap, control_bulk_keep, b, b->cand);
	} else {
		spool_foreach(q->relay->spool, f->tenant, control_bulk_collect, b);
	}
	if (f->from == NULL && f->to == NULL && verb == CONTROL_BULK_DELETE &&
	    !f->dry_run) {
		/* The index decides; the answer waits for the DELETE records. */
		control_bulk_delete_all(q, b);
		return;
	}
	if (f->from == NULL && f->to == NULL && verb != CONTROL_BULK_QUEUE) {
		/* The index decides: act on every candidate now. */
		for (size_t i = 0; i < b->ncand; i++)
			control_bulk_act(b, b->cand[i], NULL);
		struct control_ack a = { verb == CONTROL_BULK_BOUNCE ? CONTROL_ACK_BOUNCE_N :
		    CONTROL_ACK_DELETE_N, NULL, b->done, NULL, f->dry_run };
		control_render_ack(&a, q->json, q->out);
		control_bulk_free(b);
		return;
	}
	if (verb == CONTROL_BULK_QUEUE)
		b->match = xcalloc(b->ncand ? b->ncand : 1, sizeof(*b->match));
	/* A long run of loads must not be cut by the idle timer. */
	uv_timer_stop(&q->client->timer);
	q->client->bulk = b;
	b->starting = true;
	control_bulk_pump(b);
	/* Answered at once (B is gone, the answer in q->out) or later. */
	if (q->client->bulk != NULL)
		b->starting = false;
}

static void
control_http_answer(struct control_client *cl)
{
	struct control_buf body = { 0 };
	const char *status = "200 OK";

	switch (control_proto_http_route(cl->req, cl->len)) {
	case CONTROL_HTTP_METRICS:
		control_metrics(cl->ctl->relay, &body);
		break;
	case CONTROL_HTTP_INDEX:
		control_buf_printf(&body, "mxspoold %s: metrics at /metrics\n", PACKAGE_VERSION);
		break;
	case CONTROL_HTTP_NOT_FOUND:
		status = "404 Not Found";
		control_buf_printf(&body, "not found\n");
		break;
	}
	control_buf_printf(&cl->out, "HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
	    "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, body.len);
	control_buf_printf(&cl->out, "%.*s", (int)body.len, body.data ? body.data : "");
	control_buf_free(&body);
	control_send(cl);
}

static void
control_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct control_client *cl = h->data;
	size_t cap = cl->is_http ? CONTROL_HTTP_MAX : CONTROL_REQUEST_MAX;

	*buf = uv_buf_init(cl->req + cl->len, (unsigned)(cap - 1 - cl->len));
}

static void
control_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct control_client *cl = s->data;
	size_t cap = cl->is_http ? CONTROL_HTTP_MAX : CONTROL_REQUEST_MAX;
	long line;

	if (n < 0) {
		control_client_close(cl);
		return;
	}
	cl->len += (size_t)n;
	cl->req[cl->len] = '\0';
	if (cl->is_http) {
		if (control_proto_http_complete(cl->req, cl->len)) {
			control_http_answer(cl);
			return;
		}
	} else if ((line = control_proto_line(cl->req, cl->len)) >= 0) {
		cl->req[line] = '\0';
		if (control_run(cl->ctl->relay, cl, cl->req, &cl->out) == 0)
			control_send(cl);
		return;
	}
	if (cl->len >= cap - 1) {
		control_buf_printf(&cl->out, cl->is_http ?
		    "HTTP/1.0 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n" :
		    "error request too long\n");
		control_send(cl);
	}
}

static void
control_on_idle(uv_timer_t *t)
{
	control_client_close(t->data);
}

static void
control_on_connection(uv_stream_t *server, int status)
{
	struct control *c = server->data;
	struct control_client *cl;
	bool http = server == (uv_stream_t *)&c->http;
	int rc;

	if (status != 0 || c->closing)
		return;
	cl = calloc(1, sizeof(*cl));
	if (cl == NULL)
		return;
	cl->ctl = c;
	cl->is_http = http;
	rc = http ? uv_tcp_init(c->relay->loop, &cl->h.tcp) :
	    uv_pipe_init(c->relay->loop, &cl->h.pipe, 0);
	if (rc != 0) {
		free(cl);
		return;
	}
	uv_timer_init(c->relay->loop, &cl->timer);
	cl->h.stream.data = cl;
	cl->timer.data = cl;
	LIST_INSERT_HEAD(&c->clients, cl, entry);
	c->nclients++;
	if (uv_accept(server, &cl->h.stream) != 0 ||
	    uv_read_start(&cl->h.stream, control_alloc, control_on_read) != 0) {
		control_client_close(cl);
		return;
	}
	if (!http) {
		uv_os_fd_t fd;
		socklen_t len = sizeof(cl->cred);

		cl->have_cred = uv_fileno((uv_handle_t *)&cl->h.pipe, &fd) == 0 &&
		    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cl->cred, &len) == 0 &&
		    len == sizeof(cl->cred);
	}
	uv_timer_start(&cl->timer, control_on_idle, CONTROL_IDLE_MS, 0);
}

static int
control_bind_metrics(struct control *c, char *err, size_t errlen)
{
	const struct config_hostport *hp = &c->relay->cfg->metrics_listen;
	struct sockaddr_storage ss;
	int rc;

	if (c->relay->handover != NULL && c->relay->handover->metrics >= 0) {
		/* SIGUSR2: the previous process's listener, still bound. */
		uv_tcp_init(c->relay->loop, &c->http);
		c->http.data = c;
		c->has_http = true;
		c->open_handles++;
		if ((rc = uv_tcp_open(&c->http, c->relay->handover->metrics)) != 0 ||
		    (rc = uv_listen((uv_stream_t *)&c->http, 64, control_on_connection)) != 0) {
			snprintf(err, errlen, "metrics_listen (handed over): %s", uv_strerror(rc));
			return -1;
		}
		return 0;
	}
	if (uv_ip4_addr(hp->host, hp->port, (struct sockaddr_in *)&ss) != 0 &&
	    uv_ip6_addr(hp->host, hp->port, (struct sockaddr_in6 *)&ss) != 0) {
		snprintf(err, errlen, "metrics_listen %s: not an IP address", hp->host);
		return -1;
	}
	uv_tcp_init(c->relay->loop, &c->http);
	c->http.data = c;
	c->has_http = true;
	c->open_handles++;
	if ((rc = uv_tcp_bind(&c->http, (struct sockaddr *)&ss, 0)) != 0 ||
	    (rc = uv_listen((uv_stream_t *)&c->http, 64, control_on_connection)) != 0) {
		snprintf(err, errlen, "metrics_listen [%s]:%u: %s", hp->host, hp->port,
		    uv_strerror(rc));
		return -1;
	}
	return 0;
}

/* The socket's group (control_group) and mode: 0660, or 0666 when anybody
 * may run the read-only commands (the others are checked per command). */
static int
control_set_access(struct control *c, const char *path, char *err,
    size_t errlen)
{
	const struct config *cfg = c->relay->cfg;
	mode_t mode = cfg->control_readonly_any ? 0666 : 0660;

	if (cfg->control_group != NULL) {
		struct group gr, *res = NULL;
		char buf[4096];

		if (getgrnam_r(cfg->control_group, &gr, buf, sizeof(buf), &res) != 0 ||
		    res == NULL) {
			snprintf(err, errlen, "control_group %s: no such group "
			    "(create it with groupadd, or leave control_group empty)",
			    cfg->control_group);
			return -1;
		}
		c->gid = gr.gr_gid;
		c->has_group = true;
		if (chown(path, (uid_t)-1, c->gid) != 0) {
			snprintf(err, errlen, "control_socket %s: chown to group %s: %s",
			    path, cfg->control_group, strerror(errno));
			return -1;
		}
	}
	if (chmod(path, mode) != 0) {
		snprintf(err, errlen, "control_socket %s: chmod: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* SIGUSR2: listen on the sockets the previous process handed over (its
 * control socket keeps its path, mode and group). */
static int
control_adopt(struct control *c, struct control **out, char *err, size_t errlen)
{
	struct relay *r = c->relay;
	int rc;

	uv_pipe_init(r->loop, &c->pipe, 0);
	c->pipe.data = c;
	c->open_handles = 1;
	if ((rc = uv_pipe_open(&c->pipe, r->handover->control)) != 0 ||
	    (rc = uv_listen((uv_stream_t *)&c->pipe, 64, control_on_connection)) != 0) {
		snprintf(err, errlen, "control_socket (handed over): %s", uv_strerror(rc));
		return -1;
	}
	if (r->cfg->control_group != NULL) {
		struct group gr, *res = NULL;
		char buf[4096];

		/* The file kept its group; the checks need its number. */
		if (getgrnam_r(r->cfg->control_group, &gr, buf, sizeof(buf), &res) != 0 ||
		    res == NULL) {
			snprintf(err, errlen, "control_group %s: no such group",
			    r->cfg->control_group);
			return -1;
		}
		c->gid = gr.gr_gid;
		c->has_group = true;
	}
	if (r->cfg->has_metrics && control_bind_metrics(c, err, errlen) != 0)
		return -1;
	log_event(LOG_LEVEL_INFO, "listen", "control=%s handed_over=yes", r->cfg->control_socket);
	*out = c;
	return 0;
}

int
control_listen_fds(const struct control *c, int *control_fd, int *metrics_fd)
{
	uv_os_fd_t fd;

	*control_fd = *metrics_fd = -1;
	if (uv_fileno((const uv_handle_t *)&c->pipe, &fd) != 0)
		return -1;
	*control_fd = fd;
	if (c->has_http && uv_fileno((const uv_handle_t *)&c->http, &fd) == 0)
		*metrics_fd = fd;
	return 0;
}

int
control_new(struct relay *r, struct control **out, char *err, size_t errlen)
{
	const char *path = r->cfg->control_socket;
	struct control *c = xcalloc(1, sizeof(*c));
	char *dir, *slash;
	int rc;

	c->relay = r;
	/* The run directory may be a tmpfs that is empty after a reboot. */
	dir = xstrdup(path);
	if ((slash = strrchr(dir, '/')) != NULL && slash != dir) {
		*slash = '\0';
		if (util_mkdir_p(dir, 0755) != 0) {
			snprintf(err, errlen, "control_socket %s: cannot create %s: %s", path,
			    dir, strerror(errno));
			free(dir);
			free(c);
			return -1;
		}
	}
	free(dir);
	if (r->handover != NULL && r->handover->control >= 0)
		return control_adopt(c, out, err, errlen);
	/* A stale socket from a crash would make bind fail; the spool lock,
	 * taken before this, proves no other daemon is using it. */
	if (unlink(path) != 0 && errno != ENOENT) {
		snprintf(err, errlen, "control_socket %s: %s", path, strerror(errno));
		free(c);
		return -1;
	}
	uv_pipe_init(r->loop, &c->pipe, 0);
	c->pipe.data = c;
	c->open_handles = 1;
	if ((rc = uv_pipe_bind(&c->pipe, path)) != 0 ||
	    (rc = uv_listen((uv_stream_t *)&c->pipe, 64, control_on_connection)) != 0) {
		snprintf(err, errlen, "control_socket %s: %s", path, uv_strerror(rc));
		return -1;
	}
	if (control_set_access(c, path, err, errlen) != 0)
		return -1;
	if (r->cfg->has_metrics && control_bind_metrics(c, err, errlen) != 0)
		return -1;
	log_event(LOG_LEVEL_INFO, "listen", "control=%s%s%s", path,
	    r->cfg->has_metrics ? " metrics=" : "", r->cfg->has_metrics ? r->cfg->metrics_listen.host : "");
	*out = c;
	return 0;
}

static void
control_listener_closed(uv_handle_t *h)
{
	struct control *c = h->data;

	c->open_handles--;
	control_maybe_done(c);
}

void
control_close(struct control *c, void (*done)(void *arg), void *arg)
{
	struct control_client *cl;

	c->closing = true;
	c->done = done;
	c->done_arg = arg;
	/* After a handover the path is the new process's socket as well:
	 * neither we nor libuv (which unlinks the path of a pipe it bound
	 * when the handle closes) may remove it. */
	if (!c->relay->handing_over) {
		(void)unlink(c->relay->cfg->control_socket);
	} else if (c->pipe.pipe_fname != NULL) {
		free((char *)c->pipe.pipe_fname);
		c->pipe.pipe_fname = NULL;
	}
	/* A client is unlinked in its close callback, not here. */
	LIST_FOREACH(cl, &c->clients, entry)
		control_client_close(cl);
	uv_close((uv_handle_t *)&c->pipe, control_listener_closed);
	if (c->has_http)
		uv_close((uv_handle_t *)&c->http, control_listener_closed);
}
