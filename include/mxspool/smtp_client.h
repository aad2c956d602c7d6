/*
 * smtp_client.h - one outbound SMTP session on libuv (probe or delivery).
 *
 * A session connects to one address, reads the 220 greeting, says EHLO
 * (HELO when EHLO is refused with 5xx), does STARTTLS as the tls_mode asks,
 * says EHLO again over TLS, and is then READY.  In probe mode it says QUIT
 * at once; in delivery mode the owner hands it messages one after another
 * (smtp_client_send), each answered through the SENT callback with one
 * outcome per recipient, and finally asks for QUIT (smtp_client_quit).
 *
 * Every step runs under a timer (connect_timeout_ms for the TCP connect,
 * timeout_ms for each reply and for each body write).  Every byte from the
 * server is treated as hostile: lines are framed by smtp_proto with a bounded
 * buffer, replies are accumulated with smtp_proto_reply_push (bounded lines,
 * text and line count), and a reply nobody asked for ends the session.
 *
 * The message body never sits in memory whole: it is pulled in chunks from
 * the message's READ function, normalised to CRLF line endings,
 * dot-stuffed, written, and the next chunk is asked for only when the write
 * completed.
 *
 * Ownership and lifetime: the session belongs to the caller until the
 * CLOSED callback, which is always the last callback and runs exactly once
 * (also after smtp_client_abort()); the session's memory is released right
 * after CLOSED returns.  A struct smtp_client_msg and everything it points
 * to must stay valid until its SENT callback.  Nothing here logs: results
 * carry codes, enhanced codes, texts and latencies for the caller to log.
 */
#ifndef MXSPOOL_SMTP_CLIENT_H
#define MXSPOOL_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "mxspool/smtp_proto.h"

struct smtp_client;
struct tls_ctx;

enum smtp_client_status {
	SMTP_CLIENT_OK = 0,
	SMTP_CLIENT_ECONNECT = -3001,  /* TCP connect failed (refused, ...) */
	SMTP_CLIENT_ETIMEOUT = -3002,  /* no connect / reply / write in time */
	SMTP_CLIENT_EIO = -3003,       /* read or write error, or the server
	                                * closed the connection unasked */
	SMTP_CLIENT_E421 = -3004,      /* the server answered 421: closing */
	SMTP_CLIENT_EREPLY = -3005,    /* greeting or EHLO/HELO refused */
	SMTP_CLIENT_EPROTO = -3006,    /* malformed, over-long or unsolicited
	                                * server output */
	SMTP_CLIENT_ETLS = -3007,      /* STARTTLS refused or handshake failed */
	SMTP_CLIENT_ENOTLS = -3008,    /* TLS required, STARTTLS not offered */
	SMTP_CLIENT_ENOMEM = -3009,
	SMTP_CLIENT_EINVAL = -3010,
	SMTP_CLIENT_EABORT = -3011,    /* smtp_client_abort() */
	SMTP_CLIENT_ESOURCE = -3012,   /* the message's READ function failed */
};
const char *smtp_client_strerror(int status);

/* How STARTTLS is used (the [tls] outbound setting). */
enum smtp_client_tls {
	SMTP_CLIENT_TLS_NONE,          /* never */
	SMTP_CLIENT_TLS_OPPORTUNISTIC, /* when offered; a failed handshake
	                                * fails the session (ETLS) */
	SMTP_CLIENT_TLS_REQUIRED,      /* not offered: ENOTLS */
	SMTP_CLIENT_TLS_VERIFY,        /* as REQUIRED; the ctx verifies */
};

struct smtp_client_options {
	uv_loop_t *loop;
	const struct sockaddr *addr;   /* sockaddr_in or sockaddr_in6, port set */
	const char *host;              /* peer's name: SNI and VERIFY name; may
	                                * be an address literal; copied */
	const char *helo_name;         /* our name for EHLO/HELO; copied */
	enum smtp_client_tls tls_mode;
	struct tls_ctx *tls_ctx;       /* client ctx (NULL: TLS impossible) */
	uint64_t connect_timeout_ms;   /* 0: same as timeout_ms */
	uint64_t timeout_ms;           /* per reply / write; 0: 5 minutes */
	bool probe;                    /* QUIT as soon as READY */
};

/* Where a body comes from: same shape as spool_msg_read().  Deliver up to
 * MAX bytes from OFFSET through CB (exactly once, sync or async), len 0 at
 * the end; return 0, or a negative value and then CB is not called. */
typedef void (*smtp_client_chunk_cb)(void *cb_arg, int status,
    const void *buf, size_t len);
typedef int (*smtp_client_read_fn)(void *read_arg, uint64_t offset,
    size_t max, smtp_client_chunk_cb cb, void *cb_arg);

struct smtp_client_rcpt {
	const char *addr;              /* forward path without <> */
	const char *orcpt;             /* ORCPT "type;xtext" as received, NULL */
	unsigned notify;               /* ENV_NOTIFY_* bits, 0 = not given */
};

struct smtp_client_msg {
	const char *sender;            /* "" = null reverse path */
	const struct smtp_client_rcpt *rcpt;
	size_t nrcpt;                  /* >= 1 */
	uint64_t size;                 /* for SIZE=; 0 = unknown */
	enum env_body body;           /* 8BITMIME / BINARYMIME: BODY=8BITMIME
	                                * when offered (BINARYMIME is sent as
	                                * 8BITMIME over DATA after CRLF
	                                * normalisation) */
	bool smtputf8;                 /* needs SMTPUTF8 */
	enum env_ret ret;             /* DSN RET, ENV_RET_NONE = not given */
	const char *envid;             /* DSN ENVID xtext, or NULL */
	smtp_client_read_fn read;      /* may be NULL with verify_only */
	void *read_arg;
	/* Recipient verification (verify.c): stop after the RCPT replies,
	 * never send DATA; SENT reports each RCPT reply and the next
	 * transaction on the session starts with RSET. */
	bool verify_only;
};

enum smtp_client_outcome {
	SMTP_CLIENT_DELIVERED,         /* 2xx at end of data */
	SMTP_CLIENT_TEMPFAIL,          /* 4xx, or the session failed */
	SMTP_CLIENT_PERMFAIL,          /* 5xx */
};

struct smtp_client_reply {
	enum smtp_client_outcome outcome;
	int code;                      /* 0: no reply (session failure) */
	char enh[SMTP_PROTO_ENH_MAX];  /* "2.0.0" or "" */
	char text[SMTP_PROTO_REPLY_TEXT_MAX];  /* lines joined by '\n', or our
	                                        * own reason when code == 0 */
	bool local;                    /* TEXT is our reason, not a reply */
};

struct smtp_client_result {
	const struct smtp_client_msg *msg;
	/* Outcome per recipient, same order as msg->rcpt. */
	const struct smtp_client_reply *rcpt;
	/* The reply that decided the message: the end-of-data reply, or the
	 * MAIL / DATA / failure reply when it never got that far. */
	const struct smtp_client_reply *reply;
	int status;                    /* 0, or why the session broke down
	                                * during this message */
	/* Reply latencies in ms (-1: command not sent). */
	int64_t mail_latency_ms;
	int64_t rcpt_latency_ms;       /* the slowest RCPT reply */
	int64_t data_latency_ms;       /* the DATA (354) reply */
	int64_t dot_latency_ms;        /* end of data to its reply: AIMD's signal */
	bool pipelined;
};

/* How the session ended. */
struct smtp_client_end {
	int status;                    /* 0: QUIT said (or probe succeeded) */
	int code;                      /* last reply code, 0 if none */
	char text[SMTP_PROTO_REPLY_TEXT_MAX];  /* last reply or our reason */
	bool ready;                    /* READY was reached */
	bool tls;                      /* TLS was in use */
	char tls_info[128];            /* tls_conn_info_string, or "" */
	unsigned ext;                  /* SMTP_EXT_* of the last EHLO */
	uint64_t size_max;             /* its SIZE value; 0 = none announced */
	uint32_t rcpt_max, mail_max;   /* its RFC 9422 LIMITS; 0 = none */
	int64_t connect_latency_ms;    /* -1 if not connected */
	int64_t banner_latency_ms;
	int64_t ehlo_latency_ms;
	unsigned messages;             /* messages handed to SENT */
};

struct smtp_client_callbacks {
	/* Delivery mode: the session may take a message (send or quit now,
	 * or later).  Not called in probe mode. */
	void (*ready)(void *arg, struct smtp_client *c);
	/* A message finished; the session is READY again (or failing: then
	 * CLOSED follows).  May call send, quit or abort. */
	void (*sent)(void *arg, struct smtp_client *c,
	    const struct smtp_client_result *res);
	/* Always last, exactly once.  The session is freed after it returns. */
	void (*closed)(void *arg, const struct smtp_client_end *end);
};

/*
 * Start a session.  Copies what OPTS points to (not the tls_ctx, which must
 * outlive the session).  Returns 0 and *out, or SMTP_CLIENT_EINVAL /
 * SMTP_CLIENT_ENOMEM / a libuv error (negative errno) - then no callback
 * ever runs.  Callbacks never run from inside smtp_client_new().
 */
int smtp_client_new(const struct smtp_client_options *opts,
    const struct smtp_client_callbacks *cbs, void *arg,
    struct smtp_client **out);

/*
 * Hand a message to a READY delivery session (RSET is sent first when an
 * earlier transaction was left open).  Returns 0 (SENT follows), or
 * SMTP_CLIENT_EINVAL when the session is not READY or MSG has no recipient.
 * A message that needs SMTPUTF8 to a server without it fails every
 * recipient permanently with 5.6.7 (RFC 6531), and one declared
 * BODY=8BITMIME or BINARYMIME to a server without 8BITMIME with 5.6.3
 * (RFC 6152 3), without sending anything.
 */
int smtp_client_send(struct smtp_client *c, const struct smtp_client_msg *msg);
/* READY session: say QUIT and close (CLOSED with status 0). */
void smtp_client_quit(struct smtp_client *c);
/* Any time: drop the connection now.  A message in flight gets SENT with
 * TEMPFAIL and status SMTP_CLIENT_EABORT, then CLOSED runs, later (never
 * from inside this call). */
void smtp_client_abort(struct smtp_client *c);
bool smtp_client_is_ready(const struct smtp_client *c);
/* The server's SMTP_EXT_* bits from its last EHLO (after STARTTLS: the
 * EHLO over TLS, which no longer offers STARTTLS). */
unsigned smtp_client_ext(const struct smtp_client *c);
/* The SIZE value of that EHLO; 0 = no SIZE, or SIZE without a limit. */
uint64_t smtp_client_size_max(const struct smtp_client *c);
/* The server's RFC 9422 RCPTMAX and MAILMAX from its last EHLO; 0 = none. */
void smtp_client_limits(const struct smtp_client *c, uint32_t *rcpt_max,
    uint32_t *mail_max);
/* The session got its 220 greeting and has not failed or closed since. */
bool smtp_client_greeted(const struct smtp_client *c);
/* TLS is in use on the session (STARTTLS succeeded). */
bool smtp_client_tls_active(const struct smtp_client *c);

/* Apply the dot-stuffing and CRLF normalisation of the body to IN (a chunk
 * of a stream; STATE starts at 0 and carries over between chunks) into OUT,
 * which must hold 2 * INLEN + 2 bytes.  With FINAL, the stream ended: the
 * terminating [CRLF] "." CRLF is appended (OUT then needs 5 more bytes).
 * Returns the bytes written.  Exported for unit tests. */
size_t smtp_client_stuff(unsigned *state, const char *in, size_t inlen,
    char *out, bool final);

#endif
