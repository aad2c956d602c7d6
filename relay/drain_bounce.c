/*
 * drain_bounce.c - delivery status notifications: the bounce after a 5xx
 * or past queue_lifetime, the one delay warning at delay_warning, and the
 * operator's "mxspoolctl bounce QUEUEID".
 *
 * A job whose recipients are sorted (drain.c: job_on_result) continues
 * here, in this order (Postfix qmgr style continuations):
 *   drain__job_settle -> bounce_start (FAILED, for j->bounce)
 *     -> bounce_on_header_chunk (the original's header, from the spool)
 *     -> bounce_build (dsn_build: the RFC 3464 report) -> bounce_route
 *        (bounce_relay, or the sender's MX, through drain_target.c)
 *     -> bounce_on_resolved -> bounce_connect -> bounce_on_ready
 *     -> bounce_on_sent -> bounce_on_closed (next address, or:)
 *     -> bounce_done
 *   -> bounce_2_after_dsn: marks the recipients BOUNCED, or keeps them
 *      pending when the DSN could not be sent yet, so that the bounce is
 *      retried rather than lost; then, when a delay warning is due,
 *      bounce_start (DELAYED, for j->temp) -> ... -> bounce_done
 *   -> drain__job_retry (drain.c): defer with back-off, or release.
 * Every path ends in bounce_done() or goes straight to drain__job_retry().
 *
 * DSNs go with a null reverse-path and NOTIFY=NEVER (no report about a
 * report), never to the null sender (RFC 5321 6.1).  A destination domain
 * that does not exist or takes no mail (null MX) makes us give up on the
 * DSN, as a 5xx to it does.  Ownership: a DSN holds a reference on its job
 * from bounce_start() until bounce_done(); its fates are the job's.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/config.h"
#include "mxspool/dns.h"
#include "mxspool/dsn.h"
#include "mxspool/log.h"
#include "mxspool/smtp_client.h"
#include "mxspool/spool.h"
#include "mxspool/stats.h"
#include "drain_internal.h"

/* What became of a DSN. */
enum bounce_result {
	BOUNCE_DONE,                  /* sent, or none was needed */
	BOUNCE_LATER,                 /* not sent yet: keep the recipients */
	BOUNCE_REFUSED,               /* refused for good: give up on it */
};

/* One DSN being built and sent for a job. */
struct drain_dsn {
	struct drain_job *j;
	enum dsn_action action;
	struct drain_fate *fates;     /* the job's */
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
	enum bounce_result result;
	char why[300];
	bool sent;
};

static void bounce_2_after_dsn(struct drain_job *j, enum bounce_result result);
static void bounce_start(struct drain_job *j, enum dsn_action action,
    struct drain_fate *fates, size_t n);
static void bounce_on_header_chunk(void *arg, int status, const void *buf,
    size_t len);
static void bounce_build(struct drain_dsn *x);
static void bounce_route(struct drain_dsn *x);
static void bounce_on_resolved(void *arg, int status, const char *why,
    struct drain_target *t, size_t n);
static void bounce_connect(struct drain_dsn *x);
static void bounce_on_ready(void *arg, struct smtp_client *c);
static void bounce_on_sent(void *arg, struct smtp_client *c,
    const struct smtp_client_result *res);
static void bounce_on_closed(void *arg, const struct smtp_client_end *end);
static void bounce_done(struct drain_dsn *x);

/* ---- helpers ----------------------------------------------------------- */

/* Copy S into BUF, cut to fit. */
static void
bounce_copy(char *buf, size_t len, const char *s)
{
	size_t n = strlen(s);

	if (n >= len)
		n = len - 1;
	memcpy(buf, s, n);
	buf[n] = '\0';
}

static void
bounce_log(struct drain_job *j, const char *to,
    const struct smtp_client_reply *rp, const char *dsn)
{
	char qto[600], qr[1200], line[1100];

	drain__reply_line(rp, line, sizeof(line));
	log_event(LOG_LEVEL_INFO, "bounce", "qid=%s tenant=%s to=%s relay=%s "
	    "dsn=%s reply=%s reason=%s", j->qids, j->t->name,
	    log_quote(qto, sizeof(qto), to), j->relay[0] ? j->relay : "none", dsn,
	    log_quote(qr, sizeof(qr), line),
	    j->bounce_reason ? j->bounce_reason : "reply");
}

static void
bounce_log_dsn(const struct drain_dsn *x)
{
	struct drain_job *j = x->j;
	const char *sender = spool_msg_envelope(j->msg)->sender;
	char q[400], qs[600];

	if (sender[0] == '\0')
		return;
	log_event(x->result == BOUNCE_DONE && x->sent ? LOG_LEVEL_INFO :
	    LOG_LEVEL_WARN, "dsn", "qid=%s tenant=%s type=%s to=%s result=%s "
	    "reason=%s", j->qids, j->t->name,
	    x->action == DSN_ACTION_FAILED ? "bounce" : "delay",
	    log_quote(qs, sizeof(qs), sender),
	    x->sent ? "sent" : x->result == BOUNCE_DONE ? "none" :
	    x->result == BOUNCE_REFUSED ? "given_up" : "deferred",
	    log_quote(q, sizeof(q), x->why[0] ? x->why : "ok"));
}

/* ---- delay warnings: once per message, journaled ------------------------ */

/*
 * A delay notice is due for job J's waiting recipients (j->temp) when the
 * message is older than the tenant's delay_warning and no notice was
 * recorded (spool_item.warned, from a WARNED record: it survives restarts).
 * The record is written when the notice is started, not when it was sent:
 * a notice that cannot be sent is not tried again, as a second one must
 * never go out (RFC 3464 leaves delay notices to the MTA's discretion).
 */
static bool
delay_due(struct drain_job *j)
{
	struct drain_tenant *t = j->t;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	struct spool_item item;

	if (t->delay_warning_ms == 0 || spool_find(t->d->spool, j->qid, &item) != 0)
		return false;
	return drain_delay_warning_due(env->arrival_ms, drain__now(t->d),
	    t->delay_warning_ms, item.warned);
}

void
drain__job_warn(struct drain_job *j)
{
	struct smtp_client_reply rp;

	memset(&rp, 0, sizeof(rp));
	rp.outcome = SMTP_CLIENT_TEMPFAIL;
	rp.local = true;
	/* 4.4.1: no answer from host (RFC 3463), the usual reason we wait. */
	snprintf(rp.enh, sizeof(rp.enh), "%s", "4.4.1");
	snprintf(rp.text, sizeof(rp.text), "%s", j->why);
	for (size_t i = 0; i < j->cm.nrcpt; i++)
		if (drain__fate_add(&j->temp, &j->ntemp, j->cm.nrcpt, j->map[i],
		    &rp) != 0)
			break;
	if (j->ntemp == 0 || j->t->removed) {
		drain__job_retry(j);
		return;
	}
	bounce_start(j, DSN_ACTION_DELAYED, j->temp, j->ntemp);
}

/* ---- the job's bounce steps ------------------------------------------- */

void
drain__job_settle(struct drain_job *j)
{
	if (j->nbounce == 0)
		bounce_2_after_dsn(j, BOUNCE_DONE);
	else if (j->t->removed)
		bounce_2_after_dsn(j, BOUNCE_LATER);  /* shutting down */
	else
		bounce_start(j, DSN_ACTION_FAILED, j->bounce, j->nbounce);
}

void
drain__job_fail_all(struct drain_job *j, const char *enh, const char *reason)
{
	struct smtp_client_reply rp;

	memset(&rp, 0, sizeof(rp));
	rp.outcome = SMTP_CLIENT_PERMFAIL;
	rp.local = true;
	snprintf(rp.enh, sizeof(rp.enh), "%s", enh);
	snprintf(rp.text, sizeof(rp.text), "%s", reason);
	for (size_t i = 0; i < j->cm.nrcpt; i++)
		if (drain__fate_add(&j->bounce, &j->nbounce, j->cm.nrcpt, j->map[i],
		    &rp) != 0)
			j->leftover = true;
	drain__job_settle(j);
}

/* The bounce DSN for j->bounce is done (or was not needed): settle those
 * recipients, then send a delay warning for j->temp if one is due. */
static void
bounce_2_after_dsn(struct drain_job *j, enum bounce_result result)
{
	struct drain_tenant *t = j->t;
	struct drain *d = t->d;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	const char *how = j->dsn_how ? j->dsn_how : "none";

	if (result == BOUNCE_LATER) {
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
			bounce_log(j, env->rcpt[j->bounce[i].env].addr,
			    &j->bounce[i].reply, how);
			drain__job_mark(j, j->bounce[i].env, SPOOL_RCPT_BOUNCED);
			stats_add(d->stats, t->name, STAT_BOUNCED, 1);
		}
	}
	/* A delay warning, once, for the recipients that wait. */
	if (j->ntemp > 0 && !t->removed && result != BOUNCE_LATER && delay_due(j)) {
		(void)spool_mark_warned(d->spool, j->qid, NULL, NULL);
		bounce_start(j, DSN_ACTION_DELAYED, j->temp, j->ntemp);
		return;
	}
	drain__job_retry(j);
}

/* ---- building and sending one DSN --------------------------------------- */

/*
 * Send a DSN with ACTION about FATES of job J; then bounce_2_after_dsn()
 * (a bounce) or drain__job_retry() (a delay warning) runs with the result.
 * The job holds a reference meanwhile, dropped in bounce_done().
 */
static void
bounce_start(struct drain_job *j, enum dsn_action action,
    struct drain_fate *fates, size_t n)
{
	struct drain_dsn *x;
	size_t cap;

	j->refs++;                    /* dropped in bounce_done() */
	x = calloc(1, sizeof(*x));
	if (x == NULL) {
		if (action == DSN_ACTION_FAILED)
			bounce_2_after_dsn(j, BOUNCE_LATER);
		else
			drain__job_retry(j);
		drain__job_unref(j);  /* the one taken above */
		return;
	}
	j->dsn = x;
	x->j = j;
	x->action = action;
	x->fates = fates;
	x->nfates = n;
	if (spool_msg_envelope(j->msg)->sender[0] == '\0') {
		/* Never a report to the null sender (RFC 5321 6.1). */
		snprintf(x->why, sizeof(x->why), "null sender");
		bounce_done(x);
		return;
	}
	cap = spool_msg_size(j->msg) < DSN_HEADERS_MAX ?
	    (size_t)spool_msg_size(j->msg) : DSN_HEADERS_MAX;
	x->hdr = malloc(cap + 1);
	x->hdrcap = cap;
	if (x->hdr == NULL) {
		x->result = BOUNCE_LATER;
		bounce_done(x);
		return;
	}
	x->hdr[0] = '\0';
	if (cap == 0) {
		bounce_build(x);
		return;
	}
	if (spool_msg_read(j->msg, 0, cap, bounce_on_header_chunk, x) != 0) {
		x->result = BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why), "cannot read the message");
		bounce_done(x);
	}
}

/* Collect the original's header section (up to DSN_HEADERS_MAX). */
static void
bounce_on_header_chunk(void *arg, int status, const void *buf, size_t len)
{
	struct drain_dsn *x = arg;
	uint64_t size = spool_msg_size(x->j->msg);
	char *end;

	if (x->j->t->removed || status < 0) {
		x->result = BOUNCE_LATER;
		if (status < 0)
			snprintf(x->why, sizeof(x->why), "cannot read the message: "
			    "%s", spool_strerror(status));
		bounce_done(x);
		return;
	}
	if (len > x->hdrcap - x->hdrlen)
		len = x->hdrcap - x->hdrlen;
	memcpy(x->hdr + x->hdrlen, buf, len);
	x->hdrlen += len;
	x->hdr[x->hdrlen] = '\0';
	end = memmem(x->hdr, x->hdrlen, "\r\n\r\n", 4);
	if (end == NULL && len > 0 && x->hdrlen < x->hdrcap) {
		if (spool_msg_read(x->j->msg, x->hdrlen, x->hdrcap - x->hdrlen,
		    bounce_on_header_chunk, x) != 0) {
			x->result = BOUNCE_LATER;
			snprintf(x->why, sizeof(x->why), "cannot read the message");
			bounce_done(x);
		}
		return;
	}
	if (end != NULL) {
		x->hdrlen = (size_t)(end - x->hdr) + 2;
		x->body_off = x->hdrlen + 2;
	} else {
		/* No empty line within reach: all header, or cut. */
		x->body_off = size;
	}
	x->body_len = size - x->body_off;
	bounce_build(x);
}

/* The per-recipient part of the report; DIAG holds the diagnostic lines. */
static void
bounce_report_rcpts(struct drain_dsn *x, struct dsn_rcpt *dr,
    char (*diag)[1100])
{
	struct drain_job *j = x->j;
	struct drain *d = j->t->d;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);

	for (size_t i = 0; i < x->nfates; i++) {
		const struct spool_rcpt *sr = &env->rcpt[x->fates[i].env];
		const struct smtp_client_reply *rp = &x->fates[i].reply;

		drain__reply_line(rp, diag[i], sizeof(diag[i]));
		dr[i].addr = sr->addr;
		dr[i].orcpt = sr->orcpt;
		dr[i].notify = sr->notify;
		dr[i].action = x->action;
		dr[i].status = rp->enh[0] ? rp->enh : NULL;
		dr[i].remote_mta = rp->local ? NULL : j->relay;
		dr[i].diagnostic = rp->local ? rp->text : diag[i];
		dr[i].diagnostic_local = rp->local;
		dr[i].last_attempt_ms = drain__now(d);
		if (x->action == DSN_ACTION_DELAYED)
			dr[i].retry_until_ms = env->arrival_ms +
			    (int64_t)j->t->queue_lifetime_ms;
	}
}

/* The header section is read: build the report (dsn_build), then route it. */
static void
bounce_build(struct drain_dsn *x)
{
	struct drain_job *j = x->j;
	struct drain *d = j->t->d;
	const struct spool_envelope *env = spool_msg_envelope(j->msg);
	struct dsn_rcpt *dr = calloc(x->nfates, sizeof(*dr));
	char (*diag)[1100] = calloc(x->nfates, sizeof(*diag));
	struct dsn_report rep;
	int rc;

	if (dr == NULL || diag == NULL) {
		free(dr);
		free(diag);
		x->result = BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why), "out of memory");
		bounce_done(x);
		return;
	}
	bounce_report_rcpts(x, dr, diag);
	memset(&rep, 0, sizeof(rep));
	rep.hostname = d->cfg->hostname;
	rep.sender = env->sender;
	rep.queue_id = j->qids;
	rep.envid = env->envid;
	rep.ret = env->ret;
	rep.body = env->body;
	rep.smtputf8 = env->smtputf8;
	rep.arrival_ms = env->arrival_ms;
	rep.now_ms = drain__now(d);
	rep.nonce = drain__random();
	rep.headers = x->hdr;
	rep.headers_len = x->hdrlen;
	rep.message_size = spool_msg_size(j->msg);
	rep.rcpt = dr;
	rep.nrcpt = x->nfates;
	rc = dsn_build(&rep, &x->out);
	free(dr);
	free(diag);
	if (rc != DSN_OK) {
		/* rc > 0: no report is wanted (NOTIFY); otherwise retry. */
		x->result = rc > 0 ? BOUNCE_DONE : BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why), "%s", dsn_strerror(rc));
		bounce_done(x);
		return;
	}
	bounce_route(x);
}

/* The report's bytes: prefix, then the original body from the spool, then
 * the suffix (smtp_client's read function). */
static int
bounce_read(void *arg, uint64_t off, size_t max, smtp_client_chunk_cb cb,
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

/* The report is built: the message to send, and where it goes. */
static void
bounce_route(struct drain_dsn *x)
{
	struct drain *d = x->j->t->d;
	const struct config *cfg = d->cfg;
	const struct spool_envelope *env = spool_msg_envelope(x->j->msg);
	const char *at;

	x->rcpt.addr = env->sender;
	x->rcpt.notify = ENV_NOTIFY_NEVER;  /* no report about a report */
	x->cm.sender = "";
	x->cm.rcpt = &x->rcpt;
	x->cm.nrcpt = 1;
	x->cm.size = x->out.prefix_len + x->out.suffix_len +
	    (x->out.include_body ? x->body_len : 0);
	x->cm.body = x->out.eightbit ? ENV_BODY_8BITMIME : ENV_BODY_NONE;
	x->cm.smtputf8 = x->out.smtputf8;
	x->cm.read = bounce_read;
	x->cm.read_arg = x;
	if (cfg->has_bounce_relay) {
		x->res = drain__resolve_start(d, &cfg->bounce_relay, 1, NULL, 25,
		    bounce_on_resolved, x);
	} else {
		at = strrchr(env->sender, '@');
		if (at == NULL || at[1] == '\0') {
			x->result = BOUNCE_REFUSED;
			snprintf(x->why, sizeof(x->why), "sender has no domain");
			bounce_done(x);
			return;
		}
		x->res = drain__resolve_start(d, NULL, 0, at + 1, cfg->mx_port,
		    bounce_on_resolved, x);
	}
	if (x->res == NULL) {
		x->result = BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why),
		    "cannot resolve the DSN's destination");
		bounce_done(x);
	}
}

static void
bounce_on_resolved(void *arg, int status, const char *why,
    struct drain_target *t, size_t n)
{
	struct drain_dsn *x = arg;

	x->res = NULL;
	if (status != DNS_OK || n == 0) {
		free(t);
		/* A domain that does not exist or takes no mail will never
		 * get its bounce: give up on it, as on a 5xx. */
		x->result = status == DNS_ENXDOMAIN || status == DNS_ENULLMX ||
		    status == DNS_ENODATA ? BOUNCE_REFUSED : BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why), "%s", why);
		bounce_done(x);
		return;
	}
	x->targets = t;
	x->ntargets = n;
	x->idx = 0;
	bounce_connect(x);
}

static void
bounce_connect(struct drain_dsn *x)
{
	static const struct smtp_client_callbacks cbs = {
		bounce_on_ready, bounce_on_sent, bounce_on_closed,
	};
	struct drain *d = x->j->t->d;
	uint64_t tmo = d->cfg->smtp_timeout_ms;
	struct smtp_client_options o;

	drain__client_options(d, &x->targets[x->idx], tmo,
	    tmo < DRAIN_CONNECT_TIMEOUT_MS ? tmo : DRAIN_CONNECT_TIMEOUT_MS, &o);
	if (smtp_client_new(&o, &cbs, x, &x->c) != 0) {
		x->c = NULL;
		x->result = BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why), "cannot start an SMTP session");
		bounce_done(x);
	}
}

static void
bounce_on_ready(void *arg, struct smtp_client *c)
{
	struct drain_dsn *x = arg;

	if (x->j->t->removed || smtp_client_send(c, &x->cm) != 0)
		smtp_client_abort(c);
}

static void
bounce_on_sent(void *arg, struct smtp_client *c,
    const struct smtp_client_result *res)
{
	struct drain_dsn *x = arg;
	char line[1100];

	drain__reply_line(res->reply, line, sizeof(line));
	bounce_copy(x->why, sizeof(x->why), line);
	if (res->rcpt[0].outcome == SMTP_CLIENT_DELIVERED) {
		x->result = BOUNCE_DONE;
		x->sent = true;
	} else if (res->rcpt[0].outcome == SMTP_CLIENT_PERMFAIL) {
		x->result = BOUNCE_REFUSED;
	} else {
		x->result = BOUNCE_LATER;
	}
	smtp_client_quit(c);
}

static void
bounce_on_closed(void *arg, const struct smtp_client_end *end)
{
	struct drain_dsn *x = arg;

	x->c = NULL;
	if (x->sent || x->result == BOUNCE_REFUSED || x->j->t->removed) {
		if (x->j->t->removed && !x->sent)
			x->result = BOUNCE_LATER;
		bounce_done(x);
		return;
	}
	if (x->result == BOUNCE_DONE) {
		/* No answer to our message: the session itself failed. */
		x->result = BOUNCE_LATER;
		bounce_copy(x->why, sizeof(x->why), end->text);
	}
	if (!end->ready && x->idx + 1 < x->ntargets) {
		/* That address would not talk to us: try the next one. */
		x->idx++;
		x->result = BOUNCE_DONE;
		bounce_connect(x);
		return;
	}
	bounce_done(x);
}

/* The DSN is over: log it, continue the job, free the DSN. */
static void
bounce_done(struct drain_dsn *x)
{
	struct drain_job *j = x->j;

	bounce_log_dsn(x);
	j->dsn = NULL;
	j->dsn_how = x->sent ? "sent" : x->result == BOUNCE_DONE ? "none" :
	    x->result == BOUNCE_REFUSED ? "refused" : "deferred";
	if (x->action == DSN_ACTION_FAILED)
		bounce_2_after_dsn(j, x->result);
	else
		drain__job_retry(j);
	drain__resolve_cancel(x->res);
	dsn_output_free(&x->out);
	free(x->targets);
	free(x->hdr);
	free(x);
	drain__job_unref(j);          /* from bounce_start() */
}

void
drain__dsn_abort(struct drain_job *j)
{
	struct drain_dsn *x = j->dsn;

	if (x == NULL)
		return;
	if (x->c) {
		/* bounce_on_closed() follows and ends it. */
		smtp_client_abort(x->c);
	} else if (x->res) {
		/* Waiting for DNS: give up now (bounce next time). */
		drain__resolve_cancel(x->res);
		x->res = NULL;
		x->result = BOUNCE_LATER;
		snprintf(x->why, sizeof(x->why), "shutting down");
		bounce_done(x);
	}
	/* Otherwise a spool read is under way and sees t->removed. */
}

/* ---- mxspoolctl bounce -------------------------------------------------- */

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
	t = drain__tenant_find(d, item.tenant);
	if (t == NULL || item.claimed)
		return SPOOL_EINVAL;  /* unknown tenant, or being delivered */
	/* Out of the scheduler's reach first: not due for an hour. */
	(void)spool_defer(d->spool, qid, drain__now(d) + 3600 * 1000, NULL, NULL);
	return drain__job_start(t, qid, NULL, false, DRAIN_JOB_ADMIN);
}
