/*
 * smtp_proto.h - pure SMTP parsing: command lines, paths, ESMTP parameters,
 * the DATA-phase decoder, xtext, and replies (formatting ours, parsing and
 * accumulating the remote server's).
 *
 * Nothing here does I/O, touches libuv, logs or allocates: every function
 * works on buffers the caller hands in and either returns pointers into the
 * input or copies into fixed-size fields of the caller's structs.  The small
 * state structs (line reader, DATA decoder, reply accumulator) are declared
 * here so that callers can embed them without an allocation; their fields
 * are private to smtp_proto.c unless documented otherwise.
 *
 * Results are an int: SMTP_PROTO_OK (0), SMTP_PROTO_AGAIN (1: a push parser
 * needs more input) or a negative enum smtp_proto_status.  Every error that
 * a client can cause has one canned reply, smtp_proto_status_reply(), worded
 * like Postfix's, so the server answers the same thing for the same fault.
 *
 * Relay control: paths are classified here (source routes, percent hack,
 * bang paths, quoted local parts hiding '@', '%' or '!', address literals)
 * so that the policy layer only ever compares a clean, lower-cased domain
 * against its tenants' domains.
 */
#ifndef MXSPOOL_SMTP_PROTO_H
#define MXSPOOL_SMTP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/envelope.h"

/* Limits, in octets (RFC 5321 4.5.3.1, RFC 3461 4.2 and 4.4). */
#define SMTP_PROTO_LINE_MAX        512   /* command line, CRLF included */
#define SMTP_PROTO_TEXT_LINE_MAX   1000  /* default DATA text line, CRLF incl. */
#define SMTP_PROTO_REPLY_LINE_MAX  512   /* reply line, CRLF included */
#define SMTP_PROTO_LOCAL_MAX       64
#define SMTP_PROTO_DOMAIN_MAX      255
#define SMTP_PROTO_ADDR_MAX        254   /* local "@" domain */
#define SMTP_PROTO_ENVID_MAX       100   /* ENVID xtext as received */
#define SMTP_PROTO_ORCPT_MAX       500   /* ORCPT "type;xtext" as received */
#define SMTP_PROTO_REPLY_TEXT_MAX  1024  /* accumulated reply text kept */
#define SMTP_PROTO_REPLY_LINES_MAX 128   /* more lines: the reply is refused */
#define SMTP_PROTO_ENH_MAX         16    /* "5.7.1" plus room, NUL included */

enum smtp_proto_status {
	SMTP_PROTO_OK = 0,
	SMTP_PROTO_AGAIN = 1,          /* push parser: feed more input */

	/* Command syntax.  The comment is smtp_proto_status_reply()'s text. */
	SMTP_PROTO_EUNKNOWN = -1,      /* 500 5.5.2 Error: command not recognized */
	SMTP_PROTO_ESYNTAX = -2,       /* 501 5.5.4 Syntax error in parameters or arguments */
	SMTP_PROTO_ESENDER = -3,       /* 501 5.1.7 Bad sender address syntax */
	SMTP_PROTO_ERCPT = -4,         /* 501 5.1.3 Bad recipient address syntax */
	SMTP_PROTO_ERELAY = -5,        /* 550 5.7.1 Relay access denied */
	SMTP_PROTO_EUTF8 = -6,         /* 553 5.6.7 Must declare SMTPUTF8 to send unicode address */
	SMTP_PROTO_EPARAM = -7,        /* 555 5.5.4 Unsupported option */
	SMTP_PROTO_EPARAMDUP = -8,     /* 501 5.5.4 Duplicate parameter */
	SMTP_PROTO_EPARAMVAL = -9,     /* 501 5.5.4 Bad parameter value */
	SMTP_PROTO_ETOOBIG = -10,      /* 552 5.3.4 Message size exceeds fixed limit */

	/* Command line framing (smtp_proto_next_line). */
	SMTP_PROTO_ETOOLONG = -11,     /* 500 5.5.2 Error: line too long */
	SMTP_PROTO_EBARELF = -12,      /* 500 5.5.2 Error: bare <LF> received */
	SMTP_PROTO_EBARECR = -13,      /* 500 5.5.2 Error: bare <CR> received */
	SMTP_PROTO_ENUL = -14,         /* 500 5.5.2 Error: NUL character received */

	/* DATA phase (smtp_proto_data_push), answered at end of data. */
	SMTP_PROTO_EDATA_BARELF = -15, /* 550 5.5.2 Error: bare <LF> received in message data */
	SMTP_PROTO_EDATA_BARECR = -16, /* 550 5.5.2 Error: bare <CR> received in message data */
	SMTP_PROTO_EDATA_LINE = -17,   /* 554 5.6.0 Error: message text line too long */
	SMTP_PROTO_EDATA_NUL = -21,    /* 554 5.6.0 Error: NUL character in message data */

	/* Caller or peer faults that are not a client's command. */
	SMTP_PROTO_EREPLY = -18,       /* remote server's reply is malformed */
	SMTP_PROTO_ENOSPC = -19,       /* caller's output buffer too small */
	SMTP_PROTO_EINVAL = -20,       /* bad argument from the caller */
};

/*
 * The reply line (no CRLF) for a client-caused status, e.g.
 * "501 5.1.3 Bad recipient address syntax".  For SMTP_PROTO_OK/AGAIN and the
 * non-client statuses it returns "451 4.3.0 Error: internal error", so it
 * never returns NULL.  The string is static.
 */
const char *smtp_proto_status_reply(int status);
/* A short constant name for logs: "ok", "again", "syntax", "relay", ... */
const char *smtp_proto_status_name(int status);

/* ---- command lines ------------------------------------------------------ */

enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_HELP,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_ETRN,
	SMTP_VERB_AUTH,
};
/* Upper-case verb name ("MAIL"), "UNKNOWN" for SMTP_VERB_UNKNOWN. */
const char *smtp_proto_verb_name(enum smtp_verb verb);

/*
 * One parsed command line.  The pointers point into the line given to
 * smtp_proto_parse_command() and are valid as long as that buffer is; they
 * are not NUL-terminated.
 */
struct smtp_cmd {
	enum smtp_verb verb;
	const char *arg;              /* after the verb and its spaces,   */
	size_t arg_len;               /* trailing spaces cut; "" if none  */
	/* MAIL and RCPT: the path with its angle brackets, and the ESMTP
	 * parameter text after it (leading spaces skipped, may be empty). */
	const char *path;
	size_t path_len;
	const char *params;
	size_t params_len;
	/* BDAT */
	uint64_t bdat_size;
	bool bdat_last;
	/* ETRN: 0 (plain domain), '@' (domain and subdomains) or '#' (queue
	 * name); etrn_node is the domain lower-cased, or the queue name. */
	char etrn_kind;
	char etrn_node[SMTP_PROTO_DOMAIN_MAX + 1];
};

/*
 * Parse one command LINE of LEN octets, CRLF already removed (as returned by
 * smtp_proto_next_line()).  Verbs are case-insensitive; leading and trailing
 * spaces are tolerated.  Per verb:
 *   HELO/EHLO  a non-empty first token (arg); see smtp_proto_valid_helo()
 *   MAIL       "FROM:" [spaces] "<...>" [SP params]   (path, params)
 *   RCPT       "TO:" [spaces] "<...>" [SP params]     (path, params)
 *   BDAT       size [SP "LAST"]   size decimal, overflow-checked
 *   ETRN       ["@" / "#"] node   (etrn_kind, etrn_node)
 *   VRFY/EXPN/AUTH  a non-empty argument
 *   DATA/RSET/QUIT/STARTTLS  no argument;  NOOP/HELP  any argument
 * OUT is always filled as far as parsed (OUT->verb is set even on syntax
 * errors).  Returns SMTP_PROTO_OK, SMTP_PROTO_EUNKNOWN, SMTP_PROTO_ESYNTAX
 * (includes MAIL without "FROM:" or with nothing after it),
 * SMTP_PROTO_ESENDER / SMTP_PROTO_ERCPT (the MAIL / RCPT path is not
 * "<...>" followed by the end or a space), SMTP_PROTO_ETOOLONG (LEN >
 * SMTP_PROTO_LINE_MAX - 2), SMTP_PROTO_ETOOBIG (BDAT size does not fit in
 * 64 bits), SMTP_PROTO_EINVAL (NULL args).
 * MAIL/RCPT paths and parameters are checked by smtp_proto_parse_mail() and
 * smtp_proto_parse_rcpt(), not here.
 */
int smtp_proto_parse_command(const char *line, size_t len, struct smtp_cmd *out);

/* ---- command line framing ----------------------------------------------- */

/*
 * Splits the session's input into CRLF-terminated lines.  Only CR LF ends a
 * line: a bare LF, a CR not followed by LF, and NUL are errors, so a peer
 * cannot make us see a line boundary that a downstream MTA would not (SMTP
 * smuggling).  An error is reported once, as soon as the offending octet is
 * seen; the rest of that line, up to the next CR LF, is then discarded
 * silently so the tail of a bad or over-long line is never run as a command.
 */
struct smtp_line_reader {
	size_t max;                   /* longest line, CRLF included (private) */
	bool skipping;                /* discarding to the next CRLF (private) */
};
/* MAX: longest line accepted, CRLF included; 0 means SMTP_PROTO_LINE_MAX. */
void smtp_proto_lines_init(struct smtp_line_reader *lr, size_t max);

/*
 * Look for the next line in BUF[0..LEN).  Always sets *CONSUMED: the octets
 * the caller must drop from the front of its buffer before the next call
 * (the bytes not consumed must be kept and presented again with more input;
 * the caller's buffer must be able to hold LR->max octets).
 *   SMTP_PROTO_OK       a line at *LINE, *LINE_LEN octets without the CRLF;
 *                       *LINE points into BUF (after any discarded octets)
 *                       and *CONSUMED covers it and its CRLF.
 *   SMTP_PROTO_AGAIN    no complete line yet: read more.
 *   SMTP_PROTO_ETOOLONG no CRLF within LR->max octets.
 *   SMTP_PROTO_EBARELF / SMTP_PROTO_EBARECR / SMTP_PROTO_ENUL
 *                       the octet was seen; answer
 *                       smtp_proto_status_reply(status).  We recommend that
 *                       the server then ends the session (reply, then close):
 *                       a peer that sends these is broken or probing.
 * After an error the reader discards the rest of that line by itself; keep
 * calling it if the session goes on.
 */
int smtp_proto_next_line(struct smtp_line_reader *lr, const char *buf,
    size_t len, const char **line, size_t *line_len, size_t *consumed);

/* ---- paths --------------------------------------------------------------- */

enum smtp_path_kind {
	SMTP_PATH_REVERSE,            /* MAIL FROM: "<>" allowed */
	SMTP_PATH_FORWARD,            /* RCPT TO: "<postmaster>" allowed */
};

struct smtp_path {
	/* "local@domain" with the domain lower-cased; "" for "<>",
	 * "postmaster" for "<postmaster>". */
	char addr[SMTP_PROTO_ADDR_MAX + 1];
	/* The local part as received, except that a quoted local part whose
	 * content is a plain dot-string loses its quotes ("a.b" -> a.b). */
	char local[SMTP_PROTO_LOCAL_MAX + 1];
	/* Lower-cased (ASCII letters only), one trailing dot stripped; an
	 * address literal keeps its brackets ("[192.0.2.1]").  "" for "<>" and
	 * "<postmaster>". */
	char domain[SMTP_PROTO_DOMAIN_MAX + 1];
	bool null;                    /* "<>" */
	bool postmaster;              /* "<postmaster>", no domain */
	bool ip_literal;              /* domain is an address literal (MAIL only) */
	bool utf8;                    /* has non-ASCII octets */
};

/*
 * Parse a path S (LEN octets, angle brackets included).  UTF8: the session
 * declared SMTPUTF8, so UTF-8 is allowed in the local part and in domain
 * labels (it must be well-formed).
 * Reverse paths: "<>" is allowed; a source route is ignored (RFC 5321
 * 4.1.1.2, C.); '%', '!' and quoted '@' are plain characters; address
 * literals are allowed.  Errors: SMTP_PROTO_ESENDER, SMTP_PROTO_EUTF8.
 * Forward paths: "<postmaster>" (any case) is allowed.  Everything that can
 * make a host relay is SMTP_PROTO_ERELAY: a source route, '%' '!' or '@' in
 * the local part (quoted or not, so "user@other"@ours, user%other@ours,
 * other!user@ours, user@other@ours), and any address literal.  Bad syntax
 * and over-long parts are SMTP_PROTO_ERCPT; non-ASCII without UTF8 is
 * SMTP_PROTO_EUTF8.
 */
int smtp_proto_parse_path(const char *s, size_t len, enum smtp_path_kind kind,
    bool utf8, struct smtp_path *out);

/* Domain syntax of RFC 5321 (letter-digit-hyphen labels of 1..63 octets,
 * 255 in all; UTF-8 U-labels only with UTF8).  No trailing dot, no literal. */
bool smtp_proto_valid_domain(const char *s, size_t len, bool utf8);
/* A HELO/EHLO argument that is a valid domain or address literal
 * ("[192.0.2.1]", "[IPv6:2001:db8::1]").  For policy: the parser itself
 * accepts any non-empty token, as Postfix does by default. */
bool smtp_proto_valid_helo(const char *s, size_t len);

/* ---- ESMTP parameters ------------------------------------------------------ */

struct smtp_mail_params {
	bool has_size;
	uint64_t size;                /* SIZE=n */
	enum env_body body;          /* BODY= */
	bool smtputf8;                /* SMTPUTF8 */
	enum env_ret ret;            /* RET= */
	bool has_envid;
	char envid[SMTP_PROTO_ENVID_MAX + 1];  /* ENVID= xtext as received */
	bool auth;                    /* AUTH= seen (accepted, ignored) */
};

struct smtp_rcpt_params {
	unsigned notify;              /* ENV_NOTIFY_* bits */
	bool has_orcpt;
	char orcpt[SMTP_PROTO_ORCPT_MAX + 1];  /* ORCPT= "type;xtext" as received */
};

/*
 * Parse the parameter text after a path (S, LEN: "KEY[=VALUE] ...", spaces
 * between).  Keywords are case-insensitive.  Errors: SMTP_PROTO_EPARAM
 * (unknown keyword or a keyword of the other command), SMTP_PROTO_EPARAMDUP,
 * SMTP_PROTO_EPARAMVAL (bad value, bad xtext, too long, missing or extra
 * "=value"), SMTP_PROTO_ETOOBIG (SIZE beyond 64 bits).
 * MAIL: SIZE, BODY=7BIT|8BITMIME|BINARYMIME, SMTPUTF8, RET=FULL|HDRS,
 * ENVID=xtext, AUTH=anything.  RCPT: NOTIFY=NEVER or a comma list of
 * SUCCESS, FAILURE, DELAY; ORCPT=addr-type;xtext (UTF8 allows UTF-8 octets
 * in it, as for utf-8-addr-xtext).
 */
int smtp_proto_parse_mail_params(const char *s, size_t len,
    struct smtp_mail_params *out);
int smtp_proto_parse_rcpt_params(const char *s, size_t len, bool utf8,
    struct smtp_rcpt_params *out);

/* A whole MAIL or RCPT command after smtp_proto_parse_command(). */
struct smtp_mail {
	struct smtp_path from;
	struct smtp_mail_params params;
};
struct smtp_rcpt {
	struct smtp_path to;
	struct smtp_rcpt_params params;
};

/*
 * Check CMD (verb MAIL) in Postfix's order: sender syntax (ESENDER), then
 * parameters, then a non-ASCII sender without SMTPUTF8 (EUTF8).
 */
int smtp_proto_parse_mail(const struct smtp_cmd *cmd, struct smtp_mail *out);
/* Check CMD (verb RCPT); SMTPUTF8: the transaction's MAIL had SMTPUTF8. */
int smtp_proto_parse_rcpt(const struct smtp_cmd *cmd, bool smtputf8,
    struct smtp_rcpt *out);

/* ---- DATA phase ------------------------------------------------------------ */

/*
 * Push decoder for the octets after "354".  Feed it whatever the socket
 * delivered, in any chunking; the result does not depend on where the
 * chunks split.  It removes dot-stuffing and finds the end of data only at
 * <CR><LF>.<CR><LF> (the first line counts as preceded by <CR><LF>).  The
 * <CR><LF> before the final dot belongs to the message.
 *
 * A bare LF, a CR not followed by LF, a NUL, or a text line longer than the
 * limit is an error.  NUL is refused because DATA carries text (7bit or
 * 8BITMIME; we offer no BINARYMIME) and a primary that drops NULs could
 * read a line "\0." as the end of the data.  Other octets, 8-bit ones
 * included, pass unchanged (8BITMIME content is not this decoder's
 * business).  Such octets never end a line, so "\n.\n", "\r.\r",
 * "\n.\r\n" or "\r\n.\n" can neither end nor split a message.
 *
 * Error policy (chosen): after the first error the decoder stops producing
 * output and keeps reading to the true <CR><LF>.<CR><LF>, then returns the
 * error, so the session answers one 5xx for the message and stays in step
 * with the client.  The first error is also visible at once through
 * smtp_proto_data_error(): a server that prefers Postfix's way (reply and
 * disconnect at once) can do so.  Whatever the server does, it must not
 * store a message whose decode ended in an error.
 */
struct smtp_data_decoder {
	size_t max_line;              /* private */
	size_t line_len;              /* private */
	int state;                    /* private */
	int error;                    /* private: first error, sticky */
	bool done;                    /* private */
};
/* MAX_LINE: longest text line, CRLF included; 0 = SMTP_PROTO_TEXT_LINE_MAX. */
void smtp_proto_data_init(struct smtp_data_decoder *d, size_t max_line);

/*
 * Decode IN[0..INLEN) into OUT, which must hold INLEN octets and may be IN
 * itself (decoding in place is safe: the output never runs ahead of the
 * input).  *OUTLEN is set to the octets written, *CONSUMED to the octets of
 * IN used.
 * Returns SMTP_PROTO_AGAIN while the end has not been seen (then *CONSUMED
 * == INLEN).  Once the end-of-data line is consumed it returns SMTP_PROTO_OK,
 * or the first error (SMTP_PROTO_EDATA_BARELF, _BARECR, _NUL, _LINE), and
 * *CONSUMED stops right after the final <CR><LF>: the rest of IN is the
 * client's next (pipelined) commands.  Calls after the end return the same
 * result and consume nothing.
 */
int smtp_proto_data_push(struct smtp_data_decoder *d, const char *in,
    size_t inlen, char *out, size_t *outlen, size_t *consumed);
/* The first error seen so far (0 if none), before the end is reached. */
int smtp_proto_data_error(const struct smtp_data_decoder *d);
/* True once the end-of-data line was consumed. */
bool smtp_proto_data_done(const struct smtp_data_decoder *d);

/* ---- Received: counter (loop detection) ------------------------------------ */

/*
 * Push counter of the "Received:" header fields of a message, for loop
 * detection (RFC 5321 6.3).  Feed it the message octets as the server stores
 * them (DATA text after dot-unstuffing, BDAT chunks as they are), in any
 * chunking: the count does not depend on where the pieces split.
 *
 * A field counts when a line of the header section starts with the name
 * "Received" in any case, optionally followed by SP/HTAB (RFC 5322 obsolete
 * syntax), then ':'.  The header section ends at the first empty line
 * (CRLF, or a bare LF, right at the start of a line); nothing after it is
 * looked at.  Folded continuation lines start with SP or HTAB and never
 * count.  A line ends at LF (CR is an ordinary octet: the DATA decoder and
 * the BDAT check refuse bare ones).  The counter saturates at UINT32_MAX.
 */
struct smtp_received_counter {
	uint32_t count;               /* Received: fields so far (public) */
	int state;                    /* private */
	unsigned pos;                 /* private: octets of the name matched */
};
void smtp_proto_received_init(struct smtp_received_counter *rc);
/* Scan IN[0..LEN); returns the count so far. */
uint32_t smtp_proto_received_push(struct smtp_received_counter *rc,
    const char *in, size_t len);
/* True once the empty line that ends the header section was seen. */
bool smtp_proto_received_done(const struct smtp_received_counter *rc);

/* ---- xtext (RFC 3461 section 4) ------------------------------------------- */

/* True if S[0..LEN) is xtext: "!".."~" except "+" and "=", or "+" and two
 * upper-case hex digits. */
bool smtp_proto_xtext_valid(const char *s, size_t len);
/* True if S[0..LEN) is xtext whose every "+HH" decodes to printable
 * US-ASCII, space included (0x20..0x7E), as RFC 3461 4 requires of ENVID
 * and ORCPT values; the MAIL and RCPT parsers refuse anything else. */
bool smtp_proto_xtext_printable(const char *s, size_t len);
/*
 * Encode IN[0..INLEN) as xtext into OUT (OUTSZ octets, NUL-terminated);
 * *OUTLEN gets the length.  SMTP_PROTO_OK or SMTP_PROTO_ENOSPC.
 */
int smtp_proto_xtext_encode(const char *in, size_t inlen, char *out,
    size_t outsz, size_t *outlen);
/*
 * Decode xtext IN[0..INLEN) into OUT (OUTSZ octets, NUL-terminated; decoded
 * NULs are refused).  OUT may be IN.  SMTP_PROTO_OK, SMTP_PROTO_ESYNTAX (not
 * xtext) or SMTP_PROTO_ENOSPC.
 */
int smtp_proto_xtext_decode(const char *in, size_t inlen, char *out,
    size_t outsz, size_t *outlen);

/* ---- replies --------------------------------------------------------------- */

/*
 * Format a reply into BUF (SIZE octets): TEXT is split at '\n' into lines,
 * each sent as "CODE-ENH line\r\n" and the last as "CODE ENH line\r\n".  ENH
 * may be NULL or "" (no enhanced code, e.g. the greeting or EHLO keywords).
 * BUF is NUL-terminated and *LEN gets the length without the NUL.
 * SMTP_PROTO_OK, SMTP_PROTO_ENOSPC (BUF too small; nothing usable written),
 * SMTP_PROTO_EINVAL (CODE not 200..599, ENH not a "c.s.d" code of CODE's
 * class, a control character other than TAB in TEXT, a line longer than
 * SMTP_PROTO_REPLY_LINE_MAX with its CRLF, or more than
 * SMTP_PROTO_REPLY_LINES_MAX lines).
 */
int smtp_proto_format_reply(char *buf, size_t size, size_t *len, int code,
    const char *enh, const char *text);

/*
 * Parse one reply line from a remote server (LINE, LEN, CRLF removed):
 * three digits 2..5/0..5/0..9, then "-" (more lines follow), " " or nothing
 * (last line).  *TEXT points into LINE after the separator.
 * SMTP_PROTO_OK or SMTP_PROTO_EREPLY.
 */
int smtp_proto_parse_reply_line(const char *line, size_t len, int *code,
    bool *is_last, const char **text, size_t *text_len);

/* EHLO keywords found by the reply accumulator. */
#define SMTP_EXT_PIPELINING          0x001
#define SMTP_EXT_SIZE                0x002
#define SMTP_EXT_8BITMIME            0x004
#define SMTP_EXT_SMTPUTF8            0x008
#define SMTP_EXT_DSN                 0x010
#define SMTP_EXT_CHUNKING            0x020
#define SMTP_EXT_STARTTLS            0x040
#define SMTP_EXT_ENHANCEDSTATUSCODES 0x080
#define SMTP_EXT_BINARYMIME          0x100
#define SMTP_EXT_LIMITS              0x200   /* RFC 9422 */

/*
 * Accumulates one (possibly multiline) reply.  The public fields may be
 * read once smtp_proto_reply_push() returned SMTP_PROTO_OK.
 */
struct smtp_reply {
	int code;                     /* 250 */
	char enh[SMTP_PROTO_ENH_MAX]; /* "2.0.0" from the first line, or "" */
	/* The lines' text without "CODE-" and without a leading enhanced
	 * code equal to enh, joined by '\n', NUL-terminated; cut (and
	 * truncated set) beyond SMTP_PROTO_REPLY_TEXT_MAX - 1 octets. */
	char text[SMTP_PROTO_REPLY_TEXT_MAX];
	size_t text_len;
	bool truncated;
	unsigned nlines;
	/* EHLO keywords from the second line on: SMTP_EXT_* bits, and the
	 * SIZE value (0 when absent or given without a number). */
	unsigned ext;
	uint64_t size_max;
	/* RFC 9422 LIMITS RCPTMAX= / MAILMAX= (0: not announced). */
	uint32_t rcpt_max, mail_max;
	bool complete;                /* private */
};
void smtp_proto_reply_init(struct smtp_reply *r);
/*
 * Add one line (CRLF removed).  SMTP_PROTO_AGAIN: more lines to come;
 * SMTP_PROTO_OK: the reply is complete; SMTP_PROTO_EREPLY: malformed line,
 * a code different from the first line's, more than
 * SMTP_PROTO_REPLY_LINES_MAX lines, or a push after completion.  Call
 * smtp_proto_reply_init() again for the next reply.
 */
int smtp_proto_reply_push(struct smtp_reply *r, const char *line, size_t len);

#endif
