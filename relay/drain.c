/*
 * drain.c - the per-tenant delivery scheduler: probes the primary, and
 * while it is up forwards the tenant's queue oldest first under
 * drain_policy's limits, with at most drain_concurrency connections and
 * messages_per_connection on each; a recipient answered 4xx is deferred
 * with back-off.  Where mail goes is drain_target.c's business, DSNs are
 * drain_bounce.c's (drain_internal.h describes the three files).
 *
 * One struct drain_tenant per configured tenant (kept by name across
 * reloads).  Its single uv_timer_t wakes drain_tenant_run() at the next
 * probe, the next token or the next due message; drain_kick(), drain_flush()
 * and the end of every delivery run it too.  The timing rules are
 * drain_policy.h's pure functions; this file only feeds them events and
 * the monotonic clock (util_mono_ms), and uses the wall clock (drain__now:
 * the deps' now_ms, or util_now_ms) for the spool, expiry and DSNs.
 *
 * The delivery path, in order (Postfix qmgr style continuations):
 *   drain_tenant_run -> spool_claim_next -> drain_policy_take (a token)
 *     -> conn_new / conn_free_slot -> drain__job_start (spool_load)
 *     -> job_on_load -> conn_assign (smtp_client_send) -> conn_on_sent
 *     -> job_on_result: 2xx marks DELIVERED; 5xx and expiry collect
 *        bounces; 4xx collect deferrals; a broken session releases the claim
 *     -> drain__job_settle (drain_bounce.c: bounce and delay DSNs)
 *     -> drain__job_retry: spool_defer with back-off, or release
 *     -> drain__job_unref: the job ends when its last spool write called
 *        back, and job_free() runs the scheduler again.
 *
 * Ownership: a job holds a reference for each outstanding asynchronous
 * operation (the load, the connection sending it, a DSN, each spool write);
 * it is freed by the drain__job_unref() that drops the last one.  A tenant
 * removed by a reload, or the whole drain on close, aborts its connections
 * and waits until its timer is closed and its last job and connection are
 * gone; drain_close() calls its DONE callback after that.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "mxspool/config.h"
#include "mxspool/dns.h"
#include "mxspool/drain.h"
#include "mxspool/drain_policy.h"
#include "mxspool/log.h"
#include "mxspool/smtp_client.h"
#include "mxspool/spool.h"
#include "mxspool/stats.h"
#include "mxspool/util.h"
#include "drain_internal.h"

/* A refusal this soon (ms) after a success is not yet an outage. */
#define DRAIN_CONC_GRACE_MS      2000
/* Re-resolve the primary's addresses this often while it is up. */
#define DRAIN_RESOLVE_TTL_MS     (5 * 60 * 1000)
/* The scheduler looks at its tenant at least this often. */
#define DRAIN_MAX_SLEEP_MS       (10 * 1000)
/* A rate change is logged when it moves by this fraction (or 0.5 msg/s). */
#define DRAIN_RATE_LOG_FRACTION  0.2

static void drain_tenant_run(struct drain_tenant *t);
static void drain_tenant_maybe_free(struct drain_tenant *t);
static void conn_assign(struct drain_conn *cn, struct drain_job *j);
static void job_route(struct drain_job *j);
static void tenant_gate_done(struct drain_tenant *t, bool failed);
static void job_on_write(void *arg, int status);

/* ---- shared helpers (drain_internal.h) ---------------------------------- */

int64_t
drain__now(const struct drain *d)
{
	return d->now_ms();
}

uint64_t
drain__random(void)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = uv_hrtime() * 6364136223846793005ULL + 1442695040888963407ULL;
	return v;
}

void
drain__reply_line(const struct smtp_client_reply *rp, char *buf, size_t len)
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

void
drain__client_options(struct drain *d, const struct drain_target *tg,
    uint64_t timeout_ms, uint64_t connect_ms, struct smtp_client_options *o)
{
	memset(o, 0, sizeof(*o));
	o->loop = d->loop;
	o->addr = (const struct sockaddr *)&tg->addr;
	o->host = tg->host;
	o->helo_name = d->cfg->hostname;
	o->tls_mode = drain_tls_mode(d->cfg);
	o->tls_ctx = d->tls;
	o->timeout_ms = timeout_ms;
	o->connect_timeout_ms = connect_ms;
}

/* ---- small helpers ----------------------------------------------------- */

/* Uniform in [-1, 1], for retry jitter. */
static double
drain_jitter(void)
{
	return (double)(drain__random() >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
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

	drain__reply_line(rp, line, sizeof(line));
	log_event(LOG_LEVEL_INFO, "deliver", "qid=%s tenant=%s to=%s relay=%s "
	    "delay=%.1f reply=%s", j->qids, j->t->name,
	    log_quote(qto, sizeof(qto), to), j->relay,
	    (double)(drain__now(j->t->d) - env->arrival_ms) / 1000.0,
	    log_quote(qr, sizeof(qr), line));
}

static void
drain_log_defer(struct drain_job *j, const char *to,
    const struct smtp_client_reply *rp, int64_t next_ms)
{
	char qto[600], qr[1200], line[1100];

	drain__reply_line(rp, line, sizeof(line));
	/* For mxspoolctl queue/show: the reply that made the message wait. */
	spool_set_last_reply(j->t->d->spool, spool_msg_qid(j->msg), line);
	log_event(LOG_LEVEL_INFO, "defer", "qid=%s tenant=%s to=%s relay=%s "
	    "retry_in_s=%lld reply=%s", j->qids, j->t->name,
	    log_quote(qto, sizeof(qto), to), j->relay[0] ? j->relay : "none",
	    (long long)((next_ms - drain__now(j->t->d)) / 1000),
	    log_quote(qr, sizeof(qr), line));
}

static void
drain_log_probe(struct drain_dest *ds, const char *why)
{
	struct drain_tenant *t = ds->t;
	char q[400];

	/* A tenant with one primary per domain says which one. */
	log_event(drain_primary_get(&ds->pr) == DRAIN_PRIMARY_UP ? LOG_LEVEL_INFO :
	    LOG_LEVEL_WARN, "probe", "tenant=%s%s%s state=%s reason=%s", t->name,
	    t->ndests > 1 ? " domain=" : "", t->ndests > 1 ? ds->domain : "",
	    drain_primary_state_name(drain_primary_get(&ds->pr)),
	    log_quote(q, sizeof(q), why));
}

static void
drain_log_rate(struct drain_tenant *t, double limit, const char *reason)
{
	log_event(LOG_LEVEL_INFO, "rate",
	    "tenant=%s limit=%.2f ceiling=%.2f reason=%s",
	    t->name, limit, t->set.rate, reason);
	t->logged_limit = limit;
}

/* The primary is down, or a probe of a primary not up failed: remember
 * since when (wall clock) and why, for the diagnostic of expiry DSNs. */
static void
tenant_note_down(struct drain_tenant *t, const char *why)
{
	size_t n = strlen(why);

	if (n >= sizeof(t->down_why))
		n = sizeof(t->down_why) - 1;
	memcpy(t->down_why, why, n);
	t->down_why[n] = '\0';
	if (t->down_since_ms == 0)
		t->down_since_ms = drain__now(t->d);
}

/* ---- jobs -------------------------------------------------------------- */

static void
job_free(struct drain_job *j)
{
	struct drain_tenant *t = j->t;
	bool age;

	if (j->claimed && (!j->settled || j->write_failed))
		spool_release(t->d->spool, j->qid);
	if (j->lease)
		tenant_gate_done(t, false);   /* taken for a connection not opened */
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
	if (j->kind == DRAIN_JOB_EXPIRE || j->kind == DRAIN_JOB_WARN)
		t->nage--;
	age = j->kind == DRAIN_JOB_EXPIRE || j->kind == DRAIN_JOB_WARN;
	free(j);
	if (t->removed) {
		drain_tenant_maybe_free(t);
		return;
	}
	if (age)
		drain__age_job_done(t);
	drain_tenant_run(t);
}

struct drain_job *
drain__job_find(struct drain_tenant *t, spool_qid qid)
{
	for (struct drain_job *j = t->jobs; j; j = j->next)
		if (j->qid == qid)
			return j;
	return NULL;
}

void
drain__job_unref(struct drain_job *j)
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
	drain__job_unref(j);          /* from drain__job_mark() / _retry() */
}

void
drain__job_mark(struct drain_job *j, size_t env, enum spool_rcpt_state st)
{
	j->refs++;
	if (spool_mark_rcpt(j->t->d->spool, j->qid, env, st, job_on_write, j) != 0) {
		j->write_failed = true;
		j->refs--;
	}
}

void
drain__job_retry(struct drain_job *j)
{
	struct drain_tenant *t = j->t;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);

	if (j->kind == DRAIN_JOB_WARN) {
		/* A delay notice leaves the message as it was. */
		j->settled = true;
		return;
	}
	if (j->ntemp > 0 && !t->removed) {
		/* While the primary is up a 4xx costs no back-off the first
		 * times: the rate limit, not a timer, decides when it goes. */
		int64_t next = drain_retry_next(spool_msg_attempts(j->msg) + 1,
		    j->ds ? drain_primary_get(&j->ds->pr) == DRAIN_PRIMARY_UP :
		    drain__tenant_up(t), drain__now(t->d), drain_jitter());

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
	if (j->ntemp == 0 && !j->leftover)
		j->settled = true;    /* every recipient is final */
	/* Otherwise job_free() releases the claim. */
}

int
drain__fate_add(struct drain_fate **arr, size_t *n, size_t cap, size_t env,
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
	j->bounce_reason = "expired";
	for (size_t i = 0; i < j->ntemp; i++)
		if (drain__fate_add(&j->bounce, &j->nbounce, env->nrcpt, j->temp[i].env,
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

static void tenant_conc_ok(struct drain_tenant *t, int64_t now);

/* smtp_client's SENT for one transaction of a job: sort the outcome of
 * every recipient it carried.  Returns true when recipients of the job are
 * left for another transaction (the primary's RCPTMAX). */
static bool
job_on_result(struct drain_job *j, const struct smtp_client_result *res)
{
	struct drain_tenant *t = j->t;
	struct drain *d = t->d;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	int64_t now = util_mono_ms();
	bool any_ok = false, any_temp = false;

	for (size_t i = 0; i < j->cm.nrcpt; i++) {
		const struct smtp_client_reply *rp = &res->rcpt[i];
		size_t e = j->map[j->off + i];

		switch (rp->outcome) {
		case SMTP_CLIENT_DELIVERED:
			any_ok = true;
			drain_log_deliver(j, env->rcpt[e].addr, rp);
			drain__job_mark(j, e, SPOOL_RCPT_DELIVERED);
			stats_add(d->stats, t->name, STAT_DELIVERED, 1);
			t->delivered_up++;
			if (d->on_delivered)
				d->on_delivered(d->hook_arg, t->name, env->rcpt[e].addr);
			break;
		case SMTP_CLIENT_PERMFAIL:
			if (drain__fate_add(&j->bounce, &j->nbounce, env->nrcpt, e, rp) != 0)
				j->leftover = true;
			break;
		case SMTP_CLIENT_TEMPFAIL:
			if (res->status != 0 && (rp->local || rp->code == 421)) {
				/* The session broke: not this message's fault. */
				j->leftover = true;
				break;
			}
			any_temp = true;
			if (drain__fate_add(&j->temp, &j->ntemp, env->nrcpt, e, rp) != 0)
				j->leftover = true;
			break;
		}
	}
	if (res->status == 0)
		stats_observe(d->stats, t->name, STAT_HIST_DELIVERY,
		    (double)(now - j->start_mono) / 1000.0);
	if (any_ok) {
		stats_observe(d->stats, t->name, STAT_HIST_QUEUE_DELAY,
		    (double)(drain__now(d) - env->arrival_ms) / 1000.0);
		if (!j->counted)
			drain_meter_add(&t->meter, 1, now);
		j->counted = true;
		if (res->dot_latency_ms >= 0)
			job_aimd(t, "latency", drain_policy_ok(&t->pol,
			    (double)res->dot_latency_ms, now));
		tenant_conc_ok(t, now);
	}
	if (any_temp)
		job_aimd(t, "tempfail", drain_policy_tempfail(&t->pol, now));
	if (res->status == SMTP_CLIENT_ETIMEOUT)
		job_aimd(t, "timeout", drain_policy_timeout(&t->pol, now));
	j->off += j->cm.nrcpt;
	return j->off < j->ncrcpt;
}

/* The job's last transaction is over: settle its recipients' fates. */
static void
job_finish(struct drain_job *j)
{
	struct drain_tenant *t = j->t;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);

	/* Past the queue lifetime a temporary failure is final. */
	if (j->ntemp > 0 && t->queue_lifetime_ms > 0 &&
	    drain_expired(env->arrival_ms, drain__now(t->d), t->queue_lifetime_ms))
		job_expire(j);
	if (j->other_dest)
		j->leftover = true;   /* released: they go next */
	drain__job_settle(j);
}

static int
job_read(void *arg, uint64_t off, size_t max, smtp_client_chunk_cb cb,
    void *cbarg)
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

	struct drain_tenant *t = j->t;

	j->crcpt = calloc(env->nrcpt ? env->nrcpt : 1, sizeof(*j->crcpt));
	j->map = calloc(env->nrcpt ? env->nrcpt : 1, sizeof(*j->map));
	if (j->crcpt == NULL || j->map == NULL)
		return -1;
	for (size_t i = 0; i < env->nrcpt; i++) {
		if (spool_msg_rcpt_state(j->msg, i) != SPOOL_RCPT_PENDING)
			continue;
		/* A delivery goes to one destination: its first pending
		 * recipient's; the others' recipients wait for the next round. */
		if (j->kind == DRAIN_JOB_DELIVER && t->ndests > 1) {
			struct drain_dest *ds = drain__dest_for(t, env->rcpt[i].addr);

			if (j->ds == NULL)
				j->ds = ds;
			if (ds != j->ds) {
				j->other_dest = true;
				continue;
			}
		}
		j->crcpt[n].addr = env->rcpt[i].addr;
		j->crcpt[n].orcpt = env->rcpt[i].orcpt;
		j->crcpt[n].notify = env->rcpt[i].notify;
		j->map[n++] = i;
	}
	j->ncrcpt = n;
	j->off = 0;
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

static void
job_on_load(void *arg, int status, struct spool_msg *msg)
{
	struct drain_job *j = arg;
	struct drain_tenant *t = j->t;
	struct drain_conn *cn = j->conn;
	const struct spool_envelope *env;
	bool expired;
	long n;

	j->msg = msg;
	if (j->routing) {
		j->routing = false;
		t->nrouting--;
	}
	if (status != 0 || msg == NULL || t->removed || (n = job_prepare(j)) <= 0) {
		if (status != 0 && !t->removed)
			log_event(LOG_LEVEL_ERR, "load", "qid=%s tenant=%s error=%s",
			    j->qids, t->name, spool_strerror(status));
		if (cn) {
			cn->job = NULL;
			j->conn = NULL;
			j->refs--;    /* the conn's reference */
		}
		drain__job_unref(j);         /* from drain__job_start() */
		return;
	}
	env = spool_msg_envelope(msg);
	/* Past its lifetime a message is not delivered any more, even when
	 * the primary has just come back (the walk may not have reached it). */
	expired = j->kind == DRAIN_JOB_EXPIRE || (t->queue_lifetime_ms > 0 &&
	    drain_expired(env->arrival_ms, drain__now(t->d), t->queue_lifetime_ms));
	if (j->kind == DRAIN_JOB_WARN) {
		drain__job_warn(j);
		drain__job_unref(j);         /* from drain__job_start() */
		return;
	}
	if (j->admin_bounce || expired) {
		if (cn) {
			cn->job = NULL;
			j->conn = NULL;
			j->refs--;    /* the conn's reference */
		}
		if (j->admin_bounce) {
			j->bounce_reason = "postmaster";
			drain__job_fail_all(j, "5.0.0", "message returned to the sender by the "
			    "postmaster");
		} else {
			j->bounce_reason = "expired";
			if (j->why[0] == '\0')
				drain__age_reason(t, true, j->why, sizeof(j->why));
			drain__job_fail_all(j, "4.4.7", j->why);
		}
		drain__job_unref(j);         /* from drain__job_start() */
		if (cn && !t->removed)
			drain_tenant_run(t);
		return;
	}
	if (cn && cn->ready)
		conn_assign(cn, j);
	else if (cn == NULL)
		job_route(j);
	drain__job_unref(j);                 /* from drain__job_start() */
}

/* A job for QID on conn CN (NULL: an operator bounce).  Returns 0 or a
 * spool status. */
int
drain__job_start(struct drain_tenant *t, spool_qid qid, struct drain_conn *cn,
    bool claimed, enum drain_job_kind kind)
{
	struct drain_job *j = calloc(1, sizeof(*j));
	int rc;

	if (j == NULL)
		return SPOOL_ENOMEM;
	j->t = t;
	j->qid = qid;
	spool_qid_format(qid, j->qids);
	j->claimed = claimed;
	j->admin_bounce = kind == DRAIN_JOB_ADMIN;
	j->kind = kind;
	j->bounce_reason = "reply";
	j->start_mono = util_mono_ms();
	j->refs = 1;                  /* the load, dropped in job_on_load() */
	if (cn) {
		cn->job = j;
		j->conn = cn;
		j->ds = cn->ds;
		j->refs++;            /* the conn's, dropped in conn_on_sent() */
		drain__target_name(&cn->tg, j->relay, sizeof(j->relay));
	} else if (kind == DRAIN_JOB_DELIVER) {
		j->routing = true;    /* job_route() picks the connection */
		t->nrouting++;
	}
	j->next = t->jobs;
	t->jobs = j;
	t->njobs++;
	if (kind == DRAIN_JOB_EXPIRE || kind == DRAIN_JOB_WARN)
		t->nage++;
	rc = spool_load(t->d->spool, qid, job_on_load, j);
	if (rc != 0) {
		/* Undo by hand: job_free() would run the scheduler. */
		t->jobs = j->next;
		t->njobs--;
		if (kind == DRAIN_JOB_EXPIRE || kind == DRAIN_JOB_WARN)
			t->nage--;
		if (j->routing)
			t->nrouting--;
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

/* Hand CN the job's next transaction: its recipients from j->off on, at
 * most the primary's RCPTMAX of them (RFC 9422).  Returns the status of
 * smtp_client_send(). */
static int
conn_send_next(struct drain_conn *cn, struct drain_job *j)
{
	size_t k = j->ncrcpt - j->off;

	if (cn->rcpt_max > 0 && k > cn->rcpt_max)
		k = cn->rcpt_max;
	j->cm.rcpt = j->crcpt + j->off;
	j->cm.nrcpt = k;
	return smtp_client_send(cn->c, &j->cm);
}

static void
conn_assign(struct drain_conn *cn, struct drain_job *j)
{
	drain__target_name(&cn->tg, j->relay, sizeof(j->relay));
	if (conn_send_next(cn, j) != 0) {
		cn->job = NULL;
		j->conn = NULL;
		j->leftover = true;
		drain__job_unref(j);         /* the conn's */
		smtp_client_abort(cn->c);
	}
}

/* Messages this connection may carry: messages_per_connection, and never
 * more than the primary's MAILMAX (RFC 9422) when it announced one. */
static unsigned
conn_mpc(const struct drain_conn *cn)
{
	unsigned mpc = cn->t->set.mpc;

	return cn->mail_max > 0 && cn->mail_max < mpc ? cn->mail_max : mpc;
}

static void
conn_on_ready(void *arg, struct smtp_client *c)
{
	struct drain_conn *cn = arg;
	uint32_t rcpt_max, mail_max;

	cn->ready = true;
	if (cn->t->removed) {
		smtp_client_quit(c);
		return;
	}
	smtp_client_limits(c, &rcpt_max, &mail_max);
	cn->mail_max = mail_max;
	cn->rcpt_max = rcpt_max;
	drain__caps_record(cn->t, smtp_client_ext(c), smtp_client_size_max(c),
	    rcpt_max, mail_max, smtp_client_tls_active(c));
	if (cn->job != NULL && cn->job->msg != NULL)
		conn_assign(cn, cn->job);
	else if (cn->job == NULL)
		drain_tenant_run(cn->t);
}

static void
conn_on_sent(void *arg, struct smtp_client *c,
    const struct smtp_client_result *res)
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
	if (res->status == 0 && (cn->sent >= conn_mpc(cn) || t->removed))
		cn->quitting = true;
	if (j != NULL) {
		j->conn = NULL;
		if (job_on_result(j, res)) {
			/* Recipients beyond RCPTMAX: another transaction on this
			 * connection if it may carry one; else they stay pending
			 * and the message comes back (released, not deferred). */
			if (res->status == 0 && !cn->quitting &&
			    smtp_client_is_ready(c) &&
			    drain_primary_get(&cn->ds->pr) == DRAIN_PRIMARY_UP) {
				cn->job = j;
				j->conn = cn;         /* keeps the conn's reference */
				if (conn_send_next(cn, j) == 0)
					return;
				cn->job = NULL;
				j->conn = NULL;
				cn->quitting = true;
				smtp_client_abort(c);
			}
			j->leftover = true;
		}
		job_finish(j);
		drain__job_unref(j);         /* the conn's, from drain__job_start() */
	}
	if (res->status != 0 || cn->job != NULL || !smtp_client_is_ready(c))
		return;
	if (cn->quitting || drain_primary_get(&cn->ds->pr) != DRAIN_PRIMARY_UP) {
		cn->quitting = true;
		smtp_client_quit(c);
		return;
	}
	drain_tenant_run(t);
}

/* ---- the fleet's shared budget (drain_deps.gate) ------------------------ */

/* Asked only once the tenant's own limits would let a message of SIZE go,
 * so a refusal by the gate costs no local token.  0 = go. */
static int64_t
tenant_gate_take(struct drain_tenant *t, uint64_t size, bool new_conn,
    int64_t now)
{
	const struct drain_gate *g = t->d->gate;
	struct drain_gate_ask a;

	if (g == NULL || drain_policy_wait_ms(&t->pol, size, now) > 0)
		return 0;
	a.rate = t->set.rate;
	a.limit = drain_policy_limit(&t->pol, now);
	a.burst = t->set.burst;
	a.bandwidth = t->set.bandwidth;
	a.concurrency = t->set.concurrency;
	a.size = size;
	a.new_conn = new_conn;
	return g->take(g->arg, t->name, &a);
}

/* A connection that took a lease from the gate ended. */
static void
tenant_gate_done(struct drain_tenant *t, bool failed)
{
	const struct drain_gate *g = t->d->gate;

	if (g != NULL)
		g->done(g->arg, t->name, failed);
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

/* ---- concurrency feedback ----------------------------------------------- */

/* Connections open to the primary, the quitting ones included. */
static unsigned
conns_live(const struct drain_tenant *t)
{
	unsigned live = 0;

	for (const struct drain_conn *cn = t->conns; cn; cn = cn->next)
		if (cn->c != NULL)
			live++;
	return live;
}

static void
drain_log_conc(struct drain_tenant *t)
{
	char q[300];

	log_event(LOG_LEVEL_INFO, "concurrency", "tenant=%s limit=%u max=%u "
	    "reason=%s", t->name, drain_conc_limit(&t->conc), t->set.concurrency,
	    log_quote(q, sizeof(q), t->limit_reason));
}

/* A delivery succeeded: perhaps one more connection (additive increase). */
static void
tenant_conc_ok(struct drain_tenant *t, int64_t now)
{
	t->conc_ok_mono = now;
	t->conc_grace_used = false;
	if (drain_conc_ok(&t->conc, conns_live(t), now) == DRAIN_CONC_RAISED) {
		snprintf(t->limit_reason, sizeof(t->limit_reason),
		    "raised after %d s of deliveries at the limit",
		    DRAIN_CONC_RAISE_MS / 1000);
		drain_log_conc(t);
	}
}

/*
 * Delivery session CN ended badly (END).  Returns true when that is no
 * outage: other sessions to the primary are alive and not failed, so the
 * primary works; a refusal (421 at or after the greeting, a refused
 * connect) then also cuts the connection limit.  Returns false when every
 * session failed: the caller takes the primary down.  One grace: a
 * refusal right after a success, with no session left, is taken for a
 * primary still counting our last connection, not for an outage (once,
 * until the next success).
 */
static bool
tenant_session_failed(struct drain_tenant *t, struct drain_conn *cn,
    const struct smtp_client_end *end, int64_t now)
{
	bool refused = end->status == SMTP_CLIENT_E421 ||
	    end->status == SMTP_CLIENT_ECONNECT;
	unsigned alive = 0, working = 0;
	char tn[CONFIG_HOST_MAX + 80], line[208];

	for (struct drain_conn *o = t->conns; o; o = o->next) {
		if (o == cn || o->ds != cn->ds || o->c == NULL || o->failed)
			continue;
		alive++;
		if (smtp_client_greeted(o->c))
			working++;
	}
	if (alive == 0) {
		if (!refused || t->conc_grace_used ||
		    now - t->conc_ok_mono > DRAIN_CONC_GRACE_MS)
			return false;
		t->conc_grace_used = true;
	}
	if (!refused)
		return true;
	if (drain_conc_refused(&t->conc, working, cn->opened_mono, now) ==
	    DRAIN_CONC_CUT) {
		drain__target_name(&cn->tg, tn, sizeof(tn));
		snprintf(line, sizeof(line), "%.200s", end->text);
		for (char *p = line; *p; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
		snprintf(t->limit_reason, sizeof(t->limit_reason),
		    "cut: %.60s: %.80s (%u other sessions working)", tn, line,
		    working);
		drain_log_conc(t);
	}
	return true;
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
	    cn->idx + 1 < cn->ds->ntargets && end->status != SMTP_CLIENT_E421) {
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
		drain__job_unref(j);         /* the conn's */
	}
	if (bad && !t->removed && !tenant_session_failed(t, cn, end, now) &&
	    drain_primary_event(&cn->ds->pr, DRAIN_EV_DELIVERY_FAIL, now)) {
		char why[400];

		snprintf(why, sizeof(why), "delivery failed: %.300s", end->text);
		drain_log_probe(cn->ds, why);
		tenant_note_down(t, why);
	}
	if (cn->leased)
		tenant_gate_done(t, bad && !t->removed);
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
	uint64_t tmo = t->d->cfg->smtp_timeout_ms;
	struct smtp_client_options o;

	cn->c = NULL;
	if (cn->idx >= cn->ds->ntargets)
		return;
	cn->tg = cn->ds->targets[cn->idx];
	drain__client_options(t->d, &cn->tg, tmo,
	    tmo < DRAIN_CONNECT_TIMEOUT_MS ? tmo : DRAIN_CONNECT_TIMEOUT_MS, &o);
	if (smtp_client_new(&o, &cbs, cn, &cn->c) != 0)
		cn->c = NULL;
}

static struct drain_conn *
conn_new(struct drain_tenant *t, struct drain_dest *ds)
{
	struct drain_conn *cn = calloc(1, sizeof(*cn));

	if (cn == NULL)
		return NULL;
	cn->t = t;
	cn->ds = ds;
	cn->opened_mono = util_mono_ms();
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
/* A connection that may take a message now (or once it is connected);
 * NULL with *CAN_OPEN telling whether a new one may be opened.  A quitting
 * connection still counts against the limit until it is closed: a primary
 * that counts connections (Postfix's smtpd_client_connection_count_limit)
 * counts it too, and its replacement would be refused. */
static struct drain_conn *
conn_free_slot(struct drain_tenant *t, struct drain_dest *ds, bool *can_open)
{
	unsigned live = 0;

	*can_open = false;
	for (struct drain_conn *cn = t->conns; cn; cn = cn->next) {
		if (cn->c == NULL)
			continue;
		live++;
		if (cn->quitting || (ds != NULL && cn->ds != ds))
			continue;
		if (cn->job == NULL && cn->sent < conn_mpc(cn) &&
		    (cn->ready ? smtp_client_is_ready(cn->c) : true))
			return cn;
	}
	*can_open = live < drain_conc_limit(&t->conc) &&
	    (ds == NULL || ds->ntargets > 0);
	return NULL;
}

/* Quit T's idle connections (those to destinations other than BUT, when
 * BUT is not NULL). */
static void
conns_quit_idle_but(struct drain_tenant *t, const struct drain_dest *but)
{
	for (struct drain_conn *cn = t->conns; cn; cn = cn->next) {
		if (cn->job != NULL || cn->quitting || cn->c == NULL ||
		    (but != NULL && cn->ds == but))
			continue;
		cn->quitting = true;
		if (cn->ready && smtp_client_is_ready(cn->c))
			smtp_client_quit(cn->c);
		else
			smtp_client_abort(cn->c);
	}
}

static void
conns_quit_idle(struct drain_tenant *t)
{
	conns_quit_idle_but(t, NULL);
}

/*
 * A tenant with one primary per domain: job J is loaded and knows its
 * destination (job_prepare).  Its primary down: the message waits for the
 * next probe (probe_result() makes it due again when that one is up).  Up:
 * an idle connection to it, or a new one; when every allowed connection is
 * busy or another domain's, an idle one of those is closed to make room
 * and the message goes back to the queue (the closing runs us again).
 */
static void
job_route(struct drain_job *j)
{
	struct drain_tenant *t = j->t;
	struct drain_dest *ds = j->ds;
	struct drain_conn *cn;
	bool can_open;

	if (drain_primary_get(&ds->pr) != DRAIN_PRIMARY_UP) {
		const struct spool_envelope *env = spool_msg_envelope(j->msg);
		int64_t next = drain__now(t->d) + (int64_t)t->set.probe_interval_ms;
		struct smtp_client_reply r;

		memset(&r, 0, sizeof(r));
		r.outcome = SMTP_CLIENT_TEMPFAIL;
		r.local = true;
		snprintf(r.enh, sizeof(r.enh), "4.4.1");
		snprintf(r.text, sizeof(r.text), "the primary of %s is not up",
		    ds->domain);
		for (size_t i = 0; i < j->cm.nrcpt; i++)
			drain_log_defer(j, env->rcpt[j->map[i]].addr, &r, next);
		j->refs++;
		if (spool_defer(t->d->spool, j->qid, next, job_on_write, j) != 0)
			j->refs--;
		else
			j->settled = true;
		return;
	}
	cn = conn_free_slot(t, ds, &can_open);
	if (cn == NULL && can_open && (cn = conn_new(t, ds)) != NULL) {
		cn->leased = j->lease;
		j->lease = false;
	}
	if (cn == NULL) {
		conns_quit_idle_but(t, ds);
		return;                       /* job_free() releases the claim */
	}
	cn->job = j;
	j->conn = cn;
	j->refs++;                    /* the conn's, dropped in conn_on_sent() */
	drain__target_name(&cn->tg, j->relay, sizeof(j->relay));
	if (cn->ready)
		conn_assign(cn, j);
}

/* ---- probes ------------------------------------------------------------ */

static void probe_connect(struct drain_dest *ds);

bool
drain__tenant_up(const struct drain_tenant *t)
{
	for (size_t i = 0; i < t->ndests; i++)
		if (drain_primary_get(&t->dests[i].pr) == DRAIN_PRIMARY_UP)
			return true;
	return false;
}

static void
probe_result(struct drain_dest *ds, bool ok, const char *why)
{
	struct drain_tenant *t = ds->t;
	int64_t now = util_mono_ms();
	enum drain_primary_state before = drain_primary_get(&ds->pr);
	bool was_up = drain__tenant_up(t);

	stats_add(t->d->stats, t->name, ok ? STAT_PROBE_OK : STAT_PROBE_FAIL, 1);
	if (ok)
		t->down_since_ms = 0;
	else
		tenant_note_down(t, why);

	if (drain_primary_event(&ds->pr, ok ? DRAIN_EV_PROBE_OK :
	    DRAIN_EV_PROBE_FAIL, now)) {
		drain_log_probe(ds, why);
		if (drain_primary_get(&ds->pr) == DRAIN_PRIMARY_UP && !was_up) {
			/* The first primary back: the ramp starts over.  Another
			 * domain's coming back does not reset a drain under way. */
			drain_policy_restart(&t->pol, now);
			t->up_mono = now;
			t->delivered_up = 0;
			drain_log_rate(t, drain_policy_limit(&t->pol, now), "up");
		}
		/* Messages put off while their domain's primary was down are
		 * due again (as flush would make them). */
		if (drain_primary_get(&ds->pr) == DRAIN_PRIMARY_UP && t->ndests > 1)
			(void)spool_retry_now(t->d->spool, t->name);
	} else if (!ok && before == DRAIN_PRIMARY_UNKNOWN) {
		/* Say once why the first probe failed; later ones are quiet. */
		drain_log_probe(ds, why);
	}
	drain_tenant_run(t);
}

static void
probe_on_closed(void *arg, const struct smtp_client_end *end)
{
	struct drain_dest *ds = arg;
	struct drain_tenant *t = ds->t;
	char tn[CONFIG_HOST_MAX + 80];

	ds->probe = NULL;
	if (t->removed) {
		drain_tenant_maybe_free(t);
		return;
	}
	drain__target_name(&ds->probe_tg, tn, sizeof(tn));
	snprintf(ds->probe_last, sizeof(ds->probe_last), "%.100s: %.150s", tn,
	    end->text[0] ? end->text : end->status == 0 ? "ok" : "no reply");
	t->last_probe = ds;
	if (end->status == 0 && end->ready) {
		drain__caps_record(t, end->ext, end->size_max, end->rcpt_max,
		    end->mail_max, end->tls);
		probe_result(ds, true, tn);
		return;
	}
	snprintf(ds->probe_why, sizeof(ds->probe_why), "%.100s: %.150s", tn,
	    end->text);
	if (ds->probe_idx + 1 < ds->ntargets) {
		ds->probe_idx++;
		probe_connect(ds);
		return;
	}
	probe_result(ds, false, ds->probe_why);
}

static void
probe_connect(struct drain_dest *ds)
{
	static const struct smtp_client_callbacks cbs = {
		NULL, NULL, probe_on_closed,
	};
	struct drain *d = ds->t->d;
	const struct config *cfg = d->cfg;
	uint64_t tmo = cfg->smtp_timeout_ms < DRAIN_PROBE_TIMEOUT_MS ?
	    cfg->smtp_timeout_ms : DRAIN_PROBE_TIMEOUT_MS;
	struct smtp_client_options o;

	if (ds->probe_idx >= ds->ntargets) {
		probe_result(ds, false, "no address for the primary");
		return;
	}
	ds->probe_tg = ds->targets[ds->probe_idx];
	drain__client_options(d, &ds->probe_tg, tmo, tmo, &o);
	o.probe = true;
	if (smtp_client_new(&o, &cbs, ds, &ds->probe) != 0) {
		ds->probe = NULL;
		probe_result(ds, false, "cannot start an SMTP session");
	}
}

static void
dest_on_resolved(void *arg, int status, const char *why,
    struct drain_target *tg, size_t n)
{
	struct drain_dest *ds = arg;
	bool for_probe = ds->res_for_probe;

	ds->res = NULL;
	ds->res_for_probe = false;
	if (status == DNS_OK && n > 0) {
		free(ds->targets);
		ds->targets = tg;
		ds->ntargets = n;
		ds->targets_mono = util_mono_ms();
		if (ds->t->ndests > 1)
			drain__dest_alias(ds);
	} else {
		free(tg);
	}
	if (ds->alias != NULL)
		for_probe = false;    /* its destination's probes tell */
	if (!for_probe) {
		drain_tenant_run(ds->t);
		return;
	}
	if (ds->ntargets == 0 || status != DNS_OK) {
		char w[300];

		snprintf(w, sizeof(w), "resolving the primary: %s", why);
		probe_result(ds, false, w);
		return;
	}
	ds->probe_idx = 0;
	probe_connect(ds);
}

/* Where DS's mail goes: the tenant's listed hosts, or its domain's MX. */
static void
dest_resolve(struct drain_dest *ds, bool for_probe)
{
	struct drain_tenant *t = ds->t;
	const struct config *cfg = t->d->cfg;

	ds->res_for_probe = for_probe;
	ds->res = drain__resolve_start(t->d, t->primary_mx ? NULL : t->hosts,
	    t->nhosts, ds->domain, cfg->mx_port, dest_on_resolved, ds);
	if (ds->res == NULL && for_probe)
		probe_result(ds, false, "cannot resolve the primary (no resolver)");
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

/* Probe every destination that is not up when its probe is due, and
 * re-resolve the ones that are; returns how long until the next probe. */
static int64_t
tenant_probe_due(struct drain_tenant *t, int64_t now)
{
	int64_t sleep_ms = DRAIN_MAX_SLEEP_MS;

	for (size_t i = 0; i < t->ndests && !t->removed; i++) {
		struct drain_dest *ds = &t->dests[i];

		if (drain_primary_get(&ds->pr) == DRAIN_PRIMARY_UP ||
		    ds->alias != NULL) {
			/* An alias is only looked up again (its addresses may
			 * part from its destination's). */
			if (ds->res == NULL &&
			    now - ds->targets_mono > DRAIN_RESOLVE_TTL_MS)
				dest_resolve(ds, false);
			continue;
		}
		if (ds->probe == NULL && ds->res == NULL &&
		    drain_primary_probe_due(&ds->pr, now))
			dest_resolve(ds, true);
		if (ds->probe == NULL && ds->res == NULL &&
		    drain_primary_get(&ds->pr) != DRAIN_PRIMARY_UP &&
		    drain_primary_next_probe(&ds->pr) - now < sleep_ms)
			sleep_ms = drain_primary_next_probe(&ds->pr) - now;
	}
	return sleep_ms;
}

/* May a message be started now: a free connection or room for one?  One
 * destination: its connection is chosen here (*CN, or NULL: open one).
 * Several: the message's destination is known once it is loaded, so
 * job_route() chooses; here it is enough that some connection is free or
 * may be opened. */
static bool
tenant_slot(struct drain_tenant *t, struct drain_conn **cn, bool *opens)
{
	unsigned live = 0, idle = 0, limit = drain_conc_limit(&t->conc);
	bool can_open;

	if (t->ndests == 1) {
		*cn = conn_free_slot(t, &t->dests[0], &can_open);
		*opens = *cn == NULL;
		return *cn != NULL || can_open;
	}
	*cn = NULL;
	for (struct drain_conn *c = t->conns; c; c = c->next) {
		if (c->c == NULL)
			continue;
		live++;
		if (!c->quitting && c->job == NULL && c->sent < conn_mpc(c) &&
		    (c->ready ? smtp_client_is_ready(c->c) : true))
			idle++;
	}
	/* Each message being loaded will want one of those; with no idle one
	 * left for this message, it will likely open a connection. */
	*opens = idle <= t->nrouting;
	return idle + (live < limit ? limit - live : 0) > t->nrouting;
}

static void
drain_tenant_run(struct drain_tenant *t)
{
	struct drain *d = t->d;
	struct spool *sp = d->spool;
	int64_t now = util_mono_ms();
	int64_t sleep_ms;

	if (t->removed || d->closing || !t->timer_open)
		return;
	sleep_ms = tenant_probe_due(t, now);
	if (t->removed)
		return;
	if (!drain__tenant_up(t)) {
		conns_quit_idle(t);
		tenant_sleep(t, sleep_ms);
		return;
	}
	sleep_ms = DRAIN_MAX_SLEEP_MS;
	tenant_log_limit(t, now);
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
		bool single = t->ndests == 1, opens;
		int rc;

		wait = drain_policy_wait_ms(&t->pol, 0, now);
		if (wait > 0) {
			sleep_ms = wait;
			break;
		}
		if (!tenant_slot(t, &cn, &opens))
			break;        /* a finishing delivery runs us again */
		rc = spool_claim_next(sp, t->name, drain__now(d), &qid);
		if (rc != 0) {
			next = spool_next_due_ms(sp, t->name);
			if (next >= 0)
				sleep_ms = next - drain__now(d);
			conns_quit_idle(t);
			break;
		}
		if (spool_find(sp, qid, &item) != 0)
			item.size = 0;
		if ((wait = tenant_gate_take(t, item.size, opens, now)) > 0) {
			spool_release(sp, qid);
			sleep_ms = wait;
			break;
		}
		if (!drain_policy_take(&t->pol, item.size, now)) {
			spool_release(sp, qid);
			sleep_ms = drain_policy_wait_ms(&t->pol, item.size, now);
			break;
		}
		if (single && cn == NULL && (cn = conn_new(t, &t->dests[0])) != NULL)
			cn->leased = true;
		if ((single && cn == NULL) ||
		    drain__job_start(t, qid, cn, true, DRAIN_JOB_DELIVER) != 0) {
			if (single && cn == NULL)
				spool_release(sp, qid);
			if (opens && cn == NULL)
				tenant_gate_done(t, false);   /* its lease */
			sleep_ms = 1000;
			break;
		}
		/* Several destinations: the lease goes to the connection that
		 * job_route() opens, or back to the gate (job_free()). */
		if (!single && opens && t->d->gate != NULL)
			t->jobs->lease = true;    /* the job just started */
	}
	tenant_sleep(t, sleep_ms);
}

/* ---- tenants ----------------------------------------------------------- */

static void
tenant_configure(struct drain_tenant *t)
{
	struct drain_policy_params pp;
	int64_t now = util_mono_ms();

	unsigned before = drain_conc_limit(&t->conc);

	drain_policy_params_from(&pp, &t->set);
	drain_policy_configure(&t->pol, &pp, now);
	for (size_t i = 0; i < t->ndests; i++)
		drain_primary_configure(&t->dests[i].pr, t->set.probe_up_after,
		    t->set.probe_interval_ms, now);
	drain_conc_set_max(&t->conc, t->set.concurrency, now);
	if (drain_conc_limit(&t->conc) != before)
		snprintf(t->limit_reason, sizeof(t->limit_reason),
		    "drain_concurrency");
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

/* Did CT's primary change from what T delivers to (hosts, MX, domains)? */
static bool
tenant_primary_changed(const struct drain_tenant *t,
    const struct config_tenant *ct)
{
	size_t nd = ct->primary_mx ? ct->ndomains : 0;

	if (t->primary_mx != ct->primary_mx || t->ndomains != nd ||
	    !hosts_equal(t->hosts, t->nhosts, ct->primaries, ct->nprimaries))
		return true;
	for (size_t i = 0; i < nd; i++)
		if (strcmp(t->domains[i], ct->domains[i]) != 0)
			return true;
	return false;
}

static void
tenant_free_primary(struct drain_tenant *t)
{
	for (size_t i = 0; i < t->ndests; i++)
		free(t->dests[i].targets);
	free(t->dests);
	for (size_t i = 0; i < t->ndomains; i++)
		free(t->domains[i]);
	free(t->domains);
	free(t->hosts);
}

/* Copy CT's primary into a new tenant: the hosts, the domains, and one
 * destination (or one per domain with primary = mx).  A primary changed by
 * a reload makes a new tenant (drain_apply_config), so the destinations
 * never move while sessions point at them. */
static int
tenant_take_primary(struct drain_tenant *t, const struct config_tenant *ct)
{
	size_t nd = ct->primary_mx ? ct->ndomains : 0;
	int64_t now = util_mono_ms();

	t->primary_mx = ct->primary_mx;
	if (ct->nprimaries > 0) {
		t->hosts = calloc(ct->nprimaries, sizeof(*t->hosts));
		if (t->hosts == NULL)
			return -1;
		memcpy(t->hosts, ct->primaries, ct->nprimaries * sizeof(*t->hosts));
		t->nhosts = ct->nprimaries;
	}
	if (nd > 0 && (t->domains = calloc(nd, sizeof(*t->domains))) == NULL)
		return -1;
	for (size_t i = 0; i < nd; i++) {
		if ((t->domains[i] = strdup(ct->domains[i])) == NULL)
			return -1;
		t->ndomains++;
	}
	t->ndests = nd > 1 ? nd : 1;
	t->dests = calloc(t->ndests, sizeof(*t->dests));
	if (t->dests == NULL)
		return -1;
	for (size_t i = 0; i < t->ndests; i++) {
		struct drain_dest *ds = &t->dests[i];

		ds->t = t;
		ds->idx = i;
		snprintf(ds->domain, sizeof(ds->domain), "%s",
		    i < ct->ndomains ? ct->domains[i] : "");
		ds->targets_mono = INT64_MIN / 2;
		drain_primary_init(&ds->pr, ct->probe_up_after,
		    ct->probe_interval_ms, now);
	}
	t->last_probe = &t->dests[0];
	return 0;
}

/* Copy what the tenant keeps of CT's settings (config pointers die on
 * reload). */
static void
tenant_take_config(struct drain_tenant *t, const struct config_tenant *ct)
{
	drain_settings_from(&t->cfgset, ct);
	t->set = t->cfgset;           /* runtime overrides are dropped */
	/* config.c already put [server]'s value where the tenant set none. */
	t->queue_lifetime_ms = ct->queue_lifetime_ms;
	t->delay_warning_ms = ct->delay_warning_ms;
}

struct drain_tenant *
drain__tenant_find(struct drain *d, const char *name)
{
	for (struct drain_tenant *t = d->tenants; t; t = t->next)
		if (!t->removed && strcmp(t->name, name) == 0)
			return t;
	return NULL;
}

/* tenant_new() failed after its timer was opened. */
static void
tenant_on_timer_closed_free(uv_handle_t *h)
{
	struct drain_tenant *t = h->data;

	tenant_free_primary(t);
	free(t);
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
	tenant_take_config(t, ct);
	if (tenant_take_primary(t, ct) != 0) {
		tenant_free_primary(t);
		free(t);
		return NULL;
	}
	drain_policy_params_from(&pp, &t->set);
	drain_policy_init(&t->pol, &pp, now);
	drain_meter_init(&t->meter, now);
	drain_conc_init(&t->conc, t->set.concurrency, now);
	snprintf(t->limit_reason, sizeof(t->limit_reason), "drain_concurrency");
	t->conc_ok_mono = INT64_MIN / 2;
	t->logged_limit = 0;
	if (uv_timer_init(d->loop, &t->timer) != 0) {
		tenant_free_primary(t);
		free(t);
		return NULL;
	}
	t->timer.data = t;
	t->timer_open = true;
	if (drain__age_init(t) != 0) {
		/* The timer is open: close it, then free (no age timer). */
		t->removed = true;
		uv_close((uv_handle_t *)&t->timer, tenant_on_timer_closed_free);
		return NULL;
	}
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
	tenant_free_primary(t);
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

static void
tenant_on_age_closed(uv_handle_t *h)
{
	struct drain_tenant *t = h->data;

	t->age_open = false;
	drain_tenant_maybe_free(t);
}

static bool
tenant_busy(const struct drain_tenant *t)
{
	for (size_t i = 0; i < t->ndests; i++)
		if (t->dests[i].probe != NULL)
			return true;
	return t->nconns > 0 || t->njobs > 0;
}

static void
drain_tenant_maybe_free(struct drain_tenant *t)
{
	if (!t->removed || t->removing || tenant_busy(t))
		return;
	if (t->age_open)
		drain__age_close(t, tenant_on_age_closed);
	if (t->timer_open) {
		if (!uv_is_closing((uv_handle_t *)&t->timer))
			uv_close((uv_handle_t *)&t->timer, tenant_on_timer_closed);
		return;
	}
	if (t->age_open)
		return;
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
	if (t->age_open)
		(void)uv_timer_stop(&t->age_timer);
	for (size_t i = 0; i < t->ndests; i++) {
		struct drain_dest *ds = &t->dests[i];

		drain__resolve_cancel(ds->res);
		ds->res = NULL;
		if (ds->probe)
			smtp_client_abort(ds->probe);
	}
	for (struct drain_conn *cn = t->conns; cn; cn = cn->next)
		if (cn->c)
			smtp_client_abort(cn->c);
	for (struct drain_job *j = t->jobs, *jn; j; j = jn) {
		/* The job may end inside: its successor first. */
		jn = j->next;
		drain__dsn_abort(j);
	}
	t->removing = false;
	drain_tenant_maybe_free(t);
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
	d->now_ms = deps->now_ms ? deps->now_ms : util_now_ms;
	d->age_tick_ms = deps->age_tick_ms ? deps->age_tick_ms : 1000;
	d->on_delivered = deps->on_delivered;
	d->hook_arg = deps->hook_arg;
	d->gate = deps->gate;
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
	drain__self_collect(d);
	for (t = d->tenants; t; t = next) {
		next = t->next;
		if (!t->removed && config_tenant_by_name(cfg, t->name) == NULL)
			tenant_remove(t);
	}
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const struct config_tenant *ct = &cfg->tenants[i];

		t = drain__tenant_find(d, ct->name);
		if (t != NULL && tenant_primary_changed(t, ct)) {
			/* A new primary: a new start, its own probe state; the
			 * old sessions finish on the tenant being removed. */
			tenant_remove(t);
			t = NULL;
		}
		if (t == NULL) {
			t = tenant_new(d, ct);
			if (t == NULL) {
				log_event(LOG_LEVEL_ERR, "drain", "tenant=%s error=\"out of "
				    "memory\"", ct->name);
				continue;
			}
		} else {
			tenant_take_config(t, ct);
		}
		tenant_configure(t);
		/* Start from the loop, not from inside the caller. */
		(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
	}
}

void
drain_kick(struct drain *d, const char *tenant)
{
	struct drain_tenant *t = d ? drain__tenant_find(d, tenant) : NULL;

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
		for (size_t i = 0; i < t->ndests; i++)
			drain_primary_probe_now(&t->dests[i].pr, util_mono_ms());
		(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
		n++;
	}
	return n;
}

int
drain_set(struct drain *d, const char *tenant, const char *key,
    const char *value, char *err, size_t errlen, bool check_only)
{
	struct drain_tenant *t = d ? drain__tenant_find(d, tenant) : NULL;
	struct drain_settings s;
	struct config_tenant ct;
	bool lowers_ceiling;

	if (t == NULL) {
		snprintf(err, errlen, "no tenant named %s", tenant);
		return -1;
	}
	/* The config file's own rules, so `set` and the file never disagree.
	 * One exception: lowering the ceiling below the start of the ramp
	 * takes the start down with it ("set drain_rate=5" means at most 5/s
	 * from now on); an explicit drain_initial_rate above drain_rate is
	 * refused as in the file. */
	lowers_ceiling = strcmp(key, "drain_rate") == 0;
	drain_settings_to(&ct, &t->set);
	if (lowers_ceiling)
		ct.drain_initial_rate = 0;
	if (config_tenant_set(&ct, key, value, err, errlen) != 0)
		return -1;
	drain_settings_from(&s, &ct);
	if (lowers_ceiling)
		s.initial_rate = t->set.initial_rate < s.rate ?
		    t->set.initial_rate : s.rate;
	if (check_only)
		return 0;
	t->set = s;
	tenant_configure(t);
	log_event(LOG_LEVEL_INFO, "set", "tenant=%s %s=%s", t->name, key, value);
	(void)uv_timer_start(&t->timer, tenant_on_timer, 0, 0);
	return 0;
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

/* The tenant's primary state: its one destination's; with several, up
 * while any is up, down while any is known down, else unknown. */
static enum drain_primary_state
tenant_state(const struct drain_tenant *t)
{
	bool down = false;

	if (drain__tenant_up(t))
		return DRAIN_PRIMARY_UP;
	for (size_t i = 0; i < t->ndests; i++)
		if (drain_primary_get(&t->dests[i].pr) == DRAIN_PRIMARY_DOWN)
			down = true;
	return down ? DRAIN_PRIMARY_DOWN : DRAIN_PRIMARY_UNKNOWN;
}

int
drain_status(struct drain *d, const char *tenant, struct drain_status *out)
{
	struct drain_tenant *t = d ? drain__tenant_find(d, tenant) : NULL;
	struct spool_tenant_stats st;
	int64_t now = util_mono_ms();
	bool up, draining;

	if (t == NULL)
		return -1;
	up = drain__tenant_up(t);
	draining = up && !spool_is_held(d->spool, t->name);
	spool_tenant_stats(d->spool, t->name, &st);
	out->primary_state = drain_primary_state_name(tenant_state(t));
	out->drain_rate = drain_meter_rate(&t->meter, now);
	out->drain_rate_limit = up ? drain_policy_limit(&t->pol, now) : 0;
	out->in_flight = t->njobs;
	out->delivered_since_up = t->delivered_up;
	out->last_probe = t->last_probe->probe_last;
	out->concurrency_limit = drain_conc_limit(&t->conc);
	out->limit_reason = t->limit_reason;
	if (!drain_eta(st.messages, out->drain_rate, out->drain_rate_limit,
	    draining, &out->eta_s))
		out->eta_s = -1;
	return 0;
}

bool
drain_primary_target(struct drain *d, const char *tenant, const char *rcpt,
    struct sockaddr_storage *addr, char *host, size_t hostlen,
    double *rate_limit)
{
	struct drain_tenant *t = d ? drain__tenant_find(d, tenant) : NULL;
	struct drain_dest *ds;

	if (t == NULL || d->closing || t->ndests == 0)
		return false;
	/* The destination RCPT's mail would go to (primary = mx: its domain's). */
	ds = drain__dest_for(t, rcpt);
	if (drain_primary_get(&ds->pr) != DRAIN_PRIMARY_UP)
		return false;
	*addr = ds->probe_tg.addr;
	snprintf(host, hostlen, "%s", ds->probe_tg.host);
	*rate_limit = drain_policy_limit(&t->pol, util_mono_ms());
	return true;
}
