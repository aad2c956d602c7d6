/*
 * test_drain.c - the drain scheduler (relay/drain.c, drain_target.c,
 * drain_bounce.c) driven for real: a libuv loop, the RAM spool, a resolver
 * that is never asked (the primary and the bounce relay are address
 * literals), and two small SMTP servers on 127.0.0.1 written here, whose
 * replies each test scripts.  No disk, no network beyond loopback.
 *
 * The drain's wall clock and the spool's are one fake clock that a test
 * moves by hand, so back-off and queue lifetime are exact; every wait has a
 * deadline (WAIT_MS), checked on a 1 ms tick.  Every test ends in
 * fx_close(), which closes the drain, the servers, the spool and the
 * resolver and asserts that uv_loop_close() then succeeds: nothing of the
 * drain is left on the loop.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>

#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/dns.h"
#include "mxspool/drain.h"
#include "mxspool/envelope.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/spool.h"
#include "mxspool/stats.h"

/* Deadline of every wait; far above what a loaded machine under ASan
 * needs, and only reached when a test fails. */
#define WAIT_MS 5000
/* How long "nothing happens" is watched. */
#define QUIET_MS 300

#define FAKE_MAX_MSG 8

/* The tests' wall clock (drain_deps.now_ms and spool_options.now_ms). */
static int64_t fake_now = 1700000000000;

static int64_t
fake_clock(void)
{
	return fake_now;
}

/* ---- a scripted SMTP server -------------------------------------------- */

struct fake_msg {
	char sender[128];
	char rcpts[512];              /* accepted ones, space separated */
	char *body;
};

struct fake_conn;

struct fake {
	uv_tcp_t listener;
	int port;
	/* the script */
	const char *banner;           /* "220 ..."; a 4xx/5xx one closes */
	const char *ehlo;             /* EHLO reply; NULL: a plain one */
	const char *rcpt_reply;       /* NULL: by local part (see fake_rcpt) */
	const char *data_reply;       /* after the final dot */
	bool drop_after_data;         /* close after data_reply */
	bool stall_data;              /* never answer the final dot */
	int max_conns;                /* > 0: 421 at the greeting beyond it */
	/* what happened */
	int connects, live, max_live, quits, mails, dots, refused;
	struct fake_msg msg[FAKE_MAX_MSG];
	int nmsg;
	struct fake_conn *conns;
};

struct fake_conn {
	uv_tcp_t h;
	struct fake *f;
	struct fake_conn *next;
	char in[16384];
	size_t inlen;
	bool data, closing;
	char sender[128];
	char rcpts[512];
	int nrcpt;
	char *body;
	size_t blen, bcap;
};

struct fake_write {
	uv_write_t req;
	struct fake_conn *c;
	bool close;
	char buf[];
};

static void
fake_conn_on_closed(uv_handle_t *h)
{
	struct fake_conn *c = h->data;

	for (struct fake_conn **pp = &c->f->conns; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->f->live--;
	free(c->body);
	free(c);
}

static void
fake_conn_close(struct fake_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->h, fake_conn_on_closed);
}

static void
fake_on_written(uv_write_t *req, int status)
{
	struct fake_write *w = (struct fake_write *)req;

	(void)status;
	if (w->close)
		fake_conn_close(w->c);
	free(w);
}

/* Send TEXT (lines joined by CRLF) and a final CRLF; CLOSE afterwards. */
static void
fake_reply(struct fake_conn *c, const char *text, bool close)
{
	size_t len = strlen(text);
	struct fake_write *w;
	uv_buf_t b;

	if (c->closing)
		return;
	w = malloc(sizeof(*w) + len + 2);
	assert_non_null(w);
	w->c = c;
	w->close = close;
	memcpy(w->buf, text, len);
	memcpy(w->buf + len, "\r\n", 2);
	b = uv_buf_init(w->buf, (unsigned)(len + 2));
	if (uv_write(&w->req, (uv_stream_t *)&c->h, &b, 1, fake_on_written) != 0) {
		free(w);
		fake_conn_close(c);
	}
}

/* The address between < and > of LINE into BUF. */
static void
fake_path(const char *line, char *buf, size_t len)
{
	const char *a = strchr(line, '<'), *b = a ? strchr(a, '>') : NULL;

	snprintf(buf, len, "%.*s", a && b ? (int)(b - a - 1) : 0, a ? a + 1 : "");
}

/* RCPT by local part: temp* 450, perm* 550, drop* 421 and close. */
static void
fake_rcpt(struct fake_conn *c, const char *line)
{
	char addr[256];

	fake_path(line, addr, sizeof(addr));
	if (c->f->rcpt_reply != NULL) {
		fake_reply(c, c->f->rcpt_reply, false);
		if (c->f->rcpt_reply[0] != '2')
			return;
	} else if (strncmp(addr, "temp", 4) == 0) {
		fake_reply(c, "450 4.2.0 mailbox busy", false);
		return;
	} else if (strncmp(addr, "perm", 4) == 0) {
		fake_reply(c, "550 5.1.1 no such user", false);
		return;
	} else if (strncmp(addr, "drop", 4) == 0) {
		fake_reply(c, "421 4.3.2 going away", true);
		return;
	} else {
		fake_reply(c, "250 2.1.5 ok", false);
	}
	snprintf(c->rcpts + strlen(c->rcpts), sizeof(c->rcpts) - strlen(c->rcpts),
	    "%s%s", c->rcpts[0] ? " " : "", addr);
	c->nrcpt++;
}

static void
fake_data_line(struct fake_conn *c, const char *line, size_t len)
{
	struct fake *f = c->f;

	if (len == 1 && line[0] == '.') {
		c->data = false;
		f->dots++;
		if (f->stall_data)
			return;
		if (f->data_reply[0] == '2' && f->nmsg < FAKE_MAX_MSG) {
			struct fake_msg *m = &f->msg[f->nmsg++];

			snprintf(m->sender, sizeof(m->sender), "%s", c->sender);
			snprintf(m->rcpts, sizeof(m->rcpts), "%s", c->rcpts);
			m->body = c->body ? c->body : strdup("");
			c->body = NULL;
			c->blen = c->bcap = 0;
		}
		fake_reply(c, f->data_reply, f->drop_after_data);
		return;
	}
	if (line[0] == '.') {         /* dot-stuffing */
		line++;
		len--;
	}
	if (c->blen + len + 3 > c->bcap) {
		c->bcap = (c->blen + len + 3) * 2;
		c->body = realloc(c->body, c->bcap);
		assert_non_null(c->body);
	}
	memcpy(c->body + c->blen, line, len);
	memcpy(c->body + c->blen + len, "\r\n", 3);
	c->blen += len + 2;
}

static void
fake_command(struct fake_conn *c, const char *line)
{
	struct fake *f = c->f;

	if (strncasecmp(line, "EHLO", 4) == 0 || strncasecmp(line, "HELO", 4) == 0) {
		fake_reply(c, f->ehlo ? f->ehlo : "250-fake.test\r\n250-8BITMIME\r\n"
		    "250 ENHANCEDSTATUSCODES", false);
	} else if (strncasecmp(line, "MAIL", 4) == 0) {
		f->mails++;
		fake_path(line, c->sender, sizeof(c->sender));
		c->rcpts[0] = '\0';
		c->nrcpt = 0;
		fake_reply(c, "250 2.1.0 ok", false);
	} else if (strncasecmp(line, "RCPT", 4) == 0) {
		fake_rcpt(c, line);
	} else if (strncasecmp(line, "DATA", 4) == 0) {
		c->data = c->nrcpt > 0;
		c->blen = 0;
		fake_reply(c, c->data ? "354 go ahead" : "554 5.5.1 no recipients",
		    false);
	} else if (strncasecmp(line, "QUIT", 4) == 0) {
		f->quits++;
		fake_reply(c, "221 2.0.0 bye", true);
	} else if (strncasecmp(line, "RSET", 4) == 0 ||
	    strncasecmp(line, "NOOP", 4) == 0) {
		fake_reply(c, "250 2.0.0 ok", false);
	} else {
		fake_reply(c, "502 5.5.1 unknown command", false);
	}
}

static void
fake_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct fake_conn *c = h->data;

	(void)hint;
	*buf = uv_buf_init(c->in + c->inlen, (unsigned)(sizeof(c->in) - c->inlen));
}

static void
fake_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct fake_conn *c = s->data;
	char *eol;

	(void)buf;
	if (n < 0 || (n == 0 && c->inlen == sizeof(c->in))) {
		fake_conn_close(c);
		return;
	}
	c->inlen += (size_t)n;
	while (!c->closing && (eol = memmem(c->in, c->inlen, "\r\n", 2)) != NULL) {
		size_t len = (size_t)(eol - c->in);

		*eol = '\0';
		if (c->data)
			fake_data_line(c, c->in, len);
		else
			fake_command(c, c->in);
		memmove(c->in, eol + 2, c->inlen - len - 2);
		c->inlen -= len + 2;
	}
}

static void
fake_on_connection(uv_stream_t *server, int status)
{
	struct fake *f = server->data;
	struct fake_conn *c;

	if (status != 0)
		return;
	c = calloc(1, sizeof(*c));
	assert_non_null(c);
	c->f = f;
	assert_int_equal(uv_tcp_init(server->loop, &c->h), 0);
	c->h.data = c;
	c->next = f->conns;
	f->conns = c;
	f->connects++;
	if (++f->live > f->max_live)
		f->max_live = f->live;
	if (uv_accept(server, (uv_stream_t *)&c->h) != 0 ||
	    uv_read_start((uv_stream_t *)&c->h, fake_alloc, fake_on_read) != 0) {
		fake_conn_close(c);
		return;
	}
	if (f->max_conns > 0 && f->live > f->max_conns) {
		/* What Postfix says beyond smtpd_client_connection_count_limit. */
		f->refused++;
		fake_reply(c, "421 4.7.0 fake.test Error: too many connections",
		    true);
		return;
	}
	fake_reply(c, f->banner, f->banner[0] != '2');
}

static void
fake_start(uv_loop_t *loop, struct fake *f)
{
	struct sockaddr_in a;
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	memset(f, 0, sizeof(*f));
	f->banner = "220 fake.test ESMTP";
	f->data_reply = "250 2.0.0 queued";
	assert_int_equal(uv_tcp_init(loop, &f->listener), 0);
	f->listener.data = f;
	assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &a), 0);
	assert_int_equal(uv_tcp_bind(&f->listener, (struct sockaddr *)&a, 0), 0);
	assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 16,
	    fake_on_connection), 0);
	assert_int_equal(uv_tcp_getsockname(&f->listener, (struct sockaddr *)&ss,
	    &len), 0);
	f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void
fake_close(struct fake *f)
{
	uv_close((uv_handle_t *)&f->listener, NULL);
	for (struct fake_conn *c = f->conns; c; c = c->next)
		fake_conn_close(c);
	for (int i = 0; i < f->nmsg; i++)
		free(f->msg[i].body);
}

/* ---- the fixture -------------------------------------------------------- */

struct commit_wait {
	bool done;
	int status;
	spool_qid qid;
};

struct fx {
	uv_loop_t loop;
	uv_timer_t tick;              /* the waits' deadline checker */
	struct fake prim, bounce;
	struct config *cfg;
	struct spool *sp;
	struct dns *dns;
	struct stats *st;
	struct drain *d;
	bool drain_closed, spool_closed, dns_closed;
	/* what a wait waits for */
	bool (*pred)(struct fx *);
	bool met;
	uint64_t deadline;
	int want;
	spool_qid qid;
	struct commit_wait *commit;
	bool held_done;
	unsigned notify;              /* fx_queue: every recipient's NOTIFY */
	enum env_body body;           /* fx_queue: the envelope's BODY= */
};

struct fx_opts {
	unsigned up_after;            /* probe_up_after */
	bool listen_on_primary;       /* our own address is the primary's */
	const char *queue_lifetime;
	const char *delay_warning;    /* [server]; NULL: 0 (off) */
	const char *tenant_extra;     /* more [tenant:demo] lines */
	const char *banner;           /* the primary's; NULL: 220 */
	unsigned concurrency;         /* drain_concurrency; 0: 1 */
};

static void
fx_on_tick(uv_timer_t *t)
{
	struct fx *fx = t->data;

	if (fx->pred != NULL && fx->pred(fx)) {
		fx->met = true;
		uv_stop(&fx->loop);
	} else if (uv_now(&fx->loop) >= fx->deadline) {
		uv_stop(&fx->loop);
	}
}

/* Run the loop until PRED holds (true) or MS pass (false); PRED NULL just
 * runs the loop for MS. */
static bool
fx_run_until(struct fx *fx, bool (*pred)(struct fx *), uint64_t ms)
{
	if (pred != NULL && pred(fx))
		return true;
	uv_update_time(&fx->loop);
	fx->pred = pred;
	fx->met = false;
	fx->deadline = uv_now(&fx->loop) + ms;
	assert_int_equal(uv_timer_start(&fx->tick, fx_on_tick, 1, 1), 0);
	while (!fx->met && uv_now(&fx->loop) < fx->deadline)
		(void)uv_run(&fx->loop, UV_RUN_DEFAULT);
	(void)uv_timer_stop(&fx->tick);
	fx->pred = NULL;
	return fx->met;
}

static void
fx_wait(struct fx *fx, bool (*pred)(struct fx *), const char *what)
{
	if (!fx_run_until(fx, pred, WAIT_MS))
		fail_msg("timed out waiting for %s", what);
}

static void
fx_on_flag(void *arg)
{
	*(bool *)arg = true;
}

static bool pred_drain_closed(struct fx *fx) { return fx->drain_closed; }
static bool pred_spool_closed(struct fx *fx) { return fx->spool_closed; }
static bool pred_dns_closed(struct fx *fx) { return fx->dns_closed; }

static void
fx_open(struct fx *fx, const struct fx_opts *o)
{
	struct spool_options so;
	char text[2048], err[CONFIG_ERRLEN];
	FILE *fp;

	memset(fx, 0, sizeof(*fx));
	assert_int_equal(uv_loop_init(&fx->loop), 0);
	assert_int_equal(uv_timer_init(&fx->loop, &fx->tick), 0);
	fx->tick.data = fx;
	fake_start(&fx->loop, &fx->prim);
	fake_start(&fx->loop, &fx->bounce);
	snprintf(text, sizeof(text),
	    "[server]\nhostname = backup.test\nlisten = 127.0.0.1:%d\n"
	    "spool_dir = /nonexistent/mxspool-test-drain\nsmtp_timeout = 5s\n"
	    "queue_lifetime = %s\ndelay_warning = %s\n"
	    "bounce_relay = 127.0.0.1:%d\n"
	    "[tls]\noutbound = none\n"
	    "[tenant:demo]\ndomains = example.test\nprimary = 127.0.0.1:%d\n"
	    "drain_rate = 1000\ndrain_initial_rate = 1000\n"
	    "drain_concurrency = %u\nprobe_interval = 1h\nprobe_up_after = %u\n%s",
	    o->listen_on_primary ? fx->prim.port : 1,
	    o->queue_lifetime ? o->queue_lifetime : "5d",
	    o->delay_warning ? o->delay_warning : "0", fx->bounce.port,
	    fx->prim.port, o->concurrency ? o->concurrency : 1,
	    o->up_after ? o->up_after : 1,
	    o->tenant_extra ? o->tenant_extra : "");
	if (o->banner)
		fx->prim.banner = o->banner;
	fp = fmemopen(text, strlen(text), "r");
	assert_non_null(fp);
	if (config_load_stream(fp, "test.ini", &fx->cfg, err, sizeof(err)) != 0)
		fail_msg("config: %s", err);
	fclose(fp);
	memset(&so, 0, sizeof(so));
	so.backend = "ram";
	so.now_ms = fake_clock;
	assert_int_equal(spool_open(&fx->loop, &so, &fx->sp, NULL), 0);
	/* Port 9 (discard) on loopback: a resolver nobody answers.  The
	 * literals the tests use never reach it. */
	assert_int_equal(dns_new(&fx->loop, "127.0.0.1:9", &fx->dns), DNS_OK);
	fx->st = stats_new();
	assert_non_null(fx->st);
}

static void
fx_drain_start(struct fx *fx)
{
	struct drain_deps deps;

	memset(&deps, 0, sizeof(deps));
	deps.loop = &fx->loop;
	deps.spool = fx->sp;
	deps.dns = fx->dns;
	deps.stats = fx->st;
	deps.now_ms = fake_clock;
	deps.age_tick_ms = 10;        /* the expiry walk: 100 times a second */
	assert_int_equal(drain_new(&deps, fx->cfg, NULL, &fx->d), 0);
}

static void
fx_drain_close(struct fx *fx)
{
	if (fx->d == NULL)
		return;
	drain_close(fx->d, fx_on_flag, &fx->drain_closed);
	fx_wait(fx, pred_drain_closed, "drain_close");
	fx->d = NULL;
}

/* Tear everything down; the loop must then close with nothing left. */
static void
fx_close(struct fx *fx)
{
	fx_drain_close(fx);
	fake_close(&fx->prim);
	fake_close(&fx->bounce);
	spool_close(fx->sp, fx_on_flag, &fx->spool_closed);
	fx_wait(fx, pred_spool_closed, "spool_close");
	dns_free(fx->dns, fx_on_flag, &fx->dns_closed);
	fx_wait(fx, pred_dns_closed, "dns_free");
	uv_close((uv_handle_t *)&fx->tick, NULL);
	(void)uv_run(&fx->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&fx->loop), 0);
	stats_free(fx->st);
	config_free(fx->cfg);
}

static void
fx_on_commit(void *arg, int status, spool_qid qid)
{
	struct commit_wait *w = arg;

	w->done = true;
	w->status = status;
	w->qid = qid;
}

static bool
pred_committed(struct fx *fx)
{
	return fx->commit->done;
}

/* Queue a message for tenant demo from SENDER to RCPTS (space separated)
 * whose Subject: is SUBJECT; returns its queue id once committed. */
static spool_qid
fx_queue(struct fx *fx, const char *sender, const char *rcpts,
    const char *subject)
{
	struct spool_rcpt r[8];
	struct spool_envelope env;
	struct spool_tx *tx;
	struct commit_wait w = { 0 };
	char list[256], body[256], *save = NULL;
	size_t n = 0;
	int rc;

	memset(r, 0, sizeof(r));
	snprintf(list, sizeof(list), "%s", rcpts);
	for (char *a = strtok_r(list, " ", &save); a && n < 8;
	    a = strtok_r(NULL, " ", &save))
		r[n++].addr = a;
	for (size_t i = 0; i < n; i++)
		r[i].notify = fx->notify;
	memset(&env, 0, sizeof(env));
	env.tenant = "demo";
	env.sender = (char *)sender;
	env.nrcpt = n;
	env.rcpt = r;
	env.body = fx->body;
	snprintf(body, sizeof(body), "From: <%s>\r\nSubject: %s\r\n\r\nhello\r\n",
	    sender, subject);
	assert_int_equal(spool_tx_begin(fx->sp, &env, &tx), 0);
	rc = spool_tx_write(tx, body, strlen(body), NULL, NULL);
	assert_int_equal(rc, 0);
	assert_int_equal(spool_tx_commit(tx, fx_on_commit, &w), 0);
	fx->commit = &w;
	fx_wait(fx, pred_committed, "commit");
	fx->commit = NULL;
	assert_int_equal(w.status, 0);
	return w.qid;
}

static const char *
fx_state(struct fx *fx)
{
	struct drain_status s;

	assert_int_equal(drain_status(fx->d, "demo", &s), 0);
	return s.primary_state;
}

static uint64_t
fx_queued(struct fx *fx)
{
	struct spool_tenant_stats st;

	spool_tenant_stats(fx->sp, "demo", &st);
	return st.messages;
}

static bool
pred_up(struct fx *fx)
{
	return strcmp(fx_state(fx), "up") == 0;
}

static bool
pred_down(struct fx *fx)
{
	return strcmp(fx_state(fx), "down") == 0;
}
static bool pred_quits(struct fx *fx) { return fx->prim.quits >= fx->want; }
static bool pred_delivered(struct fx *fx) { return fx->prim.nmsg >= fx->want; }
static bool pred_bounced(struct fx *fx) { return fx->bounce.nmsg >= fx->want; }
static bool pred_empty(struct fx *fx) { return fx_queued(fx) == 0; }
static bool pred_dots(struct fx *fx) { return fx->prim.dots >= fx->want; }

/* No job left: the last spool write of the last message called back. */
static bool
pred_idle(struct fx *fx)
{
	struct drain_status s;

	assert_int_equal(drain_status(fx->d, "demo", &s), 0);
	return s.in_flight == 0;
}

/* fx->qid has been deferred (tried once and scheduled again). */
static bool
pred_deferred(struct fx *fx)
{
	struct spool_item it;

	return spool_find(fx->sp, fx->qid, &it) == 0 && !it.claimed &&
	    it.attempts >= 1 && it.next_attempt_ms > fake_now;
}

static void
fx_up(struct fx *fx)
{
	fx_drain_start(fx);
	fx_wait(fx, pred_up, "primary up");
}

/* Queue a message the primary answers with 450, and wait until the drain
 * deferred it (fx->qid); the primary accepts again afterwards. */
static void
fx_queue_deferred(struct fx *fx, const char *subject)
{
	fx->prim.rcpt_reply = "450 4.2.0 mailbox busy";
	fx->qid = fx_queue(fx, "alice@sender.test", "bob@example.test", subject);
	drain_kick(fx->d, "demo");
	fx_wait(fx, pred_deferred, "the deferral");
	fx->prim.rcpt_reply = NULL;
}

/* ---- tests ------------------------------------------------------------- */

/* The primary goes down on a failed probe and up only after probe_up_after
 * good probes in a row; flush probes at once. */
static void
test_probe_down_then_up(void **state)
{
	struct fx fx;
	struct fx_opts o = { .up_after = 2 };

	(void)state;
	fx_open(&fx, &o);
	fx.prim.banner = "421 4.3.2 not now";
	fx_drain_start(&fx);
	assert_string_equal(fx_state(&fx), "unknown");
	fx_wait(&fx, pred_down, "down after a 421 banner");

	fx.prim.banner = "220 fake.test ESMTP";
	assert_int_equal(drain_flush(fx.d, "demo"), 1);
	fx.want = 1;
	fx_wait(&fx, pred_quits, "first good probe");
	(void)fx_run_until(&fx, NULL, QUIET_MS);
	assert_string_equal(fx_state(&fx), "down");  /* one is not enough */

	assert_int_equal(drain_flush(fx.d, NULL), 1);
	fx_wait(&fx, pred_up, "up after the second good probe");
	assert_int_equal(fx.prim.quits, 2);
	assert_int_equal(fx.prim.mails, 0);
	assert_int_equal(drain_flush(fx.d, "nosuch"), 0);
	fx_close(&fx);
}

/* A 421 during a delivery takes the primary down at once; the message is
 * given back untouched (not deferred, not bounced). */
static void
test_421_during_delivery_goes_down(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	struct spool_item it;
	spool_qid q;

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	fx.prim.data_reply = "421 4.3.2 shutting down";
	fx.prim.drop_after_data = true;
	q = fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	drain_kick(fx.d, "demo");
	fx_wait(&fx, pred_down, "down after a 421");
	assert_int_equal(fx.prim.dots, 1);
	assert_int_equal(fx.prim.nmsg, 0);
	assert_int_equal(spool_find(fx.sp, q, &it), 0);
	assert_false(it.claimed);
	assert_true(it.next_attempt_ms <= fake_now);
	assert_int_equal(stats_total(fx.st, STAT_BOUNCED), 0);
	assert_int_equal(fx.bounce.connects, 0);
	fx_close(&fx);
}

/* The backlog leaves oldest first, and status shows the drain at work. */
static void
test_oldest_first_and_status(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	struct drain_status s;

	(void)state;
	fx_open(&fx, &o);
	(void)fx_queue(&fx, "a@sender.test", "u1@example.test", "m1");
	(void)fx_queue(&fx, "b@sender.test", "u2@example.test", "m2");
	(void)fx_queue(&fx, "c@sender.test", "u3@example.test", "m3");
	fx_drain_start(&fx);
	assert_int_equal(drain_status(fx.d, "nosuch", &s), -1);
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_string_equal(s.primary_state, "unknown");
	assert_true(s.drain_rate_limit == 0);
	assert_int_equal(s.eta_s, -1);     /* not draining */

	fx.want = 3;
	fx_wait(&fx, pred_delivered, "three deliveries");
	fx_wait(&fx, pred_empty, "an empty queue");
	fx_wait(&fx, pred_idle, "the last job's end");
	for (int i = 0; i < 3; i++) {
		char subj[32];

		snprintf(subj, sizeof(subj), "Subject: m%d\r\n", i + 1);
		assert_non_null(strstr(fx.prim.msg[i].body, subj));
	}
	assert_string_equal(fx.prim.msg[0].sender, "a@sender.test");
	assert_string_equal(fx.prim.msg[2].rcpts, "u3@example.test");
	assert_int_equal(fx.prim.max_live, 1);       /* drain_concurrency */
	assert_int_equal(stats_total(fx.st, STAT_DELIVERED), 3);
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_string_equal(s.primary_state, "up");
	assert_true(s.drain_rate_limit > 999 && s.drain_rate_limit <= 1000);
	assert_true(s.drain_rate > 0);
	assert_int_equal(s.eta_s, 0);      /* nothing left */
	fx_close(&fx);
}

/* While the primary is up a 4xx is retried at once (no clock moves), the
 * first DRAIN_RETRY_FAST times in a row; the next deferral waits 1 min
 * (+-10 %) on the drain's clock, nothing is tried before that, and the
 * retry after it delivers. */
static void
test_4xx_retried_at_once_then_backoff(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	struct spool_item it;
	int64_t delay;

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	fx_queue_deferred(&fx, "m1");
	assert_int_equal(fx.prim.mails, 3);          /* 2 at once, then wait */
	assert_int_equal(spool_find(fx.sp, fx.qid, &it), 0);
	assert_int_equal(it.attempts, 3);
	delay = it.next_attempt_ms - fake_now;
	assert_true(delay >= 54000 && delay <= 66000);
	assert_string_equal(fx_state(&fx), "up");    /* a 4xx is no outage */

	drain_kick(fx.d, "demo");
	(void)fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(fx.prim.mails, 3);          /* not due yet */

	fake_now += 70 * 1000;
	drain_kick(fx.d, "demo");
	fx.want = 1;
	fx_wait(&fx, pred_delivered, "the retry");
	fx_wait(&fx, pred_empty, "an empty queue");
	assert_int_equal(fx.prim.mails, 4);
	fx_close(&fx);
}

/* A 5xx bounces: a DSN from <> goes to the sender through bounce_relay,
 * naming the failed recipient only; the other one is delivered. */
static void
test_5xx_bounces_to_sender(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	const char *dsn;

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	(void)fx_queue(&fx, "alice@sender.test",
	    "perm-bob@example.test carol@example.test", "m1");
	drain_kick(fx.d, "demo");
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the DSN");
	fx_wait(&fx, pred_empty, "an empty queue");
	assert_int_equal(fx.prim.nmsg, 1);
	assert_string_equal(fx.prim.msg[0].rcpts, "carol@example.test");
	assert_string_equal(fx.bounce.msg[0].sender, "");
	assert_string_equal(fx.bounce.msg[0].rcpts, "alice@sender.test");
	dsn = fx.bounce.msg[0].body;
	assert_non_null(strstr(dsn, "multipart/report"));
	assert_non_null(strstr(dsn, "perm-bob@example.test"));
	assert_non_null(strstr(dsn, "5.1.1"));
	assert_null(strstr(dsn, "carol@"));
	assert_int_equal(stats_total(fx.st, STAT_BOUNCED), 1);
	assert_int_equal(stats_total(fx.st, STAT_DELIVERED), 1);
	fx_close(&fx);
}

/* A 5xx for mail from the null sender bounces without any DSN. */
static void
test_null_sender_gets_no_dsn(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	(void)fx_queue(&fx, "", "perm-bob@example.test", "m1");
	drain_kick(fx.d, "demo");
	fx_wait(&fx, pred_empty, "the bounce");
	(void)fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(stats_total(fx.st, STAT_BOUNCED), 1);
	assert_int_equal(fx.bounce.connects, 0);
	fx_close(&fx);
}

/* Past queue_lifetime (on the clock) a deferred message is bounced with
 * 4.4.7 at its next attempt instead of being tried again. */
static void
test_expired_message_bounces(void **state)
{
	struct fx fx;
	struct fx_opts o = { .queue_lifetime = "1h" };

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	fx_queue_deferred(&fx, "m1");
	fake_now += 2 * 3600 * 1000;
	drain_kick(fx.d, "demo");
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the expiry DSN");
	fx_wait(&fx, pred_empty, "an empty queue");
	assert_non_null(strstr(fx.bounce.msg[0].body, "4.4.7"));
	assert_int_equal(fx.prim.mails, 3);          /* not tried again */
	fx_close(&fx);
}

static void
on_held(void *arg, int status)
{
	struct fx *fx = arg;

	assert_int_equal(status, 0);
	fx->held_done = true;
}

static bool pred_held(struct fx *fx) { return fx->held_done; }

static void
fx_hold(struct fx *fx, bool on)
{
	fx->held_done = false;
	assert_int_equal(spool_set_held(fx->sp, "demo", on, on_held, fx), 0);
	fx_wait(fx, pred_held, "hold");
}

/* A held tenant sends nothing; release lets it go; flush retries deferred
 * mail at once, without waiting out its back-off. */
static void
test_hold_release_and_flush(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	fx_hold(&fx, true);
	(void)fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	drain_kick(fx.d, "demo");
	(void)fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(fx.prim.mails, 0);
	fx_hold(&fx, false);
	drain_kick(fx.d, "demo");
	fx.want = 1;
	fx_wait(&fx, pred_delivered, "delivery after release");

	fx_queue_deferred(&fx, "m2");
	assert_int_equal(drain_flush(fx.d, "demo"), 1);
	fx.want = 2;
	fx_wait(&fx, pred_delivered, "delivery after flush");
	fx_wait(&fx, pred_empty, "an empty queue");
	fx_close(&fx);
}

/* drain_set takes the config file's keys and rules, validates without
 * changing anything under CHECK_ONLY, and changes the limit at once. */
static void
test_set_validation(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	struct drain_status s;
	char err[256];

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	assert_int_equal(drain_set(fx.d, "nosuch", "drain_rate", "5", err,
	    sizeof(err), false), -1);
	assert_non_null(strstr(err, "nosuch"));
	assert_int_equal(drain_set(fx.d, "demo", "drain_concurrency", "0", err,
	    sizeof(err), false), -1);
	assert_non_null(strstr(err, "drain_concurrency"));
	assert_int_equal(drain_set(fx.d, "demo", "drain_rate", "fast", err,
	    sizeof(err), false), -1);
	assert_int_equal(drain_set(fx.d, "demo", "domains", "x.test", err,
	    sizeof(err), false), -1);
	assert_non_null(strstr(err, "run time"));
	assert_int_equal(drain_set(fx.d, "demo", "bogus", "1", err, sizeof(err),
	    false), -1);
	assert_non_null(strstr(err, "unknown key"));
	assert_int_equal(drain_set(fx.d, "demo", "drain_initial_rate", "2000",
	    err, sizeof(err), false), -1);
	assert_non_null(strstr(err, "above drain_rate"));

	assert_int_equal(drain_set(fx.d, "demo", "drain_rate", "5", err,
	    sizeof(err), true), 0);
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_true(s.drain_rate_limit > 999);       /* only checked */
	/* Below drain_initial_rate (1000): the ramp's start follows. */
	assert_int_equal(drain_set(fx.d, "demo", "drain_rate", "5", err,
	    sizeof(err), false), 0);
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_true(s.drain_rate_limit > 0 && s.drain_rate_limit <= 5.0);
	assert_int_equal(drain_set(fx.d, "demo", "drain_initial_rate", "6",
	    err, sizeof(err), false), -1);
	assert_int_equal(drain_set(fx.d, "demo", "drain_initial_rate", "2",
	    err, sizeof(err), false), 0);
	fx_close(&fx);
}

/* Our own listen address is never a target: the probe is refused without
 * a connection and the primary stays down. */
static void
test_self_address_is_not_a_target(void **state)
{
	struct fx fx;
	struct fx_opts o = { .listen_on_primary = true };

	(void)state;
	fx_open(&fx, &o);
	fx_drain_start(&fx);
	fx_wait(&fx, pred_down, "down");
	assert_int_equal(fx.prim.connects, 0);
	fx_close(&fx);
}

/* drain_close in the middle of a delivery aborts it, gives the message
 * back to the spool, and leaves nothing on the loop. */
static void
test_close_mid_delivery(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	struct spool_item it;
	spool_qid q;

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	fx.prim.stall_data = true;
	q = fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	drain_kick(fx.d, "demo");
	fx.want = 1;
	fx_wait(&fx, pred_dots, "the message's final dot");
	fx_drain_close(&fx);
	assert_int_equal(spool_find(fx.sp, q, &it), 0);
	assert_false(it.claimed);
	assert_int_equal(it.attempts, 0);
	assert_int_equal(fx.prim.nmsg, 0);
	fx_close(&fx);
}

/* ---- the long outage: expiry and delay notices on the clock ------------ */

#define DOWN_BANNER "421 4.3.2 primary down for maintenance"

static bool pred_bounced_2(struct fx *fx) { return fx->bounce.nmsg >= 2; }

/* The fixture with O, the drain started and the primary found down. */
static void
fx_open_down(struct fx *fx, const struct fx_opts *o)
{
	fx_open(fx, o);
	fx_drain_start(fx);
	fx_wait(fx, pred_down, "primary down");
}

/* Bounced recipients, as the counters have them. */
static uint64_t
fx_bounced(struct fx *fx)
{
	return stats_tenant(fx->st, "demo", STAT_BOUNCED);
}

static bool
pred_bounced_stat(struct fx *fx)
{
	return fx_bounced(fx) >= (uint64_t)fx->want;
}

/* The primary refuses every connection with 421: a message older than
 * queue_lifetime is returned with 4.4.7 all the same, even while the tenant
 * is held, and no delivery is ever tried. */
static void
test_outage_expiry_bounces(void **state)
{
	struct fx fx;
	struct fx_opts o = { .queue_lifetime = "1h", .banner = DOWN_BANNER };

	(void)state;
	fx_open_down(&fx, &o);
	fx.qid = fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	assert_int_equal(spool_set_held(fx.sp, "demo", true, NULL, NULL), 0);
	/* Not expired yet: nothing happens. */
	fake_now += 30 * 60 * 1000;
	fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(fx.bounce.nmsg, 0);
	assert_int_equal(fx_queued(&fx), 1);
	fake_now += 31 * 60 * 1000;
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the expiry DSN");
	fx_wait(&fx, pred_empty, "an empty queue");
	assert_non_null(strstr(fx.bounce.msg[0].body, "Status: 4.4.7"));
	assert_non_null(strstr(fx.bounce.msg[0].body, "Action: failed"));
	assert_non_null(strstr(fx.bounce.msg[0].body, "primary unreachable since"));
	assert_string_equal(fx.bounce.msg[0].sender, "");
	assert_string_equal(fx.bounce.msg[0].rcpts, "alice@sender.test");
	assert_int_equal(fx.prim.mails, 0);
	fx_wait(&fx, pred_idle, "no job left");
	assert_int_equal(fx_bounced(&fx), 1);
	fx_close(&fx);
}

/* With the primary down the whole time, one delay notice goes out at
 * delay_warning (Action delayed, Will-Retry-Until), recorded as warned,
 * and is not repeated however many walks follow. */
static void
test_outage_delay_notice_once(void **state)
{
	struct fx fx;
	struct fx_opts o = { .queue_lifetime = "5d", .delay_warning = "1h",
	    .banner = DOWN_BANNER };
	struct spool_item it;

	(void)state;
	fx_open_down(&fx, &o);
	fx.qid = fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	fake_now += 59 * 60 * 1000;
	fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(fx.bounce.nmsg, 0);
	fake_now += 2 * 60 * 1000;
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the delay DSN");
	assert_non_null(strstr(fx.bounce.msg[0].body, "Action: delayed"));
	assert_non_null(strstr(fx.bounce.msg[0].body, "Will-Retry-Until:"));
	assert_int_equal(spool_find(fx.sp, fx.qid, &it), 0);
	assert_true(it.warned);
	/* Many walks, hours later: still one notice, the message still here. */
	for (int i = 0; i < 5; i++) {
		fake_now += 3600 * 1000;
		fx_run_until(&fx, NULL, 60);
	}
	fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(fx.bounce.nmsg, 1);
	assert_int_equal(fx_queued(&fx), 1);
	assert_int_equal(fx.prim.mails, 0);
	assert_int_equal(fx_bounced(&fx), 0);
	fx_close(&fx);
}

/* No notice of any kind to the null sender nor to NOTIFY=NEVER: past
 * delay_warning nothing is sent, past queue_lifetime the recipients are
 * marked bounced without a DSN. */
static void
test_outage_null_sender_and_never(void **state)
{
	struct fx fx;
	struct fx_opts o = { .queue_lifetime = "3h", .delay_warning = "1h",
	    .banner = DOWN_BANNER };

	(void)state;
	fx_open_down(&fx, &o);
	(void)fx_queue(&fx, "", "bob@example.test", "null");
	fx.notify = ENV_NOTIFY_NEVER;
	(void)fx_queue(&fx, "alice@sender.test", "carol@example.test", "never");
	fx.notify = ENV_NOTIFY_FAILURE;   /* no DELAY: a bounce, no notice */
	(void)fx_queue(&fx, "dave@sender.test", "erin@example.test", "failure");
	fake_now += 2 * 3600 * 1000;
	fx_run_until(&fx, NULL, QUIET_MS);
	assert_int_equal(fx.bounce.nmsg, 0);
	assert_int_equal(fx_queued(&fx), 3);
	fake_now += 2 * 3600 * 1000;
	fx.want = 3;
	fx_wait(&fx, pred_bounced_stat, "three recipients bounced");
	fx_wait(&fx, pred_empty, "an empty queue");
	fx_run_until(&fx, NULL, QUIET_MS);
	/* Only FAILURE's sender hears of it, and only of the failure. */
	assert_int_equal(fx.bounce.nmsg, 1);
	assert_string_equal(fx.bounce.msg[0].rcpts, "dave@sender.test");
	assert_non_null(strstr(fx.bounce.msg[0].body, "Action: failed"));
	fx_close(&fx);
}

/* A tenant's own queue_lifetime / delay_warning win over [server]'s. */
static void
test_outage_tenant_override(void **state)
{
	struct fx fx;
	struct fx_opts o = { .queue_lifetime = "5d", .delay_warning = "4h",
	    .banner = DOWN_BANNER,
	    .tenant_extra = "queue_lifetime = 2h\ndelay_warning = 30m\n" };

	(void)state;
	fx_open_down(&fx, &o);
	(void)fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	fake_now += 31 * 60 * 1000;
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the delay DSN at the tenant's 30m");
	assert_non_null(strstr(fx.bounce.msg[0].body, "Action: delayed"));
	fake_now += 90 * 60 * 1000;
	fx_wait(&fx, pred_bounced_2, "the bounce at the tenant's 2h");
	assert_non_null(strstr(fx.bounce.msg[1].body, "Status: 4.4.7"));
	fx_wait(&fx, pred_empty, "an empty queue");
	fx_close(&fx);
}

/* A message past its lifetime is not delivered when the primary comes
 * back: it is returned (the walk or the attempt, whichever comes first). */
static void
test_expired_not_delivered_after_outage(void **state)
{
	struct fx fx;
	struct fx_opts o = { .queue_lifetime = "1h", .banner = DOWN_BANNER };

	(void)state;
	fx_open_down(&fx, &o);
	(void)fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	fake_now += 2 * 3600 * 1000;
	fx.prim.banner = "220 fake.test ESMTP";
	drain_flush(fx.d, "demo");
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the expiry DSN");
	assert_int_equal(fx.prim.nmsg, 0);
	fx_wait(&fx, pred_empty, "an empty queue");
	fx_close(&fx);
}

/* After a good probe the spool knows the primary's EHLO: SIZE and the
 * extension bits; before, nothing. */
static void
test_caps_recorded_after_probe(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };
	struct spool_caps c;

	(void)state;
	fx_open(&fx, &o);
	fx.prim.ehlo = "250-fake.test\r\n250-SIZE 1000\r\n250-PIPELINING\r\n"
	    "250-8BITMIME\r\n250-LIMITS RCPTMAX=7 MAILMAX=3\r\n250 DSN";
	assert_false(spool_get_caps(fx.sp, "demo", &c));
	fx_up(&fx);
	assert_true(spool_get_caps(fx.sp, "demo", &c));
	assert_int_equal(c.size_max, 1000);
	assert_true(c.ext & SMTP_EXT_SIZE);
	assert_true(c.ext & SMTP_EXT_PIPELINING);
	assert_true(c.ext & SMTP_EXT_8BITMIME);
	assert_true(c.ext & SMTP_EXT_DSN);
	assert_false(c.ext & SMTP_EXT_SMTPUTF8);
	assert_true(c.ext & SMTP_EXT_LIMITS);
	assert_int_equal(c.rcpt_max, 7);
	assert_int_equal(c.mail_max, 3);
	assert_int_equal(c.seen_ms, fake_now);
	fx_close(&fx);
}

/* The primary's RFC 9422 MAILMAX caps the messages of one connection below
 * messages_per_connection: 5 messages at MAILMAX=2 take 3 connections. */
static void
test_mailmax_limits_messages_per_connection(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };

	(void)state;
	fx_open(&fx, &o);
	fx.prim.ehlo = "250-fake.test\r\n250-PIPELINING\r\n250 LIMITS MAILMAX=2";
	for (int i = 0; i < 5; i++) {
		char subj[16];

		snprintf(subj, sizeof(subj), "m%d", i);
		(void)fx_queue(&fx, "a@sender.test", "u@example.test", subj);
	}
	fx_drain_start(&fx);
	fx.want = 5;
	fx_wait(&fx, pred_delivered, "five deliveries");
	fx_wait(&fx, pred_idle, "the last job's end");
	assert_true(fx.prim.mails == 5);
	/* The probe's connection, and at least three delivery sessions. */
	assert_true(fx.prim.connects >= 4);
	fx_close(&fx);
}

/* RFC 9422 RCPTMAX=2: five recipients go in three transactions on one
 * connection (2, 2, 1), every one delivered once. */
static void
test_rcptmax_splits_transactions(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };

	(void)state;
	fx_open(&fx, &o);
	fx.prim.ehlo = "250-fake.test\r\n250-PIPELINING\r\n250 LIMITS RCPTMAX=2";
	(void)fx_queue(&fx, "a@sender.test", "u1@example.test u2@example.test "
	    "u3@example.test u4@example.test u5@example.test", "m1");
	fx_drain_start(&fx);
	fx.want = 3;
	fx_wait(&fx, pred_delivered, "three transactions");
	fx_wait(&fx, pred_empty, "an empty queue");
	fx_wait(&fx, pred_idle, "the last job's end");
	assert_int_equal(fx.prim.mails, 3);
	assert_string_equal(fx.prim.msg[0].rcpts, "u1@example.test u2@example.test");
	assert_string_equal(fx.prim.msg[1].rcpts, "u3@example.test u4@example.test");
	assert_string_equal(fx.prim.msg[2].rcpts, "u5@example.test");
	assert_int_equal(fx.prim.connects, 2);       /* the probe's and one */
	assert_int_equal(stats_total(fx.st, STAT_DELIVERED), 5);
	fx_close(&fx);
}

/* RCPTMAX=2 with MAILMAX=2: the connection carries two transactions, the
 * fifth recipient stays pending and leaves on the next connection, not
 * deferred. */
static void
test_rcptmax_with_mailmax(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };

	(void)state;
	fx_open(&fx, &o);
	fx.prim.ehlo = "250-fake.test\r\n250 LIMITS RCPTMAX=2 MAILMAX=2";
	fx.qid = fx_queue(&fx, "a@sender.test", "u1@example.test u2@example.test "
	    "u3@example.test u4@example.test u5@example.test", "m1");
	fx_drain_start(&fx);
	fx.want = 3;
	fx_wait(&fx, pred_delivered, "three transactions");
	fx_wait(&fx, pred_empty, "an empty queue");
	assert_int_equal(fx.prim.mails, 3);
	assert_string_equal(fx.prim.msg[2].rcpts, "u5@example.test");
	assert_int_equal(fx.prim.connects, 3);       /* probe, 2 + 2, 1 */
	assert_int_equal(stats_total(fx.st, STAT_DELIVERED), 5);
	fx_close(&fx);
}

/* A message declared BODY=8BITMIME to a primary without 8BITMIME is not
 * sent: it bounces with 5.6.3 (RFC 6152 3), and the primary sees no MAIL. */
static void
test_8bitmime_to_7bit_primary_bounces(void **state)
{
	struct fx fx;
	struct fx_opts o = { 0 };

	(void)state;
	fx_open(&fx, &o);
	fx.prim.ehlo = "250-fake.test\r\n250 ENHANCEDSTATUSCODES";
	fx.body = ENV_BODY_8BITMIME;
	(void)fx_queue(&fx, "alice@sender.test", "bob@example.test", "m1");
	fx.body = ENV_BODY_7BIT;
	(void)fx_queue(&fx, "alice@sender.test", "carol@example.test", "m2");
	fx_drain_start(&fx);
	fx.want = 1;
	fx_wait(&fx, pred_bounced, "the DSN");
	fx_wait(&fx, pred_empty, "an empty queue");
	assert_non_null(strstr(fx.bounce.msg[0].body, "5.6.3"));
	assert_non_null(strstr(fx.bounce.msg[0].body, "bob@example.test"));
	assert_int_equal(fx.prim.mails, 1);          /* only the 7-bit one */
	assert_string_equal(fx.prim.msg[0].rcpts, "carol@example.test");
	fx_close(&fx);
}

static bool
pred_delivered_stat(struct fx *fx)
{
	return stats_total(fx->st, STAT_DELIVERED) >= (uint64_t)fx->want;
}

/* Issue 9's Postfix case on the fake: a primary that takes 2 connections
 * and answers a third and fourth with 421 at the greeting.  With
 * drain_concurrency 4 that is a concurrency signal: the limit drops to 2,
 * the primary stays up, every message is delivered, and status says so. */
static void
test_refusal_while_others_work_cuts_concurrency(void **state)
{
	struct fx fx;
	struct fx_opts o = { .concurrency = 4 };
	struct drain_status s;

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_int_equal(s.concurrency_limit, 4);
	assert_string_equal(s.limit_reason, "drain_concurrency");
	fx.prim.max_conns = 2;
	fx.prim.stall_data = true;    /* keep the sessions open */
	for (int i = 0; i < 6; i++) {
		char subj[16];

		snprintf(subj, sizeof(subj), "m%d", i);
		(void)fx_queue(&fx, "a@sender.test", "u@example.test", subj);
	}
	drain_kick(fx.d, "demo");
	fx.want = 2;
	fx_wait(&fx, pred_dots, "two sessions at their final dot");
	(void)fx_run_until(&fx, NULL, QUIET_MS);
	assert_true(fx.prim.refused >= 1);
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_string_equal(s.primary_state, "up");
	assert_int_equal(s.concurrency_limit, 2);
	assert_non_null(strstr(s.limit_reason, "cut: "));
	assert_non_null(strstr(s.limit_reason, "too many connections"));
	/* Let the two sessions finish: everything goes, two at a time. */
	fx.prim.stall_data = false;
	for (struct fake_conn *c = fx.prim.conns; c; c = c->next)
		if (!c->closing && c->nrcpt > 0 && !c->data)
			fake_reply(c, fx.prim.data_reply, false);
	fx.want = 6;
	fx_wait(&fx, pred_delivered_stat, "six deliveries");
	fx_wait(&fx, pred_idle, "the last job's end");
	assert_int_equal(drain_status(fx.d, "demo", &s), 0);
	assert_string_equal(s.primary_state, "up");
	assert_true(fx.prim.refused <= 3);
	assert_int_equal(stats_total(fx.st, STAT_BOUNCED), 0);
	fx_close(&fx);
}

/* When every session is refused the primary is down, and the messages are
 * given back untouched (no attempt counted). */
static void
test_every_session_refused_goes_down(void **state)
{
	struct fx fx;
	struct fx_opts o = { .concurrency = 4 };
	struct spool_item it;

	(void)state;
	fx_open(&fx, &o);
	fx_up(&fx);
	fx.prim.banner = "421 4.3.2 fake.test shutting down";
	fx.qid = fx_queue(&fx, "a@sender.test", "u@example.test", "m1");
	(void)fx_queue(&fx, "a@sender.test", "u@example.test", "m2");
	drain_kick(fx.d, "demo");
	fx_wait(&fx, pred_down, "down when every session is refused");
	fx_wait(&fx, pred_idle, "no job left");
	assert_int_equal(fx.prim.mails, 0);
	assert_int_equal(fx_queued(&fx), 2);
	assert_int_equal(spool_find(fx.sp, fx.qid, &it), 0);
	assert_int_equal(it.attempts, 0);
	assert_false(it.claimed);
	fx_close(&fx);
}

/* ---- the fleet's gate (drain_deps.gate, fleet.h) ----------------------- */

struct gate_log {
	bool allow;
	unsigned asked, refused, leases, dones, failed;
	struct drain_gate_ask last;
};

static int64_t
gate_take(void *arg, const char *tenant, const struct drain_gate_ask *a)
{
	struct gate_log *g = arg;

	assert_string_equal(tenant, "demo");
	g->asked++;
	g->last = *a;
	if (!g->allow) {
		g->refused++;
		return 20;
	}
	if (a->new_conn)
		g->leases++;
	return 0;
}

static void
gate_done(void *arg, const char *tenant, bool failed)
{
	struct gate_log *g = arg;

	assert_string_equal(tenant, "demo");
	g->dones++;
	g->failed += failed;
}

/* The fixture with the gate's record behind it (fx first: the predicates
 * get the fx). */
struct gate_fx {
	struct fx fx;
	struct gate_log g;
};

static bool
pred_gate_balanced(struct fx *fx)
{
	const struct gate_log *g = &((struct gate_fx *)fx)->g;

	return g->dones == g->leases;
}

/* A refusal by the gate sends nothing and takes no lease; once it grants,
 * the message goes, the first send asks for a connection, every lease
 * comes back through done(), and a 421 comes back as failed (the fleet
 * cuts the shared limit on it). */
static void
test_gate_refuses_grants_and_leases(void **state)
{
	struct gate_fx *gf = calloc(1, sizeof(*gf));
	struct fx *fx = &gf->fx;
	struct gate_log *g = &gf->g;
	struct drain_gate gate = { g, gate_take, gate_done };
	struct drain_deps deps;
	struct fx_opts o = { 0 };

	(void)state;
	assert_non_null(gf);
	fx_open(fx, &o);
	memset(&deps, 0, sizeof(deps));
	deps.loop = &fx->loop;
	deps.spool = fx->sp;
	deps.dns = fx->dns;
	deps.stats = fx->st;
	deps.now_ms = fake_clock;
	deps.gate = &gate;
	assert_int_equal(drain_new(&deps, fx->cfg, NULL, &fx->d), 0);
	fx_wait(fx, pred_up, "primary up");
	(void)fx_queue(fx, "a@sender.test", "u1@example.test", "m1");
	drain_kick(fx->d, "demo");
	(void)fx_run_until(fx, NULL, QUIET_MS);
	assert_true(g->refused >= 2);         /* asked again after its wait */
	assert_int_equal(fx->prim.nmsg, 0);
	assert_int_equal(g->leases, 0);
	assert_true(g->last.rate == 1000 && g->last.limit > 0 && g->last.size > 0);
	assert_true(g->last.new_conn);
	assert_int_equal(g->last.concurrency, 1);
	g->allow = true;
	fx->want = 1;
	fx_wait(fx, pred_delivered, "the delivery once granted");
	assert_int_equal(g->leases, 1);
	fx_wait(fx, pred_gate_balanced, "the idle connection's lease back");
	assert_int_equal(g->failed, 0);
	fx->prim.data_reply = "421 4.3.2 shutting down";
	fx->prim.drop_after_data = true;
	(void)fx_queue(fx, "a@sender.test", "u2@example.test", "m2");
	drain_kick(fx->d, "demo");
	fx_wait(fx, pred_down, "down after a 421");
	fx_wait(fx, pred_gate_balanced, "the failed connection's lease back");
	/* The failed session may be retried once on a new connection (the
	 * drain's concurrency grace): every lease still comes back. */
	assert_true(g->leases >= 2);
	assert_true(g->failed >= 1);
	fx_close(fx);
	free(gf);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_probe_down_then_up),
		cmocka_unit_test(test_421_during_delivery_goes_down),
		cmocka_unit_test(test_oldest_first_and_status),
		cmocka_unit_test(test_mailmax_limits_messages_per_connection),
		cmocka_unit_test(test_4xx_retried_at_once_then_backoff),
		cmocka_unit_test(test_rcptmax_splits_transactions),
		cmocka_unit_test(test_rcptmax_with_mailmax),
		cmocka_unit_test(test_8bitmime_to_7bit_primary_bounces),
		cmocka_unit_test(test_refusal_while_others_work_cuts_concurrency),
		cmocka_unit_test(test_every_session_refused_goes_down),
		cmocka_unit_test(test_5xx_bounces_to_sender),
		cmocka_unit_test(test_null_sender_gets_no_dsn),
		cmocka_unit_test(test_expired_message_bounces),
		cmocka_unit_test(test_hold_release_and_flush),
		cmocka_unit_test(test_set_validation),
		cmocka_unit_test(test_self_address_is_not_a_target),
		cmocka_unit_test(test_close_mid_delivery),
		cmocka_unit_test(test_outage_expiry_bounces),
		cmocka_unit_test(test_outage_delay_notice_once),
		cmocka_unit_test(test_outage_null_sender_and_never),
		cmocka_unit_test(test_outage_tenant_override),
		cmocka_unit_test(test_expired_not_delivered_after_outage),
		cmocka_unit_test(test_caps_recorded_after_probe),
		cmocka_unit_test(test_gate_refuses_grants_and_leases),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
