/*
 * dsn.h - RFC 3464 delivery status notifications (bounces and delay
 * warnings), composed as message bytes.
 *
 * dsn_build() turns a description of what happened to some recipients of
 * one queued message into a complete MIME message (CRLF line endings) to be
 * sent to the original sender with a null reverse-path:
 *
 *   multipart/report; report-type=delivery-status
 *     1. text/plain: what happened, per recipient, with the remote reply
 *     2. message/delivery-status: RFC 3464 per-message and per-recipient
 *        fields
 *     3. the original: text/rfc822-headers (headers only) or
 *        message/rfc822 (the whole message)
 *
 * For SMTPUTF8 messages the RFC 6533 types are used instead
 * (message/global-delivery-status, message/global-headers, message/global,
 * report-type=global-delivery-status).
 *
 * The original message is never needed in memory: the caller passes its
 * header section (bounded by DSN_HEADERS_MAX) and sends out->prefix, then,
 * only when out->include_body is set, the original body (everything after
 * the empty line ending the header section, CRLF line endings, as spooled),
 * then always out->suffix (the closing MIME delimiter).
 *
 * This module is pure: no clock (times are parameters), no I/O, no logging.
 */
#ifndef MXSPOOL_DSN_H
#define MXSPOOL_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/envelope.h"

/* NOTIFY 0 (not given) is treated as FAILURE,DELAY, as Postfix does. */

enum dsn_action {
	DSN_ACTION_FAILED,            /* bounce */
	DSN_ACTION_DELAYED,           /* delay warning */
	DSN_ACTION_DELIVERED,         /* NOTIFY=SUCCESS */
};

/*
 * Past this size the original is returned as headers only, whatever RET
 * says: a bounce should not carry a 50 MB attachment back across the net
 * (Postfix's bounce_size_limit is 50000 for the same reason).
 */
#define DSN_FULL_MAX (64 * 1024)
/* Header sections longer than this are cut at the last line that fits. */
#define DSN_HEADERS_MAX (64 * 1024)

enum dsn_status {
	DSN_OK = 0,
	/* Not errors: there is nothing to send, and out is left empty. */
	DSN_SKIP_NULL_SENDER = 1,     /* sender is <> or the message is a bounce */
	DSN_SKIP_NOTIFY = 2,          /* NOTIFY rules leave no recipient */
	/* Errors. */
	DSN_EINVAL = -1,              /* missing hostname, no recipients, ... */
	DSN_ENOMEM = -2,
};
const char *dsn_strerror(int status);

struct dsn_rcpt {
	const char *addr;             /* final recipient, without <> */
	const char *orcpt;            /* ORCPT as received ("rfc822;a+2Bb@c"),
	                               * or NULL */
	unsigned notify;              /* ENV_NOTIFY_* bits, 0 = not given */
	enum dsn_action action;
	const char *status;           /* "5.1.1"; NULL: taken from the reply's
	                               * enhanced code, else 5.0.0 / 4.0.0 /
	                               * 2.0.0 by action */
	const char *remote_mta;       /* host that answered, or NULL */
	const char *diagnostic;       /* the remote reply ("550 5.1.1 no such
	                               * user"; multi-line replies may keep their
	                               * CRLFs), or our own reason, or NULL */
	bool diagnostic_local;        /* DIAGNOSTIC is our text, not an SMTP
	                               * reply: typed "X-mxspool" not "smtp" */
	int64_t last_attempt_ms;      /* wall clock; 0 = no attempt made */
	int64_t retry_until_ms;       /* wall clock; for DELAYED (the arrival
	                               * plus queue_lifetime); 0 = omit */
};

struct dsn_report {
	const char *hostname;         /* our name: Reporting-MTA, From: */
	const char *sender;           /* envelope sender, "" = null sender */
	bool is_bounce;               /* original is itself a report: never
	                               * answer it (belt and braces beside the
	                               * null-sender rule) */
	const char *queue_id;         /* for the text, Message-ID and
	                               * X-Mxspool-Queue-ID; may be NULL */
	const char *envid;            /* ENVID as received (xtext), or NULL */
	enum env_ret ret;
	enum env_body body;
	bool smtputf8;
	int64_t arrival_ms;           /* wall clock */
	int64_t now_ms;               /* wall clock: Date: */
	uint64_t nonce;               /* random, for the boundary and Message-ID:
	                               * the returned body is the sender's text
	                               * and must not be able to guess it */
	const char *headers;          /* the original's header section (up to,
	                               * with or without, the empty line) */
	size_t headers_len;
	uint64_t message_size;        /* whole original, bytes */
	const struct dsn_rcpt *rcpt;
	size_t nrcpt;
};

struct dsn_output {
	char *prefix;                 /* NUL-terminated, CRLF lines */
	size_t prefix_len;
	char *suffix;
	size_t suffix_len;
	bool include_body;            /* stream the original body in between */
	bool smtputf8;                /* send with MAIL FROM:<> SMTPUTF8 */
	bool eightbit;                /* send with BODY=8BITMIME */
	size_t nrcpt;                 /* recipients actually reported */
};

/*
 * Should a report with ACTION be sent for a recipient with NOTIFY bits?
 * NEVER: no; 0 (not given): FAILURE and DELAY; otherwise the matching bit.
 */
bool dsn_wanted(unsigned notify, enum dsn_action action);

/*
 * Compose the report.  Recipients whose NOTIFY does not want their action
 * are left out; the subject follows the most serious action reported
 * (failed > delayed > delivered).  Returns DSN_OK with OUT filled (release
 * with dsn_output_free()), a DSN_SKIP_* status with OUT zeroed, or a negative
 * dsn_status with OUT zeroed.  R and everything it points to are only read
 * during the call.
 */
int dsn_build(const struct dsn_report *r, struct dsn_output *out);
void dsn_output_free(struct dsn_output *out);

#endif
