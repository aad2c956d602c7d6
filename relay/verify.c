/*
 * verify.c - recipients = learn: live verification at the primary, the
 * per-tenant caches, and their files (see verify.h for the contract).
 *
 * Per learn tenant:
 *   - an rcache (the answers), loaded from DIR/TENANT at start and written
 *     back (whole, atomically) a few seconds after it changed and at close;
 *   - the requests: distinct addresses waiting for a probe or in one, each
 *     with the RCPTs (waiters) that wait for its answer, each waiter with
 *     its own deadline (verify_timeout after its RCPT);
 *   - up to verify_concurrency probe sessions (smtp_client in delivery
 *     mode, verify_only messages: MAIL FROM:<>, up to VERIFY_BATCH RCPTs,
 *     no DATA; the next transaction starts with RSET), reused while they
 *     are idle for less than VERIFY_IDLE_MS;
 *   - a token bucket (drain_policy.h) that every RCPT probe takes one token
 *     from, at min(verify_rate, the drain's limit in force).
 *
 * The answer of an RCPT probe: 2xx -> valid (cached verify_valid_ttl); 5xx
 * to the RCPT after an accepted MAIL -> invalid (verify_invalid_ttl);
 * anything else (4xx, MAIL refused, the session failed) -> not known, not
 * cached, and the waiters get the down-path answer.  A waiter whose
 * deadline passes gets the down-path answer too; the probe, if one is
 * under way, still fills the cache for the next RCPT.
 *
 * The file recipe (on the threadpool, never the loop thread): write
 * DIR/.TENANT.tmp, fsync it, close (checked), rename over DIR/TENANT,
 * fsync DIR.  A crash leaves the old file or the new one, never a mix; a
 * file that is damaged anyway (digest, structure, too big) is logged and
 * ignored: the daemon starts with an empty cache for that tenant and
 * overwrites the file at the next save.  The image format is rcache.h's.
 *
 * Everything runs on the loop thread except the file work.  Lifetimes: a
 * session holds its tenant (nsess); a file job holds its tenant (busy) and
 * the verifier (works).  Tenants are freed only at close.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mxspool/drain_policy.h"
#include "mxspool/log.h"
#include "mxspool/rcache.h"
#include "mxspool/smtp_client.h"
#include "mxspool/util.h"
#include "mxspool/verify.h"

#define VERIFY_TICK_MS 100            /* deadlines, dispatch, saves */
#define VERIFY_BATCH 8                /* RCPTs in one probe transaction */
#define VERIFY_IDLE_MS (10 * 1000)    /* an idle probe session says QUIT */
#define VERIFY_SESSION_TX 100         /* transactions before a new session */
#define VERIFY_SAVE_MS (5 * 1000)     /* a changed cache is written within */
/* After a session that failed before it was ready (refused, timed out,
 * 421 at the banner), no new one for this long: a primary the drain still
 * believes up is not hammered with connects meanwhile. */
#define VERIFY_RETRY_MS 1000

struct verify_tenant;

struct verify_wait {
	struct verify_wait *next;
	verify_cb cb;
	void *arg;
	int64_t deadline;             /* monotonic ms */
};

/* One address being verified. */
struct verify_req {
	struct verify_req *next;
	char addr[RCACHE_ADDR_MAX + 1];
	struct verify_wait *waiters;
	bool inflight;                /* in a probe transaction */
	/* Where its probe goes (verify_route(), at each dispatch): a tenant's
	 * domains may have different primaries (primary = mx). */
	bool routed;
	struct sockaddr_storage tg;
	char host[CONFIG_HOST_MAX + 1];
};

struct verify_sess {
	struct verify_sess *next;
	struct verify_tenant *t;
	struct smtp_client *c;
	struct sockaddr_storage addr;
	char host[CONFIG_HOST_MAX + 1];
	bool ready;                   /* READY and no transaction */
	bool was_ready;               /* READY was reached once */
	bool quitting;
	unsigned txs;
	int64_t idle_since;
	struct verify_req *batch[VERIFY_BATCH];
	size_t nbatch;
	struct smtp_client_rcpt rcpt[VERIFY_BATCH];
	struct smtp_client_msg msg;
};

struct verify_tenant {
	struct verify_tenant *next;
	struct verify *v;
	char name[CONFIG_TENANT_NAME_MAX + 1];
	bool learn;                   /* in the config with recipients = learn */
	bool accept_unknown;
	uint64_t timeout_ms, valid_ttl_ms, invalid_ttl_ms;
	unsigned concurrency;
	double rate;
	size_t cache_size;
	struct rcache *cache;
	bool loaded;                  /* the file was read (or is missing/bad) */
	bool dirty;
	int64_t dirty_since;
	bool busy;                    /* a file job runs */
	struct drain_bucket bucket;
	struct verify_req *reqs;
	unsigned nreqs;
	struct verify_sess *sess;
	unsigned nsess;
	int64_t no_open_until;        /* monotonic ms; see VERIFY_RETRY_MS */
};

struct verify {
	uv_loop_t *loop;
	char *dir;
	bool (*primary)(void *arg, const char *tenant, const char *rcpt,
	    struct verify_primary *out);
	void *arg;
	int64_t (*now_ms)(void);
	const struct config *cfg;
	struct tls_ctx *tls;
	uv_timer_t tick;
	bool tick_open;
	/* verify_rcpt() dispatches on the next loop turn, through this, so
	 * that no answer ever runs inside it. */
	uv_timer_t kick;
	bool kick_open;
	struct verify_tenant *tenants;
	unsigned works;               /* file jobs on the threadpool */
	bool closing;
	void (*done)(void *arg);
	void *done_arg;
};

/* A file job: load or save one tenant's cache. */
struct verify_job {
	uv_work_t work;
	struct verify_tenant *t;
	bool save;
	char path[4096], tmp[4096], dir[4096];
	uint8_t *buf;
	size_t len, max;
	int err;                      /* errno, EFBIG: over the bound */
	const char *step;             /* what failed */
};

static void verify_dispatch(struct verify_tenant *t);
static void verify_maybe_done(struct verify *v);

const char *
verify_answer_name(enum verify_answer a)
{
	switch (a) {
	case VERIFY_ACCEPT: return "accept";
	case VERIFY_REJECT: return "reject";
	case VERIFY_TEMPFAIL: return "tempfail";
	case VERIFY_PENDING: return "pending";
	}
	return "?";
}

static int64_t
verify_now(const struct verify *v)
{
	return v->now_ms();
}

/* ---- tenants ---------------------------------------------------------- */

static struct verify_tenant *
verify_tenant_find(struct verify *v, const char *name)
{
	for (struct verify_tenant *t = v->tenants; t; t = t->next)
		if (strcmp(t->name, name) == 0)
			return t;
	return NULL;
}

/* The answer while the primary cannot be asked, for an address the cache
 * does not know. */
static enum verify_answer
verify_down_answer(const struct verify_tenant *t)
{
	return t->accept_unknown ? VERIFY_ACCEPT : VERIFY_TEMPFAIL;
}

static void
verify_settings(struct verify_tenant *t, const struct config_tenant *ct)
{
	t->learn = ct->recipients_learn;
	t->accept_unknown = ct->unknown_recipient_accept;
	t->timeout_ms = ct->verify_timeout_ms;
	t->valid_ttl_ms = ct->verify_valid_ttl_ms;
	t->invalid_ttl_ms = ct->verify_invalid_ttl_ms;
	t->concurrency = ct->verify_concurrency ? ct->verify_concurrency : 1;
	t->rate = ct->verify_rate;
	t->cache_size = (size_t)ct->verify_cache_size;
	rcache_set_max(t->cache, t->cache_size);
}

/* ---- the file --------------------------------------------------------- */

/* Threadpool: read the file whole, at most job->max bytes. */
static void
verify_job_load(struct verify_job *j)
{
	struct stat sb;
	size_t off = 0;
	int fd = open(j->path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		j->err = errno;
		j->step = "open";
		return;
	}
	if (fstat(fd, &sb) != 0) {
		j->err = errno;
		j->step = "stat";
		goto done;
	}
	if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > j->max) {
		j->err = S_ISREG(sb.st_mode) ? EFBIG : EINVAL;
		j->step = "size";
		goto done;
	}
	j->buf = malloc((size_t)sb.st_size + 1);
	if (j->buf == NULL) {
		j->err = ENOMEM;
		j->step = "read";
		goto done;
	}
	while (off < (size_t)sb.st_size) {
		ssize_t n = read(fd, j->buf + off, (size_t)sb.st_size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			j->err = n < 0 ? errno : EIO;   /* shrank under us */
			j->step = "read";
			goto done;
		}
		off += (size_t)n;
	}
	j->len = off;
done:
	(void)close(fd);
}

/* Threadpool: the durable write recipe of the file comment. */
static void
verify_job_save(struct verify_job *j)
{
	size_t off = 0;
	int fd = -1, dfd;

	if (util_mkdir_p(j->dir, 0700) != 0) {
		j->err = errno;
		j->step = "mkdir";
		return;
	}
	fd = open(j->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		j->err = errno;
		j->step = "open";
		return;
	}
	while (off < j->len) {
		ssize_t n = write(fd, j->buf + off, j->len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			j->err = errno;
			j->step = "write";
			goto fail;
		}
		off += (size_t)n;
	}
	if (fsync(fd) != 0) {
		j->err = errno;
		j->step = "fsync";
		goto fail;
	}
	if (close(fd) != 0) {
		fd = -1;
		j->err = errno;
		j->step = "close";
		goto fail;
	}
	fd = -1;
	if (rename(j->tmp, j->path) != 0) {
		j->err = errno;
		j->step = "rename";
		goto fail;
	}
	/* The rename is durable only once the directory is. */
	dfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) != 0) {
		j->err = errno;
		j->step = "fsync dir";
	}
	if (dfd >= 0)
		(void)close(dfd);
	return;
fail:
	if (fd >= 0)
		(void)close(fd);
	(void)unlink(j->tmp);
}

static void
verify_job_run(uv_work_t *w)
{
	struct verify_job *j = w->data;

	if (j->save)
		verify_job_save(j);
	else
		verify_job_load(j);
}

static void
verify_job_loaded(struct verify_job *j)
{
	struct verify_tenant *t = j->t;
	size_t loaded = 0;
	int rc;

	t->loaded = true;
	if (j->err == ENOENT)
		return;   /* never saved: a new tenant */
	if (j->err != 0) {
		log_event(LOG_LEVEL_WARN, "recipients", "tenant=%s file=%s "
		    "result=ignored step=%s error=\"%s\"", t->name, j->path, j->step,
		    j->err == EFBIG ? "larger than the cache can be" : strerror(j->err));
		return;
	}
	rc = rcache_decode(t->cache, j->buf, j->len, verify_now(t->v), &loaded);
	if (rc != RCACHE_OK) {
		log_event(LOG_LEVEL_WARN, "recipients", "tenant=%s file=%s "
		    "result=ignored error=\"%s\"", t->name, j->path, rcache_strerror(rc));
		return;
	}
	log_event(LOG_LEVEL_INFO, "recipients", "tenant=%s file=%s result=loaded "
	    "entries=%zu", t->name, j->path, loaded);
}

static void
verify_job_after(uv_work_t *w, int status)
{
	struct verify_job *j = w->data;
	struct verify_tenant *t = j->t;
	struct verify *v = t->v;

	if (status != 0 && j->err == 0) {
		j->err = ECANCELED;
		j->step = "queue";
	}
	if (j->save && j->err != 0) {
		log_event(LOG_LEVEL_ERR, "recipients", "tenant=%s file=%s "
		    "result=failed step=%s error=\"%s\"", t->name, j->path, j->step,
		    strerror(j->err));
		/* Written again at the next tick (not at close: the final
		 * save is tried once). */
		if (!t->dirty && !v->closing) {
			t->dirty = true;
			t->dirty_since = util_mono_ms();
		}
	} else if (!j->save) {
		verify_job_loaded(j);
	}
	t->busy = false;
	v->works--;   /* from verify_job_start() */
	free(j->buf);
	free(j);
	verify_maybe_done(v);
}

/* Start loading (SAVE false) or writing T's file.  0, or -1 (nothing
 * started; a save stays due). */
static int
verify_job_start(struct verify_tenant *t, bool save)
{
	struct verify *v = t->v;
	struct verify_job *j;

	if (t->busy)
		return -1;
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return -1;
	j->t = t;
	j->save = save;
	/* Bounded on load: never more than the largest file a cache of
	 * verify_cache_size entries writes. */
	j->max = rcache_image_max(t->cache_size);
	snprintf(j->dir, sizeof(j->dir), "%s", v->dir);
	snprintf(j->path, sizeof(j->path), "%s/%s", v->dir, t->name);
	snprintf(j->tmp, sizeof(j->tmp), "%s/.%s.tmp", v->dir, t->name);
	if (save) {
		rcache_expire(t->cache, verify_now(v));
		if (rcache_encode(t->cache, verify_now(v), &j->buf, &j->len) != RCACHE_OK) {
			free(j);
			return -1;
		}
	}
	j->work.data = j;
	if (uv_queue_work(v->loop, &j->work, verify_job_run, verify_job_after) != 0) {
		free(j->buf);
		free(j);
		return -1;
	}
	if (save)
		t->dirty = false;
	t->busy = true;
	v->works++;   /* until verify_job_after() */
	return 0;
}

static void
verify_mark_dirty(struct verify_tenant *t)
{
	if (!t->dirty) {
		t->dirty = true;
		t->dirty_since = util_mono_ms();
	}
}

/* ---- answers ---------------------------------------------------------- */

static void
verify_req_unlink(struct verify_tenant *t, struct verify_req *r)
{
	for (struct verify_req **pp = &t->reqs; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			t->nreqs--;
			return;
		}
	}
}

/*
 * Answer the detached list W with A.  A callback resumes an SMTP session,
 * which may run its next pipelined RCPT and so call verify_rcpt() (and
 * through it verify_dispatch()) at once: callers detach what they answer
 * and touch no request or list cursor they held before the calls.
 */
static void
verify_answer_all(struct verify_wait *w, enum verify_answer a)
{
	struct verify_wait *next;

	for (; w; w = next) {
		next = w->next;
		w->cb(w->arg, a);
		free(w);
	}
}

/* Give every waiter of R answer A and free R. */
static void
verify_req_finish(struct verify_tenant *t, struct verify_req *r,
    enum verify_answer a)
{
	struct verify_wait *w = r->waiters;

	verify_req_unlink(t, r);
	free(r);
	verify_answer_all(w, a);
}

/* Detach the waiters of R whose deadline passed; NULL if none. */
static struct verify_wait *
verify_req_expired(struct verify_req *r, int64_t mono)
{
	struct verify_wait **pp = &r->waiters, *w, *out = NULL;

	while ((w = *pp) != NULL) {
		if (w->deadline > mono) {
			pp = &w->next;
			continue;
		}
		*pp = w->next;
		w->next = out;
		out = w;
	}
	return out;
}

/* Every request not in a probe gets answer A (reload, close). */
static void
verify_finish_queued(struct verify_tenant *t, enum verify_answer a)
{
	struct verify_req *r;

	for (;;) {
		for (r = t->reqs; r && r->inflight; r = r->next)
			;
		if (r == NULL)
			return;
		verify_req_finish(t, r, a);   /* may change t->reqs: start over */
	}
}

static void
verify_log_result(struct verify_sess *s, const char *addr, const char *result,
    const struct smtp_client_reply *rp)
{
	char line[SMTP_PROTO_REPLY_TEXT_MAX + 32], q[SMTP_PROTO_REPLY_TEXT_MAX + 64];
	char *nl;

	if (rp->code > 0)
		snprintf(line, sizeof(line), "%d %s%s%.300s", rp->code, rp->enh,
		    rp->enh[0] ? " " : "", rp->text);
	else
		snprintf(line, sizeof(line), "%.300s", rp->text);
	while ((nl = strchr(line, '\n')) != NULL)
		*nl = ' ';
	log_event(LOG_LEVEL_INFO, "verify", "tenant=%s rcpt=<%s> result=%s "
	    "relay=%s reply=%s", s->t->name, addr, result, s->host,
	    log_quote(q, sizeof(q), line));
}

/* ---- probe sessions --------------------------------------------------- */

static void
verify_sess_unlink(struct verify_tenant *t, struct verify_sess *s)
{
	for (struct verify_sess **pp = &t->sess; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			t->nsess--;
			return;
		}
	}
}

/* The batch of S is over without an answer: its waiters get the down path. */
static void
verify_sess_drop_batch(struct verify_sess *s)
{
	struct verify_req *batch[VERIFY_BATCH];
	size_t n = s->nbatch;

	memcpy(batch, s->batch, n * sizeof(batch[0]));
	s->nbatch = 0;
	for (size_t i = 0; i < n; i++)
		verify_req_finish(s->t, batch[i], verify_down_answer(s->t));
}

static void
verify_on_ready(void *arg, struct smtp_client *c)
{
	struct verify_sess *s = arg;

	(void)c;
	s->ready = true;
	s->was_ready = true;
	s->idle_since = util_mono_ms();
	verify_dispatch(s->t);
}

/* One RCPT reply: cache it and answer the waiters. */
static void
verify_on_rcpt(struct verify_sess *s, struct verify_req *r,
    const struct smtp_client_reply *rp, bool rcpt_answered)
{
	struct verify_tenant *t = s->t;
	int64_t now = verify_now(t->v);

	if (rp->code / 100 == 2) {
		verify_log_result(s, r->addr, "valid", rp);
		if (rcache_put(t->cache, r->addr, RCACHE_VALID, now,
		    now + (int64_t)t->valid_ttl_ms) == RCACHE_OK)
			verify_mark_dirty(t);
		verify_req_finish(t, r, VERIFY_ACCEPT);
	} else if (rp->code / 100 == 5 && rcpt_answered && !rp->local) {
		verify_log_result(s, r->addr, "invalid", rp);
		if (rcache_put(t->cache, r->addr, RCACHE_INVALID, now,
		    now + (int64_t)t->invalid_ttl_ms) == RCACHE_OK)
			verify_mark_dirty(t);
		verify_req_finish(t, r, VERIFY_REJECT);
	} else {
		verify_log_result(s, r->addr, "unknown", rp);
		verify_req_finish(t, r, verify_down_answer(t));
	}
}

static void
verify_on_sent(void *arg, struct smtp_client *c,
    const struct smtp_client_result *res)
{
	struct verify_sess *s = arg;
	struct verify_req *batch[VERIFY_BATCH];
	size_t n = s->nbatch;
	/* Without a RCPT reply (MAIL refused, session broke), a 5xx is the
	 * MAIL's or our own: it says nothing about the address. */
	bool answered = res->rcpt_latency_ms >= 0 && res->status == 0;

	memcpy(batch, s->batch, n * sizeof(batch[0]));
	s->nbatch = 0;
	for (size_t i = 0; i < n; i++)
		verify_on_rcpt(s, batch[i], &res->rcpt[i], answered);
	s->txs++;
	if (res->status != 0 || !smtp_client_is_ready(c))
		return;   /* CLOSED follows */
	s->ready = true;
	s->idle_since = util_mono_ms();
	if (s->txs >= VERIFY_SESSION_TX || !s->t->learn || s->t->v->closing) {
		s->quitting = true;
		s->ready = false;
		smtp_client_quit(c);
		return;
	}
	verify_dispatch(s->t);
}

static void
verify_on_closed(void *arg, const struct smtp_client_end *end)
{
	struct verify_sess *s = arg;
	struct verify_tenant *t = s->t;
	struct verify *v = t->v;

	if (end->status != 0 && !s->quitting && !v->closing) {
		char q[SMTP_PROTO_REPLY_TEXT_MAX + 64];

		log_event(LOG_LEVEL_INFO, "verify", "tenant=%s relay=%s "
		    "result=session_failed error=%s", t->name, s->host,
		    log_quote(q, sizeof(q), end->text[0] ? end->text :
		    smtp_client_strerror(end->status)));
	}
	if (!s->was_ready && !s->quitting)
		t->no_open_until = util_mono_ms() + VERIFY_RETRY_MS;
	verify_sess_drop_batch(s);
	verify_sess_unlink(t, s);
	free(s);
	if (v->closing) {
		verify_maybe_done(v);
		return;
	}
	verify_dispatch(t);
}

static enum smtp_client_tls
verify_tls_mode(const struct config *cfg)
{
	switch (cfg->tls_outbound) {
	case CONFIG_TLS_OUT_NONE: return SMTP_CLIENT_TLS_NONE;
	case CONFIG_TLS_OUT_OPPORTUNISTIC: return SMTP_CLIENT_TLS_OPPORTUNISTIC;
	case CONFIG_TLS_OUT_REQUIRED: return SMTP_CLIENT_TLS_REQUIRED;
	case CONFIG_TLS_OUT_VERIFY: return SMTP_CLIENT_TLS_VERIFY;
	}
	return SMTP_CLIENT_TLS_NONE;
}

static struct verify_sess *
verify_sess_open(struct verify_tenant *t, const struct verify_primary *p)
{
	static const struct smtp_client_callbacks cbs = {
		verify_on_ready, verify_on_sent, verify_on_closed,
	};
	struct verify *v = t->v;
	struct smtp_client_options o;
	struct verify_sess *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->t = t;
	s->addr = p->addr;
	snprintf(s->host, sizeof(s->host), "%s", p->host);
	memset(&o, 0, sizeof(o));
	o.loop = v->loop;
	o.addr = (const struct sockaddr *)&s->addr;
	o.host = s->host;
	o.helo_name = v->cfg->hostname;
	o.tls_mode = verify_tls_mode(v->cfg);
	o.tls_ctx = v->tls;
	o.timeout_ms = t->timeout_ms;
	o.connect_timeout_ms = t->timeout_ms;
	if (smtp_client_new(&o, &cbs, s, &s->c) != 0) {
		free(s);
		return NULL;
	}
	s->next = t->sess;
	t->sess = s;
	t->nsess++;
	return s;
}

/* Same address and port (the rest of a sockaddr_storage is padding). */
static bool
verify_same_target(const struct sockaddr_storage *a,
    const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;

		return x->sin_port == y->sin_port &&
		    x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;

		return x->sin6_port == y->sin6_port &&
		    memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return false;
}

/* A request a probe may take now: queued, waited for, with a target. */
static bool
verify_req_ready(const struct verify_req *r)
{
	return !r->inflight && r->waiters != NULL && r->routed;
}

/* Hand S the next queued requests for its target, one bucket token each. */
static void
verify_sess_send(struct verify_sess *s, int64_t mono)
{
	struct verify_tenant *t = s->t;

	s->nbatch = 0;
	for (struct verify_req *r = t->reqs; r && s->nbatch < VERIFY_BATCH; r = r->next) {
		if (!verify_req_ready(r) || !verify_same_target(&r->tg, &s->addr))
			continue;
		if (!drain_bucket_take(&t->bucket, 1, mono))
			break;
		r->inflight = true;
		s->batch[s->nbatch] = r;
		memset(&s->rcpt[s->nbatch], 0, sizeof(s->rcpt[0]));
		s->rcpt[s->nbatch].addr = r->addr;
		s->nbatch++;
	}
	if (s->nbatch == 0)
		return;
	memset(&s->msg, 0, sizeof(s->msg));
	s->msg.sender = "";
	s->msg.rcpt = s->rcpt;
	s->msg.nrcpt = s->nbatch;
	s->msg.verify_only = true;
	if (smtp_client_send(s->c, &s->msg) != 0) {
		s->quitting = true;
		s->ready = false;
		smtp_client_abort(s->c);
		verify_sess_drop_batch(s);
		return;
	}
	s->ready = false;
}

static bool
verify_queued(const struct verify_tenant *t)
{
	for (const struct verify_req *r = t->reqs; r; r = r->next)
		if (!r->inflight && r->waiters != NULL)
			return true;
	return false;
}

/*
 * Ask the drain where each queued request's probe goes now.  A request
 * whose primary is not up stays unrouted: its waiters time out to the down
 * path.  Returns the lowest drain limit in force among them (0: none).
 */
static double
verify_route(struct verify_tenant *t)
{
	struct verify *v = t->v;
	double limit = 0;

	for (struct verify_req *r = t->reqs; r; r = r->next) {
		struct verify_primary p;

		if (r->inflight || r->waiters == NULL)
			continue;
		memset(&p, 0, sizeof(p));
		r->routed = v->primary(v->arg, t->name, r->addr, &p);
		if (!r->routed)
			continue;
		r->tg = p.addr;
		snprintf(r->host, sizeof(r->host), "%s", p.host);
		if (p.rate_limit > 0 && (limit == 0 || p.rate_limit < limit))
			limit = p.rate_limit;
	}
	return limit;
}

/* A request no session (ready, busy or connecting) goes to; NULL if none. */
static struct verify_req *
verify_unserved(struct verify_tenant *t)
{
	for (struct verify_req *r = t->reqs; r; r = r->next) {
		struct verify_sess *s;

		if (!verify_req_ready(r))
			continue;
		for (s = t->sess; s; s = s->next)
			if (!s->quitting && verify_same_target(&r->tg, &s->addr))
				break;
		if (s == NULL)
			return r;
	}
	return NULL;
}

/* Start what the limits allow: idle sessions first, then new ones. */
static void
verify_dispatch(struct verify_tenant *t)
{
	struct verify *v = t->v;
	int64_t mono = util_mono_ms();
	struct verify_primary p;
	struct verify_req *r;
	double rate, limit;

	if (v->closing || !t->learn || !verify_queued(t))
		return;
	limit = verify_route(t);
	/* Never faster than the drain may send: the probes share the
	 * primary's patience with the backlog. */
	rate = t->rate;
	if (limit > 0 && limit < rate)
		rate = limit;
	drain_bucket_set(&t->bucket, rate, rate < 1 ? 1 : rate, mono);
	for (struct verify_sess *s = t->sess; s; s = s->next) {
		if (s->ready && !s->quitting && verify_queued(t))
			verify_sess_send(s, mono);
	}
	/* A busy or connecting session to the same target takes the rest
	 * later; a new one is opened only for a target nobody serves. */
	if (t->nsess < t->concurrency && mono >= t->no_open_until &&
	    (r = verify_unserved(t)) != NULL &&
	    drain_bucket_wait_ms(&t->bucket, 1, mono) == 0) {
		memset(&p, 0, sizeof(p));
		p.addr = r->tg;
		snprintf(p.host, sizeof(p.host), "%s", r->host);
		(void)verify_sess_open(t, &p);
	}
}

/* ---- the tick --------------------------------------------------------- */

static void
verify_tenant_tick(struct verify_tenant *t, int64_t mono)
{
	struct verify_req *r;
	struct verify_wait *late;

	/* Answers may change the list (see verify_answer_all): each one
	 * starts the walk over; every step drops a waiter or a request. */
again:
	for (r = t->reqs; r; r = r->next) {
		if ((late = verify_req_expired(r, mono)) != NULL) {
			verify_answer_all(late, verify_down_answer(t));
			goto again;
		}
		/* Nobody waits any more and no probe is under way: drop it. */
		if (r->waiters == NULL && !r->inflight) {
			verify_req_finish(t, r, VERIFY_TEMPFAIL);
			goto again;
		}
	}
	for (struct verify_sess *s = t->sess; s; s = s->next) {
		if (s->ready && !s->quitting &&
		    (mono - s->idle_since >= VERIFY_IDLE_MS || !t->learn)) {
			s->quitting = true;
			s->ready = false;
			smtp_client_quit(s->c);
		}
	}
	if (t->dirty && mono - t->dirty_since >= VERIFY_SAVE_MS)
		(void)verify_job_start(t, true);
	verify_dispatch(t);
}

static void
verify_on_kick(uv_timer_t *tm)
{
	struct verify *v = tm->data;

	for (struct verify_tenant *t = v->tenants; t; t = t->next)
		verify_dispatch(t);
}

static void
verify_on_tick(uv_timer_t *tm)
{
	struct verify *v = tm->data;
	int64_t mono = util_mono_ms();

	for (struct verify_tenant *t = v->tenants; t; t = t->next)
		verify_tenant_tick(t, mono);
}

/* ---- the API ------------------------------------------------------------ */

static struct verify_tenant *
verify_tenant_new(struct verify *v, const struct config_tenant *ct)
{
	struct verify_tenant *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->cache = rcache_new((size_t)ct->verify_cache_size);
	if (t->cache == NULL) {
		free(t);
		return NULL;
	}
	t->v = v;
	snprintf(t->name, sizeof(t->name), "%s", ct->name);
	verify_settings(t, ct);
	drain_bucket_init(&t->bucket, t->rate, t->rate < 1 ? 1 : t->rate,
	    util_mono_ms());
	t->next = v->tenants;
	v->tenants = t;
	if (verify_job_start(t, false) != 0)
		t->loaded = true;   /* no memory to read it: start empty */
	return t;
}

void
verify_apply_config(struct verify *v, const struct config *cfg,
    struct tls_ctx *tls)
{
	v->cfg = cfg;
	v->tls = tls;
	for (struct verify_tenant *t = v->tenants; t; t = t->next)
		t->learn = false;
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const struct config_tenant *ct = &cfg->tenants[i];
		struct verify_tenant *t = verify_tenant_find(v, ct->name);

		if (t != NULL)
			verify_settings(t, ct);
		else if (ct->recipients_learn &&
		    (t = verify_tenant_new(v, ct)) == NULL)
			log_event(LOG_LEVEL_ERR, "recipients", "tenant=%s "
			    "error=\"out of memory\" note=\"recipients are not "
			    "learned\"", ct->name);
	}
	/* A tenant that stopped learning: its waiters are answered now
	 * (the down path) and its sessions close at the next tick. */
	for (struct verify_tenant *t = v->tenants; t; t = t->next)
		if (!t->learn)
			verify_finish_queued(t, verify_down_answer(t));
}

int
verify_new(const struct verify_deps *deps, const struct config *cfg,
    struct tls_ctx *tls, struct verify **out)
{
	struct verify *v = calloc(1, sizeof(*v));

	*out = NULL;
	if (v == NULL || (v->dir = strdup(deps->dir)) == NULL) {
		free(v);
		return -1;
	}
	v->loop = deps->loop;
	v->primary = deps->primary;
	v->arg = deps->arg;
	v->now_ms = deps->now_ms ? deps->now_ms : util_now_ms;
	if (uv_timer_init(v->loop, &v->tick) != 0) {
		free(v->dir);
		free(v);
		return -1;
	}
	v->tick.data = v;
	v->tick_open = true;
	(void)uv_timer_start(&v->tick, verify_on_tick, VERIFY_TICK_MS, VERIFY_TICK_MS);
	if (uv_timer_init(v->loop, &v->kick) == 0) {
		v->kick.data = v;
		v->kick_open = true;
	}
	verify_apply_config(v, cfg, tls);
	*out = v;
	return 0;
}

enum verify_answer
verify_rcpt(struct verify *v, const char *tenant, const char *addr,
    verify_cb cb, void *arg)
{
	struct verify_tenant *t = v ? verify_tenant_find(v, tenant) : NULL;
	struct verify_primary p;
	struct verify_req *r;
	struct verify_wait *w;

	if (t == NULL || !t->learn || v->closing)
		return t ? verify_down_answer(t) : VERIFY_TEMPFAIL;
	switch (rcache_get(t->cache, addr, verify_now(v))) {
	case RCACHE_VALID: return VERIFY_ACCEPT;
	case RCACHE_INVALID: return VERIFY_REJECT;
	case RCACHE_UNKNOWN: break;
	}
	memset(&p, 0, sizeof(p));
	if (strlen(addr) > RCACHE_ADDR_MAX ||
	    !v->primary(v->arg, t->name, addr, &p))
		return verify_down_answer(t);
	for (r = t->reqs; r; r = r->next)
		if (util_strncasecmp(r->addr, addr, sizeof(r->addr)) == 0)
			break;
	if (r == NULL) {
		if (t->nreqs >= VERIFY_WAIT_MAX || (r = calloc(1, sizeof(*r))) == NULL)
			return verify_down_answer(t);
		snprintf(r->addr, sizeof(r->addr), "%s", addr);
		/* Appended: the oldest RCPT is probed first. */
		struct verify_req **pp = &t->reqs;

		while (*pp)
			pp = &(*pp)->next;
		*pp = r;
		t->nreqs++;
	}
	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		if (r->waiters == NULL && !r->inflight)
			verify_req_finish(t, r, VERIFY_TEMPFAIL);
		return verify_down_answer(t);
	}
	w->cb = cb;
	w->arg = arg;
	w->deadline = util_mono_ms() + (int64_t)t->timeout_ms;
	w->next = r->waiters;
	r->waiters = w;
	/* Without the kick timer the next tick dispatches. */
	if (v->kick_open && !uv_is_active((uv_handle_t *)&v->kick))
		(void)uv_timer_start(&v->kick, verify_on_kick, 0, 0);
	return VERIFY_PENDING;
}

void
verify_learn(struct verify *v, const char *tenant, const char *addr)
{
	struct verify_tenant *t = v ? verify_tenant_find(v, tenant) : NULL;
	int64_t now;

	if (t == NULL || !t->learn)
		return;
	now = verify_now(v);
	if (rcache_put(t->cache, addr, RCACHE_VALID, now,
	    now + (int64_t)t->valid_ttl_ms) == RCACHE_OK)
		verify_mark_dirty(t);
}

size_t
verify_cached(struct verify *v, const char *tenant)
{
	struct verify_tenant *t = v ? verify_tenant_find(v, tenant) : NULL;

	return t && t->learn ? rcache_count(t->cache) : 0;
}

int
verify_walk(struct verify *v, const char *tenant,
    int (*cb)(void *arg, const struct rcache_entry *e), void *arg)
{
	struct verify_tenant *t = v ? verify_tenant_find(v, tenant) : NULL;

	if (t == NULL || !t->learn)
		return -1;
	rcache_expire(t->cache, verify_now(v));
	return rcache_walk(t->cache, cb, arg);
}

int
verify_forget(struct verify *v, const char *tenant, const char *addr)
{
	struct verify_tenant *t = v ? verify_tenant_find(v, tenant) : NULL;

	if (t == NULL || !t->learn)
		return -1;
	if (!rcache_forget(t->cache, addr))
		return 1;
	verify_mark_dirty(t);
	return 0;
}

/* ---- the end ------------------------------------------------------------ */

static void
verify_on_tick_closed(uv_handle_t *h)
{
	struct verify *v = h->data;

	if (h == (uv_handle_t *)&v->tick)
		v->tick_open = false;
	else
		v->kick_open = false;
	verify_maybe_done(v);
}

static void
verify_maybe_done(struct verify *v)
{
	struct verify_tenant *t, *next;
	void (*done)(void *);
	void *arg;

	if (!v->closing || v->tick_open || v->kick_open || v->works > 0)
		return;
	for (t = v->tenants; t; t = t->next) {
		if (t->nsess > 0)
			return;
		/* The final save, once any earlier job is over. */
		if (t->dirty && verify_job_start(t, true) == 0)
			return;
	}
	for (t = v->tenants; t; t = next) {
		next = t->next;
		rcache_free(t->cache);
		free(t);
	}
	done = v->done;
	arg = v->done_arg;
	free(v->dir);
	free(v);
	if (done)
		done(arg);
}

void
verify_close(struct verify *v, void (*done)(void *arg), void *arg)
{
	if (v == NULL) {
		if (done)
			done(arg);
		return;
	}
	v->closing = true;
	v->done = done;
	v->done_arg = arg;
	for (struct verify_tenant *t = v->tenants; t; t = t->next) {
		verify_finish_queued(t, verify_down_answer(t));
		for (struct verify_sess *s = t->sess; s; s = s->next) {
			s->quitting = true;
			smtp_client_abort(s->c);
		}
	}
	if (v->kick_open)
		uv_close((uv_handle_t *)&v->kick, verify_on_tick_closed);
	uv_close((uv_handle_t *)&v->tick, verify_on_tick_closed);
}
