/*
 * smtp_session_cmd.c - the inbound SMTP command table.
 *
 * Each verb has one row: {verb, flags, handler}.  The flags state the
 * command's preconditions (HELO done, a transaction open or not, recipients
 * accepted, TLS offered or not yet active) and how it interacts with
 * pipelining and the session's lifetime.  smtp_cmd_dispatch() checks them
 * all in one place, in the order of smtp_cmd_checks[], and refuses with
 * that check's reply; a handler runs only when every check passed, so it
 * only acts (it still validates its own arguments and asks the policy and
 * the spool).  The same idea as OpenSMTPD's smtp_session.c commands[] and
 * Postfix smtpd.c's SMTPD_CMD_FLAG_*.
 *
 * Replies and enhanced status codes are worded like Postfix's; the
 * integration tests pin them.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/config.h"
#include "mxspool/log.h"
#include "mxspool/policy.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/spool.h"
#include "mxspool/tls.h"

#include "smtp_server_internal.h"

enum smtp_cmd_flag {
	SMTP_CMD_NEEDS_HELO     = 1u << 0,  /* refused before HELO/EHLO */
	SMTP_CMD_OPENS_TX       = 1u << 1,  /* opens a transaction: refused inside one */
	SMTP_CMD_NO_TX          = 1u << 2,  /* refused inside a transaction */
	SMTP_CMD_NEEDS_MAIL     = 1u << 3,  /* refused outside a transaction */
	SMTP_CMD_NEEDS_RCPT     = 1u << 4,  /* refused before an accepted RCPT */
	SMTP_CMD_NO_BDAT        = 1u << 5,  /* refused once BDAT began the message */
	SMTP_CMD_NEEDS_STARTTLS = 1u << 6,  /* refused (502) when STARTTLS is not offered */
	SMTP_CMD_CLEAR_ONLY     = 1u << 7,  /* refused once TLS is active */
	/* Octets follow the command line (BDAT): a refusal is given only
	 * after they are read and dropped (RFC 3030 2). */
	SMTP_CMD_CHUNK          = 1u << 8,
	/* Last in a pipelined group: whatever the client sent behind it is
	 * discarded, never executed (STARTTLS: RFC 3207 5, CVE-2011-0411). */
	SMTP_CMD_LAST           = 1u << 9,
	/* The handler ends the session: dangling pointer alert, the
	 * dispatcher returns at once without looking at it again. */
	SMTP_CMD_MAY_DESTROY    = 1u << 10,
};

typedef void smtp_cmd_handler(struct smtp_session *sess, const struct smtp_cmd *cmd);

struct smtp_cmd_def {
	enum smtp_verb verb;
	unsigned flags;
	smtp_cmd_handler *handler;
};

/* ---- handlers ------------------------------------------------------------- */

static void
smtp_cmd_helo(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	const struct config *cfg = smtp_session_cfg(sess);
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
	smtp_session_enter_state(sess, SMTP_STATE_HELO);
	if (!sess->esmtp) {
		smtp_session_reply(sess, "250 %s", cfg->hostname);
		return;
	}
	smtp_session_reply(sess, "250-%s", cfg->hostname);
	smtp_session_reply(sess, "250-PIPELINING");
	smtp_session_reply(sess, "250-SIZE %" PRIu64, cfg->max_message_size);
	smtp_session_reply(sess, "250-ETRN");
	if (sess->srv->tls && sess->tls == NULL)
		smtp_session_reply(sess, "250-STARTTLS");
	smtp_session_reply(sess, "250-ENHANCEDSTATUSCODES");
	smtp_session_reply(sess, "250-8BITMIME");
	smtp_session_reply(sess, "250-DSN");
	smtp_session_reply(sess, "250-SMTPUTF8");
	smtp_session_reply(sess, "250 CHUNKING");
}

static void
smtp_cmd_mail(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	struct smtp_mail m;
	int rc;

	rc = smtp_proto_parse_mail(cmd, &m);
	if (rc == 0 && m.params.smtputf8 && !sess->esmtp)
		rc = SMTP_PROTO_EPARAM;
	if (rc == 0 && m.params.body == ENV_BODY_BINARYMIME) {
		/* Not advertised: BINARYMIME cannot be forwarded with DATA. */
		smtp_session_reply(sess, "555 5.5.4 Unsupported option: BODY=BINARYMIME");
		smtp_session_count_error(sess);
		return;
	}
	if (rc != 0) {
		smtp_session_reply(sess, "%s", smtp_proto_status_reply(rc));
		smtp_session_count_error(sess);
		return;
	}
	if (!smtp_abuse_mail_ok(sess))
		return;
	if (m.params.has_size && m.params.size > smtp_session_cfg(sess)->max_message_size) {
		smtp_session_reply(sess, "552 5.3.4 Message size exceeds fixed limit");
		return;
	}
	/* Disk first (no tenant yet); the tenant's quota is checked at RCPT. */
	rc = spool_check(sess->srv->spool, NULL, m.params.has_size ? m.params.size : 0);
	if (rc == SPOOL_ENOSPC) {
		smtp_session_reply(sess, "452 4.3.1 Insufficient system storage");
		smtp_tx_log_reject(sess, "mail", "452 4.3.1 Insufficient system storage");
		return;
	}
	sess->tx = calloc(1, sizeof(*sess->tx));
	if (sess->tx == NULL) {
		smtp_session_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	sess->tx->params = m.params;
	snprintf(sess->tx->sender, sizeof(sess->tx->sender), "%s", m.from.addr);
	smtp_session_enter_state(sess, SMTP_STATE_MAIL);
	smtp_session_reply(sess, "250 2.1.0 Ok");
}

/*
 * Capability matching, at the RCPT that fixes the tenant: while the spool
 * knows the primary's last EHLO, what it cannot take is refused now rather
 * than bounced days later.  A SIZE= above its SIZE gets 552 5.3.4 (RFC 1870
 * allows it at RCPT), SMTPUTF8 when it lacks it 555 5.6.7 (the contract's
 * code).  Unknown caps: accepted as before.  Returns true if refused.
 */
static bool
smtp_cmd_refuse_for_primary(struct smtp_session *sess,
    const struct config_tenant *t)
{
	struct smtp_tx *tx = sess->tx;
	struct spool_caps caps;
	char reply[160];

	if (!spool_get_caps(sess->srv->spool, t->name, &caps))
		return false;
	if (caps.size_max > 0 && tx->params.has_size && tx->params.size > caps.size_max)
		snprintf(reply, sizeof(reply), "552 5.3.4 Message size exceeds the "
		    "primary's limit (%" PRIu64 " octets)", caps.size_max);
	else if (tx->params.smtputf8 && !(caps.ext & SMTP_EXT_SMTPUTF8))
		snprintf(reply, sizeof(reply), "555 5.6.7 SMTPUTF8 is not supported "
		    "by the primary of this domain");
	else {
		tx->primary_size_max = caps.size_max;
		return false;
	}
	smtp_tx_log_reject(sess, "rcpt", reply);
	smtp_session_reply(sess, "%s", reply);
	return true;
}

/*
 * RCPT TO:<Postmaster> (RFC 5321 4.5.1), accepted by the policy: rewrite it
 * to the address the policy chose.  The original form is kept as the ORCPT
 * ("rfc822;Postmaster", as the client wrote it) when the client gave none,
 * so that a DSN names the recipient the sender used.
 */
static void
smtp_cmd_rewrite_postmaster(const struct smtp_session *sess, struct smtp_rcpt *r)
{
	char addr[SMTP_PROTO_ADDR_MAX + 1];

	if (policy_postmaster_addr(smtp_session_cfg(sess), addr, sizeof(addr)) != 0)
		return;   /* not reached: the policy said OK */
	if (!r->params.has_orcpt) {
		snprintf(r->params.orcpt, sizeof(r->params.orcpt), "rfc822;%s", r->to.local);
		r->params.has_orcpt = true;
	}
	snprintf(r->to.addr, sizeof(r->to.addr), "%s", addr);
}

static void smtp_cmd_rcpt_learn(struct smtp_session *sess,
    const struct smtp_rcpt *rc_, const struct config_tenant *t);
static void smtp_cmd_rcpt_verified(void *arg, enum verify_answer a);
static void smtp_cmd_rcpt_answer(struct smtp_session *sess,
    const struct smtp_rcpt *rc_, const struct config_tenant *t,
    enum verify_answer a);
static void smtp_cmd_rcpt_add(struct smtp_session *sess,
    const struct smtp_rcpt *rc_, const struct config_tenant *t);

static void
smtp_cmd_rcpt(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	const struct config *cfg = smtp_session_cfg(sess);
	const struct config_tenant *t;
	struct smtp_tx *tx = sess->tx;
	struct smtp_rcpt rc_;
	enum policy_verdict v;
	char reply[600];
	int rc;

	rc = smtp_proto_parse_rcpt(cmd, tx->params.smtputf8, &rc_);
	if (rc != 0) {
		snprintf(reply, sizeof(reply), "%s", smtp_proto_status_reply(rc));
		smtp_tx_log_reject(sess, "rcpt", reply);
		smtp_session_reply(sess, "%s", reply);
		smtp_session_count_error(sess);
		return;
	}
	if (tx->nrcpt >= cfg->max_recipients) {
		smtp_session_reply(sess, "452 4.5.3 Error: too many recipients");
		return;
	}
	v = policy_check_rcpt(cfg, &rc_.to, tx->tenant, &t);
	if (v != POLICY_OK && v != POLICY_LEARN) {
		policy_reply(v, rc_.to.addr, reply, sizeof(reply));
		smtp_tx_log_reject(sess, "rcpt", reply);
		smtp_session_reply(sess, "%s", reply);
		if (v != POLICY_OTHER_TENANT)
			smtp_session_count_error(sess);
		return;
	}
	if (!smtp_abuse_rcpt_ok(sess, t))
		return;   /* 450 queued, or parked until the DNSBL answers */
	if (rc_.to.postmaster)
		smtp_cmd_rewrite_postmaster(sess, &rc_);
	if (tx->tenant[0] == '\0' && smtp_cmd_refuse_for_primary(sess, t))
		return;
	rc = spool_check(sess->srv->spool, t->name,
	    tx->params.has_size ? tx->params.size : 0);
	if (rc != 0) {
		snprintf(reply, sizeof(reply), "452 4.3.1 <%s>: Insufficient system storage",
		    rc_.to.addr);
		smtp_tx_log_reject(sess, "rcpt", reply);
		smtp_session_reply(sess, "%s", reply);
		return;
	}
	for (size_t i = 0; i < tx->nrcpt; i++) {
		if (strcmp(tx->rcpt[i].addr, rc_.to.addr) == 0) {
			/* A duplicate is delivered once, as Postfix does. */
			smtp_session_reply(sess, "250 2.1.5 Ok");
			return;
		}
	}
	if (v == POLICY_LEARN) {
		smtp_cmd_rcpt_learn(sess, &rc_, t);
		return;   /* may wait for the verifier */
	}
	smtp_cmd_rcpt_add(sess, &rc_, t);
}

/*
 * recipients = learn: ask the verifier (through the server's hook; none:
 * the down path's tempfail).  An answer now is given now; otherwise the
 * parsed RCPT waits in sess->rcpt_wait, holding one sess->pending so that
 * the input loop stops (as for a journal commit) and the session outlives
 * the answer.  Asynchronous processing continues in smtp_cmd_rcpt_verified().
 */
static void
smtp_cmd_rcpt_learn(struct smtp_session *sess, const struct smtp_rcpt *rc_,
    const struct config_tenant *t)
{
	const struct smtp_server_hooks *hooks = &sess->srv->hooks;
	struct smtp_rcpt_wait *w = malloc(sizeof(*w));
	enum verify_answer a;

	if (w == NULL) {
		smtp_session_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	w->rcpt = *rc_;
	snprintf(w->tenant, sizeof(w->tenant), "%s", t->name);
	a = hooks->learn_rcpt == NULL ? VERIFY_TEMPFAIL :
	    hooks->learn_rcpt(hooks->arg, t->name, rc_->to.addr,
	    smtp_cmd_rcpt_verified, sess);
	if (a != VERIFY_PENDING) {
		free(w);
		smtp_cmd_rcpt_answer(sess, rc_, t, a);
		return;
	}
	sess->rcpt_wait = w;
	sess->pending++;   /* until smtp_cmd_rcpt_verified() */
}

/* The verifier's answer for the RCPT in sess->rcpt_wait. */
static void
smtp_cmd_rcpt_verified(void *arg, enum verify_answer a)
{
	struct smtp_session *sess = arg;
	struct smtp_rcpt_wait *w = sess->rcpt_wait;
	const struct config_tenant *t;

	sess->rcpt_wait = NULL;
	sess->pending--;   /* from smtp_cmd_rcpt_learn() */
	if (sess->closing) {
		free(w);
		smtp_session_free(sess);
		return;
	}
	/* A reload may have come in between: the tenant by name, again. */
	t = config_tenant_by_name(smtp_session_cfg(sess), w->tenant);
	if (t == NULL || sess->tx == NULL)
		smtp_session_reply(sess, "451 4.3.0 <%s>: Error: configuration "
		    "changed, try again", w->rcpt.to.addr);
	else
		smtp_cmd_rcpt_answer(sess, &w->rcpt, t, a);
	free(w);
	smtp_session_process(sess);   /* may destroy */
}

/* Act on the verifier's answer A for RC_. */
static void
smtp_cmd_rcpt_answer(struct smtp_session *sess, const struct smtp_rcpt *rc_,
    const struct config_tenant *t, enum verify_answer a)
{
	char reply[600];

	if (a == VERIFY_ACCEPT) {
		smtp_cmd_rcpt_add(sess, rc_, t);
		return;
	}
	policy_reply(a == VERIFY_REJECT ? POLICY_UNKNOWN_USER : POLICY_UNVERIFIED,
	    rc_->to.addr, reply, sizeof(reply));
	smtp_tx_log_reject(sess, "rcpt", reply);
	smtp_session_reply(sess, "%s", reply);
	/* A 550 counts toward max_errors, as for the recipients FILE; a 450
	 * is not the client's fault. */
	if (a == VERIFY_REJECT)
		smtp_session_count_error(sess);   /* may destroy */
}

/* Add the accepted recipient RC_ of tenant T to the transaction: 250. */
static void
smtp_cmd_rcpt_add(struct smtp_session *sess, const struct smtp_rcpt *rc_,
    const struct config_tenant *t)
{
	struct smtp_tx *tx = sess->tx;
	struct smtp_tx_rcpt *nr = realloc(tx->rcpt, (tx->nrcpt + 1) * sizeof(*nr));

	if (nr == NULL) {
		smtp_session_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	tx->rcpt = nr;
	nr = &tx->rcpt[tx->nrcpt];
	nr->addr = strdup(rc_->to.addr);
	nr->orcpt = rc_->params.has_orcpt ? strdup(rc_->params.orcpt) : NULL;
	nr->notify = rc_->params.notify;
	if (nr->addr == NULL || (rc_->params.has_orcpt && nr->orcpt == NULL)) {
		free(nr->addr);
		free(nr->orcpt);
		smtp_session_reply(sess, "451 4.3.0 Error: out of memory");
		return;
	}
	tx->nrcpt++;
	snprintf(tx->tenant, sizeof(tx->tenant), "%s", t->name);
	smtp_session_enter_state(sess, SMTP_STATE_RCPT);
	smtp_session_reply(sess, "250 2.1.5 Ok");
}

static void
smtp_cmd_data(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	if (sess->inlen > 0) {
		/* RFC 2920 3.1: DATA may end a pipelined group, but the message
		 * waits for the 354.  Octets already behind DATA are a client
		 * that does not listen (or one that hopes to slip something
		 * in): refused and closed, as Postfix 3.9's
		 * smtpd_forbid_unauth_pipelining does. */
		const char *reply = "554 5.5.0 Error: SMTP protocol synchronization";

		log_event(LOG_LEVEL_INFO, "pipelining", "session=%" PRIu64 " client=%s "
		    "pipelined=%zu note=\"message content sent before 354\"",
		    sess->id, sess->peer_ip, sess->inlen);
		smtp_tx_log_reject(sess, "data", reply);
		smtp_session_reply(sess, "%s", reply);
		smtp_session_reply_close(sess, "improper pipelining after DATA");
		return;
	}
	if (!smtp_tx_start(sess))
		return;
	smtp_proto_data_init(&sess->data, smtp_session_cfg(sess)->max_line_length);
	smtp_session_enter_state(sess, SMTP_STATE_DATA);
	smtp_session_reply(sess, "354 End data with <CR><LF>.<CR><LF>");
}

static void
smtp_cmd_bdat(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	struct smtp_tx *tx = sess->tx;

	if (!tx->bdat) {
		tx->bdat = true;
		tx->bdat_prev = '\n';
		if (!smtp_tx_start(sess)) {
			/* The 451/452 is queued and the transaction is gone; the
			 * chunk is read and dropped without a second reply. */
			smtp_tx_discard_chunk(sess, cmd, NULL);
			return;   /* may destroy */
		}
	}
	tx->chunk_left = cmd->bdat_size;
	tx->chunk_last = cmd->bdat_last;
	smtp_session_enter_state(sess, SMTP_STATE_BDAT);
}

static void
smtp_cmd_rset(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	smtp_tx_free(sess);
	if (sess->state != SMTP_STATE_INIT)
		smtp_session_enter_state(sess, SMTP_STATE_HELO);
	smtp_session_reply(sess, "250 2.0.0 Ok");
}

static void
smtp_cmd_noop(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	smtp_session_reply(sess, "250 2.0.0 Ok");
}

static void
smtp_cmd_quit(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	smtp_session_reply(sess, "221 2.0.0 Bye");
	smtp_session_reply_close(sess, "quit");   /* may destroy */
}

static void
smtp_cmd_vrfy(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	smtp_session_reply(sess, "252 2.0.0 Cannot VRFY user, but will accept message "
	    "and attempt delivery");
}

static void
smtp_cmd_expn(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	smtp_session_reply(sess, "502 5.5.1 Error: EXPN command is disabled");
}

static void
smtp_cmd_help(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	/* STARTTLS only where EHLO offers it. */
	bool starttls = sess->srv->tls != NULL && sess->tls == NULL;

	smtp_session_reply(sess, "214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA "
	    "BDAT RSET NOOP QUIT VRFY HELP%s ETRN", starttls ? " STARTTLS" : "");
}

static void
smtp_cmd_auth(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	smtp_session_reply(sess, "503 5.5.1 Error: authentication not enabled");
	smtp_session_count_error(sess);   /* may destroy */
}

static void
smtp_cmd_starttls(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	struct tls_ctx *ctx = sess->srv->tls;
	struct tls_conn *tls;

	if (sess->cipher == NULL)
		sess->cipher = malloc(SMTP_CIPHER_MAX);
	tls = sess->cipher ? tls_conn_new(ctx, true, NULL) : NULL;
	if (tls == NULL) {
		smtp_session_reply(sess, "454 4.7.0 TLS not available due to local problem");
		return;
	}
	/* The 220 (and any reply queued before it) goes out in clear: flush
	 * before setting sess->tls, or smtp_session_flush() would hold it in
	 * the TLS conn until a handshake the client only starts after reading
	 * it.  What the client pipelined behind STARTTLS is discarded by the
	 * dispatcher (SMTP_CMD_LAST). */
	smtp_session_reply(sess, "220 2.0.0 Ready to start TLS");
	smtp_session_flush(sess);
	if (sess->closing) {
		tls_conn_free(tls);
		return;
	}
	sess->tls = tls;
	smtp_tx_free(sess);
	sess->helo[0] = '\0';
	sess->esmtp = false;
	smtp_session_enter_state(sess, SMTP_STATE_TLS);
}

static void
smtp_cmd_etrn(struct smtp_session *sess, const struct smtp_cmd *cmd)
{
	const struct config_tenant *t;
	const struct smtp_server_hooks *hooks = &sess->srv->hooks;
	struct spool_tenant_stats st;

	if (cmd->etrn_kind == '#') {
		smtp_session_reply(sess, "458 4.1.0 Unable to queue messages for node %s",
		    cmd->etrn_node);
		return;
	}
	switch (policy_check_etrn(smtp_session_cfg(sess), cmd->etrn_node,
	    (const struct sockaddr *)&sess->peer, &t)) {
	case POLICY_ETRN_UNKNOWN_NODE:
		smtp_session_reply(sess, "459 4.7.1 <%s>: not a domain this server spools for",
		    cmd->etrn_node);
		return;
	case POLICY_ETRN_DENIED:
		log_event(LOG_LEVEL_INFO, "etrn", "session=%" PRIu64 " client=%s node=%s result=denied",
		    sess->id, sess->peer_ip, cmd->etrn_node);
		smtp_session_reply(sess, "459 4.7.1 Client host rejected: not allowed to use ETRN");
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
		smtp_session_reply(sess, "251 2.0.0 OK, no messages waiting for node %s",
		    cmd->etrn_node);
	else
		smtp_session_reply(sess, "250 2.0.0 Queuing started");
}

/* ---- the table and its checks --------------------------------------------- */

static const struct smtp_cmd_def smtp_cmd_table[] = {
	{ SMTP_VERB_HELO,     0,                                  smtp_cmd_helo },
	{ SMTP_VERB_EHLO,     0,                                  smtp_cmd_helo },
	{ SMTP_VERB_MAIL,     SMTP_CMD_NEEDS_HELO | SMTP_CMD_OPENS_TX, smtp_cmd_mail },
	{ SMTP_VERB_RCPT,     SMTP_CMD_NEEDS_MAIL,                smtp_cmd_rcpt },
	{ SMTP_VERB_DATA,     SMTP_CMD_NEEDS_RCPT | SMTP_CMD_NO_BDAT, smtp_cmd_data },
	{ SMTP_VERB_BDAT,     SMTP_CMD_NEEDS_RCPT | SMTP_CMD_CHUNK, smtp_cmd_bdat },
	{ SMTP_VERB_RSET,     0,                                  smtp_cmd_rset },
	{ SMTP_VERB_NOOP,     0,                                  smtp_cmd_noop },
	{ SMTP_VERB_QUIT,     SMTP_CMD_MAY_DESTROY,               smtp_cmd_quit },
	{ SMTP_VERB_VRFY,     0,                                  smtp_cmd_vrfy },
	{ SMTP_VERB_EXPN,     0,                                  smtp_cmd_expn },
	{ SMTP_VERB_HELP,     0,                                  smtp_cmd_help },
	{ SMTP_VERB_STARTTLS, SMTP_CMD_NEEDS_STARTTLS | SMTP_CMD_CLEAR_ONLY | SMTP_CMD_LAST,
	                                                          smtp_cmd_starttls },
	{ SMTP_VERB_ETRN,     SMTP_CMD_NEEDS_HELO | SMTP_CMD_NO_TX, smtp_cmd_etrn },
	{ SMTP_VERB_AUTH,     0,                                  smtp_cmd_auth },
};

static bool
smtp_refuse_no_starttls(const struct smtp_session *sess, unsigned flags)
{
	return sess->srv->tls == NULL;
}

static bool
smtp_refuse_tls_active(const struct smtp_session *sess, unsigned flags)
{
	return sess->tls != NULL;
}

static bool
smtp_refuse_no_helo(const struct smtp_session *sess, unsigned flags)
{
	return sess->state == SMTP_STATE_INIT;
}

static bool
smtp_refuse_in_tx(const struct smtp_session *sess, unsigned flags)
{
	return sess->tx != NULL;
}

static bool
smtp_refuse_no_mail(const struct smtp_session *sess, unsigned flags)
{
	return sess->tx == NULL ||
	    (sess->state != SMTP_STATE_MAIL && sess->state != SMTP_STATE_RCPT);
}

static bool
smtp_refuse_need_rcpt(const struct smtp_session *sess, unsigned flags)
{
	/* A refused chunk takes the MAIL with it (smtp_tx_discard_chunk()),
	 * so BDAT says "need RCPT" even after a MAIL. */
	return sess->state != SMTP_STATE_RCPT &&
	    (sess->tx == NULL || (flags & SMTP_CMD_CHUNK));
}

static bool
smtp_refuse_no_rcpt(const struct smtp_session *sess, unsigned flags)
{
	return sess->state != SMTP_STATE_RCPT;
}

static bool
smtp_refuse_bdat_begun(const struct smtp_session *sess, unsigned flags)
{
	return sess->tx != NULL && sess->tx->bdat;
}

/* Checked in this order; the first refusal wins. */
static const struct smtp_cmd_check {
	unsigned flag;
	bool (*refuses)(const struct smtp_session *sess, unsigned flags);
	const char *reply;
	bool counts;                  /* a client error toward max_errors */
} smtp_cmd_checks[] = {
	{ SMTP_CMD_NEEDS_STARTTLS, smtp_refuse_no_starttls,
	    "502 5.5.1 Error: command not implemented", true },
	{ SMTP_CMD_CLEAR_ONLY, smtp_refuse_tls_active,
	    "554 5.5.1 Error: TLS already active", true },
	{ SMTP_CMD_NEEDS_HELO, smtp_refuse_no_helo,
	    "503 5.5.1 Error: send HELO/EHLO first", true },
	{ SMTP_CMD_OPENS_TX, smtp_refuse_in_tx,
	    "503 5.5.1 Error: nested MAIL command", true },
	{ SMTP_CMD_NO_TX, smtp_refuse_in_tx,
	    "503 5.5.1 Error: MAIL transaction in progress", false },
	{ SMTP_CMD_NEEDS_MAIL, smtp_refuse_no_mail,
	    "503 5.5.1 Error: need MAIL command", true },
	{ SMTP_CMD_NEEDS_RCPT, smtp_refuse_need_rcpt,
	    "503 5.5.1 Error: need RCPT command", true },
	{ SMTP_CMD_NEEDS_RCPT, smtp_refuse_no_rcpt,
	    "554 5.5.1 Error: no valid recipients", true },
	{ SMTP_CMD_NO_BDAT, smtp_refuse_bdat_begun,
	    "503 5.5.1 Error: DATA after BDAT", true },
};

static const struct smtp_cmd_def *
smtp_cmd_lookup(enum smtp_verb verb)
{
	for (size_t i = 0; i < sizeof(smtp_cmd_table) / sizeof(smtp_cmd_table[0]); i++)
		if (smtp_cmd_table[i].verb == verb)
			return &smtp_cmd_table[i];
	return NULL;
}

/* The first check DEF fails in SESS's present state, or NULL. */
static const struct smtp_cmd_check *
smtp_cmd_refusal(const struct smtp_session *sess, const struct smtp_cmd_def *def)
{
	for (size_t i = 0; i < sizeof(smtp_cmd_checks) / sizeof(smtp_cmd_checks[0]); i++) {
		const struct smtp_cmd_check *c = &smtp_cmd_checks[i];

		if ((def->flags & c->flag) && c->refuses(sess, def->flags))
			return c;
	}
	return NULL;
}

static bool
smtp_cmd_go_on(const struct smtp_session *sess)
{
	return !sess->closing && sess->state != SMTP_STATE_QUIT;
}

bool
smtp_cmd_dispatch(struct smtp_session *sess, const char *line, size_t len)
{
	struct smtp_cmd cmd;
	const struct smtp_cmd_def *def;
	const struct smtp_cmd_check *refusal;
	int rc = smtp_proto_parse_command(line, len, &cmd);

	def = rc == SMTP_PROTO_EUNKNOWN ? NULL : smtp_cmd_lookup(cmd.verb);
	if (def == NULL) {
		smtp_session_reply(sess, "%s", smtp_proto_status_reply(SMTP_PROTO_EUNKNOWN));
		smtp_session_count_error(sess);
		return smtp_cmd_go_on(sess);
	}
	if (rc != 0) {
		smtp_session_reply(sess, "%s", smtp_proto_status_reply(rc));
		smtp_session_count_error(sess);
		/* The chunk size is unknown: we cannot stay in step. */
		if (def->flags & SMTP_CMD_CHUNK)
			smtp_session_reply_close(sess, "bad BDAT");
		return smtp_cmd_go_on(sess);
	}
	refusal = smtp_cmd_refusal(sess, def);
	if (refusal && (def->flags & SMTP_CMD_CHUNK)) {
		smtp_tx_discard_chunk(sess, &cmd, refusal->reply);
		return smtp_cmd_go_on(sess);
	}
	if (refusal) {
		smtp_session_reply(sess, "%s", refusal->reply);
		if (refusal->counts)
			smtp_session_count_error(sess);
		return smtp_cmd_go_on(sess);
	}
	def->handler(sess, &cmd);
	if (def->flags & SMTP_CMD_MAY_DESTROY)
		return false;   /* dangling pointer alert */
	if ((def->flags & SMTP_CMD_LAST) && !sess->closing)
		smtp_session_discard_input(sess, cmd.verb);
	return smtp_cmd_go_on(sess);
}
