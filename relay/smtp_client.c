/*
 * smtp_client.c - the outbound SMTP session state machine (probe and
 * delivery) on a libuv TCP handle, with optional STARTTLS through tls.h.
 *
 * The session is an explicit state enum; sc_enter() is the one place that
 * changes it and (re)arms the timer.  Replies are matched to what we sent by
 * state alone: the only time several replies are outstanding is the
 * pipelined MAIL + RCPT batch, counted by tx.replies.
 *
 *   CONNECT -> BANNER -> EHLO [-> HELO] [-> STARTTLS -> HANDSHAKE -> EHLO]
 *     -> READY -> ([RSET] -> MAILRCPT -> DATA -> BODY -> DOT -> READY)*
 *     -> QUIT -> (closed)
 *
 * Invariants and ownership:
 *  - Memory is released only from the close callback of the last handle
 *    (libuv's rule), and not before the body source's pending read has
 *    called back: the session's pointer is handed to that read.
 *  - Failure never calls back synchronously: sc_fail() records why, closes
 *    both handles, and sc_finish_close() reports the message in flight
 *    (SENT) and then CLOSED.  So a callback can always call abort, and code
 *    after any call that may fail checks c->closing and returns at once.
 *  - Input is framed by smtp_proto's line reader into a fixed buffer; a
 *    reply that arrives when nothing is outstanding, plaintext pipelined
 *    behind the 220 to STARTTLS, and any malformed line end the session.
 *
 * Nothing here logs: the caller gets codes, texts and latencies.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/smtp_client.h"
#include "mxspool/tls.h"

#define SC_DEFAULT_TIMEOUT_MS (5 * 60 * 1000)
/* Longest reply line we accept, CRLF included.  RFC 5321 says 512; real
 * servers sometimes exceed it, so allow twice that, still bounded. */
#define SC_LINE_MAX 1024
#define SC_IN_MAX (SC_LINE_MAX * 2)
#define SC_READ_BUF 16384
/* Body bytes asked from the source at a time. */
#define SC_CHUNK 32768

enum sc_state {
	SC_CONNECT,
	SC_BANNER,
	SC_EHLO,
	SC_HELO,
	SC_STARTTLS,
	SC_HANDSHAKE,
	SC_READY,
	SC_EARLY,                     /* result decided without talking */
	SC_RSET,
	SC_MAILRCPT,
	SC_DATA,
	SC_BODY,
	SC_DOT,
	SC_QUIT,
	SC_CLOSING,
};

static const char *const sc_state_names[] = {
	"CONNECT", "BANNER", "EHLO", "HELO", "STARTTLS", "HANDSHAKE", "READY",
	"EARLY", "RSET", "MAIL", "DATA", "BODY", "DOT", "QUIT", "CLOSING",
};

/* Per-message (transaction) state, separate from the connection's. */
struct sc_tx {
	const struct smtp_client_msg *msg;
	struct smtp_client_reply *rcpt;   /* nrcpt */
	unsigned char *accepted;          /* RCPT answered 2xx */
	struct smtp_client_reply reply;
	size_t replies;                   /* MAIL/RCPT replies received */
	size_t sent;                      /* MAIL/RCPT commands sent */
	size_t nok;                       /* recipients accepted */
	bool mail_ok;
	bool pipelined;
	int64_t last_ms;                  /* last command sent / reply seen */
	int64_t mail_lat, rcpt_lat, data_lat, dot_lat;
	/* body */
	uint64_t off;
	unsigned stuff;
	bool reading;                     /* a source read is outstanding */
	bool eof;
};

struct smtp_client {
	uv_loop_t *loop;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_connect_t creq;
	unsigned open_handles;
	struct smtp_client_callbacks cbs;
	void *arg;

	struct sockaddr_storage addr;
	char host[256];
	char helo[256];
	enum smtp_client_tls tls_mode;
	struct tls_ctx *tls_ctx;
	struct tls_conn *tls;
	bool tls_active;
	uint64_t connect_timeout_ms;
	uint64_t timeout_ms;
	bool probe;

	enum sc_state state;
	int64_t sent_ms;              /* when the awaited command went out */
	int64_t start_ms;
	unsigned ext;
	uint64_t size_max;
	uint32_t rcpt_max, mail_max;  /* RFC 9422 LIMITS of the last EHLO */
	bool greeted;                 /* the 220 greeting arrived */
	bool need_rset;
	unsigned writes;              /* uv_write requests in flight */

	struct smtp_line_reader lr;
	struct smtp_reply reply;
	size_t inlen;
	char in[SC_IN_MAX];
	char rbuf[SC_READ_BUF];

	struct sc_tx tx;
	bool in_tx;

	bool closing;
	bool finishing;               /* handles closed, waiting for a read */
	struct smtp_client_end end;
};

struct sc_wreq {
	uv_write_t req;
	struct smtp_client *c;
	uv_buf_t buf;
	char data[];
};

static void sc_fail(struct smtp_client *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void sc_on_reply(struct smtp_client *c);
static void sc_body_next(struct smtp_client *c);

const char *
smtp_client_strerror(int status)
{
	switch (status) {
	case SMTP_CLIENT_OK: return "ok";
	case SMTP_CLIENT_ECONNECT: return "connection failed";
	case SMTP_CLIENT_ETIMEOUT: return "timeout";
	case SMTP_CLIENT_EIO: return "connection lost";
	case SMTP_CLIENT_E421: return "service not available (421)";
	case SMTP_CLIENT_EREPLY: return "session refused";
	case SMTP_CLIENT_EPROTO: return "protocol error";
	case SMTP_CLIENT_ETLS: return "TLS failure";
	case SMTP_CLIENT_ENOTLS: return "STARTTLS not offered";
	case SMTP_CLIENT_ENOMEM: return "out of memory";
	case SMTP_CLIENT_EINVAL: return "invalid argument";
	case SMTP_CLIENT_EABORT: return "aborted";
	case SMTP_CLIENT_ESOURCE: return "message source failed";
	default: return "unknown error";
	}
}

/* ---- dot-stuffing ------------------------------------------------------ */

#define STUFF_MIDLINE 0x1             /* not at the start of a line */
#define STUFF_CR      0x2             /* a CR is held, waiting for its LF */

size_t
smtp_client_stuff(unsigned *state, const char *in, size_t inlen, char *out,
    bool final)
{
	unsigned st = *state;
	size_t n = 0;

	for (size_t i = 0; i < inlen; i++) {
		char ch = in[i];

		if (st & STUFF_CR) {
			/* A held CR always ends a line: CR LF stays, and a bare
			 * CR becomes CR LF, so no bare CR ever leaves us (a
			 * "\r.\r" could otherwise end the message early at a
			 * lenient server: SMTP smuggling). */
			st &= ~(STUFF_CR | STUFF_MIDLINE);
			out[n++] = '\r';
			out[n++] = '\n';
			if (ch == '\n')
				continue;
		}
		if (ch == '\r') {
			st |= STUFF_CR;
			continue;
		}
		if (ch == '\n') {         /* bare LF: make it CR LF */
			out[n++] = '\r';
			out[n++] = '\n';
			st &= ~STUFF_MIDLINE;
			continue;
		}
		if (!(st & STUFF_MIDLINE) && ch == '.')
			out[n++] = '.';   /* RFC 5321 4.5.2 */
		out[n++] = ch;
		st |= STUFF_MIDLINE;
	}
	if (final) {
		if (st & STUFF_CR) {
			out[n++] = '\r';
			out[n++] = '\n';
			st &= ~(STUFF_CR | STUFF_MIDLINE);
		}
		if (st & STUFF_MIDLINE) {
			out[n++] = '\r';
			out[n++] = '\n';
		}
		memcpy(out + n, ".\r\n", 3);
		n += 3;
		st = 0;
	}
	*state = st;
	return n;
}

/* ---- small helpers ----------------------------------------------------- */

static enum smtp_client_outcome
sc_outcome(int code)
{
	if (code >= 200 && code < 300)
		return SMTP_CLIENT_DELIVERED;
	if (code >= 500 && code < 600)
		return SMTP_CLIENT_PERMFAIL;
	return SMTP_CLIENT_TEMPFAIL;
}

static void
sc_reply_from_server(struct smtp_client_reply *dst, const struct smtp_reply *r)
{
	size_t n = r->text_len < sizeof(dst->text) - 1 ? r->text_len :
	    sizeof(dst->text) - 1;

	dst->outcome = sc_outcome(r->code);
	dst->code = r->code;
	snprintf(dst->enh, sizeof(dst->enh), "%s", r->enh);
	memcpy(dst->text, r->text, n);
	dst->text[n] = '\0';
	dst->local = false;
}

static void
sc_reply_local(struct smtp_client_reply *dst, enum smtp_client_outcome o,
    const char *enh, const char *text)
{
	dst->outcome = o;
	dst->code = 0;
	snprintf(dst->enh, sizeof(dst->enh), "%s", enh ? enh : "");
	snprintf(dst->text, sizeof(dst->text), "%s", text);
	dst->local = true;
}

static int64_t
sc_now(struct smtp_client *c)
{
	uv_update_time(c->loop);
	return (int64_t)uv_now(c->loop);
}

static void
sc_on_timer(uv_timer_t *t)
{
	struct smtp_client *c = t->data;

	if (c->closing)
		return;
	if (c->state == SC_EARLY) {
		/* The result was decided in smtp_client_send(); report it
		 * from the loop, not from inside the caller's call. */
		struct smtp_client_result res;
		struct sc_tx *tx = &c->tx;
		struct smtp_client_reply reply = tx->reply;
		struct smtp_client_reply *rr = tx->rcpt;
		unsigned char *acc = tx->accepted;

		/* Detach the arrays: SENT may start the next message. */
		tx->rcpt = NULL;
		tx->accepted = NULL;
		memset(&res, 0, sizeof(res));
		res.msg = tx->msg;
		res.rcpt = rr;
		res.reply = &reply;
		res.mail_latency_ms = res.rcpt_latency_ms = -1;
		res.data_latency_ms = res.dot_latency_ms = -1;
		c->state = SC_READY;
		c->in_tx = false;
		c->end.messages++;
		c->cbs.sent(c->arg, c, &res);
		free(rr);
		free(acc);
		return;
	}
	sc_fail(c, SMTP_CLIENT_ETIMEOUT, "timeout in state %s after %" PRIu64 " ms",
	    sc_state_names[c->state],
	    c->state == SC_CONNECT ? c->connect_timeout_ms : c->timeout_ms);
}

/* The one place the state changes: arm the timer for what we now wait on. */
static void
sc_enter(struct smtp_client *c, enum sc_state s)
{
	uint64_t ms = s == SC_CONNECT ? c->connect_timeout_ms : c->timeout_ms;

	c->state = s;
	if (s == SC_READY || s == SC_CLOSING) {
		(void)uv_timer_stop(&c->timer);
		return;
	}
	if (s == SC_EARLY)
		ms = 0;
	c->sent_ms = sc_now(c);
	(void)uv_timer_start(&c->timer, sc_on_timer, ms, 0);
}

/* Restart the timer for the step in progress (a body write, a batch). */
static void
sc_rearm(struct smtp_client *c)
{
	(void)uv_timer_start(&c->timer, sc_on_timer, c->timeout_ms, 0);
}

/* ---- closing ----------------------------------------------------------- */

static void
sc_free(struct smtp_client *c)
{
	free(c->tx.rcpt);
	free(c->tx.accepted);
	tls_conn_free(c->tls);
	tls_ctx_free(c->tls_ctx);   /* from smtp_client_new() */
	free(c);
}

/* Both handles are closed and no source read is outstanding: report the
 * message in flight, then the end.  Asynchronous processing ends here. */
static void
sc_finish_close(struct smtp_client *c)
{
	struct sc_tx *tx = &c->tx;

	if (c->in_tx) {
		struct smtp_client_result res;
		const char *why = c->end.text;

		for (size_t i = 0; i < tx->msg->nrcpt; i++) {
			struct smtp_client_reply *rr = &tx->rcpt[i];

			/* Undecided recipients: those with no reply yet and
			 * those accepted at RCPT whose data was not answered. */
			if (!tx->accepted[i] && (rr->code != 0 || rr->local))
				continue;
			if (c->end.status == SMTP_CLIENT_E421)
				sc_reply_from_server(rr, &c->reply);
			else
				sc_reply_local(rr, SMTP_CLIENT_TEMPFAIL, "4.4.2", why);
		}
		if ((tx->reply.code == 0 && !tx->reply.local) ||
		    tx->reply.outcome == SMTP_CLIENT_DELIVERED) {
			if (c->end.status == SMTP_CLIENT_E421)
				sc_reply_from_server(&tx->reply, &c->reply);
			else
				sc_reply_local(&tx->reply, SMTP_CLIENT_TEMPFAIL,
				    "4.4.2", why);
		}
		memset(&res, 0, sizeof(res));
		res.msg = tx->msg;
		res.rcpt = tx->rcpt;
		res.reply = &tx->reply;
		res.status = c->end.status;
		res.mail_latency_ms = tx->mail_lat;
		res.rcpt_latency_ms = tx->rcpt_lat;
		res.data_latency_ms = tx->data_lat;
		res.dot_latency_ms = tx->dot_lat;
		res.pipelined = tx->pipelined;
		c->in_tx = false;
		c->end.messages++;
		c->cbs.sent(c->arg, c, &res);
	}
	c->cbs.closed(c->arg, &c->end);
	sc_free(c);
}

static void
sc_on_close(uv_handle_t *h)
{
	struct smtp_client *c = h->data;

	if (--c->open_handles > 0)
		return;
	if (c->tx.reading) {
		c->finishing = true;  /* sc_on_chunk() finishes */
		return;
	}
	sc_finish_close(c);
}

static void
sc_close(struct smtp_client *c)
{
	if (c->closing)
		return;
	c->closing = true;
	c->state = SC_CLOSING;
	(void)uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, sc_on_close);
	uv_close((uv_handle_t *)&c->tcp, sc_on_close);
}

/* The session failed: remember why and close.  Callbacks follow later. */
static void
sc_fail(struct smtp_client *c, int status, const char *fmt, ...)
{
	va_list ap;

	if (c->closing)
		return;
	c->end.status = status;
	va_start(ap, fmt);
	vsnprintf(c->end.text, sizeof(c->end.text), fmt, ap);
	va_end(ap);
	sc_close(c);
}

/* Fail with the server's reply as the reason. */
static void
sc_fail_reply(struct smtp_client *c, int status)
{
	c->end.code = c->reply.code;
	sc_fail(c, status, "%d %s%s%.*s", c->reply.code, c->reply.enh,
	    c->reply.enh[0] ? " " : "", (int)c->reply.text_len, c->reply.text);
}

/* ---- output ------------------------------------------------------------ */

static void
sc_on_write(uv_write_t *req, int status)
{
	struct sc_wreq *w = req->data;
	struct smtp_client *c = w->c;

	free(w);
	c->writes--;
	if (c->closing)
		return;
	if (status < 0) {
		sc_fail(c, SMTP_CLIENT_EIO, "write failed: %s", uv_strerror(status));
		return;
	}
	if (c->state == SC_BODY && c->writes == 0 && !c->tx.reading)
		sc_body_next(c);
}

/* Hand W (LEN bytes in W->data) to the socket; W is freed on failure. */
static int
sc_queue_write(struct smtp_client *c, struct sc_wreq *w, size_t len)
{
	w->c = c;
	w->req.data = w;
	w->buf = uv_buf_init(w->data, (unsigned)len);
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, sc_on_write) < 0) {
		free(w);
		return SMTP_CLIENT_EIO;
	}
	c->writes++;
	return 0;
}

static int
sc_write_raw(struct smtp_client *c, const void *data, size_t len)
{
	struct sc_wreq *w;

	if (len == 0)
		return 0;
	w = malloc(sizeof(*w) + len);
	if (w == NULL)
		return SMTP_CLIENT_ENOMEM;
	memcpy(w->data, data, len);
	return sc_queue_write(c, w, len);
}

/* Write whatever ciphertext the TLS conn has for the socket. */
static int
sc_tls_flush(struct smtp_client *c)
{
	size_t n;

	while ((n = tls_conn_pending_len(c->tls)) > 0) {
		struct sc_wreq *w = malloc(sizeof(*w) + n);
		size_t got = 0;
		int rc;

		if (w == NULL)
			return SMTP_CLIENT_ENOMEM;
		if (tls_conn_pending_out(c->tls, w->data, n, &got) != TLS_OK ||
		    got == 0) {
			free(w);
			return got == 0 ? 0 : SMTP_CLIENT_ETLS;
		}
		if ((rc = sc_queue_write(c, w, got)) != 0)
			return rc;
	}
	return 0;
}

/* Send plaintext, through TLS when it is active.  On failure the session
 * is failed; the caller checks c->closing. */
static void
sc_send(struct smtp_client *c, const void *data, size_t len)
{
	int rc;

	if (c->tls_active) {
		if (tls_conn_write(c->tls, data, len) != TLS_OK) {
			sc_fail(c, SMTP_CLIENT_ETLS, "TLS write failed: %s",
			    tls_conn_error(c->tls));
			return;
		}
		rc = sc_tls_flush(c);
	} else {
		rc = sc_write_raw(c, data, len);
	}
	if (rc != 0)
		sc_fail(c, rc, "write failed: %s", smtp_client_strerror(rc));
}

static void
sc_command(struct smtp_client *c, enum sc_state next, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Send one short command line (CRLF added) and wait for its reply. */
static void
sc_command(struct smtp_client *c, enum sc_state next, const char *fmt, ...)
{
	char line[SMTP_PROTO_LINE_MAX + 64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line) - 2) {
		sc_fail(c, SMTP_CLIENT_EINVAL, "command too long");
		return;
	}
	memcpy(line + n, "\r\n", 2);
	smtp_proto_reply_init(&c->reply);
	sc_enter(c, next);
	sc_send(c, line, (size_t)n + 2);
}

/* ---- session setup ----------------------------------------------------- */

static void
sc_ready(struct smtp_client *c)
{
	sc_enter(c, SC_READY);
	c->end.ready = true;
	if (c->probe) {
		sc_command(c, SC_QUIT, "QUIT");
		return;
	}
	if (c->cbs.ready)
		c->cbs.ready(c->arg, c);
}

/* After a successful EHLO/HELO: STARTTLS now, or be READY. */
static void
sc_after_hello(struct smtp_client *c)
{
	bool want = c->tls_mode != SMTP_CLIENT_TLS_NONE;
	bool must = c->tls_mode == SMTP_CLIENT_TLS_REQUIRED ||
	    c->tls_mode == SMTP_CLIENT_TLS_VERIFY;
	bool offered = (c->ext & SMTP_EXT_STARTTLS) != 0;

	if (c->tls_active || !want) {
		sc_ready(c);
		return;
	}
	if (offered && c->tls_ctx != NULL) {
		sc_command(c, SC_STARTTLS, "STARTTLS");
		return;
	}
	if (must) {
		sc_fail(c, SMTP_CLIENT_ENOTLS, "%s",
		    offered ? "TLS required but no client TLS context" :
		    "TLS required but STARTTLS not offered");
		return;
	}
	sc_ready(c);
}

static void
sc_start_tls(struct smtp_client *c)
{
	int rc;

	/* Plaintext already waiting behind the 220 was sent before the
	 * handshake and could be an injection (CVE-2011-0411 style). */
	if (c->inlen > 0) {
		sc_fail(c, SMTP_CLIENT_EPROTO, "data pipelined after STARTTLS reply");
		return;
	}
	c->tls = tls_conn_new(c->tls_ctx, false, c->host);
	if (c->tls == NULL) {
		sc_fail(c, SMTP_CLIENT_ENOMEM, "cannot create TLS connection");
		return;
	}
	sc_enter(c, SC_HANDSHAKE);
	rc = tls_conn_handshake(c->tls);
	if (rc == TLS_ERROR || rc == TLS_ENOMEM || rc == TLS_EINVAL) {
		sc_fail(c, SMTP_CLIENT_ETLS, "TLS handshake: %s", tls_conn_error(c->tls));
		return;
	}
	rc = sc_tls_flush(c);
	if (rc != 0)
		sc_fail(c, rc, "TLS write failed");
}

static void
sc_handshake_done(struct smtp_client *c)
{
	c->tls_active = true;
	c->end.tls = true;
	(void)tls_conn_info_string(c->tls, c->end.tls_info, sizeof(c->end.tls_info));
	/* RFC 3207 4.2: forget what the server said before TLS. */
	c->ext = 0;
	c->size_max = 0;
	sc_command(c, SC_EHLO, "EHLO %s", c->helo);
}

/* ---- transactions ------------------------------------------------------ */

static bool
sc_clean(const char *s)
{
	return s == NULL || strpbrk(s, "\r\n") == NULL;
}

/* Append "RCPT TO:<..> [NOTIFY=..] [ORCPT=..]\r\n" for recipient I. */
static int
sc_format_rcpt(struct smtp_client *c, size_t i, char *buf, size_t size)
{
	const struct smtp_client_rcpt *rc = &c->tx.msg->rcpt[i];
	bool dsn = (c->ext & SMTP_EXT_DSN) != 0;
	char notify[64] = "";
	int n;

	if (dsn && rc->notify) {
		if (rc->notify & ENV_NOTIFY_NEVER) {
			strcpy(notify, " NOTIFY=NEVER");
		} else {
			strcpy(notify, " NOTIFY=");
			if (rc->notify & ENV_NOTIFY_SUCCESS)
				strcat(notify, "SUCCESS,");
			if (rc->notify & ENV_NOTIFY_FAILURE)
				strcat(notify, "FAILURE,");
			if (rc->notify & ENV_NOTIFY_DELAY)
				strcat(notify, "DELAY,");
			notify[strlen(notify) - 1] = '\0';
		}
	}
	n = snprintf(buf, size, "RCPT TO:<%s>%s%s%s\r\n", rc->addr, notify,
	    dsn && rc->orcpt ? " ORCPT=" : "", dsn && rc->orcpt ? rc->orcpt : "");
	return n < 0 || (size_t)n >= size ? -1 : n;
}

static int
sc_format_mail(struct smtp_client *c, char *buf, size_t size)
{
	const struct smtp_client_msg *m = c->tx.msg;
	bool dsn = (c->ext & SMTP_EXT_DSN) != 0;
	char sz[40] = "";
	int n;

	if ((c->ext & SMTP_EXT_SIZE) && m->size > 0)
		snprintf(sz, sizeof(sz), " SIZE=%" PRIu64, m->size);
	n = snprintf(buf, size, "MAIL FROM:<%s>%s%s%s%s%s%s\r\n", m->sender, sz,
	    (m->body == ENV_BODY_8BITMIME || m->body == ENV_BODY_BINARYMIME) &&
	    (c->ext & SMTP_EXT_8BITMIME) ? " BODY=8BITMIME" : "",
	    m->smtputf8 ? " SMTPUTF8" : "",
	    dsn && m->ret == ENV_RET_FULL ? " RET=FULL" :
	    dsn && m->ret == ENV_RET_HDRS ? " RET=HDRS" : "",
	    dsn && m->envid ? " ENVID=" : "", dsn && m->envid ? m->envid : "");
	return n < 0 || (size_t)n >= size ? -1 : n;
}

/* Send the next MAIL/RCPT commands: all at once with PIPELINING. */
static void
sc_tx_send_commands(struct smtp_client *c)
{
	struct sc_tx *tx = &c->tx;
	size_t total = tx->msg->nrcpt + 1;
	size_t upto = tx->pipelined ? total : tx->sent + 1;
	size_t cap = (upto - tx->sent) * (SMTP_PROTO_LINE_MAX + 1200);
	char *buf = malloc(cap);
	size_t len = 0;

	if (buf == NULL) {
		sc_fail(c, SMTP_CLIENT_ENOMEM, "out of memory");
		return;
	}
	for (; tx->sent < upto; tx->sent++) {
		int n = tx->sent == 0 ? sc_format_mail(c, buf + len, cap - len) :
		    sc_format_rcpt(c, tx->sent - 1, buf + len, cap - len);

		if (n < 0) {
			free(buf);
			sc_fail(c, SMTP_CLIENT_EINVAL, "envelope too long");
			return;
		}
		len += (size_t)n;
	}
	smtp_proto_reply_init(&c->reply);
	if (c->state != SC_MAILRCPT)
		sc_enter(c, SC_MAILRCPT);
	else
		sc_rearm(c);
	tx->last_ms = sc_now(c);
	sc_send(c, buf, len);
	free(buf);
}

/* The message is finished on a live session: report it, be READY. */
static void
sc_tx_done(struct smtp_client *c, bool clean)
{
	struct sc_tx *tx = &c->tx;
	struct smtp_client_result res;
	struct smtp_client_reply reply = tx->reply;
	struct smtp_client_reply *rr = tx->rcpt;
	unsigned char *acc = tx->accepted;

	/* Detach the arrays: SENT may start the next message at once. */
	tx->rcpt = NULL;
	tx->accepted = NULL;
	c->need_rset = !clean;
	memset(&res, 0, sizeof(res));
	res.msg = tx->msg;
	res.rcpt = rr;
	res.reply = &reply;
	res.mail_latency_ms = tx->mail_lat;
	res.rcpt_latency_ms = tx->rcpt_lat;
	res.data_latency_ms = tx->data_lat;
	res.dot_latency_ms = tx->dot_lat;
	res.pipelined = tx->pipelined;
	c->in_tx = false;
	c->end.messages++;
	sc_enter(c, SC_READY);
	c->cbs.sent(c->arg, c, &res);
	free(rr);
	free(acc);
}

static void
sc_tx_begin(struct smtp_client *c)
{
	c->tx.pipelined = (c->ext & SMTP_EXT_PIPELINING) != 0;
	sc_tx_send_commands(c);
}

/* One MAIL or RCPT reply arrived. */
static void
sc_on_mailrcpt_reply(struct smtp_client *c, int64_t now)
{
	struct sc_tx *tx = &c->tx;
	size_t i = tx->replies++;
	size_t total = tx->msg->nrcpt + 1;
	int64_t lat = now - tx->last_ms;

	tx->last_ms = now;
	if (i == 0) {
		tx->mail_lat = lat;
		sc_reply_from_server(&tx->reply, &c->reply);
		tx->mail_ok = c->reply.code / 100 == 2;
		if (!tx->mail_ok) {
			/* Every recipient shares the MAIL reply. */
			for (size_t k = 0; k < tx->msg->nrcpt; k++)
				tx->rcpt[k] = tx->reply;
			if (!tx->pipelined) {
				sc_tx_done(c, false);
				return;
			}
		}
	} else if (tx->mail_ok) {
		if (lat > tx->rcpt_lat)
			tx->rcpt_lat = lat;
		sc_reply_from_server(&tx->rcpt[i - 1], &c->reply);
		if (c->reply.code / 100 == 2) {
			tx->accepted[i - 1] = 1;
			tx->nok++;
		}
	}
	smtp_proto_reply_init(&c->reply);
	if (tx->replies < total) {
		if (!tx->pipelined)
			sc_tx_send_commands(c);
		return;
	}
	if (!tx->mail_ok || tx->nok == 0 || tx->msg->verify_only) {
		if (tx->mail_ok && tx->nok == 0)
			tx->reply = tx->rcpt[0];  /* say why: a refusal */
		sc_tx_done(c, false);
		return;
	}
	sc_command(c, SC_DATA, "DATA");
}

static void
sc_on_chunk(void *arg, int status, const void *buf, size_t len)
{
	struct smtp_client *c = arg;
	struct sc_tx *tx = &c->tx;
	char *out;
	size_t n;

	tx->reading = false;
	if (c->finishing) {
		sc_finish_close(c);
		return;
	}
	if (c->closing)
		return;
	if (status < 0) {
		sc_fail(c, SMTP_CLIENT_ESOURCE, "cannot read the message (%d)", status);
		return;
	}
	out = malloc(2 * len + 8);
	if (out == NULL) {
		sc_fail(c, SMTP_CLIENT_ENOMEM, "out of memory");
		return;
	}
	n = smtp_client_stuff(&tx->stuff, buf, len, out, len == 0);
	tx->off += len;
	if (len == 0) {
		tx->eof = true;
		smtp_proto_reply_init(&c->reply);
		sc_enter(c, SC_DOT);
	} else {
		sc_rearm(c);
	}
	sc_send(c, out, n);
	free(out);
	if (c->closing)
		return;
	/* The next chunk is asked for when these bytes are written. */
	if (!tx->eof && c->writes == 0)
		sc_body_next(c);
}

static void
sc_body_next(struct smtp_client *c)
{
	struct sc_tx *tx = &c->tx;
	int rc;

	if (tx->eof || tx->reading)
		return;
	tx->reading = true;
	rc = tx->msg->read(tx->msg->read_arg, tx->off, SC_CHUNK, sc_on_chunk, c);
	if (rc < 0) {
		tx->reading = false;
		sc_fail(c, SMTP_CLIENT_ESOURCE, "cannot read the message (%d)", rc);
	}
}

/* ---- replies ----------------------------------------------------------- */

static void
sc_on_reply(struct smtp_client *c)
{
	struct smtp_reply *r = &c->reply;
	int64_t now = sc_now(c);
	int64_t lat = now - c->sent_ms;
	int cls = r->code / 100;

	c->end.code = r->code;
	if (r->code == 421 && c->state != SC_QUIT) {
		sc_fail_reply(c, SMTP_CLIENT_E421);
		return;
	}
	switch (c->state) {
	case SC_BANNER:
		c->end.banner_latency_ms = lat;
		if (r->code != 220) {
			sc_fail_reply(c, SMTP_CLIENT_EREPLY);
			return;
		}
		c->greeted = true;
		sc_command(c, SC_EHLO, "EHLO %s", c->helo);
		return;
	case SC_EHLO:
		c->end.ehlo_latency_ms = lat;
		if (cls == 2) {
			c->ext = r->ext;
			c->size_max = r->size_max;
			c->rcpt_max = r->rcpt_max;
			c->mail_max = r->mail_max;
			c->end.ext = c->ext;
			c->end.size_max = c->size_max;
			c->end.rcpt_max = c->rcpt_max;
			c->end.mail_max = c->mail_max;
			sc_after_hello(c);
		} else if (cls == 5) {
			sc_command(c, SC_HELO, "HELO %s", c->helo);
		} else {
			sc_fail_reply(c, SMTP_CLIENT_EREPLY);
		}
		return;
	case SC_HELO:
		c->end.ehlo_latency_ms = lat;
		if (cls != 2) {
			sc_fail_reply(c, SMTP_CLIENT_EREPLY);
			return;
		}
		c->ext = 0;
		c->size_max = 0;
		c->rcpt_max = c->mail_max = 0;
		c->end.ext = 0;
		c->end.size_max = 0;
		c->end.rcpt_max = c->end.mail_max = 0;
		sc_after_hello(c);
		return;
	case SC_STARTTLS:
		if (r->code == 220) {
			sc_start_tls(c);
		} else if (c->tls_mode == SMTP_CLIENT_TLS_OPPORTUNISTIC) {
			/* RFC 3207 4: the server may refuse; carry on in clear. */
			sc_ready(c);
		} else {
			sc_fail_reply(c, SMTP_CLIENT_ETLS);
		}
		return;
	case SC_RSET:
		if (cls != 2) {
			sc_fail_reply(c, SMTP_CLIENT_EPROTO);
			return;
		}
		c->need_rset = false;
		sc_tx_begin(c);
		return;
	case SC_MAILRCPT:
		sc_on_mailrcpt_reply(c, now);
		return;
	case SC_DATA:
		c->tx.data_lat = lat;
		if (r->code != 354) {
			sc_reply_from_server(&c->tx.reply, r);
			if (r->code / 100 == 2)   /* nonsense: not a 354 */
				c->tx.reply.outcome = SMTP_CLIENT_TEMPFAIL;
			for (size_t k = 0; k < c->tx.msg->nrcpt; k++)
				if (c->tx.accepted[k])
					c->tx.rcpt[k] = c->tx.reply;
			sc_tx_done(c, false);
			return;
		}
		sc_enter(c, SC_BODY);
		sc_body_next(c);
		return;
	case SC_DOT:
		c->tx.dot_lat = lat;
		sc_reply_from_server(&c->tx.reply, r);
		for (size_t k = 0; k < c->tx.msg->nrcpt; k++)
			if (c->tx.accepted[k])
				c->tx.rcpt[k] = c->tx.reply;
		sc_tx_done(c, true);
		return;
	case SC_QUIT:
		c->end.code = r->code;
		sc_close(c);
		return;
	case SC_BODY:
		/* A reply while we are still sending the body: the server gave
		 * up on the message; we cannot tell where the stream stands. */
		sc_fail_reply(c, SMTP_CLIENT_EPROTO);
		return;
	default:
		sc_fail(c, SMTP_CLIENT_EPROTO, "unexpected reply %d in state %s",
		    r->code, sc_state_names[c->state]);
		return;
	}
}

/* Frame and accumulate the lines in c->in. */
static void
sc_process_input(struct smtp_client *c)
{
	size_t pos = 0;

	while (!c->closing && pos < c->inlen) {
		const char *line;
		size_t llen, used;
		int rc = smtp_proto_next_line(&c->lr, c->in + pos, c->inlen - pos,
		    &line, &llen, &used);

		pos += used;
		if (rc == SMTP_PROTO_AGAIN)
			break;
		if (rc != SMTP_PROTO_OK) {
			sc_fail(c, SMTP_CLIENT_EPROTO, "bad reply line from server: %s",
			    smtp_proto_status_name(rc));
			return;
		}
		if (c->state == SC_READY || c->state == SC_CONNECT ||
		    c->state == SC_HANDSHAKE || c->state == SC_EARLY) {
			sc_fail(c, SMTP_CLIENT_EPROTO, "unsolicited output in state %s",
			    sc_state_names[c->state]);
			return;
		}
		rc = smtp_proto_reply_push(&c->reply, line, llen);
		if (rc == SMTP_PROTO_AGAIN)
			continue;
		if (rc != SMTP_PROTO_OK) {
			sc_fail(c, SMTP_CLIENT_EPROTO, "malformed reply from server");
			return;
		}
		/* Drop what was consumed first: STARTTLS checks c->inlen. */
		memmove(c->in, c->in + pos, c->inlen - pos);
		c->inlen -= pos;
		pos = 0;
		sc_on_reply(c);
	}
	if (c->closing)
		return;
	memmove(c->in, c->in + pos, c->inlen - pos);
	c->inlen -= pos;
}

/* Append plaintext BUF to the line buffer, framing as we go. */
static void
sc_ingest(struct smtp_client *c, const char *buf, size_t len)
{
	while (len > 0 && !c->closing) {
		size_t room = sizeof(c->in) - c->inlen;
		size_t n = len < room ? len : room;

		if (c->state == SC_HANDSHAKE && !c->tls_active) {
			sc_fail(c, SMTP_CLIENT_EPROTO,
			    "data pipelined after STARTTLS reply");
			return;
		}
		memcpy(c->in + c->inlen, buf, n);
		c->inlen += n;
		buf += n;
		len -= n;
		sc_process_input(c);
	}
}

static void
sc_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct smtp_client *c = h->data;

	(void)suggested;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void
sc_on_tls_input(struct smtp_client *c, const char *buf, size_t len)
{
	char plain[4096];
	size_t got;
	int rc;

	if (tls_conn_feed(c->tls, buf, len) != TLS_OK) {
		(void)sc_tls_flush(c);
		sc_fail(c, SMTP_CLIENT_ETLS, "TLS: %s", tls_conn_error(c->tls));
		return;
	}
	if (c->state == SC_HANDSHAKE) {
		rc = tls_conn_handshake(c->tls);
		if (sc_tls_flush(c) != 0) {
			sc_fail(c, SMTP_CLIENT_EIO, "TLS write failed");
			return;
		}
		if (rc == TLS_WANT_IO)
			return;
		if (rc != TLS_OK) {
			sc_fail(c, SMTP_CLIENT_ETLS, "TLS handshake: %s",
			    tls_conn_error(c->tls));
			return;
		}
		sc_handshake_done(c);
		if (c->closing)
			return;
	}
	for (;;) {
		rc = tls_conn_read(c->tls, plain, sizeof(plain), &got);
		if (sc_tls_flush(c) != 0) {
			sc_fail(c, SMTP_CLIENT_EIO, "TLS write failed");
			return;
		}
		if (rc == TLS_OK) {
			sc_ingest(c, plain, got);
			if (c->closing)
				return;
			continue;
		}
		if (rc == TLS_WANT_IO)
			return;
		if (rc == TLS_CLOSED) {
			if (c->state == SC_QUIT)
				sc_close(c);
			else
				sc_fail(c, SMTP_CLIENT_EIO, "server closed TLS in state %s",
				    sc_state_names[c->state]);
			return;
		}
		sc_fail(c, SMTP_CLIENT_ETLS, "TLS: %s", tls_conn_error(c->tls));
		return;
	}
}

static void
sc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct smtp_client *c = s->data;

	if (c->closing)
		return;
	if (nread < 0) {
		if (c->state == SC_QUIT)
			sc_close(c);  /* the server closed after our QUIT */
		else
			sc_fail(c, SMTP_CLIENT_EIO, "connection %s in state %s",
			    nread == UV_EOF ? "closed by server" : uv_strerror((int)nread),
			    sc_state_names[c->state]);
		return;
	}
	if (nread == 0)
		return;
	if (c->tls != NULL)
		sc_on_tls_input(c, buf->base, (size_t)nread);
	else
		sc_ingest(c, buf->base, (size_t)nread);
}

static void
sc_on_connect(uv_connect_t *req, int status)
{
	struct smtp_client *c = req->data;
	int rc;

	if (c->closing)
		return;
	if (status < 0) {
		sc_fail(c, SMTP_CLIENT_ECONNECT, "connect failed: %s", uv_strerror(status));
		return;
	}
	c->end.connect_latency_ms = sc_now(c) - c->start_ms;
	(void)uv_tcp_nodelay(&c->tcp, 1);
	rc = uv_read_start((uv_stream_t *)&c->tcp, sc_on_alloc, sc_on_read);
	if (rc < 0) {
		sc_fail(c, SMTP_CLIENT_EIO, "read failed: %s", uv_strerror(rc));
		return;
	}
	smtp_proto_reply_init(&c->reply);
	sc_enter(c, SC_BANNER);
}

/* ---- public verbs ------------------------------------------------------ */

int
smtp_client_new(const struct smtp_client_options *o,
    const struct smtp_client_callbacks *cbs, void *arg,
    struct smtp_client **out)
{
	struct smtp_client *c;
	size_t alen;
	int rc;

	if (o == NULL || o->loop == NULL || o->addr == NULL || cbs == NULL ||
	    cbs->closed == NULL || out == NULL || o->helo_name == NULL ||
	    (!o->probe && cbs->sent == NULL))
		return SMTP_CLIENT_EINVAL;
	if (o->addr->sa_family == AF_INET)
		alen = sizeof(struct sockaddr_in);
	else if (o->addr->sa_family == AF_INET6)
		alen = sizeof(struct sockaddr_in6);
	else
		return SMTP_CLIENT_EINVAL;
	if (!sc_clean(o->helo_name) || strlen(o->helo_name) > 255 ||
	    (o->host && strlen(o->host) > 255))
		return SMTP_CLIENT_EINVAL;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return SMTP_CLIENT_ENOMEM;
	c->loop = o->loop;
	c->cbs = *cbs;
	c->arg = arg;
	memcpy(&c->addr, o->addr, alen);
	snprintf(c->host, sizeof(c->host), "%s", o->host ? o->host : "");
	snprintf(c->helo, sizeof(c->helo), "%s", o->helo_name);
	c->tls_mode = o->tls_mode;
	/* Our own reference: a reload may free the relay's context before
	 * this session reaches STARTTLS. */
	c->tls_ctx = tls_ctx_ref(o->tls_ctx);
	c->timeout_ms = o->timeout_ms ? o->timeout_ms : SC_DEFAULT_TIMEOUT_MS;
	c->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms :
	    c->timeout_ms;
	c->probe = o->probe;
	c->end.connect_latency_ms = -1;
	c->end.banner_latency_ms = -1;
	c->end.ehlo_latency_ms = -1;
	smtp_proto_lines_init(&c->lr, SC_LINE_MAX);

	rc = uv_tcp_init(c->loop, &c->tcp);
	if (rc < 0) {
		tls_ctx_free(c->tls_ctx);
		free(c);
		return rc;
	}
	c->tcp.data = c;
	(void)uv_timer_init(c->loop, &c->timer);
	c->timer.data = c;
	c->open_handles = 2;
	c->creq.data = c;
	c->start_ms = sc_now(c);
	sc_enter(c, SC_CONNECT);
	rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&c->addr,
	    sc_on_connect);
	if (rc < 0)
		sc_fail(c, SMTP_CLIENT_ECONNECT, "connect failed: %s", uv_strerror(rc));
	*out = c;
	return 0;
}

int
smtp_client_send(struct smtp_client *c, const struct smtp_client_msg *m)
{
	struct sc_tx *tx = &c->tx;
	const char *early_enh = NULL, *early_text = NULL;
	enum smtp_client_outcome early = SMTP_CLIENT_PERMFAIL;

	if (c->closing || c->state != SC_READY || c->probe || m == NULL ||
	    m->nrcpt == 0 || m->rcpt == NULL || m->sender == NULL ||
	    (m->read == NULL && !m->verify_only))
		return SMTP_CLIENT_EINVAL;
	free(tx->rcpt);
	free(tx->accepted);
	memset(tx, 0, sizeof(*tx));
	tx->rcpt = calloc(m->nrcpt, sizeof(*tx->rcpt));
	tx->accepted = calloc(m->nrcpt, 1);
	if (tx->rcpt == NULL || tx->accepted == NULL) {
		free(tx->rcpt);
		free(tx->accepted);
		tx->rcpt = NULL;
		tx->accepted = NULL;
		return SMTP_CLIENT_ENOMEM;
	}
	tx->msg = m;
	tx->mail_lat = tx->rcpt_lat = tx->data_lat = tx->dot_lat = -1;
	c->in_tx = true;

	if (!sc_clean(m->sender) || !sc_clean(m->envid) ||
	    strlen(m->sender) > SMTP_PROTO_ADDR_MAX ||
	    (m->envid && strlen(m->envid) > SMTP_PROTO_ENVID_MAX)) {
		early_enh = "5.1.7";
		early_text = "bad sender or ENVID in the queued envelope";
	} else if (m->smtputf8 && !(c->ext & SMTP_EXT_SMTPUTF8)) {
		/* RFC 6531 3.2: no downgrade; the message cannot go this way. */
		early_enh = "5.6.7";
		early_text = "SMTPUTF8 is required but not offered by the server";
	} else if ((m->body == ENV_BODY_8BITMIME ||
	    m->body == ENV_BODY_BINARYMIME) && !(c->ext & SMTP_EXT_8BITMIME)) {
		/* RFC 6152 3: without 8BITMIME the data must be 7-bit; we do
		 * not convert, and never send 8-bit data undeclared. */
		early_enh = "5.6.3";
		early_text = "8-bit data (BODY=8BITMIME) but the server does not "
		    "offer 8BITMIME";
	} else if (c->size_max > 0 && m->size > c->size_max) {
		early_enh = "5.3.4";
		early_text = "message size exceeds the server's SIZE limit";
	}
	for (size_t i = 0; early_text == NULL && i < m->nrcpt; i++) {
		if (m->rcpt[i].addr == NULL || !sc_clean(m->rcpt[i].addr) ||
		    !sc_clean(m->rcpt[i].orcpt) ||
		    strlen(m->rcpt[i].addr) > SMTP_PROTO_ADDR_MAX ||
		    (m->rcpt[i].orcpt &&
		    strlen(m->rcpt[i].orcpt) > SMTP_PROTO_ORCPT_MAX)) {
			early_enh = "5.1.3";
			early_text = "bad recipient in the queued envelope";
		}
	}
	if (early_text != NULL) {
		sc_reply_local(&tx->reply, early, early_enh, early_text);
		for (size_t i = 0; i < m->nrcpt; i++)
			tx->rcpt[i] = tx->reply;
		sc_enter(c, SC_EARLY);
		return 0;
	}
	if (c->need_rset) {
		sc_command(c, SC_RSET, "RSET");
		return 0;
	}
	sc_tx_begin(c);
	return 0;
}

void
smtp_client_quit(struct smtp_client *c)
{
	if (c->closing || c->state != SC_READY)
		return;
	sc_command(c, SC_QUIT, "QUIT");
}

void
smtp_client_abort(struct smtp_client *c)
{
	sc_fail(c, SMTP_CLIENT_EABORT, "aborted");
}

bool
smtp_client_is_ready(const struct smtp_client *c)
{
	return !c->closing && c->state == SC_READY;
}

unsigned
smtp_client_ext(const struct smtp_client *c)
{
	return c->ext;
}

uint64_t
smtp_client_size_max(const struct smtp_client *c)
{
	return c->size_max;
}

void
smtp_client_limits(const struct smtp_client *c, uint32_t *rcpt_max,
    uint32_t *mail_max)
{
	*rcpt_max = c->rcpt_max;
	*mail_max = c->mail_max;
}

bool
smtp_client_greeted(const struct smtp_client *c)
{
	return c->greeted && !c->closing;
}

bool
smtp_client_tls_active(const struct smtp_client *c)
{
	return c->tls_active;
}
