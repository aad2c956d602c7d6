/*
 * control.c - the control socket (mxspoolctl) and the /metrics listener.
 *
 * Both are tiny request/response servers on the loop: read one bounded
 * request, answer, close.  A request that does not fit CONTROL_REQUEST_MAX
 * (control) or 8 KiB (HTTP) is refused, so a stuck or hostile client costs
 * one fixed buffer.  Commands that need the disk (show) answer
 * asynchronously through the spool's threadpool reads.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/control.h"
#include "mxspool/drain.h"
#include "mxspool/log.h"
#include "mxspool/relay.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/stats.h"
#include "mxspool/util.h"

#define CONTROL_HTTP_MAX 8192
#define CONTROL_IDLE_MS 10000
#define CONTROL_QUEUE_LIST_MAX 10000  /* lines of "queue" before "... more" */

struct control {
	struct relay *relay;
	uv_pipe_t pipe;
	uv_tcp_t http;
	bool has_http;
	unsigned open_handles;
	unsigned nclients;
	struct control_client *clients;
	void (*done)(void *);
	void *done_arg;
	bool closing;
};

struct control_client {
	struct control *ctl;
	struct control_client *next, *prev;
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
	bool want_json;
};

/* ---- buffer helpers ---------------------------------------------------- */

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

/* ---- commands ---------------------------------------------------------- */

struct control_req {
	struct relay *relay;
	struct control_client *client; /* NULL in unit tests: no async commands */
	int argc;
	char *argv[32];
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
	q->out->len = 0;
	control_buf_printf(q->out, "error %s\n", msg);
}

static void
control_tenant_status(struct relay *r, const struct config_tenant *t,
    struct spool_tenant_stats *ss, struct drain_status *ds)
{
	int64_t now = util_now_ms();

	memset(ss, 0, sizeof(*ss));
	ss->oldest_arrival_ms = -1;
	if (r->spool)
		spool_tenant_stats(r->spool, t->name, ss);
	memset(ds, 0, sizeof(*ds));
	ds->primary_state = "unknown";
	ds->eta_s = -1;
	if (r->drain == NULL || drain_status(r->drain, t->name, ds) != 0) {
		ds->primary_state = "unknown";
		ds->eta_s = -1;
	}
	if (ss->oldest_arrival_ms >= 0 && ss->oldest_arrival_ms > now)
		ss->oldest_arrival_ms = now;
}

static void
control_cmd_status(struct control_req *q)
{
	struct relay *r = q->relay;
	struct control_buf *b = q->out;
	const struct config *cfg = r->cfg;
	int64_t now = util_now_ms();
	unsigned conns = r->server ? smtp_server_connections(r->server) : 0;
	uint64_t spool_bytes = r->spool ? spool_total_bytes(r->spool) : 0;

	control_buf_printf(b, "ok\n");
	if (!q->json) {
		control_buf_printf(b, "mxspoold %s, up %lld s, %u connections, spool %" PRIu64
		    " bytes\naccepted %" PRIu64 ", delivered %" PRIu64 ", bounced %" PRIu64 "\n\n",
		    PACKAGE_VERSION, (long long)((now - r->started_ms) / 1000), conns,
		    spool_bytes, stats_total(r->stats, STAT_ACCEPTED), stats_total(r->stats, STAT_DELIVERED), stats_total(r->stats, STAT_BOUNCED));
		control_buf_printf(b, "%-16s %-8s %-5s %10s %12s %10s %8s %8s %6s %10s\n",
		    "TENANT", "PRIMARY", "HELD", "QUEUED", "BYTES", "OLDEST_S",
		    "RATE", "LIMIT", "FLIGHT", "ETA_S");
	} else {
		control_buf_printf(b, "{\"version\": ");
		control_buf_json_string(b, PACKAGE_VERSION);
		control_buf_printf(b, ", \"uptime_s\": %lld, \"accepted_total\": %" PRIu64
		    ", \"delivered_total\": %" PRIu64 ", \"bounced_total\": %" PRIu64
		    ", \"connections\": %u, \"spool_bytes\": %" PRIu64 ", \"tenants\": [",
		    (long long)((now - r->started_ms) / 1000), stats_total(r->stats, STAT_ACCEPTED),
		    stats_total(r->stats, STAT_DELIVERED), stats_total(r->stats, STAT_BOUNCED), conns, spool_bytes);
	}
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const struct config_tenant *t = &cfg->tenants[i];
		const char *c = t->name;   /* counters are kept by tenant name */
		struct spool_tenant_stats ss;
		struct drain_status ds;
		bool held = r->spool ? spool_is_held(r->spool, t->name) : false;
		long long oldest;

		control_tenant_status(r, t, &ss, &ds);
		oldest = ss.oldest_arrival_ms < 0 ? 0 : (now - ss.oldest_arrival_ms) / 1000;
		if (!q->json) {
			char eta[24];

			if (ds.eta_s < 0)
				snprintf(eta, sizeof(eta), "-");
			else
				snprintf(eta, sizeof(eta), "%lld", (long long)ds.eta_s);
			control_buf_printf(b, "%-16s %-8s %-5s %10" PRIu64 " %12" PRIu64
			    " %10lld %8.2f %8.2f %6u %10s\n", t->name, ds.primary_state,
			    held ? "yes" : "no", ss.messages, ss.bytes, oldest,
			    ds.drain_rate, ds.drain_rate_limit, ds.in_flight, eta);
			continue;
		}
		control_buf_printf(b, "%s{\"name\": ", i ? ", " : "");
		control_buf_json_string(b, t->name);
		control_buf_printf(b, ", \"domains\": [");
		for (size_t j = 0; j < t->ndomains; j++) {
			control_buf_printf(b, "%s", j ? ", " : "");
			control_buf_json_string(b, t->domains[j]);
		}
		control_buf_printf(b, "], \"primary_state\": ");
		control_buf_json_string(b, ds.primary_state);
		control_buf_printf(b, ", \"held\": %s, \"queued_messages\": %" PRIu64
		    ", \"queued_bytes\": %" PRIu64 ", \"oldest_age_s\": %lld"
		    ", \"drain_rate\": %.3f, \"drain_rate_limit\": %.3f, \"in_flight\": %u"
		    ", \"delivered_total\": %" PRIu64 ", \"bounced_total\": %" PRIu64
		    ", \"eta_s\": ", held ? "true" : "false", ss.messages, ss.bytes,
		    oldest, ds.drain_rate, ds.drain_rate_limit, ds.in_flight,
		    stats_tenant(r->stats, c, STAT_DELIVERED), stats_tenant(r->stats, c, STAT_BOUNCED));
		if (ds.eta_s < 0)
			control_buf_printf(b, "null}");
		else
			control_buf_printf(b, "%lld}", (long long)ds.eta_s);
	}
	if (q->json)
		control_buf_printf(b, "]}\n");
}

static void
control_cmd_reload(struct control_req *q)
{
	char err[1024];

	if (relay_reload(q->relay, err, sizeof(err)) != 0) {
		control_error(q, "reload refused, old config kept: %s", err);
		return;
	}
	control_buf_printf(q->out, "ok\n");
	if (q->json)
		control_buf_printf(q->out, "{\"reload\": \"ok\"}\n");
	else
		control_buf_printf(q->out, "configuration reloaded\n");
}

struct control_queue_walk {
	struct control_req *q;
	size_t n;
	int64_t now;
	bool truncated;               /* CONTROL_QUEUE_LIST_MAX reached */
};

static int
control_queue_line(void *arg, const struct spool_item *it)
{
	struct control_queue_walk *w = arg;
	struct control_buf *b = w->q->out;
	char qid[SPOOL_QID_STRLEN + 1];

	if (w->n == CONTROL_QUEUE_LIST_MAX) {
		w->truncated = true;
		if (!w->q->json)
			control_buf_printf(b, "... (listing stopped after %d messages)\n",
			    CONTROL_QUEUE_LIST_MAX);
		return 1;
	}
	spool_qid_format(it->qid, qid);
	if (w->q->json) {
		control_buf_printf(b, "%s{\"queue_id\": \"%s\", \"tenant\": ", w->n ? ", " : "", qid);
		control_buf_json_string(b, it->tenant);
		control_buf_printf(b, ", \"size\": %" PRIu64 ", \"age_s\": %lld, \"attempts\": %u"
		    ", \"next_attempt_s\": %lld, \"in_flight\": %s}", it->size,
		    (long long)((w->now - it->arrival_ms) / 1000), it->attempts,
		    (long long)(it->next_attempt_ms > w->now ? (it->next_attempt_ms - w->now) / 1000 : 0),
		    it->claimed ? "true" : "false");
	} else {
		control_buf_printf(b, "%s %-16s %10" PRIu64 " %8lld %8u %8lld%s\n", qid,
		    it->tenant, it->size, (long long)((w->now - it->arrival_ms) / 1000),
		    it->attempts,
		    (long long)(it->next_attempt_ms > w->now ? (it->next_attempt_ms - w->now) / 1000 : 0),
		    it->claimed ? " *" : "");
	}
	w->n++;
	return 0;
}

static void
control_cmd_queue(struct control_req *q)
{
	struct control_queue_walk w = { q, 0, util_now_ms(), false };
	const char *tenant = q->argc > 1 ? q->argv[1] : NULL;

	if (tenant && config_tenant_by_name(q->relay->cfg, tenant) == NULL) {
		control_error(q, "no tenant named %s", tenant);
		return;
	}
	control_buf_printf(q->out, "ok\n");
	if (q->json)
		control_buf_printf(q->out, "{\"messages\": [");
	else
		control_buf_printf(q->out, "%-16s %-16s %10s %8s %8s %8s\n", "QUEUE_ID",
		    "TENANT", "SIZE", "AGE_S", "ATTEMPTS", "NEXT_S");
	spool_foreach(q->relay->spool, tenant, control_queue_line, &w);
	if (q->json)
		control_buf_printf(q->out, "], \"count\": %zu, \"truncated\": %s}\n", w.n,
		    w.truncated ? "true" : "false");
	else
		control_buf_printf(q->out, "-- %zu message%s (* = being delivered)\n",
		    w.n, w.n == 1 ? "" : "s");
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
	spool_qid qid;
	int rc;

	if (control_parse_qid(q, &qid) != 0)
		return;
	if (q->client == NULL) {
		control_error(q, "show needs a connection");
		return;
	}
	rc = spool_load(q->relay->spool, qid, control_show_loaded, q->client);
	if (rc != 0)
		control_error(q, "%s: %s", q->argv[1], spool_strerror(rc));
}

static void
control_cmd_delete(struct control_req *q)
{
	spool_qid qid;
	int rc;

	if (control_parse_qid(q, &qid) != 0)
		return;
	rc = spool_delete(q->relay->spool, qid, NULL, NULL);
	if (rc != 0) {
		control_error(q, "%s: %s", q->argv[1], spool_strerror(rc));
		return;
	}
	log_event(LOG_LEVEL_INFO, "delete", "qid=%s by=mxspoolctl", q->argv[1]);
	control_buf_printf(q->out, "ok\n%s\n", q->json ? "{\"deleted\": 1}" : "deleted");
}

static void
control_cmd_bounce(struct control_req *q)
{
	spool_qid qid;
	int rc;

	if (control_parse_qid(q, &qid) != 0)
		return;
	rc = drain_bounce(q->relay->drain, qid);
	if (rc != 0) {
		control_error(q, "%s: %s", q->argv[1], spool_strerror(rc));
		return;
	}
	control_buf_printf(q->out, "ok\n%s\n", q->json ? "{\"bounced\": 1}" : "bounce queued");
}

static void
control_cmd_flush(struct control_req *q)
{
	const char *tenant = q->argc > 1 ? q->argv[1] : NULL;
	int n;

	if (tenant && config_tenant_by_name(q->relay->cfg, tenant) == NULL) {
		control_error(q, "no tenant named %s", tenant);
		return;
	}
	n = drain_flush(q->relay->drain, tenant);
	log_event(LOG_LEVEL_INFO, "flush", "tenant=%s by=mxspoolctl", tenant ? tenant : "*");
	control_buf_printf(q->out, "ok\n");
	if (q->json)
		control_buf_printf(q->out, "{\"flushed_tenants\": %d}\n", n);
	else
		control_buf_printf(q->out, "probing the primary of %d tenant%s now\n", n, n == 1 ? "" : "s");
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
	if (config_tenant_by_name(q->relay->cfg, q->argv[1]) == NULL) {
		control_error(q, "no tenant named %s", q->argv[1]);
		return;
	}
	rc = spool_set_held(q->relay->spool, q->argv[1], hold, NULL, NULL);
	if (rc != 0) {
		control_error(q, "%s: %s", q->argv[1], spool_strerror(rc));
		return;
	}
	log_event(LOG_LEVEL_INFO, hold ? "hold" : "release", "tenant=%s by=mxspoolctl", q->argv[1]);
	if (!hold)
		drain_kick(q->relay->drain, q->argv[1]);
	control_buf_printf(q->out, "ok\n");
	if (q->json)
		control_buf_printf(q->out, "{\"tenant\": \"%s\", \"held\": %s}\n", q->argv[1],
		    hold ? "true" : "false");
	else
		control_buf_printf(q->out, "tenant %s %s\n", q->argv[1], hold ? "held" : "released");
}

static void
control_cmd_set(struct control_req *q)
{
	char err[512];

	if (q->argc < 3) {
		control_error(q, "usage: set TENANT KEY=VALUE...");
		return;
	}
	if (config_tenant_by_name(q->relay->cfg, q->argv[1]) == NULL) {
		control_error(q, "no tenant named %s", q->argv[1]);
		return;
	}
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
	control_buf_printf(q->out, "ok\n%s\n", q->json ? "{\"set\": \"ok\"}" : "applied");
}

static const struct control_cmd {
	const char *name;
	int min_args, max_args;        /* after the command word */
	void (*run)(struct control_req *);
} control_cmds[] = {
	{ "status", 0, 0, control_cmd_status },
	{ "reload", 0, 0, control_cmd_reload },
	{ "queue", 0, 1, control_cmd_queue },
	{ "show", 1, 1, control_cmd_show },
	{ "delete", 1, 1, control_cmd_delete },
	{ "bounce", 1, 1, control_cmd_bounce },
	{ "flush", 0, 1, control_cmd_flush },
	{ "hold", 1, 1, control_cmd_hold },
	{ "release", 1, 1, control_cmd_hold },
	{ "set", 2, 30, control_cmd_set },
};

/* Returns 1 when the answer will come asynchronously. */
static int
control_run(struct relay *r, struct control_client *cl, char *line,
    struct control_buf *out)
{
	struct control_req q;
	char *save = NULL, *tok;

	memset(&q, 0, sizeof(q));
	q.relay = r;
	q.client = cl;
	q.out = out;
	for (tok = strtok_r(line, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save)) {
		if (strcmp(tok, "--json") == 0) {
			q.json = true;
			continue;
		}
		if (q.argc == (int)(sizeof(q.argv) / sizeof(q.argv[0]))) {
			control_error(&q, "too many arguments");
			return 0;
		}
		q.argv[q.argc++] = tok;
	}
	if (q.argc == 0) {
		control_error(&q, "empty command");
		return 0;
	}
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
		c->run(&q);
		return out->len == 0 ? 1 : 0;
	}
	control_error(&q, "unknown command %s (status, queue, show, flush, hold, "
	    "release, delete, bounce, set, reload)", q.argv[0]);
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

static void
control_metric_head(struct control_buf *b, const char *name, const char *type,
    const char *help)
{
	control_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
control_metrics(struct relay *r, struct control_buf *b)
{
	static const struct {
		const char *name, *type, *help;
	} per_tenant[] = {
		{ "mxspool_queue_messages", "gauge", "Messages queued for the tenant." },
		{ "mxspool_queue_bytes", "gauge", "Bytes queued for the tenant." },
		{ "mxspool_queue_oldest_seconds", "gauge", "Age of the oldest queued message." },
		{ "mxspool_primary_up", "gauge", "1 when the tenant's primary is up." },
		{ "mxspool_drain_rate_limit", "gauge", "Messages per second the drain allows now." },
		{ "mxspool_drain_rate", "gauge", "Messages per second delivered over the last 10 s." },
		{ "mxspool_drain_in_flight", "gauge", "Messages being delivered now." },
		{ "mxspool_messages_accepted_total", "counter", "Messages accepted (250 after DATA)." },
		{ "mxspool_messages_delivered_total", "counter", "Messages delivered to the primary." },
		{ "mxspool_messages_bounced_total", "counter", "Messages returned to the sender." },
	};
	const struct config *cfg = r->cfg;
	int64_t now = util_now_ms();

	for (size_t m = 0; m < sizeof(per_tenant) / sizeof(per_tenant[0]); m++) {
		control_metric_head(b, per_tenant[m].name, per_tenant[m].type, per_tenant[m].help);
		for (size_t i = 0; i < cfg->ntenants; i++) {
			const struct config_tenant *t = &cfg->tenants[i];
			const char *c = t->name;   /* counters are kept by tenant name */
			struct spool_tenant_stats ss;
			struct drain_status ds;
			double v = 0;

			control_tenant_status(r, t, &ss, &ds);
			switch (m) {
			case 0: v = (double)ss.messages; break;
			case 1: v = (double)ss.bytes; break;
			case 2: v = ss.oldest_arrival_ms < 0 ? 0 : (double)(now - ss.oldest_arrival_ms) / 1000.0; break;
			case 3: v = strcmp(ds.primary_state, "up") == 0; break;
			case 4: v = ds.drain_rate_limit; break;
			case 5: v = ds.drain_rate; break;
			case 6: v = ds.in_flight; break;
			case 7: v = (double)stats_tenant(r->stats, c, STAT_ACCEPTED); break;
			case 8: v = (double)stats_tenant(r->stats, c, STAT_DELIVERED); break;
			case 9: v = (double)stats_tenant(r->stats, c, STAT_BOUNCED); break;
			}
			control_buf_printf(b, "%s{tenant=\"%s\"} %.17g\n", per_tenant[m].name, t->name, v);
		}
	}
	control_metric_head(b, "mxspool_connections", "gauge", "Inbound SMTP connections open now.");
	control_buf_printf(b, "mxspool_connections %u\n", r->server ? smtp_server_connections(r->server) : 0);
	control_metric_head(b, "mxspool_spool_bytes", "gauge", "Bytes of live messages in the spool.");
	control_buf_printf(b, "mxspool_spool_bytes %" PRIu64 "\n", r->spool ? spool_total_bytes(r->spool) : 0);
	control_metric_head(b, "mxspool_uptime_seconds", "gauge", "Seconds since mxspoold started.");
	control_buf_printf(b, "mxspool_uptime_seconds %lld\n", (long long)((now - r->started_ms) / 1000));
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
	if (cl->prev)
		cl->prev->next = cl->next;
	else
		c->clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	c->nclients--;
	control_buf_free(&cl->out);
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

static void
control_show_loaded(void *arg, int status, struct spool_msg *m)
{
	struct control_client *cl = arg;
	struct control_buf *b = &cl->out;
	const struct spool_envelope *e;
	char qid[SPOOL_QID_STRLEN + 1];

	if (cl->closing_handles) {
		if (m)
			spool_msg_free(m);
		return;
	}
	if (status != 0 || m == NULL) {
		control_buf_printf(b, "error %s\n", spool_strerror(status));
		control_send(cl);
		return;
	}
	e = spool_msg_envelope(m);
	spool_qid_format(spool_msg_qid(m), qid);
	control_buf_printf(b, "ok\n");
	if (cl->want_json) {
		control_buf_printf(b, "{\"queue_id\": \"%s\", \"tenant\": ", qid);
		control_buf_json_string(b, e->tenant);
		control_buf_printf(b, ", \"sender\": ");
		control_buf_json_string(b, e->sender);
		control_buf_printf(b, ", \"size\": %" PRIu64 ", \"arrival_ms\": %lld, \"attempts\": %u"
		    ", \"client\": ", spool_msg_size(m), (long long)e->arrival_ms,
		    spool_msg_attempts(m));
		control_buf_json_string(b, e->client);
		control_buf_printf(b, ", \"envid\": ");
		if (e->envid)
			control_buf_json_string(b, e->envid);
		else
			control_buf_printf(b, "null");
		control_buf_printf(b, ", \"ret\": %s, \"smtputf8\": %s, \"recipients\": [",
		    e->ret == ENV_RET_FULL ? "\"FULL\"" : e->ret == ENV_RET_HDRS ? "\"HDRS\"" : "null",
		    e->smtputf8 ? "true" : "false");
		for (size_t i = 0; i < e->nrcpt; i++) {
			static const char *const st[] = { "pending", "delivered", "bounced" };
			unsigned nf = e->rcpt[i].notify;

			control_buf_printf(b, "%s{\"address\": ", i ? ", " : "");
			control_buf_json_string(b, e->rcpt[i].addr);
			control_buf_printf(b, ", \"state\": \"%s\", \"orcpt\": ", st[spool_msg_rcpt_state(m, i)]);
			if (e->rcpt[i].orcpt)
				control_buf_json_string(b, e->rcpt[i].orcpt);
			else
				control_buf_printf(b, "null");
			control_buf_printf(b, ", \"notify\": [%s%s%s%s%s%s%s]}",
			    nf & ENV_NOTIFY_NEVER ? "\"NEVER\"" : "",
			    nf & ENV_NOTIFY_SUCCESS ? "\"SUCCESS\"" : "",
			    (nf & ENV_NOTIFY_SUCCESS) && (nf & (ENV_NOTIFY_FAILURE | ENV_NOTIFY_DELAY)) ? ", " : "",
			    nf & ENV_NOTIFY_FAILURE ? "\"FAILURE\"" : "",
			    (nf & ENV_NOTIFY_FAILURE) && (nf & ENV_NOTIFY_DELAY) ? ", " : "",
			    nf & ENV_NOTIFY_DELAY ? "\"DELAY\"" : "", "");
		}
		control_buf_printf(b, "]}\n");
	} else {
		control_buf_printf(b, "queue id:  %s\ntenant:    %s\nsender:    <%s>\nsize:      %"
		    PRIu64 "\nattempts:  %u\nclient:    %s\n", qid, e->tenant, e->sender,
		    spool_msg_size(m), spool_msg_attempts(m), e->client ? e->client : "-");
		for (size_t i = 0; i < e->nrcpt; i++) {
			static const char *const st[] = { "pending", "delivered", "bounced" };

			control_buf_printf(b, "recipient: <%s> %s\n", e->rcpt[i].addr,
			    st[spool_msg_rcpt_state(m, i)]);
		}
	}
	spool_msg_free(m);
	control_send(cl);
}

static void
control_http_answer(struct control_client *cl)
{
	struct control_buf body = { 0 };
	const char *status = "200 OK";

	if (strncmp(cl->req, "GET /metrics ", 13) == 0 || strncmp(cl->req, "GET /metrics?", 13) == 0) {
		control_metrics(cl->ctl->relay, &body);
	} else if (strncmp(cl->req, "GET / ", 6) == 0) {
		control_buf_printf(&body, "mxspoold %s: metrics at /metrics\n", PACKAGE_VERSION);
	} else {
		status = "404 Not Found";
		control_buf_printf(&body, "not found\n");
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
	char *nl;

	if (n < 0) {
		control_client_close(cl);
		return;
	}
	cl->len += (size_t)n;
	cl->req[cl->len] = '\0';
	if (cl->is_http) {
		if (strstr(cl->req, "\r\n\r\n") || strstr(cl->req, "\n\n")) {
			control_http_answer(cl);
			return;
		}
	} else if ((nl = memchr(cl->req, '\n', cl->len)) != NULL) {
		*nl = '\0';
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
	cl->next = c->clients;
	if (c->clients)
		c->clients->prev = cl;
	c->clients = cl;
	c->nclients++;
	if (uv_accept(server, &cl->h.stream) != 0 ||
	    uv_read_start(&cl->h.stream, control_alloc, control_on_read) != 0) {
		control_client_close(cl);
		return;
	}
	uv_timer_start(&cl->timer, control_on_idle, CONTROL_IDLE_MS, 0);
}

static int
control_bind_metrics(struct control *c, char *err, size_t errlen)
{
	const struct config_hostport *hp = &c->relay->cfg->metrics_listen;
	struct sockaddr_storage ss;
	int rc;

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
	if (chmod(path, 0660) != 0) {
		snprintf(err, errlen, "control_socket %s: chmod: %s", path, strerror(errno));
		return -1;
	}
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
	c->closing = true;
	c->done = done;
	c->done_arg = arg;
	(void)unlink(c->relay->cfg->control_socket);
	for (struct control_client *cl = c->clients; cl; cl = cl->next)
		control_client_close(cl);
	uv_close((uv_handle_t *)&c->pipe, control_listener_closed);
	if (c->has_http)
		uv_close((uv_handle_t *)&c->http, control_listener_closed);
}
