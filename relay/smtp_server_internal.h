/*
 * smtp_server_internal.h - what the files of the inbound SMTP server share;
 * nothing outside them includes it.
 *
 *   smtp_server.c       listeners, accept-time limits, shutdown
 *   smtp_session.c      one connection: lifetime, replies, the read/write
 *                       and TLS pump, and the input loop that cuts command
 *                       lines and hands message octets to the transaction
 *   smtp_session_cmd.c  the command table: preconditions checked in one
 *                       place, then the handler
 *   smtp_session_tx.c   the mail transaction: recipients, DATA and BDAT
 *                       octets into the spool, the commit and its reply
 *
 * Ownership: a session is freed only by smtp_session_free(), which does
 * nothing until both libuv handles are closed (close callbacks) and no spool
 * callback is outstanding (sess->pending).  So a session's memory is never
 * released inside a command or reply; what a command may do is *close* the
 * session (smtp_session_close(), smtp_session_reply_close()), after which
 * its caller returns at once without further work ("may destroy").
 *
 * State changes only through smtp_session_enter_state(), which logs them.
 */
#ifndef MXSPOOL_SMTP_SERVER_INTERNAL_H
#define MXSPOOL_SMTP_SERVER_INTERNAL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/smtp_server.h"

struct anvil;
struct dnsbl_check;

#define SMTP_IN_MAX      8192      /* input buffer: >= a command line, < TLS record */
#define SMTP_OUT_FLUSH   4096      /* flush queued replies beyond this */
#define SMTP_WQ_MAX      (256 * 1024)  /* stop reading while the peer does not read */
#define SMTP_CIPHER_MAX  (16 * 1024 + 512)

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

/* recipients = learn: an RCPT waiting for the verifier (verify.h). */
struct smtp_rcpt_wait {
	struct smtp_rcpt rcpt;        /* as parsed */
	char tenant[CONFIG_TENANT_NAME_MAX + 1];
};

struct smtp_tx_rcpt {
	char *addr;
	char *orcpt;
	unsigned notify;
};

/* One mail transaction: from MAIL to the end of data, RSET or an error.  A
 * refused BDAT also gets one (possibly with no MAIL), only to read and drop
 * its chunk. */
struct smtp_tx {
	struct smtp_mail_params params;
	char sender[SMTP_PROTO_ADDR_MAX + 1];
	char tenant[CONFIG_TENANT_NAME_MAX + 1];
	struct smtp_tx_rcpt *rcpt;
	size_t nrcpt;
	struct spool_tx *stx;         /* open during DATA/BDAT */
	uint64_t size;                /* message octets, our Received: included */
	uint64_t trace_len;           /* octets of our Received: header */
	uint64_t commit_start_ns;     /* uv_hrtime() at end of data */
	int error;                    /* first data error: reply at the end */
	bool too_big;
	/* The tenant's primary, as its last EHLO said (spool_get_caps at the
	 * first RCPT): its SIZE, 0 if unknown or none; the data beyond it is
	 * refused at the end (552 5.3.4). */
	uint64_t primary_size_max;
	bool too_big_primary;
	/* Loop detection: Received: fields of the client's header (ours not
	 * counted); more than max_received is refused at the end (554 5.4.6). */
	struct smtp_received_counter received;
	bool too_many_hops;
	bool spilling;                /* spool_tx_write() answered SPOOL_PENDING */
	bool bdat;                    /* BDAT used: DATA no longer allowed */
	/* BDAT */
	uint64_t chunk_left;
	bool chunk_last;
	bool chunk_discard;           /* chunk refused: read and drop its octets */
	const char *chunk_refusal;    /* reply once it is dropped; NULL: the
	                               * reply was already given */
	char bdat_prev;               /* last octet of the previous chunk */
};

/*
 * Open sessions per client address, for max_connections_per_ip: a count
 * kept at accept and close, so that the check costs O(1) however many
 * sessions are open (walking the session list made accepting 10 000
 * connections quadratic: over 10 s of CPU).
 */
#define SMTP_IPCOUNT_BUCKETS 4096
struct smtp_ipcount {
	struct smtp_ipcount *next;
	unsigned n;                   /* open (not closing) sessions */
	char ip[INET6_ADDRSTRLEN];
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
	struct smtp_ipcount *ipcount[SMTP_IPCOUNT_BUCKETS];
	unsigned nsessions;
	unsigned nclosing;            /* of nsessions: closed, memory not yet freed */
	bool closing;
	uv_timer_t grace;
	/* SIGUSR2: a session in INIT or HELO silent for handover_idle_ms gets
	 * 421; at handover_deadline_ms (uv_now) the grace is over. */
	unsigned handover_idle_ms;
	uint64_t handover_deadline_ms;
	bool grace_open;
	bool inherited;               /* listeners came from systemd */
	void (*done)(void *);
	void *done_arg;
	struct dns *dns;              /* DNSBL lookups; NULL: none */
	struct anvil *anvil;          /* per-client rates; NULL: not limited */
	struct smtp_server_abuse abuse;
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
	/* uv_now() of the last input or output: what "idle" means at a
	 * handover (a client that just got a reply is about to answer). */
	uint64_t active_ms;

	struct sockaddr_storage peer;
	char peer_ip[INET6_ADDRSTRLEN];
	struct smtp_ipcount *ipc;     /* our count in srv->ipcount, or NULL */

	enum smtp_state state;
	bool esmtp;
	char helo[SMTP_PROTO_DOMAIN_MAX + 1];   /* "" until HELO/EHLO */
	unsigned errors;
	unsigned messages;
	struct smtp_tx *tx;
	/* The RCPT waiting for the verifier (it holds one of sess->pending),
	 * or NULL. */
	struct smtp_rcpt_wait *rcpt_wait;

	struct smtp_line_reader lines;
	struct smtp_data_decoder data;

	struct tls_conn *tls;         /* set once STARTTLS began */
	char tls_info[160];

	size_t inlen;
	size_t outlen;
	char *cipher;                 /* TLS read buffer, only with TLS */

	struct dnsbl_check *dnsbl;    /* started at connect, or NULL */
	/* A command that must wait (RCPT for a DNSBL answer) parks: input
	 * stops, and smtp_session_wake() runs the line again. */
	bool parked;
	size_t parked_len;

	/* The buffers, last: a new session zeroes only what comes before
	 * `out` (smtp_on_connection), so the pages of the 14 KiB below that an
	 * idle connection never writes stay out of RSS (`out` first: the
	 * banner then shares the page of the fields).  Nothing reads them
	 * beyond outlen, inlen, parked_len.  New fields go above. */
	char out[SMTP_OUT_FLUSH + 1024];
	char in[SMTP_IN_MAX];
	char parked_line[SMTP_PROTO_LINE_MAX + 1];
};

static inline const struct config *
smtp_session_cfg(const struct smtp_session *sess)
{
	return sess->srv->cfg;
}

/* ---- smtp_server.c ------------------------------------------------------ */

/* Free the server once it is closing and its last handle is gone. */
void smtp_server_maybe_done(struct smtp_server *srv);
/* The session no longer counts for its address (at close; idempotent). */
void smtp_server_ip_release(struct smtp_session *sess);
/* SIGUSR2: how much longer S (at NOW, uv_now) must stay silent to be idle
 * (0: idle now), or -1: busy. */
long long smtp_server_handover_idle_left(const struct smtp_session *s,
    uint64_t now, unsigned idle_ms);

/* ---- smtp_session.c ----------------------------------------------------- */

/* The only way a session changes state; logs the transition by name. */
void smtp_session_enter_state(struct smtp_session *sess, enum smtp_state st);
/* Send the banner (or a refusal already queued), arm the idle timer and
 * start reading.  May destroy SESS. */
void smtp_session_start(struct smtp_session *sess);
/* Queue one reply line ("250 2.0.0 Ok"); CRLF is added.  Replies are sent
 * when the input loop runs dry, or earlier when the buffer fills. */
void smtp_session_reply(struct smtp_session *sess, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Send the queued replies now.  May destroy SESS (write error). */
void smtp_session_flush(struct smtp_session *sess);
/* Close at once, queued replies flushed first.  May destroy SESS. */
void smtp_session_close(struct smtp_session *sess, const char *reason);
/* Stop reading and close once the queued replies are written.  May
 * destroy SESS. */
void smtp_session_reply_close(struct smtp_session *sess, const char *reason);
/* Free SESS if nothing refers to it any more (handles, spool callbacks). */
void smtp_session_free(struct smtp_session *sess);
/* A client error: counts toward max_errors; at the limit 421 and close.
 * May destroy SESS. */
void smtp_session_count_error(struct smtp_session *sess);
/* Drop N octets from the front of the input buffer. */
void smtp_session_consume(struct smtp_session *sess, size_t n);
/* Drop every buffered input octet and restart line framing; a log line
 * says how much was pipelined behind VERB (STARTTLS: RFC 3207 5). */
void smtp_session_discard_input(struct smtp_session *sess, enum smtp_verb verb);
/* Run everything the buffered input allows.  May destroy SESS. */
void smtp_session_process(struct smtp_session *sess);
/* From a command handler: this command cannot be answered yet.  The
 * dispatcher keeps its line and stops reading; smtp_session_wake() runs
 * it again, so the handler must not have changed anything before. */
void smtp_session_park(struct smtp_session *sess);
/* What a parked command waited for has come: run it again and go on with
 * the input.  Nothing if not parked.  May destroy SESS. */
void smtp_session_wake(struct smtp_session *sess);

/* ---- smtp_session_abuse.c ----------------------------------------------- */

/* The client connected: start its DNSBL lookups (unless dnsbl_allow
 * names it or no zone is configured). */
void smtp_abuse_connect(struct smtp_session *sess);
/* MAIL: false when the client is over client_message_rate (the 450 is
 * queued). */
bool smtp_abuse_mail_ok(struct smtp_session *sess);
/* RCPT for tenant T: false when a DNSBL of T lists the client or it is
 * over client_recipient_rate (the 450 is queued), or when the DNSBL
 * answer is not in yet (the command is parked). */
bool smtp_abuse_rcpt_ok(struct smtp_session *sess, const struct config_tenant *t);
/* The session closes: its lookups stop. */
void smtp_abuse_close(struct smtp_session *sess);

/* ---- smtp_session_cmd.c ------------------------------------------------- */

/* Parse and run one command LINE (CRLF removed, NUL-terminated copy).
 * Returns false when the input loop must stop at once: the session is
 * closing or may be gone. */
bool smtp_cmd_dispatch(struct smtp_session *sess, const char *line, size_t len);

/* ---- smtp_session_tx.c -------------------------------------------------- */

/* End the transaction: roll back an open spool transaction, free it. */
void smtp_tx_free(struct smtp_session *sess);
/* Open the spool transaction for the accepted recipients and write our
 * Received: header.  On failure the 451/452 is queued, the transaction is
 * gone and false is returned. */
bool smtp_tx_start(struct smtp_session *sess);
/* A BDAT whose chunk must be read and dropped: REFUSAL (or nothing, if
 * NULL) is the reply once it is.  May destroy SESS (out of memory). */
void smtp_tx_discard_chunk(struct smtp_session *sess, const struct smtp_cmd *cmd,
    const char *refusal);
/* DATA text / BDAT chunk octets from the input buffer.  Return false when
 * the input loop must stop (spool busy, commit, closing). */
bool smtp_tx_process_data(struct smtp_session *sess);
bool smtp_tx_process_bdat(struct smtp_session *sess);
/* One "reject" log line for a refused MAIL, RCPT or message. */
void smtp_tx_log_reject(struct smtp_session *sess, const char *stage,
    const char *reply);

#endif
