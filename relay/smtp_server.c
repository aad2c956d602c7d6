/*
 * smtp_server.c - inbound ESMTP: listeners, limits and the session state
 * machine.
 *
 * A session is a uv_tcp_t, a timer, one fixed input buffer and at most one
 * transaction.  Input is split into CRLF lines by smtp_proto (smuggling-proof
 * framing) and dispatched through a command table; DATA and BDAT bytes go
 * straight from the input buffer to the spool, which keeps its own bounded
 * buffer, so a session's memory does not grow with the message size.
 *
 * The accept path reads top to bottom:
 *   smtp_data_end() -> spool_tx_commit() -> smtp_on_commit() -> "250 queued"
 * and nothing is said to the client between the end of data and the
 * journal's answer: a 250 means the message is on disk.
 *
 * Ownership: the session is freed only when both handles are closed AND no
 * spool callback is outstanding (sess->pending), so a late commit callback
 * never finds freed memory.  After smtp_session_close() the caller returns
 * at once ("may destroy" in the comments).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/log.h"
#include "mxspool/policy.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/tls.h"
#include "mxspool/util.h"

#define SMTP_IN_MAX      8192      /* input buffer: >= a command line, < TLS record */
#define SMTP_OUT_FLUSH   4096      /* flush queued replies beyond this */
#define SMTP_WQ_MAX      (256 * 1024)  /* stop reading while the peer does not read */
#define SMTP_CIPHER_MAX  (16 * 1024 + 512)
#define SMTP_BACKLOG     511

enum smtp_state {
	SMTP_STATE_INIT,          /* banner sent, no HELO yet */
	SMTP_STATE_HELO,          /* HELO/EHLO done, no transaction */
	SMTP_STATE_MAIL,          /* MAIL accepted */
	SMTP_STATE_RCPT,          /* at least one RCPT accepted */
	SMTP_STATE_DATA,          /* reading DATA text */
	SMTP_STATE_BDAT,          /* reading a BDAT chunk */
	SMTP_STATE_COMMIT,        /* waiting for the journal */
	SMTP_STATE_TLS,           /* STARTTLS handshake */
	SMTP_STATE_QUIT,          /* closing after the last reply */
};

static const char *const smtp_state_names[] = {
	"init", "helo", "mail", "rcpt", "data", "bdat", "commit", "tls", "quit",
};

struct smtp_tx_rcpt {
	char *addr;
	char *orcpt;
	unsigned notify;
};

/* One mail transaction: from MAIL to the end of data, RSET or an error. */
struct smtp_tx {
	struct smtp_mail_params params;
	char sender[SMTP_PROTO_ADDR_MAX + 1];
	char tenant[CONFIG_TENANT_NAME_MAX + 1];
	struct smtp_tx_rcpt *rcpt;
	size_t nrcpt;
	struct spool_tx *stx;         /* open during DATA/BDAT */
	uint64_t size;                /* message octets, our Received: included */
	uint64_t trace_len;           /* octets of our Received: header */
	int error;                    /* first data error: reply at the end */
	bool too_big;
	bool spilling;                /* spool_tx_write() answered SPOOL_PENDING */
	bool bdat;                    /* BDAT used: DATA no longer allowed */
	/* BDAT */
	uint64_t chunk_left;
	bool chunk_last;
	bool chunk_discard;           /* chunk refused: read and drop its octets */
	char bdat_prev;               /* last octet of the previous chunk */
};

struct smtp_server {
	uv_loop_t *loop;
	const struct config *cfg;     /* valid until the next apply_config */
	struct tls_ctx *tls;          /* STARTTLS context, not ours; or NULL */
	struct spool *spool;
	struct smtp_server_hooks hooks;
	uint64_t last_session_id;     /* session numbers for logs */
	uv_tcp_t *listeners;
	size_t nlisteners;
	unsigned open_listeners;
	struct smtp_session *sessions;
	unsigned nsessions;
	unsigned nclosing;            /* of nsessions: closed, memory not yet freed */
	bool closing;
	uv_timer_t grace;
	bool grace_open;
	bool inherited;               /* listeners came from systemd */
	void (*done)(void *);
	void *done_arg;
};

struct smtp_session {
	struct smtp_server *srv;
	struct smtp_session *next, *prev;
	uv_tcp_t tcp;
	uv_timer_t timer;
	unsigned open_handles;
	unsigned pending;             /* spool callbacks outstanding */
	bool closing;
	bool paused;                  /* reading stopped: spool or peer slow */
	uint64_t id;                  /* session number for logs */

	struct sockaddr_storage peer;
	char peer_ip[INET6_ADDRSTRLEN];

	enum smtp_state state;
	bool esmtp;
	char helo[SMTP_PROTO_DOMAIN_MAX + 1];
	unsigned errors;
	unsigned messages;
	struct smtp_tx *tx;

	struct smtp_line_reader lines;
	struct smtp_data_decoder data;

	struct tls_conn *tls;         /* set once STARTTLS began */
	char tls_info[160];

	size_t inlen;
	char in[SMTP_IN_MAX];
	size_t outlen;
	char out[SMTP_OUT_FLUSH + 1024];
	char *cipher;                 /* TLS read buffer, only with TLS */
};

struct smtp_write {
	uv_write_t req;
	struct smtp_session *sess;
	size_t len;
	char data[];
};

static void smtp_process(struct smtp_session *sess);
static void smtp_session_close(struct smtp_session *sess, const char *reason);

/* ---- small helpers -------------------------------------------------------- */

static const struct config *
smtp_cfg(const struct smtp_session *sess)
{
	return sess->srv->cfg;
}

static void
smtp_enter_state(struct smtp_session *sess, enum smtp_state st)
{
	if (sess->state != st)
		log_event(LOG_LEVEL_DEBUG, "smtp_state", "session=%" PRIu64 " from=%s to=%s",
		    sess->id, smtp_state_names[sess->state], smtp_state_names[st]);
	sess->state = st;
}

static void
smtp_tx_free(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;

	if (tx == NULL)
		return;
	/* The single place where an open journal transaction is rolled back.
	 * An abort during a spill cancels the spill's callback, so the
	 * reference it held on the session goes here. */
	if (tx->stx)
		spool_tx_abort(tx->stx);
	if (tx->spilling)
		sess->pending--;   /* from smtp_tx_append() */
	for (size_t i = 0; i < tx->nrcpt; i++) {
		free(tx->rcpt[i].addr);
		free(tx->rcpt[i].orcpt);
	}
	free(tx->rcpt);
	free(tx);
	sess->tx = NULL;
}

/* ---- output ---------------------------------------------------------------- */

static void
smtp_on_written(uv_write_t *req, int status)
{
	struct smtp_write *w = req->data;
	struct smtp_session *sess = w->sess;

	free(w);
	if (sess->closing)
		return;
	if (status != 0) {
		smtp_session_close(sess, "write error");
		return;   /* may destroy */
	}
	if (sess->state == SMTP_STATE_QUIT &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) == 0) {
		smtp_session_close(sess, "quit");
		return;   /* may destroy */
	}
	if (sess->paused && sess->state != SMTP_STATE_COMMIT &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) < SMTP_WQ_MAX / 2)
		smtp_process(sess);
}

static int
smtp_write_raw(struct smtp_session *sess, const char *data, size_t len)
{
	struct smtp_write *w;
	uv_buf_t b;

	if (len == 0)
		return 0;
	w = malloc(sizeof(*w) + len);
	if (w == NULL)
		return -1;
	w->sess = sess;
	w->len = len;
	memcpy(w->data, data, len);
	w->req.data = w;
	b = uv_buf_init(w->data, (unsigned)len);
	if (uv_write(&w->req, (uv_stream_t *)&sess->tcp, &b, 1, smtp_on_written) != 0) {
		free(w);
		return -1;
	}
	return 0;
}

/* Move whatever TLS produced (handshake, records, alerts) to the socket. */
static int
smtp_tls_flush(struct smtp_session *sess)
{
	char buf[SMTP_CIPHER_MAX];
	size_t got;

	while (sess->tls && tls_conn_pending_len(sess->tls) > 0) {
		if (tls_conn_pending_out(sess->tls, buf, sizeof(buf), &got) != TLS_OK)
			return -1;
		if (got == 0)
			break;
		if (smtp_write_raw(sess, buf, got) != 0)
			return -1;
	}
	return 0;
}

static void
smtp_flush(struct smtp_session *sess)
{
	int rc;

	if (sess->outlen == 0 || sess->closing)
		return;
	if (sess->tls && sess->state != SMTP_STATE_TLS) {
		rc = tls_conn_write(sess->tls, sess->out, sess->outlen);
		if (rc == TLS_OK)
			rc = smtp_tls_flush(sess);
	} else {
		rc = smtp_write_raw(sess, sess->out, sess->outlen);
	}
	sess->outlen = 0;
	if (rc != 0)
		smtp_session_close(sess, "write error");   /* may destroy */
}

/* Queue one reply line ("250 2.0.0 Ok"); CRLF is added. */
static void
smtp_reply(struct smtp_session *sess, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
smtp_reply(struct smtp_session *sess, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (sess->closing)
		return;
	va_start(ap, fmt);
	n = vsnprintf(sess->out + sess->outlen, sizeof(sess->out) - sess->outlen - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(sess->out) - sess->outlen - 3)
		n = (int)(sizeof(sess->out) - sess->outlen - 3);
	sess->outlen += (size_t)n;
	sess->out[sess->outlen++] = '\r';
	sess->out[sess->outlen++] = '\n';
	if (sess->outlen >= SMTP_OUT_FLUSH)
		smtp_flush(sess);
}

/* ---- session lifetime ------------------------------------------------------ */

static void smtp_server_maybe_done(struct smtp_server *srv);

static void
smtp_session_free(struct smtp_session *sess)
{
	struct smtp_server *srv = sess->srv;

	if (sess->open_handles > 0 || sess->pending > 0)
		return;
	if (sess->prev)
		sess->prev->next = sess->next;
	else
		srv->sessions = sess->next;
	if (sess->next)
		sess->next->prev = sess->prev;
	srv->nsessions--;
	srv->nclosing--;
	smtp_tx_free(sess);
	tls_conn_free(sess->tls);
	free(sess->cipher);
	free(sess);
	smtp_server_maybe_done(srv);
}

static void
smtp_on_handle_closed(uv_handle_t *h)
{
	struct smtp_session *sess = h->data;

	sess->open_handles--;
	smtp_session_free(sess);
}

/* May destroy SESS: callers return right after. */
static void
smtp_session_close(struct smtp_session *sess, const char *reason)
{
	char q[128];

	if (sess->closing)
		return;
	smtp_flush(sess);
	sess->closing = true;
	sess->srv->nclosing++;
	log_event(LOG_LEVEL_INFO, "disconnect", "session=%" PRIu64 " client=%s helo=%s "
	    "messages=%u errors=%u reason=%s", sess->id, sess->peer_ip,
	    sess->helo[0] ? sess->helo : "-", sess->messages, sess->errors,
	    log_quote(q, sizeof(q), reason));
	/* Abort an unfinished message now; a commit in flight finishes on its
	 * own and its callback sees sess->closing. */
	if (sess->tx && sess->state != SMTP_STATE_COMMIT)
		smtp_tx_free(sess);
	uv_close((uv_handle_t *)&sess->timer, smtp_on_handle_closed);
	uv_close((uv_handle_t *)&sess->tcp, smtp_on_handle_closed);
}

/* Reply, then close once the reply is written. */
static void
smtp_reply_close(struct smtp_session *sess, const char *reason)
{
	smtp_enter_state(sess, SMTP_STATE_QUIT);
	uv_read_stop((uv_stream_t *)&sess->tcp);
	smtp_flush(sess);
	if (!sess->closing && uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) == 0)
		smtp_session_close(sess, reason);   /* may destroy */
}

static void
smtp_on_timeout(uv_timer_t *t)
{
	struct smtp_session *sess = t->data;

	if (sess->state == SMTP_STATE_COMMIT)
		return;   /* the journal, not the client, is slow: wait for it */
	smtp_reply(sess, "421 4.4.2 %s Error: timeout exceeded", smtp_cfg(sess)->hostname);
	smtp_reply_close(sess, "timeout");
}

/* ---- the transaction -------------------------------------------------------- */

static const char *
smtp_protocol_name(const struct smtp_session *sess)
{
	/* RFC 3848 / RFC 6531 "with" keywords. */
	bool utf8 = sess->tx && sess->tx->params.smtputf8;

	if (!sess->esmtp)
		return "SMTP";
	if (utf8)
		return sess->tls ? "UTF8SMTPS" : "UTF8SMTP";
	return sess->tls ? "ESMTPS" : "ESMTP";
}

/* Prepend our trace header; its bytes count toward the message size. */
static int
smtp_write_received(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	char hdr[1024], date[64], qid[SPOOL_QID_STRLEN + 1];
	time_t now = time(NULL);
	struct tm tm;
	int n;

	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	spool_qid_format(spool_tx_qid(tx->stx), qid);
	/* "for <rcpt>" only names a single recipient (RFC 5321 4.4: never
	 * reveal a list); the date then ends the "by" line. */
	if (tx->nrcpt == 1)
		n = snprintf(hdr, sizeof(hdr),
		    "Received: from %s (unknown [%s])\r\n%s%s%s"
		    "\tby %s (mxspool) with %s id %s\r\n\tfor <%s>; %s\r\n",
		    sess->helo, sess->peer_ip,
		    sess->tls ? "\t(using " : "", sess->tls ? sess->tls_info : "",
		    sess->tls ? ")\r\n" : "", smtp_cfg(sess)->hostname,
		    smtp_protocol_name(sess), qid, tx->rcpt[0].addr, date);
	else
		n = snprintf(hdr, sizeof(hdr),
		    "Received: from %s (unknown [%s])\r\n%s%s%s"
		    "\tby %s (mxspool) with %s id %s; %s\r\n",
		    sess->helo, sess->peer_ip,
		    sess->tls ? "\t(using " : "", sess->tls ? sess->tls_info : "",
		    sess->tls ? ")\r\n" : "", smtp_cfg(sess)->hostname,
		    smtp_protocol_name(sess), qid, date);
	if (n < 0 || (size_t)n >= sizeof(hdr))
		return -1;
	tx->size += (uint64_t)n;
	tx->trace_len = (uint64_t)n;
	return spool_tx_write(tx->stx, hdr, (size_t)n, NULL, NULL) < 0 ? -1 : 0;
}

static int
smtp_tx_open(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	struct spool_envelope env;
	struct spool_rcpt *rcpts;
	char client[SMTP_PROTO_DOMAIN_MAX + INET6_ADDRSTRLEN + 8];
	int rc;

	rcpts = calloc(tx->nrcpt, sizeof(*rcpts));
	if (rcpts == NULL)
		return SPOOL_ENOMEM;
	for (size_t i = 0; i < tx->nrcpt; i++) {
		rcpts[i].addr = tx->rcpt[i].addr;
		rcpts[i].orcpt = tx->rcpt[i].orcpt;
		rcpts[i].notify = tx->rcpt[i].notify;
	}
	snprintf(client, sizeof(client), "%s [%s]", sess->helo, sess->peer_ip);
	memset(&env, 0, sizeof(env));
	env.tenant = tx->tenant;
	env.sender = tx->sender;
	env.envid = tx->params.has_envid ? tx->params.envid : NULL;
	env.ret = tx->params.ret;
	env.body = tx->params.body;
	env.smtputf8 = tx->params.smtputf8;
	env.client = client;
	env.nrcpt = tx->nrcpt;
	env.rcpt = rcpts;
	rc = spool_tx_begin(sess->srv->spool, &env, &tx->stx);
	free(rcpts);
	if (rc != 0)
		return rc;
	tx->size = 0;
	if (smtp_write_received(sess) != 0)
		return SPOOL_EIO;
	return 0;
}

static void
smtp_reply_spool_error(struct smtp_session *sess, int rc)
{
	if (rc == SPOOL_EQUOTA || rc == SPOOL_ENOSPC)
		smtp_reply(sess, "452 4.3.1 Insufficient system storage");
	else
		smtp_reply(sess, "451 4.3.0 Error: queue file write error");
}

static void
smtp_on_spool_write(void *arg, int status)
{
	struct smtp_session *sess = arg;

	sess->pending--;   /* from smtp_tx_append() */
	sess->tx->spilling = false;
	if (sess->closing) {
		smtp_session_free(sess);
		return;
	}
	if (status != 0 && sess->tx) {
		/* The spill failed: the message cannot be stored.  Keep reading
		 * to the end of data and refuse it there. */
		if (sess->tx->error == 0)
			sess->tx->error = status;
		if (sess->tx->stx) {
			spool_tx_abort(sess->tx->stx);
			sess->tx->stx = NULL;
		}
	}
	smtp_process(sess);
}

/* Hand message octets to the journal.  Returns false when the session must
 * wait for smtp_on_spool_write(). */
static bool
smtp_tx_append(struct smtp_session *sess, const char *data, size_t len)
{
	struct smtp_tx *tx = sess->tx;
	int rc;

	tx->size += len;
	if (tx->size > smtp_cfg(sess)->max_message_size && !tx->too_big) {
		tx->too_big = true;
		if (tx->stx) {
			spool_tx_abort(tx->stx);
			tx->stx = NULL;
		}
	}
	if (tx->stx == NULL || len == 0)
		return true;
	rc = spool_tx_write(tx->stx, data, len, smtp_on_spool_write, sess);
	if (rc == SPOOL_PENDING) {
		sess->pending++;   /* until smtp_on_spool_write() or smtp_tx_free() */
		tx->spilling = true;
		return false;
	}
	if (rc < 0) {
		if (tx->error == 0)
			tx->error = rc;
		spool_tx_abort(tx->stx);
		tx->stx = NULL;
	}
	return true;
}

static void
smtp_log_reject(struct smtp_session *sess, const char *stage, const char *reply)
{
	char q[600];

	log_event(LOG_LEVEL_INFO, "reject", "session=%" PRIu64 " client=%s stage=%s "
	    "from=<%s> reply=%s", sess->id, sess->peer_ip, stage,
	    sess->tx ? sess->tx->sender : "", log_quote(q, sizeof(q), reply));
}

static void
smtp_on_commit(void *arg, int status, spool_qid qid)
{
	struct smtp_session *sess = arg;
	const struct smtp_server_hooks *hooks = &sess->srv->hooks;
	struct smtp_tx *tx = sess->tx;
	char qs[SPOOL_QID_STRLEN + 1], q[300];

	sess->pending--;
	tx->stx = NULL;   /* consumed by spool_tx_commit */
	spool_qid_format(qid, qs);
	if (status == 0) {
		sess->messages++;
		log_event(LOG_LEVEL_INFO, "accept", "qid=%s tenant=%s session=%" PRIu64
		    " client=%s from=<%s> nrcpt=%zu size=%" PRIu64 " proto=%s",
		    qs, tx->tenant, sess->id, sess->peer_ip,
		    log_quote(q, sizeof(q), tx->sender), tx->nrcpt, tx->size,
		    smtp_protocol_name(sess));
		if (hooks->on_accepted)
			hooks->on_accepted(hooks->arg, tx->tenant);
		if (!sess->closing)
			smtp_reply(sess, "250 2.0.0 Ok: queued as %s", qs);
	} else {
		log_event(LOG_LEVEL_ERR, "accept", "result=failed qid=%s tenant=%s session=%"
		    PRIu64 " client=%s error=%s", qs, tx->tenant, sess->id, sess->peer_ip,
		    log_quote(q, sizeof(q), spool_strerror(status)));
		if (!sess->closing)
			smtp_reply_spool_error(sess, status);
	}
	smtp_tx_free(sess);
	if (sess->closing) {
		smtp_session_free(sess);
		return;
	}
	smtp_enter_state(sess, SMTP_STATE_HELO);
	smtp_process(sess);
}

/* End of DATA or BDAT LAST: refuse, or commit and wait for the journal. */
static void
smtp_data_end(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	int rc;

	if (tx->too_big || tx->error || tx->stx == NULL) {
		char reply[128];

		if (tx->too_big)
			snprintf(reply, sizeof(reply), "552 5.3.4 Message size exceeds fixed limit");
		else if (tx->error < 0 && tx->error > -1000)
			snprintf(reply, sizeof(reply), "%s", smtp_proto_status_reply(tx->error));
		else if (tx->error == SPOOL_EQUOTA || tx->error == SPOOL_ENOSPC)
			snprintf(reply, sizeof(reply), "452 4.3.1 Insufficient system storage");
		else
			snprintf(reply, sizeof(reply), "451 4.3.0 Error: queue file write error");
		smtp_log_reject(sess, tx->bdat ? "bdat" : "data", reply);
		smtp_reply(sess, "%s", reply);
		smtp_tx_free(sess);
		smtp_enter_state(sess, SMTP_STATE_HELO);
		return;
	}
	smtp_enter_state(sess, SMTP_STATE_COMMIT);
	rc = spool_tx_commit(tx->stx, smtp_on_commit, sess);
	if (rc != 0) {
		tx->stx = NULL;   /* consumed even on failure */
		smtp_reply_spool_error(sess, rc);
		smtp_tx_free(sess);
		smtp_enter_state(sess, SMTP_STATE_HELO);
		return;
	}
	sess->pending++;
	/* Asynchronous processing continues in smtp_on_commit(). */
}

/* ---- commands --------------------------------------------------------------- */

static void
smtp_error_count(struct smtp_session *sess)
{
	if (++sess->errors >= smtp_cfg(sess)->max_errors) {
		smtp_reply(sess, "421 4.7.0 %s Error: too many errors", smtp_cfg(sess)->hostname);
		smtp_reply_close(sess, "too many errors");
	}
}

static void
smtp_cmd_helo(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	const struct config *cfg = smtp_cfg(sess);
	size_t n = cmd->arg_len;
	const char *sp = memchr(cmd->arg, ' ', n);

	if (sp)
		n = (size_t)(sp - cmd->arg);
	if (n > SMTP_PROTO_DOMAIN_MAX)
		n = SMTP_PROTO_DOMAIN_MAX;
	memcpy(sess->helo, cmd->arg, n);
	sess->helo[n] = '\0';
	/* Anything that would break our Received: header goes. */
	for (char *p = sess->helo; *p; p++)
		if ((unsigned char)*p < 0x21 || *p == '(' || *p == ')' || *p == ';' || *p == '\\')
			*p = '_';
	smtp_tx_free(sess);
	sess->esmtp = cmd->verb == SMTP_VERB_EHLO;
	smtp_enter_state(sess, SMTP_STATE_HELO);
	if (!sess->esmtp) {
		smtp_reply(sess, "250 %s", cfg->hostname);
		return;
	}
	smtp_reply(sess, "250-%s", cfg->hostname);
	smtp_reply(sess, "250-PIPELINING");
	smtp_reply(sess, "250-SIZE %" PRIu64, cfg->max_message_size);
	smtp_reply(sess, "250-ETRN");
	if (sess->srv->tls && sess->tls == NULL)
		smtp_reply(sess, "250-STARTTLS");
	smtp_reply(sess, "250-ENHANCEDSTATUSCODES");
	smtp_reply(sess, "250-8BITMIME");
	smtp_reply(sess, "250-DSN");
	smtp_reply(sess, "250-SMTPUTF8");
	smtp_reply(sess, "250 CHUNKING");
}

static bool
smtp_need_helo(struct smtp_session *sess)
{
	if (sess->state != SMTP_STATE_INIT)
		return true;
	smtp_reply(sess, "503 5.5.1 Error: send HELO/EHLO first");
	smtp_error_count(sess);
	return false;
}

static void
smtp_cmd_mail(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	struct smtp_mail m;
	int rc;

	if (!smtp_need_helo(sess))
		return;
	if (sess->tx) {
		smtp_reply(sess, "503 5.5.1 Error: nested MAIL command");
		smtp_error_count(sess);
		return;
	}
	rc = smtp_proto_parse_mail(cmd, &m);
	if (rc == 0 && m.params.smtputf8 && !sess->esmtp)
		rc = SMTP_PROTO_EPARAM;
	if (rc == 0 && m.params.body == ENV_BODY_BINARYMIME) {
		/* Not advertised: BINARYMIME cannot be forwarded with DATA. */
		smtp_reply(sess, "555 5.5.4 Unsupported option: BODY=BINARYMIME");
		smtp_error_count(sess);
		return;
	}
	if (rc != 0) {
		smtp_reply(sess, "%s", smtp_proto_status_reply(rc));
		smtp_error_count(sess);
		return;
	}
	if (m.params.has_size && m.params.size > smtp_cfg(sess)->max_message_size) {
		smtp_reply(sess, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	/* Disk first (no tenant yet); the tenant's quota is checked at RCPT. */
	rc = spool_check(sess->srv->spool, NULL, m.params.has_size ? m.params.size : 0);
	if (rc == SPOOL_ENOSPC) {
		smtp_reply(sess, "452 4.3.1 Insufficient system storage");
		smtp_log_reject(sess, "mail", "452 4.3.1 Insufficient system storage");
		return;
	}
	sess->tx = calloc(1, sizeof(*sess->tx));
	if (sess->tx == NULL) {
		smtp_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	sess->tx->params = m.params;
	snprintf(sess->tx->sender, sizeof(sess->tx->sender), "%s", m.from.addr);
	smtp_enter_state(sess, SMTP_STATE_MAIL);
	smtp_reply(sess, "250 2.1.0 Ok");
}

static void
smtp_cmd_rcpt(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	const struct config *cfg = smtp_cfg(sess);
	const struct config_tenant *t;
	struct smtp_tx *tx = sess->tx;
	struct smtp_rcpt rc_;
	enum policy_verdict v;
	char reply[600];
	int rc;

	if (tx == NULL || (sess->state != SMTP_STATE_MAIL && sess->state != SMTP_STATE_RCPT)) {
		smtp_reply(sess, "503 5.5.1 Error: need MAIL command");
		smtp_error_count(sess);
		return;
	}
	rc = smtp_proto_parse_rcpt(cmd, tx->params.smtputf8, &rc_);
	if (rc != 0) {
		snprintf(reply, sizeof(reply), "%s", smtp_proto_status_reply(rc));
		smtp_log_reject(sess, "rcpt", reply);
		smtp_reply(sess, "%s", reply);
		smtp_error_count(sess);
		return;
	}
	if (tx->nrcpt >= cfg->max_recipients) {
		smtp_reply(sess, "452 4.5.3 Error: too many recipients");
		return;
	}
	v = policy_check_rcpt(cfg, &rc_.to, tx->tenant, &t);
	if (v != POLICY_OK) {
		policy_reply(v, rc_.to.addr, reply, sizeof(reply));
		smtp_log_reject(sess, "rcpt", reply);
		smtp_reply(sess, "%s", reply);
		if (v != POLICY_OTHER_TENANT)
			smtp_error_count(sess);
		return;
	}
	rc = spool_check(sess->srv->spool, t->name,
	    tx->params.has_size ? tx->params.size : 0);
	if (rc != 0) {
		snprintf(reply, sizeof(reply), "452 4.3.1 <%s>: Insufficient system storage",
		    rc_.to.addr);
		smtp_log_reject(sess, "rcpt", reply);
		smtp_reply(sess, "%s", reply);
		return;
	}
	for (size_t i = 0; i < tx->nrcpt; i++) {
		if (strcmp(tx->rcpt[i].addr, rc_.to.addr) == 0) {
			/* A duplicate is delivered once, as Postfix does. */
			smtp_reply(sess, "250 2.1.5 Ok");
			return;
		}
	}
	struct smtp_tx_rcpt *nr = realloc(tx->rcpt, (tx->nrcpt + 1) * sizeof(*nr));

	if (nr == NULL) {
		smtp_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	tx->rcpt = nr;
	nr = &tx->rcpt[tx->nrcpt];
	nr->addr = strdup(rc_.to.addr);
	nr->orcpt = rc_.params.has_orcpt ? strdup(rc_.params.orcpt) : NULL;
	nr->notify = rc_.params.notify;
	if (nr->addr == NULL || (rc_.params.has_orcpt && nr->orcpt == NULL)) {
		free(nr->addr);
		free(nr->orcpt);
		smtp_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	tx->nrcpt++;
	snprintf(tx->tenant, sizeof(tx->tenant), "%s", t->name);
	smtp_enter_state(sess, SMTP_STATE_RCPT);
	smtp_reply(sess, "250 2.1.5 Ok");
}

static bool
smtp_start_message(struct smtp_session *sess)
{
	int rc = smtp_tx_open(sess);

	if (rc != 0) {
		smtp_reply_spool_error(sess, rc);
		smtp_tx_free(sess);
		smtp_enter_state(sess, SMTP_STATE_HELO);
		return false;
	}
	return true;
}

static void
smtp_cmd_data(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	if (sess->state != SMTP_STATE_RCPT || sess->tx == NULL) {
		smtp_reply(sess, sess->tx ? "554 5.5.1 Error: no valid recipients" :
		    "503 5.5.1 Error: need RCPT command");
		smtp_error_count(sess);
		return;
	}
	if (sess->tx->bdat) {
		smtp_reply(sess, "503 5.5.1 Error: DATA after BDAT");
		smtp_error_count(sess);
		return;
	}
	if (!smtp_start_message(sess))
		return;
	smtp_proto_data_init(&sess->data, smtp_cfg(sess)->max_line_length);
	smtp_enter_state(sess, SMTP_STATE_DATA);
	smtp_reply(sess, "354 End data with <CR><LF>.<CR><LF>");
}

static void
smtp_cmd_bdat(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	struct smtp_tx *tx = sess->tx;
	bool ok = sess->state == SMTP_STATE_RCPT && tx != NULL;

	if (!ok) {
		/* RFC 3030: the chunk still follows and must be read and dropped. */
		if (tx == NULL) {
			tx = sess->tx = calloc(1, sizeof(*tx));
			if (tx == NULL) {
				smtp_reply(sess, "421 4.3.0 %s Error: out of memory", smtp_cfg(sess)->hostname);
				smtp_reply_close(sess, "out of memory");
				return;
			}
		}
		tx->chunk_discard = true;
	} else if (!tx->bdat) {
		tx->bdat = true;
		tx->bdat_prev = '\n';
		if (!smtp_start_message(sess)) {
			tx = sess->tx = calloc(1, sizeof(*tx));
			if (tx == NULL) {
				smtp_reply_close(sess, "out of memory");
				return;
			}
			tx->chunk_discard = true;
			/* The 451 is already queued; the chunk is dropped silently. */
			tx->error = 1;
		}
	}
	tx->chunk_left = cmd->bdat_size;
	tx->chunk_last = cmd->bdat_last;
	smtp_enter_state(sess, SMTP_STATE_BDAT);
}

/* A BDAT chunk is complete: answer it. */
static void
smtp_bdat_chunk_done(struct smtp_session *sess, uint64_t size)
{
	struct smtp_tx *tx = sess->tx;

	if (tx->chunk_discard) {
		bool silent = tx->error == 1;

		smtp_tx_free(sess);
		smtp_enter_state(sess, SMTP_STATE_HELO);
		if (!silent) {
			smtp_reply(sess, "503 5.5.1 Error: need RCPT command");
			smtp_error_count(sess);
		}
		return;
	}
	if (tx->chunk_last) {
		smtp_data_end(sess);
		return;
	}
	smtp_enter_state(sess, SMTP_STATE_RCPT);
	smtp_reply(sess, "250 2.0.0 Ok: %" PRIu64 " octets received", size);
}

static void
smtp_cmd_starttls(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	struct tls_ctx *ctx = sess->srv->tls;
	struct tls_conn *tls;

	if (ctx == NULL) {
		smtp_reply(sess, "502 5.5.1 Error: command not implemented");
		smtp_error_count(sess);
		return;
	}
	if (sess->tls) {
		smtp_reply(sess, "554 5.5.1 Error: TLS already active");
		smtp_error_count(sess);
		return;
	}
	if (cmd->arg_len) {
		smtp_reply(sess, "501 5.5.4 Syntax: STARTTLS");
		smtp_error_count(sess);
		return;
	}
	if (sess->cipher == NULL)
		sess->cipher = malloc(SMTP_CIPHER_MAX);
	tls = sess->cipher ? tls_conn_new(ctx, true, NULL) : NULL;
	if (tls == NULL) {
		smtp_reply(sess, "454 4.7.0 TLS not available due to local problem");
		return;
	}
	/* The 220 (and any reply queued before it) goes out in clear: flush
	 * before setting sess->tls, or smtp_flush() would hold it in the TLS
	 * conn until a handshake the client only starts after reading it. */
	smtp_reply(sess, "220 2.0.0 Ready to start TLS");
	smtp_flush(sess);
	if (sess->closing) {
		tls_conn_free(tls);
		return;
	}
	sess->tls = tls;
	/* Whatever the client pipelined behind STARTTLS was sent in clear and
	 * must never be executed inside the TLS session (CVE-2011-0411). */
	if (sess->inlen > 0)
		log_event(LOG_LEVEL_WARN, "starttls", "session=%" PRIu64 " client=%s "
		    "discarded=%zu note=\"commands pipelined after STARTTLS\"",
		    sess->id, sess->peer_ip, sess->inlen);
	sess->inlen = 0;
	smtp_proto_lines_init(&sess->lines, 0);
	smtp_tx_free(sess);
	sess->helo[0] = '\0';
	sess->esmtp = false;
	smtp_enter_state(sess, SMTP_STATE_TLS);
}

static void
smtp_cmd_etrn(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	const struct config_tenant *t;
	const struct smtp_server_hooks *hooks = &sess->srv->hooks;
	struct spool_tenant_stats st;

	if (!smtp_need_helo(sess))
		return;
	if (sess->tx) {
		smtp_reply(sess, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	if (cmd->etrn_kind == '#') {
		smtp_reply(sess, "458 4.1.0 Unable to queue messages for node %s", cmd->etrn_node);
		return;
	}
	switch (policy_check_etrn(smtp_cfg(sess), cmd->etrn_node,
	    (const struct sockaddr *)&sess->peer, &t)) {
	case POLICY_ETRN_UNKNOWN_NODE:
		smtp_reply(sess, "459 4.7.1 <%s>: not a domain this server spools for",
		    cmd->etrn_node);
		return;
	case POLICY_ETRN_DENIED:
		log_event(LOG_LEVEL_INFO, "etrn", "session=%" PRIu64 " client=%s node=%s result=denied",
		    sess->id, sess->peer_ip, cmd->etrn_node);
		smtp_reply(sess, "459 4.7.1 Client host rejected: not allowed to use ETRN");
		return;
	case POLICY_ETRN_OK:
		break;
	}
	spool_tenant_stats(sess->srv->spool, t->name, &st);
	log_event(LOG_LEVEL_INFO, "etrn", "session=%" PRIu64 " client=%s node=%s tenant=%s "
	    "queued=%" PRIu64 " result=ok", sess->id, sess->peer_ip, cmd->etrn_node,
	    t->name, st.messages);
	if (hooks->on_etrn)
		hooks->on_etrn(hooks->arg, t->name);
	if (st.messages == 0)
		smtp_reply(sess, "251 2.0.0 OK, no messages waiting for node %s", cmd->etrn_node);
	else
		smtp_reply(sess, "250 2.0.0 Queuing started");
}

static void
smtp_dispatch(struct smtp_session *sess, const char *line, size_t len)
{
	struct smtp_cmd cmd;
	int rc = smtp_proto_parse_command(line, len, &cmd);

	if (rc == SMTP_PROTO_EUNKNOWN || (rc != 0 && cmd.verb == SMTP_VERB_UNKNOWN)) {
		smtp_reply(sess, "%s", smtp_proto_status_reply(SMTP_PROTO_EUNKNOWN));
		smtp_error_count(sess);
		return;
	}
	if (rc != 0) {
		smtp_reply(sess, "%s", smtp_proto_status_reply(rc));
		smtp_error_count(sess);
		if (cmd.verb == SMTP_VERB_BDAT) {
			/* The chunk size is unknown: we cannot stay in step. */
			smtp_reply_close(sess, "bad BDAT");
		}
		return;
	}
	switch (cmd.verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
		smtp_cmd_helo(sess, &cmd);
		break;
	case SMTP_VERB_MAIL:
		smtp_cmd_mail(sess, &cmd);
		break;
	case SMTP_VERB_RCPT:
		smtp_cmd_rcpt(sess, &cmd);
		break;
	case SMTP_VERB_DATA:
		smtp_cmd_data(sess, &cmd);
		break;
	case SMTP_VERB_BDAT:
		smtp_cmd_bdat(sess, &cmd);
		break;
	case SMTP_VERB_RSET:
		smtp_tx_free(sess);
		if (sess->state != SMTP_STATE_INIT)
			smtp_enter_state(sess, SMTP_STATE_HELO);
		smtp_reply(sess, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_NOOP:
		smtp_reply(sess, "250 2.0.0 Ok");
		break;
	case SMTP_VERB_QUIT:
		smtp_reply(sess, "221 2.0.0 Bye");
		smtp_reply_close(sess, "quit");
		break;   /* may destroy: the caller checks sess->state */
	case SMTP_VERB_VRFY:
		smtp_reply(sess, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_VERB_EXPN:
		smtp_reply(sess, "502 5.5.1 Error: EXPN command is disabled");
		break;
	case SMTP_VERB_HELP:
		smtp_reply(sess, "214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA BDAT "
		    "RSET NOOP QUIT VRFY HELP STARTTLS ETRN");
		break;
	case SMTP_VERB_STARTTLS:
		smtp_cmd_starttls(sess, &cmd);
		break;
	case SMTP_VERB_ETRN:
		smtp_cmd_etrn(sess, &cmd);
		break;
	case SMTP_VERB_AUTH:
		smtp_reply(sess, "503 5.5.1 Error: authentication not enabled");
		smtp_error_count(sess);
		break;
	case SMTP_VERB_UNKNOWN:
		smtp_reply(sess, "%s", smtp_proto_status_reply(SMTP_PROTO_EUNKNOWN));
		smtp_error_count(sess);
		break;
	}
}

/* ---- input ------------------------------------------------------------------ */

static void
smtp_consume(struct smtp_session *sess, size_t n)
{
	memmove(sess->in, sess->in + n, sess->inlen - n);
	sess->inlen -= n;
}

/* DATA: decode in place and append.  Returns false to stop processing. */
static bool
smtp_process_data(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	size_t outlen = 0, consumed = 0;
	int rc, early;
	bool go_on;

	rc = smtp_proto_data_push(&sess->data, sess->in, sess->inlen, sess->in,
	    &outlen, &consumed);
	go_on = smtp_tx_append(sess, sess->in, outlen);
	smtp_consume(sess, consumed);
	early = smtp_proto_data_error(&sess->data);
	if (early == SMTP_PROTO_EDATA_BARELF || early == SMTP_PROTO_EDATA_BARECR) {
		/* Smuggling attempt or a broken client: refuse, and close so no
		 * octet after the bad one is ever read as a command. */
		smtp_reply(sess, "%s", smtp_proto_status_reply(early));
		smtp_log_reject(sess, "data", smtp_proto_status_reply(early));
		smtp_tx_free(sess);
		smtp_reply_close(sess, "bare newline in data");
		return false;
	}
	if (rc == SMTP_PROTO_AGAIN)
		return go_on;
	if (rc != SMTP_PROTO_OK && tx->error == 0)
		tx->error = rc;
	if (!go_on) {
		/* The spool is still spilling: finish when it calls back.  The
		 * decoder is done, so the next smtp_process() lands here with
		 * nothing new and ends the message. */
		return false;
	}
	smtp_data_end(sess);
	return sess->state != SMTP_STATE_COMMIT;
}

static bool
smtp_process_bdat(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	size_t n = sess->inlen;
	bool go_on = true;

	if (n > tx->chunk_left)
		n = (size_t)tx->chunk_left;
	if (!tx->chunk_discard) {
		/* BDAT has no end marker to smuggle, but the primary will get the
		 * message through DATA: bare CR and LF must not pass this way. */
		for (size_t i = 0; i < n && tx->error == 0; i++) {
			char c = sess->in[i], prev = i ? sess->in[i - 1] : tx->bdat_prev;

			if (c == '\n' && prev != '\r')
				tx->error = SMTP_PROTO_EDATA_BARELF;
			else if (prev == '\r' && c != '\n')
				tx->error = SMTP_PROTO_EDATA_BARECR;
		}
		if (n > 0)
			tx->bdat_prev = sess->in[n - 1];
		if (tx->error && tx->stx) {
			spool_tx_abort(tx->stx);
			tx->stx = NULL;
		}
		go_on = smtp_tx_append(sess, sess->in, n);
	}
	tx->chunk_left -= n;
	smtp_consume(sess, n);
	if (tx->chunk_left > 0 || !go_on)
		return go_on;
	if (tx->chunk_last && tx->bdat_prev == '\r' && tx->error == 0)
		tx->error = SMTP_PROTO_EDATA_BARECR;
	smtp_bdat_chunk_done(sess, tx->size - tx->trace_len);
	return sess->state != SMTP_STATE_COMMIT;
}

static void
smtp_pause(struct smtp_session *sess)
{
	if (!sess->paused) {
		sess->paused = true;
		uv_read_stop((uv_stream_t *)&sess->tcp);
	}
}

static void smtp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void smtp_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void
smtp_resume(struct smtp_session *sess)
{
	if (sess->paused && !sess->closing && sess->state != SMTP_STATE_QUIT) {
		sess->paused = false;
		if (uv_read_start((uv_stream_t *)&sess->tcp, smtp_alloc, smtp_on_read) != 0)
			smtp_session_close(sess, "read error");   /* may destroy */
	}
}

/* Pull decrypted bytes into the input buffer. Returns -1 on a TLS error. */
static int
smtp_tls_pull(struct smtp_session *sess)
{
	size_t got;
	int rc;

	while (sess->tls && sess->state != SMTP_STATE_TLS && sess->inlen < sizeof(sess->in)) {
		rc = tls_conn_read(sess->tls, sess->in + sess->inlen,
		    sizeof(sess->in) - sess->inlen, &got);
		if (rc == TLS_OK) {
			sess->inlen += got;
			continue;
		}
		if (rc == TLS_WANT_IO)
			return 0;
		return -1;
	}
	return 0;
}

/*
 * Run everything the buffered input allows.  Stops when input runs out, when
 * the journal or the peer must catch up (paused), or when the session ends.
 */
static void
smtp_process(struct smtp_session *sess)
{
	const char *line;
	size_t line_len, consumed;
	int rc;

	while (!sess->closing && sess->state != SMTP_STATE_QUIT &&
	    sess->state != SMTP_STATE_COMMIT && sess->state != SMTP_STATE_TLS) {
		if (sess->tls && smtp_tls_pull(sess) != 0) {
			smtp_session_close(sess, "TLS error");
			return;   /* may destroy */
		}
		if (sess->pending > 0 ||
		    uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) > SMTP_WQ_MAX) {
			smtp_flush(sess);
			smtp_pause(sess);
			return;
		}
		if (sess->state == SMTP_STATE_DATA) {
			if (sess->inlen == 0 && !smtp_proto_data_done(&sess->data))
				break;
			if (!smtp_process_data(sess))
				continue;   /* paused, commit or closing: re-checked above */
			continue;
		}
		if (sess->state == SMTP_STATE_BDAT) {
			if (sess->inlen == 0 && sess->tx->chunk_left > 0)
				break;
			(void)smtp_process_bdat(sess);
			continue;
		}
		if (sess->inlen == 0)
			break;
		rc = smtp_proto_next_line(&sess->lines, sess->in, sess->inlen, &line,
		    &line_len, &consumed);
		if (rc == SMTP_PROTO_AGAIN) {
			smtp_consume(sess, consumed);
			break;
		}
		if (rc == SMTP_PROTO_ETOOLONG) {
			smtp_consume(sess, consumed);
			smtp_reply(sess, "%s", smtp_proto_status_reply(rc));
			smtp_error_count(sess);
			continue;
		}
		if (rc != SMTP_PROTO_OK) {
			/* Bare CR, bare LF or NUL in a command: refuse and hang up. */
			smtp_consume(sess, consumed);
			smtp_reply(sess, "%s", smtp_proto_status_reply(rc));
			log_event(LOG_LEVEL_INFO, "reject", "session=%" PRIu64 " client=%s "
			    "stage=command reason=%s", sess->id, sess->peer_ip,
			    smtp_proto_status_name(rc));
			smtp_reply_close(sess, smtp_proto_status_name(rc));
			return;   /* may destroy */
		}
		/* Dispatch from a copy: the command may consume or reset input. */
		char cmdline[SMTP_PROTO_LINE_MAX + 1];

		memcpy(cmdline, line, line_len);
		cmdline[line_len] = '\0';
		smtp_consume(sess, consumed);
		smtp_dispatch(sess, cmdline, line_len);
	}
	if (sess->closing)
		return;
	smtp_flush(sess);
	if (sess->closing)
		return;
	if (sess->state == SMTP_STATE_COMMIT || sess->pending > 0)
		smtp_pause(sess);
	else if (sess->state != SMTP_STATE_QUIT &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) <= SMTP_WQ_MAX)
		smtp_resume(sess);
}

static void
smtp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct smtp_session *sess = h->data;

	if (sess->tls) {
		*buf = uv_buf_init(sess->cipher, SMTP_CIPHER_MAX);
		return;
	}
	*buf = uv_buf_init(sess->in + sess->inlen, (unsigned)(sizeof(sess->in) - sess->inlen));
}

static void
smtp_tls_input(struct smtp_session *sess, const char *data, size_t n)
{
	int rc = tls_conn_feed(sess->tls, data, n);

	if (rc == TLS_OK && sess->state == SMTP_STATE_TLS) {
		rc = tls_conn_handshake(sess->tls);
		if (rc == TLS_OK) {
			char q[200];

			tls_conn_info_string(sess->tls, sess->tls_info, sizeof(sess->tls_info));
			log_event(LOG_LEVEL_INFO, "starttls", "session=%" PRIu64 " client=%s tls=%s",
			    sess->id, sess->peer_ip, log_quote(q, sizeof(q), sess->tls_info));
			smtp_enter_state(sess, SMTP_STATE_INIT);
		} else if (rc == TLS_WANT_IO) {
			rc = TLS_OK;
		}
	}
	if (smtp_tls_flush(sess) != 0 || rc != TLS_OK) {
		char q[300];

		log_event(LOG_LEVEL_INFO, "starttls", "session=%" PRIu64 " client=%s result=failed "
		    "error=%s", sess->id, sess->peer_ip,
		    log_quote(q, sizeof(q), tls_conn_error(sess->tls)));
		smtp_session_close(sess, "TLS handshake failed");
		return;   /* may destroy */
	}
	smtp_process(sess);
}

static void
smtp_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct smtp_session *sess = s->data;

	if (n == 0)
		return;
	if (n < 0) {
		smtp_session_close(sess, n == UV_EOF ? "client closed" : uv_strerror((int)n));
		return;   /* may destroy */
	}
	uv_timer_again(&sess->timer);
	if (sess->tls) {
		smtp_tls_input(sess, buf->base, (size_t)n);
		return;
	}
	sess->inlen += (size_t)n;
	smtp_process(sess);
}

/* ---- listeners -------------------------------------------------------------- */

static unsigned
smtp_count_ip(const struct smtp_server *srv, const char *ip)
{
	unsigned n = 0;

	/* Linear, but only at accept time and bounded by max_connections. */
	for (const struct smtp_session *s = srv->sessions; s; s = s->next)
		if (!s->closing && strcmp(s->peer_ip, ip) == 0)
			n++;
	return n;
}

static void
smtp_sockaddr_ip(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
			inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
		else
			inet_ntop(AF_INET6, &s6->sin6_addr, buf, (socklen_t)len);
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf,
		    (socklen_t)len);
	}
}

static void
smtp_on_connection(uv_stream_t *listener, int status)
{
	struct smtp_server *srv = listener->data;
	const struct config *cfg = srv->cfg;
	struct smtp_session *sess;
	int namelen;

	if (status != 0 || srv->closing)
		return;
	sess = calloc(1, sizeof(*sess));
	if (sess == NULL)
		return;   /* the connection stays in the backlog; retried later */
	sess->srv = srv;
	sess->id = ++srv->last_session_id;
	uv_tcp_init(srv->loop, &sess->tcp);
	uv_timer_init(srv->loop, &sess->timer);
	sess->tcp.data = sess;
	sess->timer.data = sess;
	sess->open_handles = 2;
	sess->next = srv->sessions;
	if (srv->sessions)
		srv->sessions->prev = sess;
	srv->sessions = sess;
	srv->nsessions++;
	if (uv_accept(listener, (uv_stream_t *)&sess->tcp) != 0) {
		smtp_session_close(sess, "accept failed");
		return;
	}
	namelen = sizeof(sess->peer);
	uv_tcp_getpeername(&sess->tcp, (struct sockaddr *)&sess->peer, &namelen);
	smtp_sockaddr_ip(&sess->peer, sess->peer_ip, sizeof(sess->peer_ip));
	uv_tcp_nodelay(&sess->tcp, 1);
	smtp_proto_lines_init(&sess->lines, 0);

	log_event(LOG_LEVEL_INFO, "connect", "session=%" PRIu64 " client=%s", sess->id,
	    sess->peer_ip);
	/* Closed sessions waiting for their close callbacks (or a commit) hold
	 * no socket: like smtp_count_ip(), do not count them.  libuv accepts
	 * in a loop, so a client refused a moment ago can still be here. */
	if (srv->nsessions - srv->nclosing > cfg->max_connections) {
		smtp_reply(sess, "421 4.7.0 %s Error: too many connections", cfg->hostname);
		smtp_reply_close(sess, "max_connections");
		return;
	}
	if (smtp_count_ip(srv, sess->peer_ip) > cfg->max_connections_per_ip) {
		smtp_reply(sess, "421 4.7.0 %s Error: too many connections from %s",
		    cfg->hostname, sess->peer_ip);
		smtp_reply_close(sess, "max_connections_per_ip");
		return;
	}
	uv_timer_start(&sess->timer, smtp_on_timeout, cfg->smtp_timeout_ms, cfg->smtp_timeout_ms);
	smtp_reply(sess, "220 %s ESMTP mxspool", cfg->hostname);
	smtp_flush(sess);
	if (!sess->closing &&
	    uv_read_start((uv_stream_t *)&sess->tcp, smtp_alloc, smtp_on_read) != 0)
		smtp_session_close(sess, "read error");
}

static int
smtp_resolve_listen(const struct config_hostport *hp, struct sockaddr_storage *ss)
{
	const char *host = hp->host;

	if (host[0] == '\0' || strcmp(host, "*") == 0)
		host = "0.0.0.0";
	if (uv_ip4_addr(host, hp->port, (struct sockaddr_in *)ss) == 0)
		return 0;
	if (uv_ip6_addr(host, hp->port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	if (strcmp(host, "localhost") == 0)
		return uv_ip4_addr("127.0.0.1", hp->port, (struct sockaddr_in *)ss);
	return -1;
}

static void
smtp_on_listener_closed(uv_handle_t *h)
{
	struct smtp_server *srv = h->data;

	srv->open_listeners--;
	smtp_server_maybe_done(srv);
}

/*
 * systemd socket activation (mxspool.socket): LISTEN_PID names us and
 * LISTEN_FDS counts the listening sockets from fd 3 on.  Returns how many
 * were taken over (0 when not activated), or -1 with ERR.
 */
static int
smtp_server_inherit(struct smtp_server *srv, char *err, size_t errlen)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	long n;
	int rc;

	if (pid == NULL || fds == NULL || atol(pid) != (long)getpid())
		return 0;
	n = atol(fds);
	if (n <= 0 || n > 64) {
		snprintf(err, errlen, "LISTEN_FDS=%s: expected 1..64 sockets", fds);
		return -1;
	}
	srv->listeners = xcalloc((size_t)n, sizeof(*srv->listeners));
	for (long i = 0; i < n; i++) {
		uv_tcp_t *l = &srv->listeners[i];

		uv_tcp_init(srv->loop, l);
		l->data = srv;
		srv->nlisteners++;
		srv->open_listeners++;
		rc = uv_tcp_open(l, (uv_os_sock_t)(3 + i));
		if (rc == 0)
			rc = uv_listen((uv_stream_t *)l, SMTP_BACKLOG, smtp_on_connection);
		if (rc != 0) {
			snprintf(err, errlen, "socket activation: fd %ld: %s", 3 + i, uv_strerror(rc));
			return -1;
		}
	}
	/* Children (none today) must not think the sockets are theirs. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	srv->inherited = true;
	return (int)n;
}

int
smtp_server_new(const struct smtp_server_deps *deps, const struct config *cfg,
    struct tls_ctx *tls, struct smtp_server **out, char *err, size_t errlen)
{
	struct smtp_server *srv = xcalloc(1, sizeof(*srv));
	int rc;

	srv->loop = deps->loop;
	srv->hooks = deps->hooks;
	srv->cfg = cfg;
	srv->tls = tls;
	*out = srv;
	rc = smtp_server_inherit(srv, err, errlen);
	if (rc < 0)
		return -1;
	if (rc == 0)
		srv->listeners = xcalloc(cfg->nlisten, sizeof(*srv->listeners));
	for (size_t i = 0; rc == 0 && i < cfg->nlisten; i++) {
		const struct config_hostport *hp = &cfg->listen[i];
		struct sockaddr_storage ss;
		uv_tcp_t *l = &srv->listeners[i];
		int brc;

		if (smtp_resolve_listen(hp, &ss) != 0) {
			snprintf(err, errlen, "listen %s:%u: not an IP address", hp->host, hp->port);
			return -1;
		}
		uv_tcp_init(srv->loop, l);
		l->data = srv;
		srv->nlisteners++;
		srv->open_listeners++;
		/* One socket per family: [::]:25 must not also claim IPv4. */
		brc = uv_tcp_bind(l, (struct sockaddr *)&ss,
		    ss.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
		if (brc == 0)
			brc = uv_listen((uv_stream_t *)l, SMTP_BACKLOG, smtp_on_connection);
		if (brc != 0) {
			snprintf(err, errlen, "listen %s%s%s:%u: %s", ss.ss_family == AF_INET6 ? "[" : "",
			    hp->host, ss.ss_family == AF_INET6 ? "]" : "", hp->port, uv_strerror(brc));
			return -1;
		}
	}
	return 0;
}

void
smtp_server_apply_config(struct smtp_server *s, const struct config *cfg,
    struct tls_ctx *tls)
{
	s->cfg = cfg;
	s->tls = tls;
}

int
smtp_server_start(struct smtp_server *s, struct spool *spool)
{
	char addrs[512];
	size_t off = 0;
	const struct config *cfg = s->cfg;

	s->spool = spool;
	addrs[0] = '\0';
	if (s->inherited)
		snprintf(addrs, sizeof(addrs), "systemd(%zu)", s->nlisteners);
	for (size_t i = 0; !s->inherited && i < cfg->nlisten && off < sizeof(addrs); i++)
		off += (size_t)snprintf(addrs + off, sizeof(addrs) - off, "%s%s:%u",
		    i ? "," : "", cfg->listen[i].host, cfg->listen[i].port);
	log_event(LOG_LEVEL_INFO, "listen", "smtp=%s starttls=%s", addrs,
	    s->tls ? "yes" : "no");
	return 0;
}

unsigned
smtp_server_connections(const struct smtp_server *s)
{
	return s->nsessions;
}

static void
smtp_on_grace_closed(uv_handle_t *h)
{
	struct smtp_server *srv = h->data;

	srv->grace_open = false;
	smtp_server_maybe_done(srv);
}

static void
smtp_server_maybe_done(struct smtp_server *srv)
{
	void (*done)(void *) = srv->done;
	void *arg = srv->done_arg;

	if (!srv->closing || srv->nsessions > 0 || srv->open_listeners > 0)
		return;
	/* The grace timer goes last; its close callback comes back here. */
	if (srv->grace_open) {
		if (!uv_is_closing((uv_handle_t *)&srv->grace))
			uv_close((uv_handle_t *)&srv->grace, smtp_on_grace_closed);
		return;
	}
	free(srv->listeners);
	free(srv);
	if (done)
		done(arg);
}

static void
smtp_on_grace(uv_timer_t *t)
{
	struct smtp_server *srv = t->data;

	for (struct smtp_session *s = srv->sessions, *next; s; s = next) {
		next = s->next;
		if (s->state == SMTP_STATE_COMMIT)
			continue;   /* the journal answers soon; the client gets it */
		smtp_session_close(s, "shutdown");
	}
}

void
smtp_server_close(struct smtp_server *srv, unsigned grace_ms,
    void (*done)(void *arg), void *arg)
{
	srv->closing = true;
	srv->done = done;
	srv->done_arg = arg;
	for (size_t i = 0; i < srv->nlisteners; i++)
		uv_close((uv_handle_t *)&srv->listeners[i], smtp_on_listener_closed);
	/* Idle sessions are told at once; busy ones get the grace period. */
	for (struct smtp_session *s = srv->sessions, *next; s; s = next) {
		next = s->next;
		if (s->closing)
			continue;
		if (s->state == SMTP_STATE_INIT || s->state == SMTP_STATE_HELO ||
		    s->state == SMTP_STATE_QUIT) {
			smtp_reply(s, "421 4.3.2 %s Service shutting down", srv->cfg->hostname);
			smtp_reply_close(s, "shutdown");
		}
	}
	uv_timer_init(srv->loop, &srv->grace);
	srv->grace.data = srv;
	srv->grace_open = true;
	uv_timer_start(&srv->grace, smtp_on_grace, grace_ms, 0);
	uv_unref((uv_handle_t *)&srv->grace);
	smtp_server_maybe_done(srv);
}
