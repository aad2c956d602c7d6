/*
 * dsn.c - RFC 3464 delivery status notifications as message bytes.
 *
 * See dsn.h for the contract.  Choices made here, in one place:
 *
 *  - Who gets a report: never the null sender, never a message flagged as a
 *    report itself.  NOTIFY=NEVER: nobody.  NOTIFY not given: FAILURE and
 *    DELAY (Postfix's reading of RFC 3461 4.1).  SUCCESS only if asked.
 *  - What is returned: the whole message (message/rfc822) only in a report
 *    with at least one failed recipient, when RET is not HDRS, the original
 *    is at most DSN_FULL_MAX bytes and is not BINARYMIME (which cannot ride
 *    inside a text message).  Otherwise the header section alone
 *    (text/rfc822-headers).  Delay and success reports always carry headers
 *    only: the message is still on its way and RFC 3461 4.3 asks for the
 *    full content only in failure reports.
 *  - ENVID and ORCPT arrive xtext-encoded (RFC 3461 4); they are decoded for
 *    the report, and any control character left after decoding is replaced,
 *    so that no value from the envelope can start a header line of its own.
 *  - Remote replies: multi-line replies are joined with spaces and folded.
 *  - Dates are written in UTC ("+0000"): the daemon's time zone is nobody's
 *    business and UTC sorts.
 *  - SMTPUTF8 originals (or non-ASCII addresses) get the RFC 6533 types and
 *    report-type=global-delivery-status; out->smtputf8 tells the caller to
 *    send with SMTPUTF8.
 *
 * Memory: plain malloc (a report is built at run time, per message); failure
 * is DSN_ENOMEM and nothing is leaked.  No clock, no I/O, no logging.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mxspool/dsn.h"

/* Remote replies longer than this are cut: enough for any real reply. */
#define DIAG_MAX 2048
/* Fold field values and text before this column. */
#define FOLD_AT 76

/* ---- a growing buffer ---------------------------------------------------- */

struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void
sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		char *np;

		while (cap < b->len + n + 1)
			cap *= 2;
		np = realloc(b->p, cap);
		if (np == NULL) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
sb_adds(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_addf(struct sbuf *b, const char *fmt, ...)
    __attribute__((__format__(printf, 2, 3)));

static void
sb_addf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	/* Every format here is short and bounded; a longer result is a bug in
	 * this file, so mark the build failed rather than truncate silently. */
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		b->oom = true;
		return;
	}
	sb_add(b, tmp, (size_t)n);
}

/* ---- value cleaning ------------------------------------------------------ */

static bool
has_8bit(const char *s)
{
	for (; s != NULL && *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

/*
 * Append S (N bytes) with every control character (CR and LF included)
 * turned into a space, and, unless ALLOW_8BIT, every non-ASCII byte into '?'.
 */
static void
sb_add_clean(struct sbuf *b, const char *s, size_t n, bool allow_8bit)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char o = (char)c;

		if (c < 0x20 || c == 0x7f)
			o = ' ';
		else if (c >= 0x80 && !allow_8bit)
			o = '?';
		sb_add(b, &o, 1);
	}
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Append the xtext-decoded form of S (RFC 3461 4: "+HH" is one byte). */
static void
sb_add_xtext(struct sbuf *b, const char *s, size_t n, bool allow_8bit)
{
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (c == '+' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
		    hexval(s[i + 2]) >= 0) {
			c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		}
		sb_add_clean(b, &c, 1, allow_8bit);
	}
}

/* ---- dates ----------------------------------------------------------- */

/* RFC 5322 date-time in UTC: "Thu, 13 Feb 2025 10:00:00 +0000". */
static void
sb_add_date(struct sbuf *b, int64_t ms)
{
	static const char *const wday[] = { "Sun", "Mon", "Tue", "Wed", "Thu",
	    "Fri", "Sat" };
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May",
	    "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL) {
		t = 0;
		if (gmtime_r(&t, &tm) == NULL) {
			b->oom = true;
			return;
		}
	}
	sb_addf(b, "%s, %d %s %04d %02d:%02d:%02d +0000", wday[tm.tm_wday % 7],
	    tm.tm_mday, mon[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
	    tm.tm_min, tm.tm_sec);
}

/* ---- replies and status codes --------------------------------------------- */

/* Join a (possibly multi-line) reply into one line, bounded by DIAG_MAX. */
static size_t
join_reply(const char *s, char *out, size_t outlen)
{
	size_t n = 0;
	bool space = false;

	for (; s != NULL && *s && n + 1 < outlen; s++) {
		if (*s == '\r' || *s == '\n' || *s == '\t' || *s == ' ') {
			space = n > 0;
			continue;
		}
		if (space && n + 2 < outlen) {
			out[n++] = ' ';
		}
		space = false;
		out[n++] = *s;
	}
	out[n] = '\0';
	return n;
}

/* Is S an enhanced status code "c.sss.ddd" (RFC 3463)?  Returns its length
 * or 0. */
static size_t
enhanced_len(const char *s)
{
	size_t i = 0, d;

	if (s[0] != '2' && s[0] != '4' && s[0] != '5')
		return 0;
	if (s[1] != '.')
		return 0;
	i = 2;
	for (d = 0; s[i] >= '0' && s[i] <= '9' && d < 3; i++, d++)
		;
	if (d == 0 || s[i] != '.')
		return 0;
	i++;
	for (d = 0; s[i] >= '0' && s[i] <= '9' && d < 3; i++, d++)
		;
	if (d == 0)
		return 0;
	if (s[i] != '\0' && s[i] != ' ' && s[i] != '\r' && s[i] != '\n')
		return 0;
	return i;
}

static char
action_class(enum dsn_action a)
{
	switch (a) {
	case DSN_ACTION_FAILED:
		return '5';
	case DSN_ACTION_DELAYED:
		return '4';
	case DSN_ACTION_DELIVERED:
		return '2';
	}
	return '5';
}

/* The Status: value for R into BUF (at least 16 bytes). */
static void
rcpt_status(const struct dsn_rcpt *r, char *buf, size_t len)
{
	const char *d = r->diagnostic;
	size_t n;

	if (r->status != NULL && (n = enhanced_len(r->status)) > 0 &&
	    r->status[n] == '\0' && n < len) {
		memcpy(buf, r->status, n + 1);
		return;
	}
	/* "550 5.1.1 text" or "550-5.1.1 text": take the enhanced code if its
	 * class agrees with what we report. */
	if (d != NULL && !r->diagnostic_local && strlen(d) > 4 &&
	    d[0] >= '2' && d[0] <= '5' && (d[3] == ' ' || d[3] == '-') &&
	    (n = enhanced_len(d + 4)) > 0 && n < len &&
	    d[4] == action_class(r->action)) {
		memcpy(buf, d + 4, n);
		buf[n] = '\0';
		return;
	}
	snprintf(buf, len, "%c.0.0", action_class(r->action));
}

/* ---- folding ----------------------------------------------------------- */

/*
 * Append TEXT (one line, no controls) so that no output line passes FOLD_AT
 * where a space allows a break; COL is the column already used.  Breaks
 * become CRLF + INDENT.  A word longer than 900 bytes is cut, to keep every
 * line under RFC 5322's 998.
 */
static void
sb_add_folded(struct sbuf *b, const char *text, size_t col, const char *indent,
    bool allow_8bit)
{
	const char *p = text;
	size_t ind = strlen(indent);

	while (*p) {
		const char *w = p;
		size_t wl;

		while (*w == ' ')
			w++;
		if (*w == '\0')
			break;
		wl = strcspn(w, " ");
		if (wl > 900)
			wl = 900;
		if (p != text && col + 1 + wl > FOLD_AT && col > ind) {
			sb_adds(b, "\r\n");
			sb_adds(b, indent);
			col = ind;
		} else if (p != text) {
			sb_adds(b, " ");
			col++;
		}
		sb_add_clean(b, w, wl, allow_8bit);
		col += wl;
		p = w + wl;
	}
}

/* ---- the report ----------------------------------------------------------- */

const char *
dsn_strerror(int status)
{
	switch (status) {
	case DSN_OK:
		return "ok";
	case DSN_SKIP_NULL_SENDER:
		return "no report for the null sender or for a report";
	case DSN_SKIP_NOTIFY:
		return "no report wanted (NOTIFY)";
	case DSN_EINVAL:
		return "invalid report";
	case DSN_ENOMEM:
		return "out of memory";
	}
	return "unknown dsn status";
}

bool
dsn_wanted(unsigned notify, enum dsn_action action)
{
	if (notify & ENV_NOTIFY_NEVER)
		return false;
	if (notify == 0)
		return action == DSN_ACTION_FAILED || action == DSN_ACTION_DELAYED;
	switch (action) {
	case DSN_ACTION_FAILED:
		return (notify & ENV_NOTIFY_FAILURE) != 0;
	case DSN_ACTION_DELAYED:
		return (notify & ENV_NOTIFY_DELAY) != 0;
	case DSN_ACTION_DELIVERED:
		return (notify & ENV_NOTIFY_SUCCESS) != 0;
	}
	return false;
}

void
dsn_output_free(struct dsn_output *out)
{
	if (out == NULL)
		return;
	free(out->prefix);
	free(out->suffix);
	memset(out, 0, sizeof(*out));
}

/* Append the header section H (N bytes): CRLF line endings, stopped at the
 * first empty line, cut at a line end within DSN_HEADERS_MAX, ending in
 * CRLF.  NUL bytes become spaces. */
static void
sb_add_headers(struct sbuf *b, const char *h, size_t n)
{
	size_t i = 0, start = b->len, last_line_end = b->len;
	bool at_line_start = true;

	while (i < n) {
		char c = h[i];

		if (c == '\r' || c == '\n') {
			/* CRLF, lone LF and lone CR all end a line. */
			i += (c == '\r' && i + 1 < n && h[i + 1] == '\n') ? 2 : 1;
			if (at_line_start)
				break;        /* the empty line: headers end */
			sb_adds(b, "\r\n");
			at_line_start = true;
			if (b->len - start > DSN_HEADERS_MAX)
				break;
			last_line_end = b->len;
			continue;
		}
		if (c == '\0')
			c = ' ';
		sb_add(b, &c, 1);
		at_line_start = false;
		i++;
	}
	if (!at_line_start)
		sb_adds(b, "\r\n");
	if (b->oom)
		return;
	if (b->len - start > DSN_HEADERS_MAX) {
		b->len = last_line_end;
		b->p[b->len] = '\0';
	}
}

static bool
is_null_sender(const char *s)
{
	return s == NULL || s[0] == '\0' || strcmp(s, "<>") == 0;
}

static const char *
action_name(enum dsn_action a)
{
	switch (a) {
	case DSN_ACTION_FAILED:
		return "failed";
	case DSN_ACTION_DELAYED:
		return "delayed";
	case DSN_ACTION_DELIVERED:
		return "delivered";
	}
	return "failed";
}

/* The human-readable part's body. */
static void
add_text(struct sbuf *b, const struct dsn_report *r, const bool *want,
    enum dsn_action kind, bool include_body, bool global)
{
	char diag[DIAG_MAX];

	sb_adds(b, "This is the mail system at host ");
	sb_add_clean(b, r->hostname, strlen(r->hostname), false);
	sb_adds(b, ".\r\n\r\n");
	switch (kind) {
	case DSN_ACTION_FAILED:
		sb_adds(b, "Your message could not be delivered to one or more\r\n"
		    "of its recipients; the mail system gave up on them.\r\n");
		sb_adds(b, include_body ?
		    "A copy of your message is attached below.\r\n" :
		    "The headers of your message are attached below.\r\n");
		break;
	case DSN_ACTION_DELAYED:
		sb_adds(b, "Your message has not been delivered yet to the\r\n"
		    "recipients below.  It is still queued and delivery will be\r\n"
		    "retried; you do not need to send it again.  If it cannot be\r\n"
		    "delivered in time, you will be told.\r\n");
		break;
	case DSN_ACTION_DELIVERED:
		sb_adds(b, "Your message was delivered to the recipients below,\r\n"
		    "as you asked to be told.\r\n");
		break;
	}
	if (r->queue_id != NULL) {
		sb_adds(b, "\r\nQueue ID: ");
		sb_add_clean(b, r->queue_id, strlen(r->queue_id), false);
		sb_adds(b, "\r\n");
	}
	for (size_t i = 0; i < r->nrcpt; i++) {
		const struct dsn_rcpt *rc = &r->rcpt[i];

		if (!want[i])
			continue;
		sb_adds(b, "\r\n<");
		sb_add_clean(b, rc->addr, strlen(rc->addr), global);
		sb_adds(b, ">: ");
		if (rc->action == DSN_ACTION_DELAYED && rc->retry_until_ms > 0) {
			sb_adds(b, "will be retried until ");
			sb_add_date(b, rc->retry_until_ms);
			sb_adds(b, ".");
		} else {
			sb_adds(b, action_name(rc->action));
			sb_adds(b, ".");
		}
		sb_adds(b, "\r\n");
		if (rc->diagnostic != NULL && join_reply(rc->diagnostic, diag,
		    sizeof(diag)) > 0) {
			if (rc->remote_mta != NULL && !rc->diagnostic_local) {
				sb_adds(b, "    host ");
				sb_add_clean(b, rc->remote_mta,
				    strlen(rc->remote_mta), false);
				sb_adds(b, " said:\r\n");
			}
			sb_adds(b, "    ");
			sb_add_folded(b, diag, 4, "    ", global);
			sb_adds(b, "\r\n");
		}
	}
}

/* The message/delivery-status part's body (RFC 3464 2.2, 2.3). */
static void
add_status(struct sbuf *b, const struct dsn_report *r, const bool *want,
    bool global)
{
	char diag[DIAG_MAX], st[16];

	sb_adds(b, "Reporting-MTA: dns; ");
	sb_add_clean(b, r->hostname, strlen(r->hostname), false);
	sb_adds(b, "\r\n");
	if (r->queue_id != NULL) {
		sb_adds(b, "X-Mxspool-Queue-ID: ");
		sb_add_clean(b, r->queue_id, strlen(r->queue_id), false);
		sb_adds(b, "\r\n");
	}
	if (r->envid != NULL && r->envid[0] != '\0') {
		sb_adds(b, "Original-Envelope-Id: ");
		sb_add_xtext(b, r->envid, strlen(r->envid), global);
		sb_adds(b, "\r\n");
	}
	if (r->arrival_ms > 0) {
		sb_adds(b, "Arrival-Date: ");
		sb_add_date(b, r->arrival_ms);
		sb_adds(b, "\r\n");
	}

	for (size_t i = 0; i < r->nrcpt; i++) {
		const struct dsn_rcpt *rc = &r->rcpt[i];

		if (!want[i])
			continue;
		sb_adds(b, "\r\n");
		if (rc->orcpt != NULL && rc->orcpt[0] != '\0') {
			const char *semi = strchr(rc->orcpt, ';');

			sb_adds(b, "Original-Recipient: ");
			if (semi != NULL) {
				sb_add_clean(b, rc->orcpt,
				    (size_t)(semi - rc->orcpt), false);
				sb_adds(b, ";");
				sb_add_xtext(b, semi + 1, strlen(semi + 1),
				    global);
			} else {
				sb_adds(b, "rfc822;");
				sb_add_xtext(b, rc->orcpt, strlen(rc->orcpt),
				    global);
			}
			sb_adds(b, "\r\n");
		}
		/* RFC 6533 3: a non-ASCII address is of type utf-8. */
		sb_adds(b, global && has_8bit(rc->addr) ?
		    "Final-Recipient: utf-8; " : "Final-Recipient: rfc822; ");
		sb_add_clean(b, rc->addr, strlen(rc->addr), global);
		sb_adds(b, "\r\nAction: ");
		sb_adds(b, action_name(rc->action));
		rcpt_status(rc, st, sizeof(st));
		sb_adds(b, "\r\nStatus: ");
		sb_adds(b, st);
		sb_adds(b, "\r\n");
		if (rc->remote_mta != NULL && rc->remote_mta[0] != '\0') {
			sb_adds(b, "Remote-MTA: dns; ");
			sb_add_clean(b, rc->remote_mta, strlen(rc->remote_mta),
			    false);
			sb_adds(b, "\r\n");
		}
		if (rc->diagnostic != NULL && join_reply(rc->diagnostic, diag,
		    sizeof(diag)) > 0) {
			const char *type = rc->diagnostic_local ?
			    "X-mxspool; " : "smtp; ";

			sb_adds(b, "Diagnostic-Code: ");
			sb_adds(b, type);
			sb_add_folded(b, diag, strlen("Diagnostic-Code: ") +
			    strlen(type), "    ", global);
			sb_adds(b, "\r\n");
		}
		if (rc->last_attempt_ms > 0) {
			sb_adds(b, "Last-Attempt-Date: ");
			sb_add_date(b, rc->last_attempt_ms);
			sb_adds(b, "\r\n");
		}
		if (rc->action == DSN_ACTION_DELAYED && rc->retry_until_ms > 0) {
			sb_adds(b, "Will-Retry-Until: ");
			sb_add_date(b, rc->retry_until_ms);
			sb_adds(b, "\r\n");
		}
	}
}

static bool
prefix_has_8bit(const struct sbuf *b)
{
	for (size_t i = 0; i < b->len; i++)
		if ((unsigned char)b->p[i] >= 0x80)
			return true;
	return false;
}

/* The queue id's letters and digits (at most 16): a safe token for the
 * boundary and the Message-ID.  Returns its length. */
static size_t
dsn_qid_token(const char *queue_id, char qid[24])
{
	size_t qn = 0;

	for (const char *q = queue_id; q != NULL && *q && qn < 16; q++)
		if ((*q >= '0' && *q <= '9') || (*q >= 'A' && *q <= 'Z') ||
		    (*q >= 'a' && *q <= 'z'))
			qid[qn++] = *q;
	qid[qn] = '\0';
	return qn;
}

/* The report's own header, up to the place of its Content-Transfer-Encoding. */
static void
dsn_add_header(struct sbuf *b, const struct dsn_report *r, enum dsn_action kind,
    const char *qid, bool global, const char *boundary)
{
	sb_adds(b, "Date: ");
	sb_add_date(b, r->now_ms);
	sb_adds(b, "\r\nFrom: \"Mail Delivery System\" <MAILER-DAEMON@");
	sb_add_clean(b, r->hostname, strlen(r->hostname), false);
	sb_adds(b, ">\r\nTo: <");
	sb_add_clean(b, r->sender, strlen(r->sender), global);
	sb_adds(b, ">\r\nSubject: ");
	sb_adds(b, kind == DSN_ACTION_FAILED ?
	    "Undelivered Mail Returned to Sender" :
	    kind == DSN_ACTION_DELAYED ? "Delayed Mail (still being retried)" :
	    "Successful Mail Delivery Report");
	sb_addf(b, "\r\nMessage-ID: <%s%s%016llx.dsn@", qid, qid[0] ? "." : "",
	    (unsigned long long)r->nonce);
	sb_add_clean(b, r->hostname, strlen(r->hostname), false);
	sb_adds(b, ">\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
	sb_addf(b, "Content-Type: multipart/report; report-type=%s;\r\n"
	    "\tboundary=\"%s\"\r\n", global ? "global-delivery-status" :
	    "delivery-status", boundary);
}

/* Part 3: the original, or its headers.  Returns whether the whole
 * original follows (the caller streams its body after the prefix). */
static bool
dsn_add_original(struct sbuf *b, const struct dsn_report *r,
    bool include_body, bool global, const char *boundary)
{
	bool body8 = include_body && r->body == ENV_BODY_8BITMIME;
	const char *type;
	bool h8 = false;

	if (r->headers == NULL || r->headers_len == 0)
		return false;
	type = include_body ? (global ? "message/global" : "message/rfc822") :
	    (global ? "message/global-headers" : "text/rfc822-headers");
	/* 8-bit header bytes (seen in the wild despite RFC 5322) or an
	 * 8BITMIME body need an 8bit part; looking at the whole buffer may
	 * over-declare, which is harmless. */
	for (size_t i = 0; i < r->headers_len && !h8; i++)
		h8 = (unsigned char)r->headers[i] >= 0x80;
	sb_addf(b, "\r\n--%s\r\nContent-Description: %s\r\n"
	    "Content-Type: %s\r\n%s\r\n", boundary, include_body ?
	    "Undelivered Message" : "Message Headers", type,
	    h8 || body8 || global ? "Content-Transfer-Encoding: 8bit\r\n" : "");
	sb_add_headers(b, r->headers, r->headers_len);
	if (include_body)
		sb_adds(b, "\r\n");  /* ends the original's header */
	return include_body;
}

/* Insert the top-level 8bit CTE at CTE_AT, its place in the header, once
 * the content is known.  Returns whether it was inserted. */
static bool
dsn_insert_cte(struct sbuf *b, size_t cte_at)
{
	static const char cte[] = "Content-Transfer-Encoding: 8bit\r\n";
	size_t tail = b->len - cte_at;

	sb_add(b, cte, sizeof(cte) - 1);  /* grow */
	if (b->oom)
		return false;
	memmove(b->p + cte_at + sizeof(cte) - 1, b->p + cte_at, tail);
	memcpy(b->p + cte_at, cte, sizeof(cte) - 1);
	b->p[b->len] = '\0';
	return true;
}

/* Which recipients get a line, and what kind of report this is.  Returns
 * how many recipients are wanted. */
static size_t
dsn_select(const struct dsn_report *r, bool *want, enum dsn_action *kind,
    bool *global)
{
	bool any_failed = false, any_delayed = false;
	size_t nwant = 0;

	*global = r->smtputf8 || has_8bit(r->sender);
	for (size_t i = 0; i < r->nrcpt; i++) {
		want[i] = dsn_wanted(r->rcpt[i].notify, r->rcpt[i].action);
		if (!want[i])
			continue;
		nwant++;
		if (r->rcpt[i].action == DSN_ACTION_FAILED)
			any_failed = true;
		if (r->rcpt[i].action == DSN_ACTION_DELAYED)
			any_delayed = true;
		if (has_8bit(r->rcpt[i].addr))
			*global = true;
	}
	*kind = any_failed ? DSN_ACTION_FAILED :
	    any_delayed ? DSN_ACTION_DELAYED : DSN_ACTION_DELIVERED;
	return nwant;
}

int
dsn_build(const struct dsn_report *r, struct dsn_output *out)
{
	struct sbuf b = { 0 }, s = { 0 };
	bool *want = NULL;
	bool global, include_body;
	enum dsn_action kind;
	char boundary[80], qid[24];
	size_t nwant, cte_at;
	int status;

	memset(out, 0, sizeof(*out));
	if (r == NULL || r->hostname == NULL || r->hostname[0] == '\0' ||
	    r->rcpt == NULL || r->nrcpt == 0)
		return DSN_EINVAL;
	if (is_null_sender(r->sender) || r->is_bounce)
		return DSN_SKIP_NULL_SENDER;
	for (size_t i = 0; i < r->nrcpt; i++)
		if (r->rcpt[i].addr == NULL)
			return DSN_EINVAL;

	want = calloc(r->nrcpt, sizeof(*want));
	if (want == NULL)
		return DSN_ENOMEM;
	nwant = dsn_select(r, want, &kind, &global);
	if (nwant == 0) {
		status = DSN_SKIP_NOTIFY;
		goto done;
	}
	include_body = kind == DSN_ACTION_FAILED && r->ret != ENV_RET_HDRS &&
	    r->message_size <= DSN_FULL_MAX && r->body != ENV_BODY_BINARYMIME &&
	    r->headers != NULL && r->headers_len > 0;

	/* The boundary carries the caller's random nonce: the returned body is
	 * the sender's own text, and must not be able to close our parts. */
	(void)dsn_qid_token(r->queue_id, qid);
	snprintf(boundary, sizeof(boundary), "=_mxspool_%016llx_%s",
	    (unsigned long long)r->nonce, qid);

	dsn_add_header(&b, r, kind, qid, global, boundary);
	cte_at = b.len;
	sb_adds(&b, "\r\nThis is a MIME-encapsulated message.\r\n");
	/* Part 1: for people. */
	sb_addf(&b, "\r\n--%s\r\nContent-Description: Notification\r\n"
	    "Content-Type: text/plain; charset=%s\r\n\r\n", boundary,
	    global ? "utf-8" : "us-ascii");
	add_text(&b, r, want, kind, include_body, global);
	/* Part 2: for programs. */
	sb_addf(&b, "\r\n--%s\r\nContent-Description: Delivery report\r\n"
	    "Content-Type: message/%s\r\n\r\n", boundary,
	    global ? "global-delivery-status" : "delivery-status");
	add_status(&b, r, want, global);
	include_body = dsn_add_original(&b, r, include_body, global, boundary);
	sb_addf(&s, "\r\n--%s--\r\n", boundary);
	if (!b.oom && (prefix_has_8bit(&b) || global ||
	    (include_body && r->body == ENV_BODY_8BITMIME)))
		out->eightbit = dsn_insert_cte(&b, cte_at);
	if (b.oom || s.oom) {
		status = DSN_ENOMEM;
		goto done;
	}
	out->prefix = b.p;
	out->prefix_len = b.len;
	out->suffix = s.p;
	out->suffix_len = s.len;
	out->include_body = include_body;
	out->smtputf8 = global;
	out->nrcpt = nwant;
	b.p = NULL;
	s.p = NULL;
	status = DSN_OK;
done:
	free(b.p);
	free(s.p);
	free(want);
	return status;
}
