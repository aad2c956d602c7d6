/*
 * smtp_session_tx.c - the inbound mail transaction: from an accepted MAIL to
 * the journal's answer.
 *
 * DATA text is decoded in place by smtp_proto's DATA decoder and BDAT chunks
 * are checked for bare CR/LF and NUL; both go straight from the session's input
 * buffer into the spool transaction, after our Received: header.  A data
 * error (too big, bad line, spool failure) stops the writing but not the
 * reading: the reply comes at the end of the data, as RFC 5321 wants.
 *
 * The accept path reads top to bottom:
 *   smtp_data_end() -> spool_tx_commit() -> smtp_on_commit() -> "250 queued"
 * and nothing is said to the client between the end of data and the
 * journal's answer: a 250 means the message is durable.
 *
 * References: each spool callback outstanding holds sess->pending (the
 * comment at each decrement names the increment it balances); the session
 * is not freed while it is non-zero (smtp_server_internal.h).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxspool/config.h"
#include "mxspool/log.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/spool.h"
#include "mxspool/tls.h"

#include "smtp_server_internal.h"

void
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
	char for_rcpt[SMTP_PROTO_ADDR_MAX + 16] = "";
	time_t now = time(NULL);
	struct tm tm;
	int n;

	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	spool_qid_format(spool_tx_qid(tx->stx), qid);
	/* "for <rcpt>" only names a single recipient (RFC 5321 4.4: never
	 * reveal a list); without it the date ends the "by" line. */
	if (tx->nrcpt == 1)
		snprintf(for_rcpt, sizeof(for_rcpt), "\r\n\tfor <%s>", tx->rcpt[0].addr);
	n = snprintf(hdr, sizeof(hdr),
	    "Received: from %s (unknown [%s])\r\n%s%s%s"
	    "\tby %s (mxspool) with %s id %s%s; %s\r\n",
	    sess->helo, sess->peer_ip,
	    sess->tls ? "\t(using " : "", sess->tls ? sess->tls_info : "",
	    sess->tls ? ")\r\n" : "", smtp_session_cfg(sess)->hostname,
	    smtp_protocol_name(sess), qid, for_rcpt, date);
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
	smtp_proto_received_init(&tx->received);
	if (smtp_write_received(sess) != 0)
		return SPOOL_EIO;
	return 0;
}

static void
smtp_reply_spool_error(struct smtp_session *sess, int rc)
{
	if (rc == SPOOL_EQUOTA || rc == SPOOL_ENOSPC)
		smtp_session_reply(sess, "452 4.3.1 Insufficient system storage");
	else
		smtp_session_reply(sess, "451 4.3.0 Error: queue file write error");
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
	smtp_session_process(sess);
}

/* The message will be refused at its end: stop storing it now.  Never
 * called during a spill (the input loop is paused then). */
static void
smtp_tx_stop_storing(struct smtp_tx *tx, bool *flag)
{
	*flag = true;
	if (tx->stx) {
		spool_tx_abort(tx->stx);
		tx->stx = NULL;
	}
}

/* Hand message octets to the journal, counting its size and Received:
 * fields on the way.  Returns false when the session must wait for
 * smtp_on_spool_write(). */
static bool
smtp_tx_append(struct smtp_session *sess, const char *data, size_t len)
{
	const struct config *cfg = smtp_session_cfg(sess);
	struct smtp_tx *tx = sess->tx;
	int rc;

	tx->size += len;
	if (tx->size > cfg->max_message_size && !tx->too_big)
		smtp_tx_stop_storing(tx, &tx->too_big);
	/* The primary gets our Received: too: it counts toward its SIZE. */
	if (tx->primary_size_max > 0 && tx->size > tx->primary_size_max &&
	    !tx->too_big_primary)
		smtp_tx_stop_storing(tx, &tx->too_big_primary);
	if (!tx->too_many_hops && len > 0 &&
	    smtp_proto_received_push(&tx->received, data, len) > cfg->max_received)
		smtp_tx_stop_storing(tx, &tx->too_many_hops);
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

void
smtp_tx_log_reject(struct smtp_session *sess, const char *stage, const char *reply)
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

	sess->pending--;   /* from smtp_data_end() */
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
			hooks->on_accepted(hooks->arg, tx->tenant,
			    (double)(uv_hrtime() - tx->commit_start_ns) / 1e9);
		if (!sess->closing)
			smtp_session_reply(sess, "250 2.0.0 Ok: queued as %s", qs);
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
	smtp_session_enter_state(sess, SMTP_STATE_HELO);
	smtp_session_process(sess);
}

/* The end-of-data refusal of a message that is not stored, first reason
 * first. */
static void
smtp_data_refusal(const struct smtp_session *sess, char *reply, size_t len)
{
	const struct smtp_tx *tx = sess->tx;

	if (tx->too_big)
		snprintf(reply, len, "552 5.3.4 Message size exceeds fixed limit");
	else if (tx->too_big_primary)
		snprintf(reply, len, "552 5.3.4 Message size exceeds the primary's "
		    "limit (%" PRIu64 " octets)", tx->primary_size_max);
	else if (tx->error < 0 && tx->error > -1000)
		snprintf(reply, len, "%s", smtp_proto_status_reply(tx->error));
	else if (tx->too_many_hops)
		snprintf(reply, len, "554 5.4.6 Too many hops: more than %u "
		    "Received: header fields", smtp_session_cfg(sess)->max_received);
	else if (tx->error == SPOOL_EQUOTA || tx->error == SPOOL_ENOSPC)
		snprintf(reply, len, "452 4.3.1 Insufficient system storage");
	else
		snprintf(reply, len, "451 4.3.0 Error: queue file write error");
}

/* End of DATA or BDAT LAST: refuse, or commit and wait for the journal. */
static void
smtp_data_end(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	int rc;

	if (tx->too_big || tx->too_big_primary || tx->too_many_hops ||
	    tx->error || tx->stx == NULL) {
		char reply[160];

		smtp_data_refusal(sess, reply, sizeof(reply));
		smtp_tx_log_reject(sess, tx->bdat ? "bdat" : "data", reply);
		smtp_session_reply(sess, "%s", reply);
		smtp_tx_free(sess);
		smtp_session_enter_state(sess, SMTP_STATE_HELO);
		return;
	}
	smtp_session_enter_state(sess, SMTP_STATE_COMMIT);
	tx->commit_start_ns = uv_hrtime();
	rc = spool_tx_commit(tx->stx, smtp_on_commit, sess);
	if (rc != 0) {
		tx->stx = NULL;   /* consumed even on failure */
		smtp_reply_spool_error(sess, rc);
		smtp_tx_free(sess);
		smtp_session_enter_state(sess, SMTP_STATE_HELO);
		return;
	}
	sess->pending++;   /* until smtp_on_commit() */
	/* Asynchronous processing continues in smtp_on_commit(). */
}

bool
smtp_tx_start(struct smtp_session *sess)
{
	int rc = smtp_tx_open(sess);

	if (rc != 0) {
		smtp_reply_spool_error(sess, rc);
		smtp_tx_free(sess);
		smtp_session_enter_state(sess, SMTP_STATE_HELO);
		return false;
	}
	return true;
}

/* A BDAT chunk is complete: answer it. */
static void
smtp_bdat_chunk_done(struct smtp_session *sess, uint64_t size)
{
	struct smtp_tx *tx = sess->tx;

	if (tx->chunk_discard) {
		const char *refusal = tx->chunk_refusal;

		/* The refused chunk takes the transaction (if any) with it. */
		smtp_tx_free(sess);
		smtp_session_enter_state(sess, sess->helo[0] ? SMTP_STATE_HELO : SMTP_STATE_INIT);
		if (refusal) {
			smtp_session_reply(sess, "%s", refusal);
			smtp_session_count_error(sess);   /* may destroy */
		}
		return;
	}
	if (tx->chunk_last) {
		smtp_data_end(sess);
		return;
	}
	smtp_session_enter_state(sess, SMTP_STATE_RCPT);
	smtp_session_reply(sess, "250 2.0.0 Ok: %" PRIu64 " octets received", size);
}

/*
 * RFC 3030 2: a BDAT chunk follows its command even when the command is
 * refused, so it is read and dropped, never parsed as commands.  The
 * transaction record carries the chunk's length (a bare one when there was
 * no MAIL).
 */
void
smtp_tx_discard_chunk(struct smtp_session *sess, const struct smtp_cmd *cmd,
    const char *refusal)
{
	struct smtp_tx *tx = sess->tx;

	if (tx == NULL) {
		tx = sess->tx = calloc(1, sizeof(*tx));
		if (tx == NULL) {
			smtp_session_reply(sess, "421 4.3.0 %s Error: out of memory",
			    smtp_session_cfg(sess)->hostname);
			smtp_session_reply_close(sess, "out of memory");
			return;   /* may destroy */
		}
	}
	tx->chunk_discard = true;
	tx->chunk_refusal = refusal;
	tx->chunk_left = cmd->bdat_size;
	tx->chunk_last = cmd->bdat_last;
	smtp_session_enter_state(sess, SMTP_STATE_BDAT);
}

/* ---- message octets -------------------------------------------------------- */

/* DATA: decode in place and append.  Returns false to stop processing. */
bool
smtp_tx_process_data(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	size_t outlen = 0, consumed = 0;
	int rc;
	bool go_on;

	rc = smtp_proto_data_push(&sess->data, sess->in, sess->inlen, sess->in,
	    &outlen, &consumed);
	go_on = smtp_tx_append(sess, sess->in, outlen);
	smtp_session_consume(sess, consumed);
	/* A bare CR or LF (a smuggling attempt or a broken client) stops the
	 * output but not the reading: the decoder reads on to the true
	 * <CR><LF>.<CR><LF>, so no octet of the message is ever read as a
	 * command, and the 550 5.5.2 comes at the end as Postfix gives it;
	 * the client is not left retrying a cut connection. */
	if (rc == SMTP_PROTO_AGAIN)
		return go_on;
	if (rc != SMTP_PROTO_OK && tx->error == 0)
		tx->error = rc;
	if (!go_on) {
		/* The spool is still spilling: finish when it calls back.  The
		 * decoder is done, so the next smtp_session_process() lands here with
		 * nothing new and ends the message. */
		return false;
	}
	smtp_data_end(sess);
	return sess->state != SMTP_STATE_COMMIT;
}

bool
smtp_tx_process_bdat(struct smtp_session *sess)
{
	struct smtp_tx *tx = sess->tx;
	size_t n = sess->inlen;
	bool go_on = true;

	if (n > tx->chunk_left)
		n = (size_t)tx->chunk_left;
	if (!tx->chunk_discard) {
		/* BDAT has no end marker to smuggle, but the primary will get the
		 * message through DATA: bare CR and LF must not pass this way, nor
		 * NUL (without BINARYMIME a BDAT body is text, RFC 3030 3).  The
		 * refusal comes with the LAST chunk, as for DATA. */
		for (size_t i = 0; i < n && tx->error == 0; i++) {
			char c = sess->in[i], prev = i ? sess->in[i - 1] : tx->bdat_prev;

			if (c == '\n' && prev != '\r')
				tx->error = SMTP_PROTO_EDATA_BARELF;
			else if (prev == '\r' && c != '\n')
				tx->error = SMTP_PROTO_EDATA_BARECR;
			else if (c == '\0')
				tx->error = SMTP_PROTO_EDATA_NUL;
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
	smtp_session_consume(sess, n);
	if (tx->chunk_left > 0 || !go_on)
		return go_on;
	if (tx->chunk_last && tx->bdat_prev == '\r' && tx->error == 0)
		tx->error = SMTP_PROTO_EDATA_BARECR;
	smtp_bdat_chunk_done(sess, tx->size - tx->trace_len);
	return sess->state != SMTP_STATE_COMMIT;
}

