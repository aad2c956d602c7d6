/*
 * smtp_session.c - one inbound SMTP connection: its lifetime, its replies,
 * the read/write and TLS pump, and the input loop.
 *
 * A session is a uv_tcp_t, a timer, one fixed input buffer and at most one
 * transaction.  Input is split into CRLF lines by smtp_proto (smuggling-proof
 * framing) and each line goes to smtp_cmd_dispatch() (smtp_session_cmd.c);
 * DATA and BDAT octets go to the transaction (smtp_session_tx.c) straight
 * from the input buffer, and the spool keeps its own bounded buffer, so a
 * session's memory does not grow with the message size.
 *
 * Replies are queued in sess->out and written when the input loop runs dry
 * (one write for a pipelined group, RFC 2920), or earlier when the buffer
 * fills.  With TLS, they go through the memory-BIO conn and its records to
 * the socket; received records are fed to it and the plaintext is pulled
 * into sess->in.
 *
 * Back-pressure: reading stops (sess->paused) while a spool callback is
 * outstanding or while the peer does not read its replies, and starts again
 * from the callback or the write completion.
 *
 * Ownership: see smtp_server_internal.h.  The session is freed only when
 * both handles are closed AND no spool callback is outstanding, so a late
 * commit callback never finds freed memory.  After smtp_session_close() the
 * caller returns at once ("may destroy" in the comments).
 */
#include "config.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/config.h"
#include "mxspool/log.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/tls.h"

#include "smtp_server_internal.h"

static const char *const smtp_state_names[] = {
	"init", "helo", "mail", "rcpt", "data", "bdat", "commit", "tls", "quit",
};

struct smtp_write {
	uv_write_t req;
	struct smtp_session *sess;
	size_t len;
	char data[];
};

static void smtp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void smtp_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

void
smtp_session_enter_state(struct smtp_session *sess, enum smtp_state st)
{
	if (sess->state != st)
		log_event(LOG_LEVEL_DEBUG, "smtp_state", "session=%" PRIu64 " from=%s to=%s",
		    sess->id, smtp_state_names[sess->state], smtp_state_names[st]);
	sess->state = st;
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
		smtp_session_process(sess);
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

void
smtp_session_flush(struct smtp_session *sess)
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
	sess->active_ms = uv_now(sess->srv->loop);
	if (rc != 0)
		smtp_session_close(sess, "write error");   /* may destroy */
}

/* Queue one reply line ("250 2.0.0 Ok"); CRLF is added. */
void
smtp_session_reply(struct smtp_session *sess, const char *fmt, ...)
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
		smtp_session_flush(sess);
}

/* ---- session lifetime ------------------------------------------------------ */

void
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
void
smtp_session_close(struct smtp_session *sess, const char *reason)
{
	char q[128];

	if (sess->closing)
		return;
	smtp_session_flush(sess);
	sess->closing = true;
	sess->srv->nclosing++;
	smtp_server_ip_release(sess);
	log_event(LOG_LEVEL_INFO, "disconnect", "session=%" PRIu64 " client=%s helo=%s "
	    "messages=%u errors=%u reason=%s", sess->id, sess->peer_ip,
	    sess->helo[0] ? sess->helo : "-", sess->messages, sess->errors,
	    log_quote(q, sizeof(q), reason));
	/* Abort an unfinished message now; a commit in flight finishes on its
	 * own and its callback sees sess->closing. */
	if (sess->tx && sess->state != SMTP_STATE_COMMIT)
		smtp_tx_free(sess);
	smtp_abuse_close(sess);
	uv_close((uv_handle_t *)&sess->timer, smtp_on_handle_closed);
	uv_close((uv_handle_t *)&sess->tcp, smtp_on_handle_closed);
}

/* Reply, then close once the reply is written. */
void
smtp_session_reply_close(struct smtp_session *sess, const char *reason)
{
	smtp_session_enter_state(sess, SMTP_STATE_QUIT);
	uv_read_stop((uv_stream_t *)&sess->tcp);
	smtp_session_flush(sess);
	if (!sess->closing && uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) == 0)
		smtp_session_close(sess, reason);   /* may destroy */
}

static void
smtp_on_timeout(uv_timer_t *t)
{
	struct smtp_session *sess = t->data;

	if (sess->state == SMTP_STATE_COMMIT)
		return;   /* the journal, not the client, is slow: wait for it */
	smtp_session_reply(sess, "421 4.4.2 %s Error: timeout exceeded",
	    smtp_session_cfg(sess)->hostname);
	smtp_session_reply_close(sess, "timeout");
}

void
smtp_session_start(struct smtp_session *sess)
{
	const struct config *cfg = smtp_session_cfg(sess);

	uv_timer_start(&sess->timer, smtp_on_timeout, cfg->smtp_timeout_ms, cfg->smtp_timeout_ms);
	smtp_session_reply(sess, "220 %s ESMTP mxspool", cfg->hostname);
	smtp_session_flush(sess);
	if (!sess->closing &&
	    uv_read_start((uv_stream_t *)&sess->tcp, smtp_alloc, smtp_on_read) != 0)
		smtp_session_close(sess, "read error");   /* may destroy */
}

/* ---- input ------------------------------------------------------------------ */

void
smtp_session_count_error(struct smtp_session *sess)
{
	if (++sess->errors >= smtp_session_cfg(sess)->max_errors) {
		smtp_session_reply(sess, "421 4.7.0 %s Error: too many errors",
		    smtp_session_cfg(sess)->hostname);
		smtp_session_reply_close(sess, "too many errors");
	}
}

void
smtp_session_consume(struct smtp_session *sess, size_t n)
{
	memmove(sess->in, sess->in + n, sess->inlen - n);
	sess->inlen -= n;
}

void
smtp_session_discard_input(struct smtp_session *sess, enum smtp_verb verb)
{
	const char *name = smtp_proto_verb_name(verb);
	char event[16];
	size_t i;

	if (sess->inlen > 0) {
		for (i = 0; name[i] && i + 1 < sizeof(event); i++)
			event[i] = (char)(name[i] | 0x20);   /* verbs are A-Z */
		event[i] = '\0';
		log_event(LOG_LEVEL_WARN, event, "session=%" PRIu64 " client=%s "
		    "discarded=%zu note=\"commands pipelined after %s\"",
		    sess->id, sess->peer_ip, sess->inlen, name);
	}
	sess->inlen = 0;
	smtp_proto_lines_init(&sess->lines, 0);
}

static void
smtp_pause(struct smtp_session *sess)
{
	if (!sess->paused) {
		sess->paused = true;
		uv_read_stop((uv_stream_t *)&sess->tcp);
	}
}

static void
smtp_resume(struct smtp_session *sess)
{
	if (sess->paused && !sess->closing && sess->state != SMTP_STATE_QUIT) {
		sess->paused = false;
		if (uv_read_start((uv_stream_t *)&sess->tcp, smtp_alloc, smtp_on_read) != 0)
			smtp_session_close(sess, "read error");   /* may destroy */
	}
}

/* Pull decrypted bytes into the input buffer.  Returns 0, TLS_CLOSED
 * after the peer's close_notify, or -1 on a TLS error. */
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
		return rc == TLS_CLOSED ? TLS_CLOSED : -1;
	}
	return 0;
}

enum smtp_next {
	SMTP_NEXT_GO,             /* run the loop again */
	SMTP_NEXT_WAIT,           /* no complete line: wait for input */
	SMTP_NEXT_STOP,           /* closing, may be gone: return at once */
};

/* Cut one command line from the input and run it. */
static enum smtp_next
smtp_session_next_command(struct smtp_session *sess)
{
	char cmdline[SMTP_PROTO_LINE_MAX + 1];
	const char *line;
	size_t line_len, consumed;
	int rc;

	rc = smtp_proto_next_line(&sess->lines, sess->in, sess->inlen, &line,
	    &line_len, &consumed);
	if (rc == SMTP_PROTO_AGAIN) {
		smtp_session_consume(sess, consumed);
		return SMTP_NEXT_WAIT;
	}
	if (rc == SMTP_PROTO_ETOOLONG) {
		smtp_session_consume(sess, consumed);
		smtp_session_reply(sess, "%s", smtp_proto_status_reply(rc));
		smtp_session_count_error(sess);
		return SMTP_NEXT_GO;   /* the loop re-checks closing */
	}
	if (rc != SMTP_PROTO_OK) {
		/* Bare CR, bare LF or NUL in a command: refuse and hang up. */
		smtp_session_consume(sess, consumed);
		smtp_session_reply(sess, "%s", smtp_proto_status_reply(rc));
		log_event(LOG_LEVEL_INFO, "reject", "session=%" PRIu64 " client=%s "
		    "stage=command reason=%s", sess->id, sess->peer_ip,
		    smtp_proto_status_name(rc));
		smtp_session_reply_close(sess, smtp_proto_status_name(rc));
		return SMTP_NEXT_STOP;   /* may destroy */
	}
	uv_timer_again(&sess->timer);   /* a whole command: the next deadline */
	/* Dispatch from a copy: the command may consume or discard input. */
	memcpy(cmdline, line, line_len);
	cmdline[line_len] = '\0';
	smtp_session_consume(sess, consumed);
	if (!smtp_cmd_dispatch(sess, cmdline, line_len))
		return SMTP_NEXT_STOP;   /* may destroy */
	if (sess->parked) {
		memcpy(sess->parked_line, cmdline, line_len + 1);
		sess->parked_len = line_len;
		return SMTP_NEXT_WAIT;
	}
	return SMTP_NEXT_GO;
}

void
smtp_session_park(struct smtp_session *sess)
{
	sess->parked = true;
}

void
smtp_session_wake(struct smtp_session *sess)
{
	char line[SMTP_PROTO_LINE_MAX + 1];
	size_t len = sess->parked_len;

	if (!sess->parked || sess->closing)
		return;
	sess->parked = false;
	memcpy(line, sess->parked_line, len + 1);
	if (!smtp_cmd_dispatch(sess, line, len))
		return;   /* may destroy */
	/* Parked again (the line is still in parked_line): wait on. */
	if (!sess->parked)
		smtp_session_process(sess);   /* may destroy */
}

/*
 * Run everything the buffered input allows.  Stops when input runs out, when
 * the journal or the peer must catch up (paused), or when the session ends.
 */
void
smtp_session_process(struct smtp_session *sess)
{
	enum smtp_next next;
	int rc;

	while (!sess->closing && !sess->parked && sess->state != SMTP_STATE_QUIT &&
	    sess->state != SMTP_STATE_COMMIT && sess->state != SMTP_STATE_TLS) {
		if (sess->tls && (rc = smtp_tls_pull(sess)) != 0) {
			/* close_notify is an orderly end like a FIN. */
			smtp_session_close(sess, rc == TLS_CLOSED ?
			    "client closed (close_notify)" : "TLS error");
			return;   /* may destroy */
		}
		if (sess->pending > 0 ||
		    uv_stream_get_write_queue_size((uv_stream_t *)&sess->tcp) > SMTP_WQ_MAX) {
			smtp_session_flush(sess);
			smtp_pause(sess);
			return;
		}
		if (sess->state == SMTP_STATE_DATA) {
			if (sess->inlen == 0 && !smtp_proto_data_done(&sess->data))
				break;
			/* false: paused, commit or closing, all re-checked above */
			(void)smtp_tx_process_data(sess);
			continue;
		}
		if (sess->state == SMTP_STATE_BDAT) {
			if (sess->inlen == 0 && sess->tx->chunk_left > 0)
				break;
			(void)smtp_tx_process_bdat(sess);
			continue;
		}
		if (sess->inlen == 0)
			break;
		next = smtp_session_next_command(sess);
		if (next == SMTP_NEXT_STOP)
			return;   /* may destroy */
		if (next == SMTP_NEXT_WAIT)
			break;
	}
	if (sess->closing)
		return;
	smtp_session_flush(sess);
	if (sess->closing)
		return;
	if (sess->state == SMTP_STATE_COMMIT || sess->pending > 0 || sess->parked)
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
			smtp_session_enter_state(sess, SMTP_STATE_INIT);
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
	smtp_session_process(sess);
}

static void
smtp_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct smtp_session *sess = s->data;

	if (n == 0)
		return;
	if (n < 0) {
		/* A TLS peer that just closes the TCP connection without a
		 * close_notify (most MTAs after QUIT) is an ordinary
		 * disconnect: we never rely on it to know where data ends
		 * (SMTP has its own end markers), so it is not an error. */
		smtp_session_close(sess, n != UV_EOF ? uv_strerror((int)n) :
		    sess->tls ? "client closed (no close_notify)" : "client closed");
		return;   /* may destroy */
	}
	sess->active_ms = uv_now(sess->srv->loop);
	/*
	 * smtp_timeout is a deadline per command, not per read: in the
	 * command phase the timer restarts only when a whole command line has
	 * arrived (smtp_session_next_command), so a client that trickles a
	 * byte every few seconds (slowloris) cannot hold a connection past
	 * smtp_timeout without ever finishing a command.  Message data and a
	 * TLS handshake restart it on every read: a large message on a slow
	 * link is progress.
	 */
	if (sess->state == SMTP_STATE_DATA || sess->state == SMTP_STATE_BDAT ||
	    sess->state == SMTP_STATE_TLS)
		uv_timer_again(&sess->timer);
	if (sess->tls) {
		smtp_tls_input(sess, buf->base, (size_t)n);
		return;
	}
	sess->inlen += (size_t)n;
	smtp_session_process(sess);
}

