/*
 * drain.c - the per-tenant delivery scheduler: probes the primary, forwards
 * the queue oldest first under drain_policy's limits, retries, bounces.
 *
 * One struct drain_tenant per configured tenant (kept by name across
 * reloads).  Its single uv_timer_t wakes drain_tenant_run() at the next
 * probe, the next token or the next due message; drain_kick() and the end
 * of every delivery run it too.  The timing rules are drain_policy.h's pure
 * functions; this file only feeds them events and the monotonic clock
 * (util_mono_ms), and uses the wall clock (util_now_ms) for the spool.
 *
 * Primary resolution: "primary = host[:port], ..." resolves each host in
 * order; "primary = mx" looks up the MX records of the tenant's FIRST domain
 * (all domains of a tenant share one primary by design) and keeps the hosts
 * dns_select_primaries() returns (preference strictly lower than ours, our
 * names being [server] hostname), on [server] mx_port.  Either way addresses
 * that are our own listen addresses are dropped (dns_addr_is_self), and a
 * connection that cannot be made falls back to the next address.
 *
 * The delivery path, in order (Postfix qmgr style continuations):
 *   run -> claim (spool_claim_next) -> token (drain_policy_take)
 *     -> job_load (spool_load) -> conn_send (smtp_client_send)
 *     -> job_on_result: 2xx mark DELIVERED; 5xx and expiry collect bounces;
 *        4xx collect deferrals; a broken session releases the claim
 *     -> job_bounce_2 (DSN sent) -> job_bounce_3 (marks BOUNCED)
 *     -> job_delay_2 (optional delay DSN) -> spool_defer / spool_release
 *     -> job_unref: the job ends when its last spool write called back.
 *
 * Ownership: a job holds a reference for each outstanding asynchronous
 * operation (load, the connection sending it, the DSN, each spool write);
 * it is freed by the job_unref() that drops the last one.  A tenant removed
 * by a reload, or the whole drain on close, aborts its connections and
 * waits until its timer is closed and its last job and connection are gone.
 * DSNs go straight to the sender's MX (or bounce_relay) with a null
 * reverse-path; a bounce whose DSN could not be sent yet leaves the
 * recipient pending, so the bounce is retried rather than lost.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "mxspool/config.h"
#include "mxspool/dns.h"
#include "mxspool/drain.h"
#include "mxspool/drain_policy.h"
#include "mxspool/dsn.h"
#include "mxspool/log.h"
#include "mxspool/smtp_client.h"
#include "mxspool/spool.h"
#include "mxspool/stats.h"
#include "mxspool/tls.h"
#include "mxspool/util.h"

/* Probes and connects do not wait the full smtp_timeout (5 min). */
#define DRAIN_PROBE_TIMEOUT_MS   (30 * 1000)
#define DRAIN_CONNECT_TIMEOUT_MS (30 * 1000)
/* Re-resolve the primary's addresses this often while it is up. */
#define DRAIN_RESOLVE_TTL_MS     (5 * 60 * 1000)
/* The scheduler looks at its tenant at least this often. */
#define DRAIN_MAX_SLEEP_MS       (10 * 1000)
/* A rate change is logged when it moves by this fraction (or 0.5 msg/s). */
#define DRAIN_RATE_LOG_FRACTION  0.2

struct drain_target {
	struct sockaddr_storage addr;
	char host[CONFIG_HOST_MAX + 1];
};

struct drain_settings {
	double rate, initial_rate, burst;
	uint64_t bandwidth;
	unsigned concurrency;
	uint64_t ramp_ms;
	unsigned mpc;
	uint64_t probe_interval_ms;
	unsigned probe_up_after;
};

struct drain_resolve;
typedef void (*drain_resolve_cb)(void *arg, int status, const char *why,
    struct drain_target *t, size_t n);

struct drain_resolve_host {
	struct drain_resolve *res;
	char host[CONFIG_HOST_MAX + 1];
	uint16_t port;
	struct dns_req *req;
	struct drain_target *t;
	size_t n;
	int status;
	bool done;
};

struct drain_resolve {
	struct drain *d;
	drain_resolve_cb cb;
	void *arg;
	struct dns_req *mxreq;
	uint16_t mx_port;
	struct drain_resolve_host *h;
	size_t nh, pending;
};

struct drain_tenant;
struct drain_job;

struct drain_conn {
	struct drain_conn *next;
	struct drain_tenant *t;
	struct smtp_client *c;
	size_t idx;                   /* target in use */
	struct drain_target tg;       /* a copy: a reload may swap targets */
	struct drain_job *job;        /* assigned (loading or sending) */
	unsigned sent;
	bool ready, quitting, failed;
};

struct drain_dsn;

/* One recipient's fate in this attempt. */
struct drain_fate {
	size_t env;                   /* index in the envelope */
	struct smtp_client_reply reply;
};

struct drain_job {
	struct drain_job *next;
	struct drain_tenant *t;
	spool_qid qid;
	char qids[SPOOL_QID_STRLEN + 1];
	struct spool_msg *msg;
	struct drain_conn *conn;
	unsigned refs;
	int64_t start_mono;
	bool claimed;                 /* the claim is ours to settle */
	bool settled;                 /* deferred, released or all done */
	bool write_failed;
	bool admin_bounce;            /* mxspoolctl bounce */
	const char *dsn_how;          /* "sent", "none", "refused", ... */
	char relay[CONFIG_HOST_MAX + 80];
	/* the message as handed to smtp_client */
	struct smtp_client_msg cm;
	struct smtp_client_rcpt *crcpt;
	size_t *map;                  /* cm index -> envelope index */
	/* outcome lists */
	struct drain_fate *bounce, *temp;
	size_t nbounce, ntemp;
	bool leftover;                /* session failure: release */
	struct drain_dsn *dsn;
};

struct drain_tenant {
	struct drain_tenant *next;
	struct drain *d;
	char name[CONFIG_TENANT_NAME_MAX + 1];
	char domain[CONFIG_HOST_MAX + 1];
	bool primary_mx;
	struct config_hostport *hosts;
	size_t nhosts;
	struct drain_settings cfgset, set;   /* from the config; in force */
	struct drain_primary pr;
	struct drain_policy pol;
	struct drain_meter meter;
	uv_timer_t timer;
	bool timer_open;
	struct drain_target *targets;
	size_t ntargets;
	int64_t targets_mono;
	struct drain_resolve *res;
	bool res_for_probe;
	struct smtp_client *probe;
	size_t probe_idx;
	struct drain_target probe_tg;
	int64_t up_mono;              /* when the primary last came up */
	char probe_why[256];
	struct drain_conn *conns;
	unsigned nconns;
	struct drain_job *jobs;
	unsigned njobs;
	double logged_limit;
	spool_qid *warned;            /* delay warning sent (this run) */
	size_t nwarned, capwarned;
	bool removed;
	bool removing;                /* inside tenant_remove(): keep t */
};

struct drain {
	uv_loop_t *loop;
	struct spool *spool;
	struct dns *dns;              /* the relay's resolver, not ours */
	struct stats *stats;
	const struct config *cfg;     /* valid until the next apply_config */
	struct tls_ctx *tls;          /* client context, or NULL: not ours */
	struct drain_tenant *tenants;
	struct sockaddr_storage *self;
	size_t nself;
	bool closing;
	void (*done)(void *arg);
	void *done_arg;
};

static void drain_tenant_run(struct drain_tenant *t);
static void drain_tenant_maybe_free(struct drain_tenant *t);
static void job_unref(struct drain_job *j);
static void job_bounce_2(struct drain_job *j, int result);
static void job_delay_2(struct drain_job *j);
static void conn_assign(struct drain_conn *cn, struct drain_job *j);

/* ---- small helpers ----------------------------------------------------- */

static struct dns *
drain_dns(struct drain *d)
{
	return d->dns;
}

static struct tls_ctx *
drain_tls(struct drain *d)
{
	return d->tls;
}

static enum smtp_client_tls
drain_tls_mode(const struct config *cfg)
{
	switch (cfg->tls_outbound) {
	case CONFIG_TLS_OUT_NONE: return SMTP_CLIENT_TLS_NONE;
	case CONFIG_TLS_OUT_REQUIRED: return SMTP_CLIENT_TLS_REQUIRED;
	case CONFIG_TLS_OUT_VERIFY: return SMTP_CLIENT_TLS_VERIFY;
	default: return SMTP_CLIENT_TLS_OPPORTUNISTIC;
	}
}

static uint64_t
drain_random(void)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = uv_hrtime() * 6364136223846793005ULL + 1442695040888963407ULL;
	return v;
}

/* Uniform in [-1, 1], for retry jitter. */
static double
drain_jitter(void)
{
	return (double)(drain_random() >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
}

/* Copy S into BUF, cut to fit. */
static void
drain_copy(char *buf, size_t len, const char *s)
{
	size_t n = strlen(s);

	if (n >= len)
		n = len - 1;
	memcpy(buf, s, n);
	buf[n] = '\0';
}

static void
drain_addr_string(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	const void *a = ss->ss_family == AF_INET6 ?
	    (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr :
	    (const void *)&((const struct sockaddr_in *)ss)->sin_addr;

	if (inet_ntop(ss->ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
}

static uint16_t
drain_addr_port(const struct sockaddr_storage *ss)
{
	return ntohs(ss->ss_family == AF_INET6 ?
	    ((const struct sockaddr_in6 *)ss)->sin6_port :
	    ((const struct sockaddr_in *)ss)->sin_port);
}

static void
drain_addr_set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
	else
		((struct sockaddr_in *)ss)->sin_port = htons(port);
}

/* "host[addr]:port" for logs. */
static void
drain_target_name(const struct drain_target *tg, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	drain_addr_string(&tg->addr, a, sizeof(a));
	snprintf(buf, len, "%s[%s]:%u", tg->host, a, drain_addr_port(&tg->addr));
}

/* "250 2.0.0 text" on one line, for logs and DSN diagnostics. */
static void
drain_reply_line(const struct smtp_client_reply *rp, char *buf, size_t len)
{
	if (rp->local)
		snprintf(buf, len, "%s%s%s", rp->enh, rp->enh[0] ? " " : "", rp->text);
	else
		snprintf(buf, len, "%d %s%s%s", rp->code, rp->enh,
		    rp->enh[0] ? " " : "", rp->text);
	for (char *p = buf; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

static void
drain_settings_from(struct drain_settings *s, const struct config_tenant *ct)
{
	s->rate = ct->drain_rate;
	s->initial_rate = ct->drain_initial_rate;
	s->burst = ct->drain_burst;
	s->bandwidth = ct->drain_bandwidth;
	s->concurrency = ct->drain_concurrency ? ct->drain_concurrency : 1;
	s->ramp_ms = ct->drain_ramp_ms;
	s->mpc = ct->messages_per_connection ? ct->messages_per_connection : 1;
	s->probe_interval_ms = ct->probe_interval_ms;
	s->probe_up_after = ct->probe_up_after;
}

/* The settable fields of S as a config tenant, for config_tenant_set(). */
static void
drain_settings_to(struct config_tenant *ct, const struct drain_settings *s)
{
	memset(ct, 0, sizeof(*ct));
	ct->drain_rate = s->rate;
	ct->drain_initial_rate = s->initial_rate;
	ct->drain_burst = s->burst;
	ct->drain_bandwidth = s->bandwidth;
	ct->drain_concurrency = s->concurrency;
	ct->drain_ramp_ms = s->ramp_ms;
	ct->messages_per_connection = s->mpc;
	ct->probe_interval_ms = s->probe_interval_ms;
	ct->probe_up_after = s->probe_up_after;
}

static void
drain_policy_params_from(struct drain_policy_params *p,
    const struct drain_settings *s)
{
	p->rate = s->rate;
	p->initial_rate = s->initial_rate;
	p->burst = s->burst;
	p->bandwidth = s->bandwidth;
	p->ramp_ms = s->ramp_ms;
}

/* ---- log lines, one function per event --------------------------------- */

static void
drain_log_deliver(struct drain_job *j, const char *to,
    const struct smtp_client_reply *rp)
{
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	char qto[600], qr[1200], line[1100];

	drain_reply_line(rp, line, sizeof(line));
	log_event(LOG_LEVEL_INFO, "deliver", "qid=%s tenant=%s to=%s relay=%s "
	    "delay=%.1f reply=%s", j->qids, j->t->name,
	    log_quote(qto, sizeof(qto), to), j->relay,
	    (double)(util_now_ms() - env->arrival_ms) / 1000.0,
	    log_quote(qr, sizeof(qr), line));
}

static void
drain_log_defer(struct drain_job *j, const char *to,
    const struct smtp_client_reply *rp, int64_t next_ms)
{
	char qto[600], qr[1200], line[1100];

	drain_reply_line(rp, line, sizeof(line));
	log_event(LOG_LEVEL_INFO, "defer", "qid=%s tenant=%s to=%s relay=%s "
	    "retry_in_s=%lld reply=%s", j->qids, j->t->name,
	    log_quote(qto, sizeof(qto), to), j->relay[0] ? j->relay : "none",
	    (long long)((next_ms - util_now_ms()) / 1000),
	    log_quote(qr, sizeof(qr), line));
}

static void
drain_log_bounce(struct drain_job *j, const char *to,
    const struct smtp_client_reply *rp, const char *dsn)
{
	char qto[600], qr[1200], line[1100];

	drain_reply_line(rp, line, sizeof(line));
	log_event(LOG_LEVEL_INFO, "bounce", "qid=%s tenant=%s to=%s relay=%s "
	    "dsn=%s reply=%s", j->qids, j->t->name,
	    log_quote(qto, sizeof(qto), to), j->relay[0] ? j->relay : "none", dsn,
	    log_quote(qr, sizeof(qr), line));
}

static void
drain_log_probe(struct drain_tenant *t, const char *why)
{
	char q[400];

	log_event(drain_primary_get(&t->pr) == DRAIN_PRIMARY_UP ? LOG_LEVEL_INFO :
	    LOG_LEVEL_WARN, "probe", "tenant=%s state=%s reason=%s", t->name,
	    drain_primary_state_name(drain_primary_get(&t->pr)),
	    log_quote(q, sizeof(q), why));
}

static void
drain_log_rate(struct drain_tenant *t, double limit, const char *reason)
{
	log_event(LOG_LEVEL_INFO, "rate", "tenant=%s limit=%.2f ceiling=%.2f reason=%s",
	    t->name, limit, t->set.rate, reason);
	t->logged_limit = limit;
}

/* ---- resolution -------------------------------------------------------- */

static void
resolve_free(struct drain_resolve *res)
{
	for (size_t i = 0; i < res->nh; i++)
		free(res->h[i].t);
	free(res->h);
	free(res);
}

/* Drop pending lookups; the callback never runs. */
static void
resolve_cancel(struct drain_resolve *res)
{
	if (res == NULL)
		return;
	if (res->mxreq)
		dns_cancel(res->mxreq);
	for (size_t i = 0; i < res->nh; i++)
		if (!res->h[i].done && res->h[i].req)
			dns_cancel(res->h[i].req);
	resolve_free(res);
}

static void
resolve_finish(struct drain_resolve *res)
{
	struct drain *d = res->d;
	struct drain_target *all = NULL;
	size_t n = 0, cap = 0;
	int status = DNS_ENODATA;
	char why[256] = "no address found";

	for (size_t i = 0; i < res->nh; i++) {
		struct drain_resolve_host *h = &res->h[i];

		if (h->status != DNS_OK) {
			snprintf(why, sizeof(why), "%.200s: %s", h->host,
			    dns_strerror(h->status));
			if (h->status == DNS_ETEMP)
				status = DNS_ETEMP;
			continue;
		}
		for (size_t k = 0; k < h->n; k++) {
			if (dns_addr_is_self(&h->t[k].addr, d->self, d->nself)) {
				snprintf(why, sizeof(why), "%.200s is this host", h->host);
				continue;
			}
			if (n == cap) {
				size_t nc = cap ? cap * 2 : 8;
				struct drain_target *na = realloc(all, nc * sizeof(*na));

				if (na == NULL)
					continue;
				all = na;
				cap = nc;
			}
			all[n++] = h->t[k];
		}
	}
	if (n > 0)
		status = DNS_OK;
	res->cb(res->arg, status, why, all, n);
	resolve_free(res);
}

static void
resolve_on_addrs(void *arg, int status, const struct sockaddr_storage *addrs,
    size_t n)
{
	struct drain_resolve_host *h = arg;
	struct drain_resolve *res = h->res;

	h->done = true;
	h->req = NULL;
	h->status = status;
	if (status == DNS_OK && n > 0) {
		h->t = calloc(n, sizeof(*h->t));
		if (h->t == NULL) {
			h->status = DNS_ENOMEM;
		} else {
			for (size_t i = 0; i < n; i++) {
				h->t[i].addr = addrs[i];
				drain_addr_set_port(&h->t[i].addr, h->port);
				snprintf(h->t[i].host, sizeof(h->t[i].host), "%s", h->host);
			}
			h->n = n;
		}
	}
	if (--res->pending == 0)
		resolve_finish(res);
}

/* Look up every host of RES (already filled in).  Returns false when no
 * lookup could even start: then nothing was reported and nothing will be. */
static bool
resolve_hosts_start(struct drain_resolve *res)
{
	struct dns *dns = drain_dns(res->d);

	res->pending = res->nh;
	for (size_t i = 0; i < res->nh; i++) {
		struct drain_resolve_host *h = &res->h[i];
		int rc;

		h->res = res;
		rc = dns ? dns_addrs(dns, h->host, resolve_on_addrs, h, &h->req) :
		    DNS_ECLOSED;
		if (rc != DNS_OK) {
			h->done = true;
			h->status = rc;
			res->pending--;
		}
	}
	return res->pending > 0;
}

static void
resolve_on_mx(void *arg, int status, const struct dns_mx *mx, size_t n)
{
	struct drain_resolve *res = arg;
	const struct config *cfg = res->d->cfg;
	const char *self[1] = { cfg->hostname };
	struct dns_mx *sel = NULL;
	size_t nsel = 0;
	int rc;
	char why[300];

	res->mxreq = NULL;
	if ((status == DNS_OK || status == DNS_ENODATA) && n > 0) {
		sel = calloc(n, sizeof(*sel));
		rc = sel ? dns_select_primaries(mx, n, self, 1, sel, &nsel, NULL,
		    NULL) : DNS_ENOMEM;
	} else {
		rc = status;
	}
	if (rc != DNS_OK || nsel == 0) {
		snprintf(why, sizeof(why), "MX lookup: %s", dns_strerror(rc));
		free(sel);
		res->cb(res->arg, rc == DNS_OK ? DNS_ENODATA : rc, why, NULL, 0);
		resolve_free(res);
		return;
	}
	res->h = calloc(nsel, sizeof(*res->h));
	if (res->h == NULL) {
		free(sel);
		res->cb(res->arg, DNS_ENOMEM, "out of memory", NULL, 0);
		resolve_free(res);
		return;
	}
	res->nh = nsel;
	for (size_t i = 0; i < nsel; i++) {
		snprintf(res->h[i].host, sizeof(res->h[i].host), "%s", sel[i].host);
		res->h[i].port = res->mx_port;
	}
	free(sel);
	if (!resolve_hosts_start(res)) {
		/* Inside a dns callback: reporting at once is safe here. */
		res->cb(res->arg, DNS_ETEMP, "cannot look up the MX hosts", NULL, 0);
		resolve_free(res);
	}
}

/*
 * Resolve HOSTS in order, or (HOSTS NULL) the MX of DOMAIN on MX_PORT.
 * CB gets the targets (it owns them) exactly once, later, unless the
 * resolution is cancelled.  Returns NULL when nothing could be started: CB
 * then never runs.
 */
static struct drain_resolve *
resolve_start(struct drain *d, const struct config_hostport *hosts,
    size_t nhosts, const char *domain, uint16_t mx_port, drain_resolve_cb cb,
    void *arg)
{
	struct drain_resolve *res = calloc(1, sizeof(*res));
	struct dns *dns = drain_dns(d);

	if (res == NULL || dns == NULL) {
		free(res);
		return NULL;
	}
	res->d = d;
	res->cb = cb;
	res->arg = arg;
	res->mx_port = mx_port;
	if (hosts == NULL) {
		if (dns_mx(dns, domain, resolve_on_mx, res, &res->mxreq) != DNS_OK) {
			free(res);
			return NULL;
		}
		return res;
	}
	res->h = calloc(nhosts ? nhosts : 1, sizeof(*res->h));
	if (res->h == NULL) {
		free(res);
		return NULL;
	}
	res->nh = nhosts;
	for (size_t i = 0; i < nhosts; i++) {
		snprintf(res->h[i].host, sizeof(res->h[i].host), "%s", hosts[i].host);
		res->h[i].port = hosts[i].port ? hosts[i].port : mx_port;
	}
	/* dns_addrs() answers even literals asynchronously, so the callback
	 * never runs from in here. */
	if (!resolve_hosts_start(res)) {
		resolve_free(res);
		return NULL;
	}
	return res;
}

/* ---- DSN --------------------------------------------------------------- */

struct drain_dsn {
	struct drain_job *j;
	enum dsn_action action;
	struct drain_fate *fates;     /* borrowed from the job */
	size_t nfates;
	char *hdr;
	size_t hdrlen, hdrcap;
	uint64_t body_off, body_len;
	struct dsn_output out;
	struct smtp_client_msg cm;
	struct smtp_client_rcpt rcpt;
	struct drain_resolve *res;
	struct drain_target *targets;
	size_t ntargets, idx;
	struct smtp_client *c;
	int result;                   /* 0 sent/none, 1 try later, -1 refused */
	char why[300];
	bool sent;
};

static void dsn_done(struct drain_dsn *x);
static void dsn_connect(struct drain_dsn *x);

/* The DSN's bytes: prefix, then the original body from the spool, then
 * the suffix. */
static int
dsn_read(void *arg, uint64_t off, size_t max, smtp_client_chunk_cb cb,
    void *cbarg)
{
	struct drain_dsn *x = arg;
	uint64_t plen = x->out.prefix_len;
	uint64_t blen = x->out.include_body ? x->body_len : 0;
	uint64_t slen = x->out.suffix_len;

	if (off < plen) {
		uint64_t n = plen - off < max ? plen - off : max;

		cb(cbarg, 0, x->out.prefix + off, (size_t)n);
		return 0;
	}
	if (off < plen + blen) {
		uint64_t n = plen + blen - off < max ? plen + blen - off : max;

		return spool_msg_read(x->j->msg, x->body_off + (off - plen),
		    (size_t)n, cb, cbarg);
	}
	if (off < plen + blen + slen) {
		uint64_t n = plen + blen + slen - off < max ?
		    plen + blen + slen - off : max;

		cb(cbarg, 0, x->out.suffix + (off - plen - blen), (size_t)n);
		return 0;
	}
	cb(cbarg, 0, NULL, 0);
	return 0;
}

static void
dsn_on_sent(void *arg, struct smtp_client *c, const struct smtp_client_result *res)
{
	struct drain_dsn *x = arg;
	char line[1100];

	drain_reply_line(res->reply, line, sizeof(line));
	drain_copy(x->why, sizeof(x->why), line);
	if (res->rcpt[0].outcome == SMTP_CLIENT_DELIVERED) {
		x->result = 0;
		x->sent = true;
	} else if (res->rcpt[0].outcome == SMTP_CLIENT_PERMFAIL) {
		x->result = -1;
	} else {
		x->result = 1;
	}
	smtp_client_quit(c);
}

static void
dsn_on_ready(void *arg, struct smtp_client *c)
{
	struct drain_dsn *x = arg;

	if (x->j->t->removed || smtp_client_send(c, &x->cm) != 0)
		smtp_client_abort(c);
}

static void
dsn_on_closed(void *arg, const struct smtp_client_end *end)
{
	struct drain_dsn *x = arg;

	x->c = NULL;
	if (x->sent || x->result == -1 || x->j->t->removed) {
		if (x->j->t->removed && !x->sent)
			x->result = 1;
		dsn_done(x);
		return;
	}
	if (x->result == 0) {
		/* No answer to our message: the session itself failed. */
		x->result = 1;
		drain_copy(x->why, sizeof(x->why), end->text);
	}
	if (!end->ready && x->idx + 1 < x->ntargets) {
		x->idx++;
		x->result = 0;
		dsn_connect(x);
		return;
	}
	dsn_done(x);
}

static void
dsn_connect(struct drain_dsn *x)
{
	static const struct smtp_client_callbacks cbs = {
		dsn_on_ready, dsn_on_sent, dsn_on_closed,
	};
	struct drain *d = x->j->t->d;
	const struct config *cfg = d->cfg;
	struct smtp_client_options o;

	memset(&o, 0, sizeof(o));
	o.loop = d->loop;
	o.addr = (const struct sockaddr *)&x->targets[x->idx].addr;
	o.host = x->targets[x->idx].host;
	o.helo_name = cfg->hostname;
	o.tls_mode = drain_tls_mode(cfg);
	o.tls_ctx = drain_tls(d);
	o.timeout_ms = cfg->smtp_timeout_ms;
	o.connect_timeout_ms = cfg->smtp_timeout_ms < DRAIN_CONNECT_TIMEOUT_MS ?
	    cfg->smtp_timeout_ms : DRAIN_CONNECT_TIMEOUT_MS;
	if (smtp_client_new(&o, &cbs, x, &x->c) != 0) {
		x->result = 1;
		snprintf(x->why, sizeof(x->why), "cannot start an SMTP session");
		dsn_done(x);
	}
}

static void
dsn_on_resolved(void *arg, int status, const char *why, struct drain_target *t,
    size_t n)
{
	struct drain_dsn *x = arg;

	x->res = NULL;
	if (status != DNS_OK || n == 0) {
		free(t);
		/* A domain that does not exist or takes no mail will never
		 * get its bounce: give up on it, as on a 5xx. */
		x->result = status == DNS_ENXDOMAIN || status == DNS_ENULLMX ||
		    status == DNS_ENODATA ? -1 : 1;
		snprintf(x->why, sizeof(x->why), "%s", why);
		dsn_done(x);
		return;
	}
	x->targets = t;
	x->ntargets = n;
	x->idx = 0;
	dsn_connect(x);
}

/* The header section is read: build the report and find where to send it. */
static void
dsn_build_and_send(struct drain_dsn *x)
{
	struct drain_job *j = x->j;
	struct drain *d = j->t->d;
	const struct config *cfg = d->cfg;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	struct dsn_rcpt *dr = calloc(x->nfates, sizeof(*dr));
	char (*diag)[1100] = calloc(x->nfates, sizeof(*diag));
	struct dsn_report rep;
	const char *at;
	int rc;

	if (dr == NULL || diag == NULL) {
		free(dr);
		free(diag);
		x->result = 1;
		snprintf(x->why, sizeof(x->why), "out of memory");
		dsn_done(x);
		return;
	}
	for (size_t i = 0; i < x->nfates; i++) {
		const struct spool_rcpt *sr = &env->rcpt[x->fates[i].env];
		const struct smtp_client_reply *rp = &x->fates[i].reply;

		drain_reply_line(rp, diag[i], sizeof(diag[i]));
		dr[i].addr = sr->addr;
		dr[i].orcpt = sr->orcpt;
		dr[i].notify = sr->notify;
		dr[i].action = x->action;
		dr[i].status = rp->enh[0] ? rp->enh : NULL;
		dr[i].remote_mta = rp->local ? NULL : j->relay;
		dr[i].diagnostic = rp->local ? rp->text : diag[i];
		dr[i].diagnostic_local = rp->local;
		dr[i].last_attempt_ms = util_now_ms();
		if (x->action == DSN_ACTION_DELAYED)
			dr[i].retry_until_ms = env->arrival_ms +
			    (int64_t)cfg->queue_lifetime_ms;
	}
	memset(&rep, 0, sizeof(rep));
	rep.hostname = cfg->hostname;
	rep.sender = env->sender;
	rep.queue_id = j->qids;
	rep.envid = env->envid;
	rep.ret = env->ret;
	rep.body = env->body;
	rep.smtputf8 = env->smtputf8;
	rep.arrival_ms = env->arrival_ms;
	rep.now_ms = util_now_ms();
	rep.nonce = drain_random();
	rep.headers = x->hdr;
	rep.headers_len = x->hdrlen;
	rep.message_size = spool_msg_size(j->msg);
	rep.rcpt = dr;
	rep.nrcpt = x->nfates;
	rc = dsn_build(&rep, &x->out);
	free(dr);
	free(diag);
	if (rc != DSN_OK) {
		x->result = rc > 0 ? 0 : 1;
		snprintf(x->why, sizeof(x->why), "%s", dsn_strerror(rc));
		x->sent = false;
		dsn_done(x);
		return;
	}
	x->rcpt.addr = env->sender;
	x->rcpt.notify = ENV_NOTIFY_NEVER;  /* no report about a report */
	x->cm.sender = "";
	x->cm.rcpt = &x->rcpt;
	x->cm.nrcpt = 1;
	x->cm.size = x->out.prefix_len + x->out.suffix_len +
	    (x->out.include_body ? x->body_len : 0);
	x->cm.body = x->out.eightbit ? ENV_BODY_8BITMIME : ENV_BODY_NONE;
	x->cm.smtputf8 = x->out.smtputf8;
	x->cm.read = dsn_read;
	x->cm.read_arg = x;
	if (cfg->has_bounce_relay) {
		x->res = resolve_start(d, &cfg->bounce_relay, 1, NULL, 25,
		    dsn_on_resolved, x);
	} else {
		at = strrchr(env->sender, '@');
		if (at == NULL || at[1] == '\0') {
			x->result = -1;
			snprintf(x->why, sizeof(x->why), "sender has no domain");
			dsn_done(x);
			return;
		}
		x->res = resolve_start(d, NULL, 0, at + 1, cfg->mx_port,
		    dsn_on_resolved, x);
	}
	if (x->res == NULL) {
		x->result = 1;
		snprintf(x->why, sizeof(x->why), "cannot resolve the DSN's destination");
		dsn_done(x);
	}
}

static void
dsn_on_header_chunk(void *arg, int status, const void *buf, size_t len)
{
	struct drain_dsn *x = arg;
	char *end;
	int rc;

	if (x->j->t->removed) {
		x->result = 1;
		dsn_done(x);
		return;
	}
	if (status < 0) {
		x->result = 1;
		snprintf(x->why, sizeof(x->why), "cannot read the message: %s",
		    spool_strerror(status));
		dsn_done(x);
		return;
	}
	if (len > x->hdrcap - x->hdrlen)
		len = x->hdrcap - x->hdrlen;
	memcpy(x->hdr + x->hdrlen, buf, len);
	x->hdrlen += len;
	x->hdr[x->hdrlen] = '\0';
	end = memmem(x->hdr, x->hdrlen, "\r\n\r\n", 4);
	if (end == NULL && len > 0 && x->hdrlen < x->hdrcap) {
		rc = spool_msg_read(x->j->msg, x->hdrlen, x->hdrcap - x->hdrlen,
		    dsn_on_header_chunk, x);
		if (rc != 0) {
			x->result = 1;
			snprintf(x->why, sizeof(x->why), "cannot read the message");
			dsn_done(x);
		}
		return;
	}
	if (end != NULL) {
		x->hdrlen = (size_t)(end - x->hdr) + 2;
		x->body_off = x->hdrlen + 2;
	} else {
		/* No empty line within reach: all header, or cut. */
		x->body_off = spool_msg_size(x->j->msg);
	}
	x->body_len = spool_msg_size(x->j->msg) - x->body_off;
	dsn_build_and_send(x);
}

/*
 * Send a DSN with ACTION about FATES of job J; then job_bounce_2() or
 * job_delay_2() runs with the result.  The job holds a reference meanwhile.
 */
static void
dsn_start(struct drain_job *j, enum dsn_action action, struct drain_fate *fates,
    size_t n)
{
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	struct drain_dsn *x;
	size_t cap;
	int rc;

	j->refs++;                    /* released in dsn_done() */
	x = calloc(1, sizeof(*x));
	j->dsn = x;
	if (x == NULL) {
		j->dsn = NULL;
		if (action == DSN_ACTION_FAILED)
			job_bounce_2(j, 1);
		else
			job_delay_2(j);
		job_unref(j);
		return;
	}
	x->j = j;
	x->action = action;
	x->fates = fates;
	x->nfates = n;
	if (env->sender[0] == '\0') {
		/* Never a report to the null sender (RFC 5321 6.1). */
		snprintf(x->why, sizeof(x->why), "null sender");
		dsn_done(x);
		return;
	}
	cap = spool_msg_size(j->msg) < DSN_HEADERS_MAX ?
	    (size_t)spool_msg_size(j->msg) : DSN_HEADERS_MAX;
	x->hdr = malloc(cap + 1);
	x->hdrcap = cap;
	if (x->hdr == NULL) {
		x->result = 1;
		dsn_done(x);
		return;
	}
	x->hdr[0] = '\0';
	if (cap == 0) {
		x->body_off = 0;
		x->body_len = 0;
		dsn_build_and_send(x);
		return;
	}
	rc = spool_msg_read(j->msg, 0, cap, dsn_on_header_chunk, x);
	if (rc != 0) {
		x->result = 1;
		snprintf(x->why, sizeof(x->why), "cannot read the message");
		dsn_done(x);
	}
}

static void
dsn_done(struct drain_dsn *x)
{
	struct drain_job *j = x->j;
	char q[400], qs[600];
	const char *sender = spool_msg_envelope(j->msg)->sender;

	if (sender[0] != '\0')
		log_event(x->result == 0 && x->sent ? LOG_LEVEL_INFO : LOG_LEVEL_WARN,
		    "dsn", "qid=%s tenant=%s type=%s to=%s result=%s reason=%s",
		    j->qids, j->t->name,
		    x->action == DSN_ACTION_FAILED ? "bounce" : "delay",
		    log_quote(qs, sizeof(qs), sender),
		    x->sent ? "sent" : x->result == 0 ? "none" :
		    x->result < 0 ? "given_up" : "deferred",
		    log_quote(q, sizeof(q), x->why[0] ? x->why : "ok"));
	j->dsn = NULL;
	j->dsn_how = x->sent ? "sent" : x->result == 0 ? "none" :
	    x->result < 0 ? "refused" : "deferred";
	if (x->action == DSN_ACTION_FAILED)
		job_bounce_2(j, x->result);
	else
		job_delay_2(j);
	resolve_cancel(x->res);
	dsn_output_free(&x->out);
	free(x->targets);
	free(x->hdr);
	free(x);
	job_unref(j);                 /* from dsn_start() */
}

/* ---- jobs -------------------------------------------------------------- */

static void
job_free(struct drain_job *j)
{
	struct drain_tenant *t = j->t;

	if (j->claimed && (!j->settled || j->write_failed))
		spool_release(t->d->spool, j->qid);
	for (struct drain_job **pp = &t->jobs; *pp; pp = &(*pp)->next) {
		if (*pp == j) {
			*pp = j->next;
			break;
		}
	}
	t->njobs--;
	if (j->msg)
		spool_msg_free(j->msg);
	free(j->crcpt);
	free(j->map);
	free(j->bounce);
	free(j->temp);
	free(j);
	if (t->removed)
		drain_tenant_maybe_free(t);
	else
		drain_tenant_run(t);
}

static void
job_unref(struct drain_job *j)
{
	if (--j->refs == 0)
		job_free(j);
}

static void
job_on_write(void *arg, int status)
{
	struct drain_job *j = arg;

	if (status != 0)
		j->write_failed = true;
	job_unref(j);                 /* from job_mark() / job_defer() */
}

static void
job_mark(struct drain_job *j, size_t env, enum spool_rcpt_state st)
{
	j->refs++;
	if (spool_mark_rcpt(j->t->d->spool, j->qid, env, st, job_on_write, j) != 0) {
		j->write_failed = true;
		j->refs--;
	}
}

static bool
warned_has(struct drain_tenant *t, spool_qid q)
{
	for (size_t i = 0; i < t->nwarned; i++)
		if (t->warned[i] == q)
			return true;
	return false;
}

static void
warned_set(struct drain_tenant *t, spool_qid q, bool on)
{
	for (size_t i = 0; i < t->nwarned; i++) {
		if (t->warned[i] == q) {
			if (!on)
				t->warned[i] = t->warned[--t->nwarned];
			return;
		}
	}
	if (!on)
		return;
	if (t->nwarned == t->capwarned) {
		size_t nc = t->capwarned ? t->capwarned * 2 : 16;
		spool_qid *nw = realloc(t->warned, nc * sizeof(*nw));

		if (nw == NULL)
			return;       /* at worst a second warning */
		t->warned = nw;
		t->capwarned = nc;
	}
	t->warned[t->nwarned++] = q;
}

/* Last step: defer what is left, or release it. */
static void
job_delay_2(struct drain_job *j)
{
	struct drain_tenant *t = j->t;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);

	if (j->ntemp > 0 && !t->removed) {
		int64_t next = drain_backoff_next(spool_msg_attempts(j->msg) + 1,
		    util_now_ms(), drain_jitter());

		for (size_t i = 0; i < j->ntemp; i++)
			drain_log_defer(j, env->rcpt[j->temp[i].env].addr,
			    &j->temp[i].reply, next);
		j->refs++;
		if (spool_defer(t->d->spool, j->qid, next, job_on_write, j) != 0) {
			j->refs--;
		} else {
			j->settled = true;
		}
		return;
	}
	if (j->ntemp == 0 && !j->leftover) {
		j->settled = true;    /* every recipient is final */
		warned_set(t, j->qid, false);
	}
	/* Otherwise job_free() releases the claim. */
}

/* The bounce DSN for j->bounce is done (RESULT 0: sent or not needed, -1:
 * refused for good, 1: try again later). */
static void
job_bounce_2(struct drain_job *j, int result)
{
	struct drain_tenant *t = j->t;
	struct drain *d = t->d;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	const char *how = j->dsn_how ? j->dsn_how : "none";

	if (result > 0) {
		/* Keep those recipients pending: the bounce will be tried again
		 * with the next attempt rather than be lost. */
		if (j->ntemp == 0 && !t->removed) {
			j->temp = j->bounce;
			j->ntemp = j->nbounce;
			j->bounce = NULL;
			j->nbounce = 0;
		} else {
			j->leftover = true;
		}
	} else {
		for (size_t i = 0; i < j->nbounce; i++) {
			drain_log_bounce(j, env->rcpt[j->bounce[i].env].addr,
			    &j->bounce[i].reply, how);
			job_mark(j, j->bounce[i].env, SPOOL_RCPT_BOUNCED);
			stats_add(d->stats, t->name, STAT_BOUNCED, 1);
		}
	}
	/* A delay warning, once, for the recipients that wait. */
	if (j->ntemp > 0 && !t->removed && result <= 0 &&
	    drain_delay_warning_due(env->arrival_ms, util_now_ms(),
	    d->cfg->delay_warning_ms, warned_has(t, j->qid))) {
		warned_set(t, j->qid, true);
		dsn_start(j, DSN_ACTION_DELAYED, j->temp, j->ntemp);
		return;
	}
	job_delay_2(j);
}

/* Outcomes are sorted: start the bounce, or go straight on. */
static void
job_settle(struct drain_job *j)
{
	if (j->nbounce == 0)
		job_bounce_2(j, 0);
	else if (j->t->removed)
		job_bounce_2(j, 1);   /* shutting down: bounce next time */
	else
		dsn_start(j, DSN_ACTION_FAILED, j->bounce, j->nbounce);
}

static int
job_fate_add(struct drain_fate **arr, size_t *n, size_t cap, size_t env,
    const struct smtp_client_reply *rp)
{
	if (*arr == NULL) {
		*arr = calloc(cap, sizeof(**arr));
		if (*arr == NULL)
			return -1;
	}
	(*arr)[*n].env = env;
	(*arr)[*n].reply = *rp;
	(*n)++;
	return 0;
}

/* Expired: every pending recipient goes to the bounce list. */
static void
job_expire(struct drain_job *j)
{
	const struct spool_envelope *env = spool_msg_envelope(j->msg);

	/* The last temporary reply is the reason the DSN gives. */
	for (size_t i = 0; i < j->ntemp; i++)
		if (job_fate_add(&j->bounce, &j->nbounce, env->nrcpt, j->temp[i].env,
		    &j->temp[i].reply) != 0)
			j->leftover = true;
	j->ntemp = 0;
}

static void
job_aimd(struct drain_tenant *t, const char *why, bool cut)
{
	if (cut)
		drain_log_rate(t, drain_policy_limit(&t->pol, util_mono_ms()), why);
}

/* smtp_client's SENT for a job: sort every recipient's outcome. */
static void
job_on_result(struct drain_job *j, const struct smtp_client_result *res)
{
	struct drain_tenant *t = j->t;
	struct drain *d = t->d;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	int64_t now = util_mono_ms();
	bool any_ok = false, any_temp = false;

	for (size_t i = 0; i < j->cm.nrcpt; i++) {
		const struct smtp_client_reply *rp = &res->rcpt[i];
		size_t e = j->map[i];

		switch (rp->outcome) {
		case SMTP_CLIENT_DELIVERED:
			any_ok = true;
			drain_log_deliver(j, env->rcpt[e].addr, rp);
			job_mark(j, e, SPOOL_RCPT_DELIVERED);
			stats_add(d->stats, t->name, STAT_DELIVERED, 1);
			break;
		case SMTP_CLIENT_PERMFAIL:
			if (job_fate_add(&j->bounce, &j->nbounce, env->nrcpt, e, rp) != 0)
				j->leftover = true;
			break;
		case SMTP_CLIENT_TEMPFAIL:
			if (res->status != 0 && (rp->local || rp->code == 421)) {
				/* The session broke: not this message's fault. */
				j->leftover = true;
				break;
			}
			any_temp = true;
			if (job_fate_add(&j->temp, &j->ntemp, env->nrcpt, e, rp) != 0)
				j->leftover = true;
			break;
		}
	}
	if (any_ok) {
		drain_meter_add(&t->meter, 1, now);
		if (res->dot_latency_ms >= 0)
			job_aimd(t, "latency", drain_policy_ok(&t->pol,
			    (double)res->dot_latency_ms, now));
	}
	if (any_temp)
		job_aimd(t, "tempfail", drain_policy_tempfail(&t->pol, now));
	if (res->status == SMTP_CLIENT_ETIMEOUT)
		job_aimd(t, "timeout", drain_policy_timeout(&t->pol, now));
	/* Past the queue lifetime a temporary failure is final. */
	if (j->ntemp > 0 && drain_expired(env->arrival_ms, util_now_ms(),
	    d->cfg->queue_lifetime_ms))
		job_expire(j);
	job_settle(j);
}

static int
job_read(void *arg, uint64_t off, size_t max, smtp_client_chunk_cb cb, void *cbarg)
{
	struct drain_job *j = arg;

	return spool_msg_read(j->msg, off, max, cb, cbarg);
}

/* Build the smtp_client message from the pending recipients.  Returns the
 * number of recipients to send to, or -1 when out of memory. */
static long
job_prepare(struct drain_job *j)
{
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	size_t n = 0;

	j->crcpt = calloc(env->nrcpt ? env->nrcpt : 1, sizeof(*j->crcpt));
	j->map = calloc(env->nrcpt ? env->nrcpt : 1, sizeof(*j->map));
	if (j->crcpt == NULL || j->map == NULL)
		return -1;
	for (size_t i = 0; i < env->nrcpt; i++) {
		if (spool_msg_rcpt_state(j->msg, i) != SPOOL_RCPT_PENDING)
			continue;
		j->crcpt[n].addr = env->rcpt[i].addr;
		j->crcpt[n].orcpt = env->rcpt[i].orcpt;
		j->crcpt[n].notify = env->rcpt[i].notify;
		j->map[n++] = i;
	}
	j->cm.sender = env->sender;
	j->cm.rcpt = j->crcpt;
	j->cm.nrcpt = n;
	j->cm.size = spool_msg_size(j->msg);
	j->cm.body = env->body;
	j->cm.smtputf8 = env->smtputf8;
	j->cm.ret = env->ret;
	j->cm.envid = env->envid;
	j->cm.read = job_read;
	j->cm.read_arg = j;
	return (long)n;
}

/* Every pending recipient fails with our own REASON (expiry, operator). */
static void
job_fail_all(struct drain_job *j, const char *enh, const char *reason)
{
	struct smtp_client_reply rp;

	memset(&rp, 0, sizeof(rp));
	rp.outcome = SMTP_CLIENT_PERMFAIL;
	rp.local = true;
	snprintf(rp.enh, sizeof(rp.enh), "%s", enh);
	snprintf(rp.text, sizeof(rp.text), "%s", reason);
	for (size_t i = 0; i < j->cm.nrcpt; i++)
		if (job_fate_add(&j->bounce, &j->nbounce, j->cm.nrcpt, j->map[i],
		    &rp) != 0)
			j->leftover = true;
	job_settle(j);
}

static void
job_on_load(void *arg, int status, struct spool_msg *msg)
{
	struct drain_job *j = arg;
	struct drain_tenant *t = j->t;
	struct drain_conn *cn = j->conn;
	const struct spool_envelope *env;
	const struct config *cfg = t->d->cfg;
	long n;

	j->msg = msg;
	if (status != 0 || msg == NULL || t->removed || (n = job_prepare(j)) <= 0) {
		if (status != 0 && !t->removed)
			log_event(LOG_LEVEL_ERR, "load", "qid=%s tenant=%s error=%s",
			    j->qids, t->name, spool_strerror(status));
		if (cn) {
			cn->job = NULL;
			j->conn = NULL;
			j->refs--;    /* the conn's reference */
		}
		job_unref(j);         /* from job_start() */
		return;
	}
	env = spool_msg_envelope(msg);
	if (j->admin_bounce || (cfg->queue_lifetime_ms > 0 &&
	    spool_msg_attempts(msg) > 0 &&
	    drain_expired(env->arrival_ms, util_now_ms(), cfg->queue_lifetime_ms))) {
		if (cn) {
			cn->job = NULL;
			j->conn = NULL;
			j->refs--;    /* the conn's reference */
		}
		if (j->admin_bounce)
			job_fail_all(j, "5.0.0", "message returned to the sender by the "
			    "postmaster");
		else
			job_fail_all(j, "4.4.7", "message expired in the queue");
		job_unref(j);         /* from job_start() */
		if (cn && !t->removed)
			drain_tenant_run(t);
		return;
	}
	if (cn && cn->ready)
		conn_assign(cn, j);
	job_unref(j);                 /* from job_start() */
}

/* A job for QID on conn CN (NULL: an operator bounce).  Returns 0 or a
 * spool status. */
static int
job_start(struct drain_tenant *t, spool_qid qid, struct drain_conn *cn,
    bool claimed, bool admin_bounce)
{
	struct drain_job *j = calloc(1, sizeof(*j));
	int rc;

	if (j == NULL)
		return SPOOL_ENOMEM;
	j->t = t;
	j->qid = qid;
	spool_qid_format(qid, j->qids);
	j->claimed = claimed;
	j->admin_bounce = admin_bounce;
	j->start_mono = util_mono_ms();
	j->refs = 1;                  /* the load, dropped in job_on_load() */
	if (cn) {
		cn->job = j;
		j->conn = cn;
		j->refs++;            /* the conn's, dropped in conn_on_sent() */
		drain_target_name(&cn->tg, j->relay, sizeof(j->relay));
	}
	j->next = t->jobs;
	t->jobs = j;
	t->njobs++;
	rc = spool_load(t->d->spool, qid, job_on_load, j);
	if (rc != 0) {
		/* Undo by hand: job_free() would run the scheduler. */
		t->jobs = j->next;
		t->njobs--;
		if (cn)
			cn->job = NULL;
		if (claimed)
			spool_release(t->d->spool, qid);
		free(j);
		return rc;
	}
	return 0;
}

/* ---- delivery connections ---------------------------------------------- */

static void conn_open(struct drain_conn *cn);

static void
conn_assign(struct drain_conn *cn, struct drain_job *j)
{
	drain_target_name(&cn->tg, j->relay, sizeof(j->relay));
	if (smtp_client_send(cn->c, &j->cm) != 0) {
		cn->job = NULL;
		j->conn = NULL;
		j->leftover = true;
		job_unref(j);         /* the conn's */
		smtp_client_abort(cn->c);
	}
}

static void
conn_on_ready(void *arg, struct smtp_client *c)
{
	struct drain_conn *cn = arg;

	cn->ready = true;
	if (cn->t->removed) {
		smtp_client_quit(c);
		return;
	}
	if (cn->job != NULL && cn->job->msg != NULL)
		conn_assign(cn, cn->job);
	else if (cn->job == NULL)
		drain_tenant_run(cn->t);
}

static void
conn_on_sent(void *arg, struct smtp_client *c, const struct smtp_client_result *res)
{
	struct drain_conn *cn = arg;
	struct drain_tenant *t = cn->t;
	struct drain_job *j = cn->job;

	cn->job = NULL;
	cn->sent++;
	if (res->status != 0 && res->status != SMTP_CLIENT_EABORT)
		cn->failed = true;
	/* Decide before the outcome is processed: that may run the scheduler,
	 * which must not hand this connection a message it will not send. */
	if (res->status == 0 && (cn->sent >= t->set.mpc || t->removed))
		cn->quitting = true;
	if (j != NULL) {
		j->conn = NULL;
		job_on_result(j, res);
		job_unref(j);         /* the conn's, from job_start() */
	}
	if (res->status != 0 || cn->job != NULL || !smtp_client_is_ready(c))
		return;
	if (cn->quitting || drain_primary_get(&t->pr) != DRAIN_PRIMARY_UP) {
		cn->quitting = true;
		smtp_client_quit(c);
		return;
	}
	drain_tenant_run(t);
}

static void
conn_free(struct drain_conn *cn)
{
	struct drain_tenant *t = cn->t;

	for (struct drain_conn **pp = &t->conns; *pp; pp = &(*pp)->next) {
		if (*pp == cn) {
			*pp = cn->next;
			break;
		}
	}
	t->nconns--;
	free(cn);
}

static void
conn_on_closed(void *arg, const struct smtp_client_end *end)
{
	struct drain_conn *cn = arg;
	struct drain_tenant *t = cn->t;
	struct drain_job *j = cn->job;
	int64_t now = util_mono_ms();
	bool bad;

	cn->c = NULL;
	bad = cn->failed || (!end->ready && end->status != 0 &&
	    end->status != SMTP_CLIENT_EABORT);
	if (!end->ready && bad && !cn->failed && !t->removed &&
	    cn->idx + 1 < t->ntargets && end->status != SMTP_CLIENT_E421) {
		/* This address would not talk to us: try the next one. */
		cn->idx++;
		cn->ready = false;
		conn_open(cn);
		if (cn->c != NULL)
			return;
	}
	if (j != NULL) {
		/* Never handed over: give the message back untouched. */
		cn->job = NULL;
		j->conn = NULL;
		if (j->msg != NULL)
			j->leftover = true;
		job_unref(j);         /* the conn's */
	}
	if (bad && !t->removed &&
	    drain_primary_event(&t->pr, DRAIN_EV_DELIVERY_FAIL, now)) {
		char why[400];

		snprintf(why, sizeof(why), "delivery failed: %.300s", end->text);
		drain_log_probe(t, why);
	}
	conn_free(cn);
	if (t->removed)
		drain_tenant_maybe_free(t);
	else
		drain_tenant_run(t);
}

static void
conn_open(struct drain_conn *cn)
{
	static const struct smtp_client_callbacks cbs = {
		conn_on_ready, conn_on_sent, conn_on_closed,
	};
	struct drain_tenant *t = cn->t;
	const struct config *cfg = t->d->cfg;
	struct smtp_client_options o;

	cn->c = NULL;
	if (cn->idx >= t->ntargets)
		return;
	cn->tg = t->targets[cn->idx];
	memset(&o, 0, sizeof(o));
	o.loop = t->d->loop;
	o.addr = (const struct sockaddr *)&cn->tg.addr;
	o.host = cn->tg.host;
	o.helo_name = cfg->hostname;
	o.tls_mode = drain_tls_mode(cfg);
	o.tls_ctx = drain_tls(t->d);
	o.timeout_ms = cfg->smtp_timeout_ms;
	o.connect_timeout_ms = cfg->smtp_timeout_ms < DRAIN_CONNECT_TIMEOUT_MS ?
	    cfg->smtp_timeout_ms : DRAIN_CONNECT_TIMEOUT_MS;
	cn->c = NULL;
	if (smtp_client_new(&o, &cbs, cn, &cn->c) != 0)
		cn->c = NULL;
}

static struct drain_conn *
conn_new(struct drain_tenant *t)
{
	struct drain_conn *cn = calloc(1, sizeof(*cn));

	if (cn == NULL)
		return NULL;
	cn->t = t;
	conn_open(cn);
	if (cn->c == NULL) {
		free(cn);
		return NULL;
	}
	cn->next = t->conns;
	t->conns = cn;
	t->nconns++;
	return cn;
}

/* A connection that may take a message now (or once it is connected);
 * NULL with *CAN_OPEN telling whether a new one may be opened. */
static struct drain_conn *
conn_free_slot(struct drain_tenant *t, bool *can_open)
{
	unsigned live = 0;

	*can_open = false;
	for (struct drain_conn *cn = t->conns; cn; cn = cn->next) {
		if (cn->quitting || cn->c == NULL)
			continue;
		live++;
		if (cn->job == NULL && cn->sent < t->set.mpc &&
		    (cn->ready ? smtp_client_is_ready(cn->c) : true))
			return cn;
	}
	*can_open = live < t->set.concurrency && t->ntargets > 0;
	return NULL;
}

static void
conns_quit_idle(struct drain_tenant *t)
{
	for (struct drain_conn *cn = t->conns; cn; cn = cn->next) {
		if (cn->job != NULL || cn->quitting || cn->c == NULL)
			continue;
		cn->quitting = true;
		if (cn->ready && smtp_client_is_ready(cn->c))
			smtp_client_quit(cn->c);
		else
			smtp_client_abort(cn->c);
	}
}

/* ---- probes ------------------------------------------------------------ */

static void probe_connect(struct drain_tenant *t);

static void
probe_result(struct drain_tenant *t, bool ok, const char *why)
{
	int64_t now = util_mono_ms();
	enum drain_primary_state before = drain_primary_get(&t->pr);

	if (drain_primary_event(&t->pr, ok ? DRAIN_EV_PROBE_OK : DRAIN_EV_PROBE_FAIL,
	    now)) {
		drain_log_probe(t, why);
		if (drain_primary_get(&t->pr) == DRAIN_PRIMARY_UP) {
			drain_policy_restart(&t->pol, now);
			t->up_mono = now;
			drain_log_rate(t, drain_policy_limit(&t->pol, now), "up");
		}
	} else if (!ok && before == DRAIN_PRIMARY_UNKNOWN) {
		/* Say once why the first probe failed; later ones are quiet. */
		drain_log_probe(t, why);
	}
	drain_tenant_run(t);
}

static void
probe_on_closed(void *arg, const struct smtp_client_end *end)
{
	struct drain_tenant *t = arg;
	char tn[CONFIG_HOST_MAX + 80];

	t->probe = NULL;
	if (t->removed) {
		drain_tenant_maybe_free(t);
		return;
	}
	drain_target_name(&t->probe_tg, tn, sizeof(tn));
	if (end->status == 0 && end->ready) {
		probe_result(t, true, tn);
		return;
	}
	snprintf(t->probe_why, sizeof(t->probe_why), "%.100s: %.150s", tn, end->text);
	if (t->probe_idx + 1 < t->ntargets) {
		t->probe_idx++;
		probe_connect(t);
		return;
	}
	probe_result(t, false, t->probe_why);
}

static void
probe_connect(struct drain_tenant *t)
{
	static const struct smtp_client_callbacks cbs = {
		NULL, NULL, probe_on_closed,
	};
	const struct config *cfg = t->d->cfg;
	uint64_t tmo = cfg->smtp_timeout_ms < DRAIN_PROBE_TIMEOUT_MS ?
	    cfg->smtp_timeout_ms : DRAIN_PROBE_TIMEOUT_MS;
	struct smtp_client_options o;

	if (t->probe_idx >= t->ntargets) {
		probe_result(t, false, "no address for the primary");
		return;
	}
	t->probe_tg = t->targets[t->probe_idx];
	memset(&o, 0, sizeof(o));
	o.loop = t->d->loop;
	o.addr = (const struct sockaddr *)&t->probe_tg.addr;
	o.host = t->probe_tg.host;
	o.helo_name = cfg->hostname;
	o.tls_mode = drain_tls_mode(cfg);
	o.tls_ctx = drain_tls(t->d);
	o.timeout_ms = tmo;
	o.connect_timeout_ms = tmo;
	o.probe = true;
	if (smtp_client_new(&o, &cbs, t, &t->probe) != 0) {
		t->probe = NULL;
		probe_result(t, false, "cannot start an SMTP session");
	}
}

static void
tenant_on_resolved(void *arg, int status, const char *why,
    struct drain_target *tg, size_t n)
{
	struct drain_tenant *t = arg;
	bool for_probe = t->res_for_probe;

	t->res = NULL;
	t->res_for_probe = false;
	if (status == DNS_OK && n > 0) {
		free(t->targets);
		t->targets = tg;
		t->ntargets = n;
		t->targets_mono = util_mono_ms();
	} else {
		free(tg);
	}
	if (!for_probe) {
		drain_tenant_run(t);
		return;
	}
	if (t->ntargets == 0 || status != DNS_OK) {
		char w[300];

		snprintf(w, sizeof(w), "resolving the primary: %s", why);
		probe_result(t, false, w);
		return;
	}
	t->probe_idx = 0;
	probe_connect(t);
}

static void
tenant_resolve(struct drain_tenant *t, bool for_probe)
{
	const struct config *cfg = t->d->cfg;

	t->res_for_probe = for_probe;
	t->res = resolve_start(t->d, t->primary_mx ? NULL : t->hosts, t->nhosts,
	    t->domain, cfg->mx_port, tenant_on_resolved, t);
	if (t->res == NULL && for_probe)
		probe_result(t, false, "cannot resolve the primary (no resolver)");
}

/* ---- the scheduler ----------------------------------------------------- */

static void
tenant_on_timer(uv_timer_t *h)
{
	drain_tenant_run(h->data);
}

static void
tenant_sleep(struct drain_tenant *t, int64_t ms)
{
	if (ms < 1)
		ms = 1;
	if (ms > DRAIN_MAX_SLEEP_MS)
		ms = DRAIN_MAX_SLEEP_MS;
	(void)uv_timer_start(&t->timer, tenant_on_timer, (uint64_t)ms, 0);
}

/* Log the limit when the ramp or AIMD moved it notably upwards (cuts are
 * logged where they happen). */
static void
tenant_log_limit(struct drain_tenant *t, int64_t now)
{
	double l = drain_policy_limit(&t->pol, now);
	double step = t->logged_limit * DRAIN_RATE_LOG_FRACTION;

	if (step < 0.5)
		step = 0.5;
	if (l > t->logged_limit + step || (l >= t->set.rate &&
	    t->logged_limit < t->set.rate))
		drain_log_rate(t, l, now - t->up_mono < (int64_t)t->set.ramp_ms ?
		    "ramp" : "recover");
}

static void
drain_tenant_run(struct drain_tenant *t)
{
	struct drain *d = t->d;
	struct spool *sp = d->spool;
	int64_t now = util_mono_ms();
	int64_t sleep_ms = DRAIN_MAX_SLEEP_MS;

	if (t->removed || d->closing || !t->timer_open)
		return;
	if (drain_primary_get(&t->pr) != DRAIN_PRIMARY_UP) {
		conns_quit_idle(t);
		if (t->probe == NULL && t->res == NULL &&
		    drain_primary_probe_due(&t->pr, now)) {
			tenant_resolve(t, true);
			if (t->removed)
				return;
		}
		if (t->probe == NULL && t->res == NULL &&
		    drain_primary_get(&t->pr) != DRAIN_PRIMARY_UP)
			sleep_ms = drain_primary_next_probe(&t->pr) - now;
		tenant_sleep(t, sleep_ms);
		return;
	}
	tenant_log_limit(t, now);
	if (t->res == NULL && now - t->targets_mono > DRAIN_RESOLVE_TTL_MS)
		tenant_resolve(t, false);
	if (spool_is_held(sp, t->name)) {
		conns_quit_idle(t);
		tenant_sleep(t, sleep_ms);
		return;
	}
	for (;;) {
		struct drain_conn *cn;
		struct spool_item item;
		spool_qid qid;
		int64_t wait, next;
		bool can_open;
		int rc;

		wait = drain_policy_wait_ms(&t->pol, 0, now);
		if (wait > 0) {
			sleep_ms = wait;
			break;
		}
		cn = conn_free_slot(t, &can_open);
		if (cn == NULL && !can_open)
			break;        /* a finishing delivery runs us again */
		rc = spool_claim_next(sp, t->name, util_now_ms(), &qid);
		if (rc != 0) {
			next = spool_next_due_ms(sp, t->name);
			if (next >= 0)
				sleep_ms = next - util_now_ms();
			conns_quit_idle(t);
			break;
		}
		if (spool_find(sp, qid, &item) != 0)
			item.size = 0;
		if (!drain_policy_take(&t->pol, item.size, now)) {
			spool_release(sp, qid);
			sleep_ms = drain_policy_wait_ms(&t->pol, item.size, now);
			break;
		}
		if (cn == NULL)
			cn = conn_new(t);
		if (cn == NULL || job_start(t, qid, cn, true, false) != 0) {
			if (cn == NULL)
				spool_release(sp, qid);
			sleep_ms = 1000;
			break;
		}
	}
	tenant_sleep(t, sleep_ms);
}

/* ---- tenants ----------------------------------------------------------- */

static void
tenant_configure(struct drain_tenant *t)
{
	struct drain_policy_params pp;
	int64_t now = util_mono_ms();

	drain_policy_params_from(&pp, &t->set);
	drain_policy_configure(&t->pol, &pp, now);
	drain_primary_configure(&t->pr, t->set.probe_up_after,
	    t->set.probe_interval_ms, now);
}

static bool
hosts_equal(const struct config_hostport *a, size_t na,
    const struct config_hostport *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i].host, b[i].host) != 0 || a[i].port != b[i].port)
			return false;
	return true;
}

/* Copy what the tenant keeps of CT (config pointers die on reload). */
static int
tenant_take_config(struct drain_tenant *t, const struct config_tenant *ct)
{
	bool same = t->primary_mx == ct->primary_mx &&
	    strcmp(t->domain, ct->ndomains ? ct->domains[0] : "") == 0 &&
	    hosts_equal(t->hosts, t->nhosts, ct->primaries, ct->nprimaries);
	struct config_hostport *h = NULL;

	if (!same) {
		if (ct->nprimaries > 0) {
			h = calloc(ct->nprimaries, sizeof(*h));
			if (h == NULL)
				return -1;
			memcpy(h, ct->primaries, ct->nprimaries * sizeof(*h));
		}
		free(t->hosts);
		t->hosts = h;
		t->nhosts = ct->nprimaries;
		t->primary_mx = ct->primary_mx;
		snprintf(t->domain, sizeof(t->domain), "%s",
		    ct->ndomains ? ct->domains[0] : "");
		/* New primary: forget the old one's addresses and state. */
		resolve_cancel(t->res);
		t->res = NULL;
		t->res_for_probe = false;
		free(t->targets);
		t->targets = NULL;
		t->ntargets = 0;
		t->targets_mono = INT64_MIN / 2;
		drain_primary_init(&t->pr, ct->probe_up_after, ct->probe_interval_ms,
		    util_mono_ms());
	}
	drain_settings_from(&t->cfgset, ct);
	t->set = t->cfgset;           /* runtime overrides are dropped */
	return 0;
}

static struct drain_tenant *
tenant_find(struct drain *d, const char *name)
{
	for (struct drain_tenant *t = d->tenants; t; t = t->next)
		if (!t->removed && strcmp(t->name, name) == 0)
			return t;
	return NULL;
}

static struct drain_tenant *
tenant_new(struct drain *d, const struct config_tenant *ct)
{
	struct drain_tenant *t = calloc(1, sizeof(*t));
	struct drain_policy_params pp;
	int64_t now = util_mono_ms();

	if (t == NULL)
		return NULL;
	t->d = d;
	snprintf(t->name, sizeof(t->name), "%s", ct->name);
	t->primary_mx = !ct->primary_mx;  /* force a copy below */
	if (tenant_take_config(t, ct) != 0) {
		free(t);
		return NULL;
	}
	drain_policy_params_from(&pp, &t->set);
	drain_policy_init(&t->pol, &pp, now);
	drain_primary_init(&t->pr, t->set.probe_up_after, t->set.probe_interval_ms,
	    now);
	drain_meter_init(&t->meter, now);
	t->logged_limit = 0;
	if (uv_timer_init(d->loop, &t->timer) != 0) {
		free(t->hosts);
		free(t);
		return NULL;
	}
	t->timer.data = t;
	t->timer_open = true;
	t->next = d->tenants;
	d->tenants = t;
	return t;
}

static void drain_maybe_done(struct drain *d);

static void
tenant_unlink_free(struct drain_tenant *t)
{
	struct drain *d = t->d;

	for (struct drain_tenant **pp = &d->tenants; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	}
	free(t->targets);
	free(t->hosts);
	free(t->warned);
	free(t);
	drain_maybe_done(d);
}

static void
tenant_on_timer_closed(uv_handle_t *h)
{
	struct drain_tenant *t = h->data;

	t->timer_open = false;
	drain_tenant_maybe_free(t);
}

static bool
tenant_busy(const struct drain_tenant *t)
{
	return t->probe != NULL || t->nconns > 0 || t->njobs > 0;
}

static void
drain_tenant_maybe_free(struct drain_tenant *t)
{
	if (!t->removed || t->removing || tenant_busy(t))
		return;
	if (t->timer_open) {
		if (!uv_is_closing((uv_handle_t *)&t->timer))
			uv_close((uv_handle_t *)&t->timer, tenant_on_timer_closed);
		return;
	}
	tenant_unlink_free(t);
}

/* Stop the tenant: abort its sessions; it is freed once all are gone. */
static void
tenant_remove(struct drain_tenant *t)
{
	if (t->removed)
		return;
	t->removed = true;
	t->removing = true;
	(void)uv_timer_stop(&t->timer);
	resolve_cancel(t->res);
	t->res = NULL;
	if (t->probe)
		smtp_client_abort(t->probe);
	for (struct drain_conn *cn = t->conns; cn; cn = cn->next)
		if (cn->c)
			smtp_client_abort(cn->c);
	for (struct drain_job *j = t->jobs, *jn; j; j = jn) {
		struct drain_dsn *x = j->dsn;

		jn = j->next;
		if (x == NULL)
			continue;
		if (x->c) {
			smtp_client_abort(x->c);
		} else if (x->res) {
			/* Waiting for DNS: give up now (bounce next time). */
			resolve_cancel(x->res);
			x->res = NULL;
			x->result = 1;
			snprintf(x->why, sizeof(x->why), "shutting down");
			dsn_done(x);
		}
	}
	t->removing = false;
	drain_tenant_maybe_free(t);
}

/* ---- our own addresses ------------------------------------------------- */

static void
drain_collect_self(struct drain *d)
{
	const struct config *cfg = d->cfg;
	struct sockaddr_storage *s = NULL, *local = NULL;
	size_t n = 0, nlocal = 0, cap;
	bool wildcard = false;

	(void)dns_local_addrs(&local, &nlocal);
	cap = cfg->nlisten * (1 + nlocal);
	if (cap > 0)
		s = calloc(cap, sizeof(*s));
	for (size_t i = 0; s && i < cfg->nlisten; i++) {
		struct sockaddr_storage ss;
		struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
		const char *h = cfg->listen[i].host;
		char buf[CONFIG_HOST_MAX + 1];
		size_t hl = strlen(h);

		memset(&ss, 0, sizeof(ss));
		if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
			snprintf(buf, sizeof(buf), "%.*s", (int)(hl - 2), h + 1);
			h = buf;
		}
		if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
			ss.ss_family = AF_INET;
			wildcard = a4->sin_addr.s_addr == htonl(INADDR_ANY);
		} else if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
			ss.ss_family = AF_INET6;
			wildcard = IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr);
		} else {
			continue;     /* a name: hostname matching covers it */
		}
		drain_addr_set_port(&ss, cfg->listen[i].port);
		s[n++] = ss;
		for (size_t k = 0; wildcard && k < nlocal; k++) {
			s[n] = local[k];
			drain_addr_set_port(&s[n], cfg->listen[i].port);
			n++;
		}
	}
	free(local);
	free(d->self);
	d->self = s;
	d->nself = s ? n : 0;
}

/* ---- public API -------------------------------------------------------- */

int
drain_new(const struct drain_deps *deps, const struct config *cfg,
    struct tls_ctx *tls_client, struct drain **out)
{
	struct drain *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return -1;
	d->loop = deps->loop;
	d->spool = deps->spool;
	d->dns = deps->dns;
	d->stats = deps->stats;
	*out = d;
	drain_apply_config(d, cfg, tls_client);
	return 0;
}

void
drain_apply_config(struct drain *d, const struct config *cfg,
    struct tls_ctx *tls_client)
{
	struct drain_tenant *t, *next;

	if (d->closing)
		return;
	d->cfg = cfg;
	d->tls = tls_client;
	drain_collect_self(d);
	for (t = d->tenants; t; t = next) {
		next = t->next;
		if (!t->removed && config_tenant_by_name(cfg, t->name) == NULL)
			tenant_remove(t);
	}
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const struct config_tenant *ct = &cfg->tenants[i];

		t = tenant_find(d, ct->name);
		if (t == NULL) {
			t = tenant_new(d, ct);
			if (t == NULL) {
				log_event(LOG_LEVEL_ERR, "drain", "tenant=%s error=\"out of "
				    "memory\"", ct->name);
				continue;
			}
		} else if (tenant_take_config(t, ct) != 0) {
			continue;
		}
		tenant_configure(t);
		/* Start from the loop, not from inside the caller. */
		(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
	}
}

void
drain_kick(struct drain *d, const char *tenant)
{
	struct drain_tenant *t = d ? tenant_find(d, tenant) : NULL;

	/* Through the timer: the caller may be in the middle of its own
	 * work (an smtp_server commit callback). */
	if (t != NULL && !d->closing)
		(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
}

int
drain_flush(struct drain *d, const char *tenant)
{
	int n = 0;

	if (d == NULL || d->closing)
		return 0;
	for (struct drain_tenant *t = d->tenants; t; t = t->next) {
		if (t->removed || (tenant && strcmp(t->name, tenant) != 0))
			continue;
		/* Like postqueue -f: deferred mail is retried now, not at its
		 * back-off time, but still under the rate limit. */
		(void)spool_retry_now(d->spool, t->name);
		drain_primary_probe_now(&t->pr, util_mono_ms());
		(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
		n++;
	}
	return n;
}

int
drain_set(struct drain *d, const char *tenant, const char *key,
    const char *value, char *err, size_t errlen, bool check_only)
{
	struct drain_tenant *t = d ? tenant_find(d, tenant) : NULL;
	struct drain_settings s;
	struct config_tenant ct;

	if (t == NULL) {
		snprintf(err, errlen, "no tenant named %s", tenant);
		return -1;
	}
	/* The config file's own rules, so `set` and the file never disagree. */
	drain_settings_to(&ct, &t->set);
	if (config_tenant_set(&ct, key, value, err, errlen) != 0)
		return -1;
	drain_settings_from(&s, &ct);
	if (check_only)
		return 0;
	t->set = s;
	tenant_configure(t);
	log_event(LOG_LEVEL_INFO, "set", "tenant=%s %s=%s", t->name, key, value);
	(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
	return 0;
}

int
drain_bounce(struct drain *d, uint64_t qid)
{
	struct spool_item item;
	struct drain_tenant *t;
	int rc;

	if (d == NULL || d->closing)
		return SPOOL_ECLOSED;
	rc = spool_find(d->spool, qid, &item);
	if (rc != 0)
		return rc;
	t = tenant_find(d, item.tenant);
	if (t == NULL || item.claimed)
		return SPOOL_EINVAL;  /* unknown tenant, or being delivered */
	/* Out of the scheduler's reach first: not due for an hour. */
	(void)spool_defer(d->spool, qid, util_now_ms() + 3600 * 1000, NULL, NULL);
	return job_start(t, qid, NULL, false, true);
}

static void
drain_maybe_done(struct drain *d)
{
	void (*done)(void *);
	void *arg;

	if (!d->closing || d->tenants != NULL)
		return;
	done = d->done;
	arg = d->done_arg;
	free(d->self);
	free(d);
	if (done)
		done(arg);
}

void
drain_close(struct drain *d, void (*done)(void *arg), void *arg)
{
	struct drain_tenant *t, *next;

	if (d == NULL) {
		if (done)
			done(arg);
		return;
	}
	d->closing = true;
	d->done = done;
	d->done_arg = arg;
	for (t = d->tenants; t; t = next) {
		next = t->next;
		tenant_remove(t);
	}
	drain_maybe_done(d);
}

int
drain_status(struct drain *d, const char *tenant, struct drain_status *out)
{
	struct drain_tenant *t = d ? tenant_find(d, tenant) : NULL;
	struct spool_tenant_stats st;
	int64_t now = util_mono_ms();
	bool up, draining;

	if (t == NULL)
		return -1;
	up = drain_primary_get(&t->pr) == DRAIN_PRIMARY_UP;
	draining = up && !spool_is_held(d->spool, t->name);
	spool_tenant_stats(d->spool, t->name, &st);
	out->primary_state = drain_primary_state_name(drain_primary_get(&t->pr));
	out->drain_rate = drain_meter_rate(&t->meter, now);
	out->drain_rate_limit = up ? drain_policy_limit(&t->pol, now) : 0;
	out->in_flight = t->njobs;
	if (!drain_eta(st.messages, out->drain_rate, out->drain_rate_limit,
	    draining, &out->eta_s))
		out->eta_s = -1;
	return 0;
}
