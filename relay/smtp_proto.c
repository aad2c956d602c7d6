/*
 * smtp_proto.c - pure SMTP parsing: no I/O, no libuv, no logging, no malloc.
 *
 * Everything here works on the caller's buffers.  Results point into the
 * input or are copied into fixed-size fields whose sizes are the protocol
 * limits (RFC 5321 4.5.3.1), so an over-long field is a protocol error and
 * never a truncation.
 *
 * Two invariants matter for security and are what the fuzz targets check:
 *
 *  - Framing.  Only the two octets CR LF end a line, in commands and in
 *    message data.  A bare LF, a CR not followed by LF, or NUL never counts
 *    as a line end: it is an error.  So a peer cannot make us see a command
 *    or an end of data where a downstream MTA that is lax about line ends
 *    would see something else (SMTP smuggling, CVE-2023-51766 and friends).
 *    The DATA decoder is a byte-at-a-time state machine, so its result does
 *    not depend on how the input was split into reads.
 *
 *  - Relay control.  A forward path is reduced to a lower-cased domain only
 *    when the address has no way to name a different final destination:
 *    source routes, '%', '!', '@' in the local part (quoted or not) and
 *    address literals are refused here, before policy compares domains.
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "mxspool/smtp_proto.h"

/* ---- statuses ------------------------------------------------------------ */

static const struct {
	int status;
	const char *name;
	const char *reply;
} status_table[] = {
	{ SMTP_PROTO_OK, "ok", NULL },
	{ SMTP_PROTO_AGAIN, "again", NULL },
	{ SMTP_PROTO_EUNKNOWN, "unknown_command",
	  "500 5.5.2 Error: command not recognized" },
	{ SMTP_PROTO_ESYNTAX, "syntax",
	  "501 5.5.4 Syntax error in parameters or arguments" },
	{ SMTP_PROTO_ESENDER, "bad_sender",
	  "501 5.1.7 Bad sender address syntax" },
	{ SMTP_PROTO_ERCPT, "bad_recipient",
	  "501 5.1.3 Bad recipient address syntax" },
	{ SMTP_PROTO_ERELAY, "relay_denied", "550 5.7.1 Relay access denied" },
	{ SMTP_PROTO_EUTF8, "smtputf8_required",
	  "553 5.6.7 Must declare SMTPUTF8 to send unicode address" },
	{ SMTP_PROTO_EPARAM, "unsupported_option",
	  "555 5.5.4 Unsupported option" },
	{ SMTP_PROTO_EPARAMDUP, "duplicate_option",
	  "501 5.5.4 Duplicate parameter" },
	{ SMTP_PROTO_EPARAMVAL, "bad_option_value",
	  "501 5.5.4 Bad parameter value" },
	{ SMTP_PROTO_ETOOBIG, "too_big",
	  "552 5.3.4 Message size exceeds fixed limit" },
	{ SMTP_PROTO_ETOOLONG, "line_too_long",
	  "500 5.5.2 Error: line too long" },
	{ SMTP_PROTO_EBARELF, "bare_lf", "500 5.5.2 Error: bare <LF> received" },
	{ SMTP_PROTO_EBARECR, "bare_cr", "500 5.5.2 Error: bare <CR> received" },
	{ SMTP_PROTO_ENUL, "nul", "500 5.5.2 Error: NUL character received" },
	{ SMTP_PROTO_EDATA_BARELF, "data_bare_lf",
	  "550 5.5.2 Error: bare <LF> received in message data" },
	{ SMTP_PROTO_EDATA_BARECR, "data_bare_cr",
	  "550 5.5.2 Error: bare <CR> received in message data" },
	{ SMTP_PROTO_EDATA_LINE, "data_line_too_long",
	  "554 5.6.0 Error: message text line too long" },
	{ SMTP_PROTO_EDATA_NUL, "data_nul",
	  "554 5.6.0 Error: NUL character in message data (BINARYMIME is not offered)" },
	{ SMTP_PROTO_EREPLY, "bad_reply", NULL },
	{ SMTP_PROTO_ENOSPC, "no_space", NULL },
	{ SMTP_PROTO_EINVAL, "invalid", NULL },
};

#define INTERNAL_REPLY "451 4.3.0 Error: internal error"

const char *
smtp_proto_status_reply(int status)
{
	for (size_t i = 0; i < sizeof status_table / sizeof status_table[0]; i++)
		if (status_table[i].status == status)
			return status_table[i].reply ? status_table[i].reply :
			    INTERNAL_REPLY;
	return INTERNAL_REPLY;
}

const char *
smtp_proto_status_name(int status)
{
	for (size_t i = 0; i < sizeof status_table / sizeof status_table[0]; i++)
		if (status_table[i].status == status)
			return status_table[i].name;
	return "unknown_status";
}

/* ---- character classes ----------------------------------------------------- */

/* The module is self-contained (no locale, no util.c) so that the fuzz
 * replay programs link it alone. */
static int
lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool
ieq(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);

	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

static bool
is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* RFC 5322 atext. */
static bool
is_atext(int c)
{
	return is_alpha(c) || is_digit(c) ||
	    (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * Length of the well-formed UTF-8 sequence at S (at most LEN octets), or 0:
 * no overlong forms, no surrogates, nothing above U+10FFFF (RFC 3629).
 */
static size_t
utf8_len(const unsigned char *s, size_t len)
{
	unsigned c = s[0];
	size_t n;
	unsigned lo = 0x80, hi = 0xbf;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (len < n)
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* Parse LEN decimal digits; false on empty input, a non-digit or overflow
 * (*OVERFLOW tells which). */
static bool
parse_u64(const char *s, size_t len, uint64_t *out, bool *overflow)
{
	uint64_t v = 0;

	*overflow = false;
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (!is_digit((unsigned char)s[i]))
			return false;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10) {
			*overflow = true;
			return false;
		}
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* ---- domains ----------------------------------------------------------------- */

bool
smtp_proto_valid_domain(const char *s, size_t len, bool utf8)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t label = 0;             /* octets in the current label */
	int prev = 0;                 /* previous octet in the label */

	if (s == NULL || len == 0 || len > SMTP_PROTO_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned c = p[i];

		if (c == '.') {
			/* Empty label, or a label ending in a hyphen. */
			if (label == 0 || prev == '-')
				return false;
			label = 0;
			prev = 0;
			continue;
		}
		if (c >= 0x80) {
			size_t n;

			if (!utf8)
				return false;
			n = utf8_len(p + i, len - i);
			if (n == 0)
				return false;
			label += n;
			i += n - 1;
			prev = 'a';   /* a U-label character acts as a letter */
		} else if (is_alpha((int)c) || is_digit((int)c)) {
			label++;
			prev = (int)c;
		} else if (c == '-') {
			if (label == 0)
				return false;
			label++;
			prev = '-';
		} else
			return false;
		if (label > 63)
			return false;
	}
	return label > 0 && prev != '-';
}

/* Lower-case ASCII copy of S[0..LEN) into OUT (LEN + 1 octets). */
static void
copy_lower(char *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		out[i] = (char)lower((unsigned char)s[i]);
	out[len] = '\0';
}

/*
 * RFC 5321 4.1.3 address literal, brackets included: IPv4, "IPv6:" IPv6, or
 * a General-address-literal (tag ":" dcontent) which we accept by syntax.
 */
static bool
valid_address_literal(const char *s, size_t len)
{
	char buf[64];
	unsigned char addr[16];
	const char *body;
	size_t blen;

	if (len < 3 || s[0] != '[' || s[len - 1] != ']')
		return false;
	body = s + 1;
	blen = len - 2;
	if (blen >= 5 && ieq(body, 5, "IPv6:")) {
		if (blen - 5 >= sizeof buf)
			return false;
		memcpy(buf, body + 5, blen - 5);
		buf[blen - 5] = '\0';
		return inet_pton(AF_INET6, buf, addr) == 1;
	}
	if (blen < sizeof buf && (is_digit((unsigned char)body[0]))) {
		memcpy(buf, body, blen);
		buf[blen] = '\0';
		return inet_pton(AF_INET, buf, addr) == 1;
	}
	/* General-address-literal = Standardized-tag ":" 1*dcontent */
	{
		size_t i = 0;

		while (i < blen && (is_alpha((unsigned char)body[i]) ||
		    is_digit((unsigned char)body[i]) || body[i] == '-'))
			i++;
		if (i == 0 || i >= blen || body[i] != ':' || body[i - 1] == '-')
			return false;
		if (++i == blen)
			return false;
		for (; i < blen; i++) {
			unsigned char c = (unsigned char)body[i];

			if (c < 33 || c > 126 || c == '[' || c == ']' || c == '\\')
				return false;
		}
		return true;
	}
}

bool
smtp_proto_valid_helo(const char *s, size_t len)
{
	if (s == NULL || len == 0)
		return false;
	if (s[0] == '[')
		return valid_address_literal(s, len);
	/* A fully qualified name with its root dot is still a name. */
	if (len > 1 && s[len - 1] == '.')
		len--;
	return smtp_proto_valid_domain(s, len, false);
}

/* ---- command lines ------------------------------------------------------------- */

static const struct {
	enum smtp_verb verb;
	const char *name;
} verb_table[] = {
	{ SMTP_VERB_HELO, "HELO" }, { SMTP_VERB_EHLO, "EHLO" },
	{ SMTP_VERB_MAIL, "MAIL" }, { SMTP_VERB_RCPT, "RCPT" },
	{ SMTP_VERB_DATA, "DATA" }, { SMTP_VERB_BDAT, "BDAT" },
	{ SMTP_VERB_RSET, "RSET" }, { SMTP_VERB_NOOP, "NOOP" },
	{ SMTP_VERB_QUIT, "QUIT" }, { SMTP_VERB_VRFY, "VRFY" },
	{ SMTP_VERB_EXPN, "EXPN" }, { SMTP_VERB_HELP, "HELP" },
	{ SMTP_VERB_STARTTLS, "STARTTLS" }, { SMTP_VERB_ETRN, "ETRN" },
	{ SMTP_VERB_AUTH, "AUTH" },
};

const char *
smtp_proto_verb_name(enum smtp_verb verb)
{
	for (size_t i = 0; i < sizeof verb_table / sizeof verb_table[0]; i++)
		if (verb_table[i].verb == verb)
			return verb_table[i].name;
	return "UNKNOWN";
}

/*
 * Find the '>' that closes the path starting with '<' at S[0], skipping
 * quoted strings (a '>' may hide in "a>b"@example.com).  Returns its index
 * or LEN if there is none.
 */
static size_t
path_end(const char *s, size_t len)
{
	bool quoted = false;

	for (size_t i = 1; i < len; i++) {
		if (quoted) {
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				quoted = false;
		} else if (s[i] == '"')
			quoted = true;
		else if (s[i] == '>')
			return i;
	}
	return len;
}

/* "FROM:" / "TO:" then optional spaces (Postfix tolerates "FROM: <a@b>"),
 * the path, and parameters after at least one space. */
static int
parse_path_arg(const char *arg, size_t len, const char *prefix,
    int bad_path, struct smtp_cmd *out)
{
	size_t plen = strlen(prefix), i, end;

	if (len < plen || !ieq(arg, plen, prefix))
		return SMTP_PROTO_ESYNTAX;
	i = plen;
	while (i < len && arg[i] == ' ')
		i++;
	if (i == len)
		return SMTP_PROTO_ESYNTAX;
	if (arg[i] != '<')
		return bad_path;
	end = path_end(arg + i, len - i);
	if (end == len - i)
		return bad_path;
	out->path = arg + i;
	out->path_len = end + 1;
	i += end + 1;
	if (i < len && arg[i] != ' ')
		return bad_path;
	while (i < len && arg[i] == ' ')
		i++;
	out->params = arg + i;
	out->params_len = len - i;
	return SMTP_PROTO_OK;
}

static int
parse_bdat(const char *arg, size_t len, struct smtp_cmd *out)
{
	size_t i = 0, j;
	bool overflow;

	while (i < len && arg[i] != ' ')
		i++;
	if (!parse_u64(arg, i, &out->bdat_size, &overflow))
		return overflow ? SMTP_PROTO_ETOOBIG : SMTP_PROTO_ESYNTAX;
	while (i < len && arg[i] == ' ')
		i++;
	if (i == len)
		return SMTP_PROTO_OK;
	j = i;
	while (j < len && arg[j] != ' ')
		j++;
	if (j != len || !ieq(arg + i, j - i, "LAST"))
		return SMTP_PROTO_ESYNTAX;
	out->bdat_last = true;
	return SMTP_PROTO_OK;
}

/* ETRN node (RFC 1985): "@"domain, "#"queue-name or domain. */
static int
parse_etrn(const char *arg, size_t len, struct smtp_cmd *out)
{
	const char *node = arg;
	size_t nlen = len;

	if (len == 0)
		return SMTP_PROTO_ESYNTAX;
	if (arg[0] == '@' || arg[0] == '#') {
		out->etrn_kind = arg[0];
		node++;
		nlen--;
	}
	if (nlen == 0 || nlen > SMTP_PROTO_DOMAIN_MAX)
		return SMTP_PROTO_ESYNTAX;
	if (out->etrn_kind == '#') {
		for (size_t i = 0; i < nlen; i++) {
			unsigned char c = (unsigned char)node[i];

			if (!is_alpha(c) && !is_digit(c) && c != '.' && c != '-' &&
			    c != '_')
				return SMTP_PROTO_ESYNTAX;
		}
		memcpy(out->etrn_node, node, nlen);
		out->etrn_node[nlen] = '\0';
		return SMTP_PROTO_OK;
	}
	if (nlen > 1 && node[nlen - 1] == '.')
		nlen--;
	if (!smtp_proto_valid_domain(node, nlen, false))
		return SMTP_PROTO_ESYNTAX;
	copy_lower(out->etrn_node, node, nlen);
	return SMTP_PROTO_OK;
}

int
smtp_proto_parse_command(const char *line, size_t len, struct smtp_cmd *out)
{
	size_t i = 0, vstart, vend, end;

	if (out == NULL)
		return SMTP_PROTO_EINVAL;
	memset(out, 0, sizeof *out);
	out->arg = out->path = out->params = "";
	if (line == NULL)
		return SMTP_PROTO_EINVAL;
	if (len > SMTP_PROTO_LINE_MAX - 2)
		return SMTP_PROTO_ETOOLONG;

	while (i < len && line[i] == ' ')
		i++;
	vstart = i;
	while (i < len && line[i] != ' ')
		i++;
	vend = i;
	for (size_t k = 0; k < sizeof verb_table / sizeof verb_table[0]; k++)
		if (ieq(line + vstart, vend - vstart, verb_table[k].name)) {
			out->verb = verb_table[k].verb;
			break;
		}
	if (out->verb == SMTP_VERB_UNKNOWN)
		return SMTP_PROTO_EUNKNOWN;

	while (i < len && line[i] == ' ')
		i++;
	end = len;
	while (end > i && line[end - 1] == ' ')
		end--;
	out->arg = line + i;
	out->arg_len = end - i;

	switch (out->verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO: {
		size_t t = 0;

		while (t < out->arg_len && out->arg[t] != ' ')
			t++;
		out->arg_len = t;
		return t ? SMTP_PROTO_OK : SMTP_PROTO_ESYNTAX;
	}
	case SMTP_VERB_MAIL:
		return parse_path_arg(out->arg, out->arg_len, "FROM:",
		    SMTP_PROTO_ESENDER, out);
	case SMTP_VERB_RCPT:
		return parse_path_arg(out->arg, out->arg_len, "TO:",
		    SMTP_PROTO_ERCPT, out);
	case SMTP_VERB_BDAT:
		return parse_bdat(out->arg, out->arg_len, out);
	case SMTP_VERB_ETRN:
		return parse_etrn(out->arg, out->arg_len, out);
	case SMTP_VERB_VRFY:
	case SMTP_VERB_EXPN:
	case SMTP_VERB_AUTH:
		return out->arg_len ? SMTP_PROTO_OK : SMTP_PROTO_ESYNTAX;
	case SMTP_VERB_DATA:
	case SMTP_VERB_RSET:
	case SMTP_VERB_QUIT:
	case SMTP_VERB_STARTTLS:
		return out->arg_len ? SMTP_PROTO_ESYNTAX : SMTP_PROTO_OK;
	case SMTP_VERB_NOOP:
	case SMTP_VERB_HELP:
	case SMTP_VERB_UNKNOWN:
		break;
	}
	return SMTP_PROTO_OK;
}

/* ---- command line framing ---------------------------------------------------- */

void
smtp_proto_lines_init(struct smtp_line_reader *lr, size_t max)
{
	if (max == 0)
		max = SMTP_PROTO_LINE_MAX;
	if (max < 3)
		max = 3;              /* room for one octet and CRLF */
	lr->max = max;
	lr->skipping = false;
}

int
smtp_proto_next_line(struct smtp_line_reader *lr, const char *buf,
    size_t len, const char **line, size_t *line_len, size_t *consumed)
{
	size_t i = 0, start;

	*line = buf;
	*line_len = 0;
	*consumed = 0;
	if (lr == NULL || (buf == NULL && len > 0))
		return SMTP_PROTO_EINVAL;

	if (lr->skipping) {
		/* Drop the rest of a refused line, up to and with its CRLF.  A
		 * trailing CR is kept: the LF may come with the next read. */
		for (;;) {
			if (i == len) {
				*consumed = len;
				return SMTP_PROTO_AGAIN;
			}
			if (buf[i] == '\r') {
				if (i + 1 == len) {
					*consumed = i;
					return SMTP_PROTO_AGAIN;
				}
				if (buf[i + 1] == '\n') {
					i += 2;
					lr->skipping = false;
					break;
				}
			}
			i++;
		}
	}

	start = i;
	for (; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];

		if (c == '\r') {
			if (i + 1 == len)
				break;
			if (buf[i + 1] == '\n') {
				*line = buf + start;
				*line_len = i - start;
				*consumed = i + 2;
				return SMTP_PROTO_OK;
			}
			lr->skipping = true;
			*consumed = i + 1;
			return SMTP_PROTO_EBARECR;
		}
		/* This octet would make the line longer than max - 2 before
		 * its CRLF. */
		if (i - start >= lr->max - 2) {
			lr->skipping = true;
			*consumed = i;
			return SMTP_PROTO_ETOOLONG;
		}
		if (c == '\n') {
			lr->skipping = true;
			*consumed = i + 1;
			return SMTP_PROTO_EBARELF;
		}
		if (c == '\0') {
			lr->skipping = true;
			*consumed = i + 1;
			return SMTP_PROTO_ENUL;
		}
	}
	*consumed = start;
	return SMTP_PROTO_AGAIN;
}

/* ---- paths --------------------------------------------------------------------- */

/* What the local-part scanner found. */
struct local_scan {
	size_t end;                   /* index after the local part */
	bool bad;                     /* syntax error */
	bool relay;                   /* '@', '%' or '!' inside */
	bool nonascii;
	bool plain;                   /* quoted, but content is a dot-string */
	char content[SMTP_PROTO_LOCAL_MAX + 1];  /* unquoted content */
	size_t content_len;
};

/* A dot-string: atoms of atext (or UTF-8) separated by single dots. */
static bool
is_dot_string(const char *s, size_t len)
{
	if (len == 0 || s[0] == '.' || s[len - 1] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (s[i - 1] == '.')
				return false;
		} else if (c >= 0x80) {
			size_t n = utf8_len((const unsigned char *)s + i, len - i);

			if (n == 0)
				return false;
			i += n - 1;
		} else if (!is_atext(c))
			return false;
	}
	return true;
}

/*
 * Quoted-string local part at S[0] == '"' (RFC 5321 4.1.2 QcontentSMTP).
 * A malformed one is a syntax error whatever it contains, so the relay
 * flag only counts for a well-formed quoted string.
 */
static void
scan_quoted_body(const char *s, size_t len, struct local_scan *ls)
{
	size_t i = 1;

	for (;;) {
		unsigned char c;

		if (i >= len) {
			ls->bad = true;
			return;
		}
		c = (unsigned char)s[i];
		if (c == '"')
			break;
		if (c == '\\') {
			if (i + 1 >= len) {
				ls->bad = true;
				return;
			}
			c = (unsigned char)s[++i];
			if (c < 32 || c > 126) {
				ls->bad = true;
				return;
			}
		} else if (c >= 0x80) {
			size_t n = utf8_len((const unsigned char *)s + i, len - i);

			if (n == 0) {
				ls->bad = true;
				return;
			}
			ls->nonascii = true;
			if (ls->content_len + n <= SMTP_PROTO_LOCAL_MAX)
				memcpy(ls->content + ls->content_len, s + i, n);
			ls->content_len += n;
			i += n;
			continue;
		} else if (c < 32 || c > 126) {
			ls->bad = true;
			return;
		}
		if (c == '@' || c == '%' || c == '!')
			ls->relay = true;
		if (ls->content_len < SMTP_PROTO_LOCAL_MAX)
			ls->content[ls->content_len] = (char)c;
		ls->content_len++;
		i++;
	}
	ls->end = i + 1;
	if (ls->content_len <= SMTP_PROTO_LOCAL_MAX) {
		ls->content[ls->content_len] = '\0';
		ls->plain = is_dot_string(ls->content, ls->content_len);
	}
}

static void
scan_quoted_local(const char *s, size_t len, struct local_scan *ls)
{
	scan_quoted_body(s, len, ls);
	if (ls->bad)
		ls->relay = false;
}

/*
 * Unquoted local part: everything up to the last '@' of the mailbox (so
 * that user@other@ours is seen as local "user@other" and refused as a relay
 * attempt, not as a syntax error that a lenient MTA downstream might read
 * differently).
 */
static void
scan_plain_local(const char *s, size_t len, struct local_scan *ls)
{
	size_t at = len;

	for (size_t i = 0; i < len; i++)
		if (s[i] == '@')
			at = i;
	if (at == len) {
		ls->bad = true;
		ls->end = len;
		return;
	}
	ls->end = at;
	for (size_t i = 0; i < at; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '@' || c == '%' || c == '!')
			ls->relay = true;
		if (c >= 0x80)
			ls->nonascii = true;
	}
	/* '@' is not atext, so a reverse path "a@b@c" is a syntax error; for a
	 * forward path the caller refuses relay before looking at syntax. */
	if (!is_dot_string(s, at))
		ls->bad = true;
}

/*
 * Skip an RFC 5321 source route "@a,@b:" at S; returns the index after the
 * ':' or 0 if it is malformed.
 */
static size_t
skip_source_route(const char *s, size_t len)
{
	size_t i = 0;

	for (;;) {
		size_t start;

		if (i >= len || s[i] != '@')
			return 0;
		start = ++i;
		while (i < len && s[i] != ',' && s[i] != ':')
			i++;
		if (i == len)
			return 0;
		if (s[start] == '[') {
			if (!valid_address_literal(s + start, i - start))
				return 0;
		} else if (!smtp_proto_valid_domain(s + start, i - start, true))
			return 0;
		if (s[i++] == ':')
			return i;
	}
}

int
smtp_proto_parse_path(const char *s, size_t len, enum smtp_path_kind kind,
    bool utf8, struct smtp_path *out)
{
	bool forward = kind == SMTP_PATH_FORWARD;
	int bad = forward ? SMTP_PROTO_ERCPT : SMTP_PROTO_ESENDER;
	struct local_scan ls;
	const char *p, *dom;
	size_t n, dlen, llen;
	bool nonascii = false;

	if (out == NULL)
		return SMTP_PROTO_EINVAL;
	memset(out, 0, sizeof *out);
	if (s == NULL || len < 2 || s[0] != '<' || s[len - 1] != '>')
		return bad;
	p = s + 1;
	n = len - 2;

	if (n == 0) {
		if (forward)
			return bad;
		out->null = true;
		return SMTP_PROTO_OK;
	}
	if (p[0] == '@') {
		size_t skip;

		/* A source route asks us to relay through the hosts named. */
		if (forward)
			return SMTP_PROTO_ERELAY;
		skip = skip_source_route(p, n);
		if (skip == 0 || skip == n)
			return bad;
		p += skip;
		n -= skip;
	}
	if (forward && ieq(p, n, "postmaster")) {
		out->postmaster = true;
		memcpy(out->local, p, n);
		out->local[n] = '\0';
		memcpy(out->addr, p, n);
		out->addr[n] = '\0';
		return SMTP_PROTO_OK;
	}

	memset(&ls, 0, sizeof ls);
	if (p[0] == '"')
		scan_quoted_local(p, n, &ls);
	else
		scan_plain_local(p, n, &ls);
	if (forward && ls.relay)
		return SMTP_PROTO_ERELAY;
	if (ls.bad || ls.end >= n || p[ls.end] != '@')
		return bad;
	llen = ls.end;
	nonascii = ls.nonascii;
	if (llen > SMTP_PROTO_LOCAL_MAX)
		return bad;

	dom = p + llen + 1;
	dlen = n - llen - 1;
	if (dlen == 0)
		return bad;
	if (memchr(dom, '@', dlen) != NULL)
		return forward ? SMTP_PROTO_ERELAY : bad;
	if (dom[0] == '[') {
		/* An address literal is never one of our domains. */
		if (forward)
			return SMTP_PROTO_ERELAY;
		if (!valid_address_literal(dom, dlen))
			return bad;
		out->ip_literal = true;
	} else {
		/* "example.com." names the same domain: strip one root dot. */
		if (dlen > 1 && dom[dlen - 1] == '.')
			dlen--;
		if (!smtp_proto_valid_domain(dom, dlen, true))
			return bad;
		for (size_t i = 0; i < dlen; i++)
			if ((unsigned char)dom[i] >= 0x80)
				nonascii = true;
	}

	if (ls.plain && ls.content_len <= SMTP_PROTO_LOCAL_MAX) {
		memcpy(out->local, ls.content, ls.content_len);
		out->local[ls.content_len] = '\0';
		llen = ls.content_len;
	} else {
		memcpy(out->local, p, llen);
		out->local[llen] = '\0';
	}
	if (llen + 1 + dlen > SMTP_PROTO_ADDR_MAX)
		return bad;
	copy_lower(out->domain, dom, dlen);
	memcpy(out->addr, out->local, llen);
	out->addr[llen] = '@';
	memcpy(out->addr + llen + 1, out->domain, dlen + 1);
	out->utf8 = nonascii;
	if (nonascii && !utf8)
		return SMTP_PROTO_EUTF8;
	return SMTP_PROTO_OK;
}

/* ---- ESMTP parameters ----------------------------------------------------------- */

struct param {
	const char *key;
	size_t key_len;
	const char *val;              /* NULL: no "=" */
	size_t val_len;
};

/*
 * Next "KEY[=VALUE]" from S[*POS..LEN).  Returns 1 with P filled, 0 at the
 * end, or a negative status for a malformed token (RFC 5321 4.1.2
 * esmtp-keyword and esmtp-value).
 */
static int
next_param(const char *s, size_t len, size_t *pos, bool utf8, struct param *p)
{
	size_t i = *pos, end;

	while (i < len && s[i] == ' ')
		i++;
	if (i == len) {
		*pos = i;
		return 0;
	}
	end = i;
	while (end < len && s[end] != ' ')
		end++;
	*pos = end;

	p->key = s + i;
	p->val = NULL;
	p->val_len = 0;
	while (i < end && s[i] != '=')
		i++;
	p->key_len = (size_t)(s + i - p->key);
	if (p->key_len == 0 || !(is_alpha((unsigned char)p->key[0]) ||
	    is_digit((unsigned char)p->key[0])))
		return SMTP_PROTO_ESYNTAX;
	for (size_t k = 1; k < p->key_len; k++) {
		unsigned char c = (unsigned char)p->key[k];

		if (!is_alpha(c) && !is_digit(c) && c != '-')
			return SMTP_PROTO_ESYNTAX;
	}
	if (i == end)
		return 1;
	p->val = s + i + 1;
	p->val_len = end - i - 1;
	for (size_t k = 0; k < p->val_len; k++) {
		unsigned char c = (unsigned char)p->val[k];

		if (c >= 0x80) {
			size_t n;

			if (!utf8)
				return SMTP_PROTO_EPARAMVAL;
			n = utf8_len((const unsigned char *)p->val + k,
			    p->val_len - k);
			if (n == 0)
				return SMTP_PROTO_EPARAMVAL;
			k += n - 1;
		} else if (c < 33 || c > 126 || c == '=')
			return SMTP_PROTO_EPARAMVAL;
	}
	return 1;
}

enum {
	SEEN_SIZE = 1 << 0, SEEN_BODY = 1 << 1, SEEN_UTF8 = 1 << 2,
	SEEN_RET = 1 << 3, SEEN_ENVID = 1 << 4, SEEN_AUTH = 1 << 5,
	SEEN_NOTIFY = 1 << 6, SEEN_ORCPT = 1 << 7,
};

int
smtp_proto_parse_mail_params(const char *s, size_t len,
    struct smtp_mail_params *out)
{
	size_t pos = 0;
	unsigned seen = 0;
	struct param p;
	int r;

	if (out == NULL || (s == NULL && len > 0))
		return SMTP_PROTO_EINVAL;
	memset(out, 0, sizeof *out);
	/* Non-ASCII octets are checked per parameter: only ENVID-like
	 * values could carry them, and we accept none in MAIL. */
	while ((r = next_param(s, len, &pos, false, &p)) == 1) {
		unsigned bit;

		if (ieq(p.key, p.key_len, "SIZE"))
			bit = SEEN_SIZE;
		else if (ieq(p.key, p.key_len, "BODY"))
			bit = SEEN_BODY;
		else if (ieq(p.key, p.key_len, "SMTPUTF8"))
			bit = SEEN_UTF8;
		else if (ieq(p.key, p.key_len, "RET"))
			bit = SEEN_RET;
		else if (ieq(p.key, p.key_len, "ENVID"))
			bit = SEEN_ENVID;
		else if (ieq(p.key, p.key_len, "AUTH"))
			bit = SEEN_AUTH;
		else
			return SMTP_PROTO_EPARAM;
		if (seen & bit)
			return SMTP_PROTO_EPARAMDUP;
		seen |= bit;
		if ((bit == SEEN_UTF8) != (p.val == NULL))
			return SMTP_PROTO_EPARAMVAL;

		switch (bit) {
		case SEEN_SIZE: {
			bool overflow;

			if (!parse_u64(p.val, p.val_len, &out->size, &overflow))
				return overflow ? SMTP_PROTO_ETOOBIG :
				    SMTP_PROTO_EPARAMVAL;
			out->has_size = true;
			break;
		}
		case SEEN_BODY:
			if (ieq(p.val, p.val_len, "7BIT"))
				out->body = ENV_BODY_7BIT;
			else if (ieq(p.val, p.val_len, "8BITMIME"))
				out->body = ENV_BODY_8BITMIME;
			else if (ieq(p.val, p.val_len, "BINARYMIME"))
				out->body = ENV_BODY_BINARYMIME;
			else
				return SMTP_PROTO_EPARAMVAL;
			break;
		case SEEN_UTF8:
			out->smtputf8 = true;
			break;
		case SEEN_RET:
			if (ieq(p.val, p.val_len, "FULL"))
				out->ret = ENV_RET_FULL;
			else if (ieq(p.val, p.val_len, "HDRS"))
				out->ret = ENV_RET_HDRS;
			else
				return SMTP_PROTO_EPARAMVAL;
			break;
		case SEEN_ENVID:
			/* RFC 3461 4.4: the decoded ENVID is printable
			 * US-ASCII; "+00" or "+0D" is refused as Postfix does. */
			if (p.val_len == 0 || p.val_len > SMTP_PROTO_ENVID_MAX ||
			    !smtp_proto_xtext_printable(p.val, p.val_len))
				return SMTP_PROTO_EPARAMVAL;
			memcpy(out->envid, p.val, p.val_len);
			out->envid[p.val_len] = '\0';
			out->has_envid = true;
			break;
		case SEEN_AUTH:
			/* RFC 4954 5: we offer no AUTH, so the identity is
			 * not trusted; accept and ignore it. */
			if (p.val_len == 0)
				return SMTP_PROTO_EPARAMVAL;
			out->auth = true;
			break;
		}
	}
	return r < 0 ? r : SMTP_PROTO_OK;
}

/* NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 4.1). */
static int
parse_notify(const char *v, size_t len, unsigned *out)
{
	size_t i = 0;
	unsigned bits = 0;

	if (len == 0)
		return SMTP_PROTO_EPARAMVAL;
	while (i <= len) {
		size_t j = i;
		unsigned bit;

		while (j < len && v[j] != ',')
			j++;
		if (ieq(v + i, j - i, "NEVER"))
			bit = ENV_NOTIFY_NEVER;
		else if (ieq(v + i, j - i, "SUCCESS"))
			bit = ENV_NOTIFY_SUCCESS;
		else if (ieq(v + i, j - i, "FAILURE"))
			bit = ENV_NOTIFY_FAILURE;
		else if (ieq(v + i, j - i, "DELAY"))
			bit = ENV_NOTIFY_DELAY;
		else
			return SMTP_PROTO_EPARAMVAL;
		if (bits & bit)
			return SMTP_PROTO_EPARAMVAL;
		bits |= bit;
		i = j + 1;
	}
	if ((bits & ENV_NOTIFY_NEVER) && bits != ENV_NOTIFY_NEVER)
		return SMTP_PROTO_EPARAMVAL;
	*out = bits;
	return SMTP_PROTO_OK;
}

/*
 * ORCPT=addr-type ";" xtext (RFC 3461 4.2).  With SMTPUTF8 the value may be
 * utf-8-addr-xtext or unitext (RFC 6533), so UTF-8 octets pass through.
 * A "+HH" must decode to printable US-ASCII (4.2: "MUST consist entirely of
 * printable (graphic and white space) characters"): a control character
 * would reach the primary and our DSNs.
 */
static bool
valid_orcpt(const char *v, size_t len, bool utf8)
{
	size_t i = 0;

	if (len == 0 || len > SMTP_PROTO_ORCPT_MAX)
		return false;
	while (i < len && v[i] != ';') {
		if (!is_atext((unsigned char)v[i]))
			return false;
		i++;
	}
	if (i == 0 || i == len || i + 1 == len)
		return false;
	i++;
	for (size_t k = i; k < len; k++) {
		unsigned char c = (unsigned char)v[k];

		if (c >= 0x80) {
			/* next_param() already checked the UTF-8. */
			if (!utf8)
				return false;
		} else if (c == '+') {
			if (!smtp_proto_xtext_printable(v + k, len - k < 3 ? len - k : 3))
				return false;
			k += 2;
		} else if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

int
smtp_proto_parse_rcpt_params(const char *s, size_t len, bool utf8,
    struct smtp_rcpt_params *out)
{
	size_t pos = 0;
	unsigned seen = 0;
	struct param p;
	int r;

	if (out == NULL || (s == NULL && len > 0))
		return SMTP_PROTO_EINVAL;
	memset(out, 0, sizeof *out);
	while ((r = next_param(s, len, &pos, utf8, &p)) == 1) {
		unsigned bit;

		if (ieq(p.key, p.key_len, "NOTIFY"))
			bit = SEEN_NOTIFY;
		else if (ieq(p.key, p.key_len, "ORCPT"))
			bit = SEEN_ORCPT;
		else
			return SMTP_PROTO_EPARAM;
		if (seen & bit)
			return SMTP_PROTO_EPARAMDUP;
		seen |= bit;
		if (p.val == NULL)
			return SMTP_PROTO_EPARAMVAL;
		if (bit == SEEN_NOTIFY) {
			r = parse_notify(p.val, p.val_len, &out->notify);
			if (r != SMTP_PROTO_OK)
				return r;
		} else {
			if (!valid_orcpt(p.val, p.val_len, utf8))
				return SMTP_PROTO_EPARAMVAL;
			memcpy(out->orcpt, p.val, p.val_len);
			out->orcpt[p.val_len] = '\0';
			out->has_orcpt = true;
		}
	}
	return r < 0 ? r : SMTP_PROTO_OK;
}

int
smtp_proto_parse_mail(const struct smtp_cmd *cmd, struct smtp_mail *out)
{
	int r;

	if (cmd == NULL || out == NULL || cmd->verb != SMTP_VERB_MAIL ||
	    cmd->path == NULL || cmd->params == NULL)
		return SMTP_PROTO_EINVAL;
	memset(out, 0, sizeof *out);
	/* The SMTPUTF8 parameter comes after the path, so the path is parsed
	 * as if it were declared and checked against it at the end. */
	r = smtp_proto_parse_path(cmd->path, cmd->path_len, SMTP_PATH_REVERSE,
	    true, &out->from);
	if (r != SMTP_PROTO_OK)
		return r;
	r = smtp_proto_parse_mail_params(cmd->params, cmd->params_len,
	    &out->params);
	if (r != SMTP_PROTO_OK)
		return r;
	if (out->from.utf8 && !out->params.smtputf8)
		return SMTP_PROTO_EUTF8;
	return SMTP_PROTO_OK;
}

int
smtp_proto_parse_rcpt(const struct smtp_cmd *cmd, bool smtputf8,
    struct smtp_rcpt *out)
{
	int r;

	if (cmd == NULL || out == NULL || cmd->verb != SMTP_VERB_RCPT ||
	    cmd->path == NULL || cmd->params == NULL)
		return SMTP_PROTO_EINVAL;
	memset(out, 0, sizeof *out);
	r = smtp_proto_parse_path(cmd->path, cmd->path_len, SMTP_PATH_FORWARD,
	    smtputf8, &out->to);
	if (r != SMTP_PROTO_OK)
		return r;
	return smtp_proto_parse_rcpt_params(cmd->params, cmd->params_len,
	    smtputf8, &out->params);
}

/* ---- DATA phase ------------------------------------------------------------------ */

/*
 * The decoder's state is what the last few octets were, with a virtual CR
 * LF before the first one:
 *   DATA_BOL     ... CR LF             (start of a line)
 *   DATA_DOT     ... CR LF "."
 *   DATA_DOTCR   ... CR LF "." CR
 *   DATA_CR      ... CR                (any other CR)
 *   DATA_TEXT    anything else
 * The end of data is DATA_DOTCR followed by LF, i.e. exactly the first
 * occurrence of CR LF "." CR LF.  The stuffing dot (DATA_DOT followed by
 * anything but CR) is dropped; every other octet is copied out, so the
 * output never runs ahead of the input.
 */
enum { DATA_BOL, DATA_DOT, DATA_DOTCR, DATA_CR, DATA_TEXT };

void
smtp_proto_data_init(struct smtp_data_decoder *d, size_t max_line)
{
	if (max_line == 0)
		max_line = SMTP_PROTO_TEXT_LINE_MAX;
	if (max_line < 3)
		max_line = 3;
	d->max_line = max_line;
	d->line_len = 0;
	d->state = DATA_BOL;
	d->error = 0;
	d->done = false;
}

static void
data_fail(struct smtp_data_decoder *d, int error)
{
	if (d->error == 0)
		d->error = error;
}

/* Bytes that need the state machine: CR, LF and NUL.  SWAR: a byte of
 * V is zero iff HAS_ZERO flags it (exact for "any byte is zero"). */
#define DATA_ONES  0x0101010101010101ULL
#define DATA_HIGHS 0x8080808080808080ULL
#define HAS_ZERO(v) (((v) - DATA_ONES) & ~(v) & DATA_HIGHS)

/*
 * Octets from IN[I] on that are plain text in DATA_TEXT state (no CR, LF
 * or NUL) and keep the line within its limit: the whole body of a line
 * after its first octet.  The state machine would copy each of them and
 * count it into line_len, nothing else; this finds them 16 at a time with
 * SSE2 (every x86-64), 8 at a time elsewhere.
 */
static size_t
data_text_run(const struct smtp_data_decoder *d, const char *in, size_t i,
    size_t inlen)
{
	size_t room = d->max_line - 2 - d->line_len, n = 0;
	size_t lim = inlen - i < room ? inlen - i : room;
	const char *p = in + i;

#ifdef __SSE2__
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	const __m128i nul = _mm_setzero_si128();

	while (n + 16 <= lim) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + n));
		unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(
		    _mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)),
		    _mm_cmpeq_epi8(v, nul)));

		if (m != 0)
			return n + (size_t)__builtin_ctz(m);
		n += 16;
	}
#endif
	while (n + 8 <= lim) {
		uint64_t v;

		memcpy(&v, p + n, 8);
		if (HAS_ZERO(v) | HAS_ZERO(v ^ (DATA_ONES * '\r')) |
		    HAS_ZERO(v ^ (DATA_ONES * '\n')))
			break;
		n += 8;
	}
	while (n < lim && p[n] != '\r' && p[n] != '\n' && p[n] != '\0')
		n++;
	return n;
}

int
smtp_proto_data_push(struct smtp_data_decoder *d, const char *in,
    size_t inlen, char *out, size_t *outlen, size_t *consumed)
{
	size_t i, o = 0;

	*outlen = 0;
	*consumed = 0;
	if (d == NULL || ((in == NULL || out == NULL) && inlen > 0))
		return SMTP_PROTO_EINVAL;
	if (d->done)
		return d->error ? d->error : SMTP_PROTO_OK;

	for (i = 0; i < inlen; i++) {
		unsigned char c;

		while (d->state == DATA_TEXT && d->error == 0) {
			size_t n = d->line_len < d->max_line - 2 ?
			    data_text_run(d, in, i, inlen) : 0;

			/* In place with nothing unstuffed yet, O == I. */
			if (n > 0 && out + o != in + i)
				memmove(out + o, in + i, n);
			o += n;
			i += n;
			d->line_len += n;
			/* CR LF and a plain octet that is not a dot: the machine
			 * would copy the three and be in text again with one
			 * octet on the new line; so does this, and runs on. */
			if (inlen - i < 3 || in[i] != '\r' || in[i + 1] != '\n' ||
			    in[i + 2] == '.' || in[i + 2] == '\r' ||
			    in[i + 2] == '\n' || in[i + 2] == '\0')
				break;
			if (out + o != in + i)
				memmove(out + o, in + i, 3);
			o += 3;
			i += 3;
			d->line_len = 1;
		}
		if (i == inlen)
			break;
		c = (unsigned char)in[i];
		switch (d->state) {
		case DATA_BOL:
			if (c == '.') {
				d->state = DATA_DOT;
				continue;
			}
			break;
		case DATA_DOT:
			if (c == '\r') {
				d->state = DATA_DOTCR;
				continue;
			}
			/* A stuffed dot (RFC 5321 4.5.2): it is dropped and
			 * the octet is ordinary text. */
			break;
		case DATA_DOTCR:
			if (c == '\n') {
				d->done = true;
				*outlen = o;
				*consumed = i + 1;
				return d->error ? d->error : SMTP_PROTO_OK;
			}
			/* ".<CR>x": the CR after the dot was bare.  It was
			 * not copied; the message is refused anyway. */
			data_fail(d, SMTP_PROTO_EDATA_BARECR);
			d->line_len++;
			break;
		case DATA_CR:
			if (c == '\n') {
				if (d->error == 0)
					out[o++] = (char)c;
				d->state = DATA_BOL;
				d->line_len = 0;
				continue;
			}
			data_fail(d, SMTP_PROTO_EDATA_BARECR);
			d->line_len++;        /* the bare CR was text */
			break;
		default:
			break;
		}

		/* Ordinary text octet. */
		if (c == '\r') {
			d->state = DATA_CR;
		} else {
			d->state = DATA_TEXT;
			if (c == '\n')
				data_fail(d, SMTP_PROTO_EDATA_BARELF);
			else if (c == '\0')
				data_fail(d, SMTP_PROTO_EDATA_NUL);
			d->line_len++;
		}
		if (d->line_len > d->max_line - 2)
			data_fail(d, SMTP_PROTO_EDATA_LINE);
		if (d->error == 0)
			out[o++] = (char)c;
	}
	*outlen = o;
	*consumed = inlen;
	return SMTP_PROTO_AGAIN;
}

int
smtp_proto_data_error(const struct smtp_data_decoder *d)
{
	return d->error;
}

bool
smtp_proto_data_done(const struct smtp_data_decoder *d)
{
	return d->done;
}

/* ---- xtext ----------------------------------------------------------------------- */

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool
smtp_proto_xtext_valid(const char *s, size_t len)
{
	if (s == NULL && len > 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '+') {
			if (len - i < 3)
				return false;
			if (hexval((unsigned char)s[i + 1]) < 0 ||
			    hexval((unsigned char)s[i + 2]) < 0)
				return false;
			i += 2;
		} else if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

bool
smtp_proto_xtext_printable(const char *s, size_t len)
{
	if (!smtp_proto_xtext_valid(s, len))
		return false;
	for (size_t i = 0; i < len; i++) {
		int c;

		if (s[i] != '+')
			continue;
		c = hexval((unsigned char)s[i + 1]) << 4 | hexval((unsigned char)s[i + 2]);
		/* Printable means graphic or space (RFC 3461 4): 0x20..0x7E. */
		if (c < 0x20 || c > 0x7e)
			return false;
		i += 2;
	}
	return true;
}

int
smtp_proto_xtext_encode(const char *in, size_t inlen, char *out,
    size_t outsz, size_t *outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	if (outlen != NULL)
		*outlen = 0;
	if ((in == NULL && inlen > 0) || out == NULL || outsz == 0)
		return SMTP_PROTO_EINVAL;
	for (size_t i = 0; i < inlen; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c >= 33 && c <= 126 && c != '+' && c != '=') {
			if (o + 1 >= outsz)
				goto nospace;
			out[o++] = (char)c;
		} else {
			if (o + 3 >= outsz)
				goto nospace;
			out[o++] = '+';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 0xf];
		}
	}
	out[o] = '\0';
	if (outlen != NULL)
		*outlen = o;
	return SMTP_PROTO_OK;
nospace:
	out[0] = '\0';
	return SMTP_PROTO_ENOSPC;
}

int
smtp_proto_xtext_decode(const char *in, size_t inlen, char *out,
    size_t outsz, size_t *outlen)
{
	size_t o = 0;

	if (outlen != NULL)
		*outlen = 0;
	if ((in == NULL && inlen > 0) || out == NULL || outsz == 0)
		return SMTP_PROTO_EINVAL;
	/* OUT may be IN: the output never runs ahead of the input, and
	 * nothing is written before the input is known to be xtext. */
	if (!smtp_proto_xtext_valid(in, inlen)) {
		out[0] = '\0';
		return SMTP_PROTO_ESYNTAX;
	}
	for (size_t i = 0; i < inlen; i++) {
		int c = (unsigned char)in[i];

		if (c == '+') {
			c = hexval((unsigned char)in[i + 1]) << 4 |
			    hexval((unsigned char)in[i + 2]);
			i += 2;
			if (c == 0) {
				out[0] = '\0';
				return SMTP_PROTO_ESYNTAX;
			}
		}
		if (o + 1 >= outsz) {
			out[0] = '\0';
			return SMTP_PROTO_ENOSPC;
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
	if (outlen != NULL)
		*outlen = o;
	return SMTP_PROTO_OK;
}

/* ---- replies --------------------------------------------------------------------- */

/*
 * Length of an enhanced status code "c.sss.ddd" (RFC 3463) at S, whose class
 * must be CLASS ('2', '4' or '5'), followed by a space or the end; 0 if none.
 */
static size_t
enh_len(const char *s, size_t len, char class)
{
	size_t i = 0, n;

	if (len < 5 || s[0] != class || s[1] != '.')
		return 0;
	i = 2;
	for (n = 0; i < len && is_digit((unsigned char)s[i]) && n < 4; n++)
		i++;
	if (n == 0 || n > 3 || i >= len || s[i] != '.')
		return 0;
	i++;
	for (n = 0; i < len && is_digit((unsigned char)s[i]) && n < 4; n++)
		i++;
	if (n == 0 || n > 3 || (i < len && s[i] != ' '))
		return 0;
	return i;
}

int
smtp_proto_format_reply(char *buf, size_t size, size_t *len, int code,
    const char *enh, const char *text)
{
	size_t o = 0, elen;
	const char *line;

	if (len != NULL)
		*len = 0;
	if (buf == NULL || size == 0)
		return SMTP_PROTO_EINVAL;
	buf[0] = '\0';
	if (code < 200 || code > 599)
		return SMTP_PROTO_EINVAL;
	if (enh == NULL)
		enh = "";
	if (text == NULL)
		text = "";
	elen = strlen(enh);
	if (elen > 0 && enh_len(enh, elen, (char)('0' + code / 100)) != elen)
		return SMTP_PROTO_EINVAL;

	line = text;
	for (unsigned nlines = 1;; nlines++) {
		const char *nl = strchr(line, '\n');
		size_t tlen = nl ? (size_t)(nl - line) : strlen(line);
		size_t need = 4 + (elen ? elen + (tlen ? 1 : 0) : 0) + tlen + 2;

		for (size_t i = 0; i < tlen; i++) {
			unsigned char c = (unsigned char)line[i];

			if ((c < 32 && c != '\t') || c == 127)
				goto invalid;
		}
		/* Our peers' accumulators have limits like ours. */
		if (need > SMTP_PROTO_REPLY_LINE_MAX ||
		    nlines > SMTP_PROTO_REPLY_LINES_MAX)
			goto invalid;
		if (o + need + 1 > size) {
			buf[0] = '\0';
			return SMTP_PROTO_ENOSPC;
		}
		/* "250" + ("-" | " ") */
		snprintf(buf + o, 4, "%03d", code);
		o += 3;
		buf[o++] = nl ? '-' : ' ';
		if (elen) {
			memcpy(buf + o, enh, elen);
			o += elen;
			if (tlen)
				buf[o++] = ' ';
		}
		memcpy(buf + o, line, tlen);
		o += tlen;
		buf[o++] = '\r';
		buf[o++] = '\n';
		buf[o] = '\0';
		if (nl == NULL)
			break;
		line = nl + 1;
	}
	if (len != NULL)
		*len = o;
	return SMTP_PROTO_OK;
invalid:
	buf[0] = '\0';
	return SMTP_PROTO_EINVAL;
}

int
smtp_proto_parse_reply_line(const char *line, size_t len, int *code,
    bool *is_last, const char **text, size_t *text_len)
{
	if (line == NULL || code == NULL || is_last == NULL || text == NULL ||
	    text_len == NULL)
		return SMTP_PROTO_EINVAL;
	*code = 0;
	*is_last = false;
	*text = line;
	*text_len = 0;
	if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' ||
	    line[1] > '5' || !is_digit((unsigned char)line[2]))
		return SMTP_PROTO_EREPLY;
	if (len > 3 && line[3] != ' ' && line[3] != '-')
		return SMTP_PROTO_EREPLY;
	*code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	*is_last = len == 3 || line[3] == ' ';
	*text = line + (len > 3 ? 4 : 3);
	*text_len = len > 3 ? len - 4 : 0;
	return SMTP_PROTO_OK;
}

void
smtp_proto_reply_init(struct smtp_reply *r)
{
	memset(r, 0, sizeof *r);
}

/*
 * The parameters of "LIMITS" (RFC 9422 section 4): NAME=VALUE tokens
 * separated by spaces; RCPTMAX and MAILMAX are kept, unknown names and bad
 * values are ignored, as the RFC asks of a client.
 */
static void
reply_limits(struct smtp_reply *r, const char *t, size_t len)
{
	size_t a = 0;

	while (a < len) {
		size_t b, eq;
		uint64_t v;
		bool overflow;

		while (a < len && t[a] == ' ')
			a++;
		for (b = a; b < len && t[b] != ' '; b++)
			;
		for (eq = a; eq < b && t[eq] != '='; eq++)
			;
		if (eq < b && parse_u64(t + eq + 1, b - eq - 1, &v, &overflow) &&
		    v > 0) {
			uint32_t x = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;

			if (ieq(t + a, eq - a, "RCPTMAX"))
				r->rcpt_max = x;
			else if (ieq(t + a, eq - a, "MAILMAX"))
				r->mail_max = x;
		}
		a = b;
	}
}

/* One EHLO keyword line (RFC 5321 4.1.1.1 ehlo-line). */
static void
reply_ehlo_keyword(struct smtp_reply *r, const char *t, size_t len)
{
	static const struct {
		const char *kw;
		unsigned bit;
	} kws[] = {
		{ "PIPELINING", SMTP_EXT_PIPELINING },
		{ "SIZE", SMTP_EXT_SIZE },
		{ "8BITMIME", SMTP_EXT_8BITMIME },
		{ "SMTPUTF8", SMTP_EXT_SMTPUTF8 },
		{ "DSN", SMTP_EXT_DSN },
		{ "CHUNKING", SMTP_EXT_CHUNKING },
		{ "STARTTLS", SMTP_EXT_STARTTLS },
		{ "ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES },
		{ "BINARYMIME", SMTP_EXT_BINARYMIME },
		{ "LIMITS", SMTP_EXT_LIMITS },
	};
	size_t k = 0;

	while (k < len && t[k] != ' ' && t[k] != '=')
		k++;
	for (size_t i = 0; i < sizeof kws / sizeof kws[0]; i++) {
		if (!ieq(t, k, kws[i].kw))
			continue;
		r->ext |= kws[i].bit;
		if (kws[i].bit == SMTP_EXT_SIZE) {
			size_t a, b;
			uint64_t v;
			bool overflow;

			a = k;
			while (a < len && (t[a] == ' ' || t[a] == '='))
				a++;
			b = a;
			while (b < len && t[b] != ' ')
				b++;
			r->size_max = parse_u64(t + a, b - a, &v, &overflow) ?
			    v : 0;
		} else if (kws[i].bit == SMTP_EXT_LIMITS) {
			reply_limits(r, t + k, len - k);
		}
		return;
	}
}

int
smtp_proto_reply_push(struct smtp_reply *r, const char *line, size_t len)
{
	const char *text;
	size_t tlen, elen, room;
	int code, rc;
	bool last;

	if (r == NULL || line == NULL)
		return SMTP_PROTO_EINVAL;
	if (r->complete)
		return SMTP_PROTO_EREPLY;
	rc = smtp_proto_parse_reply_line(line, len, &code, &last, &text, &tlen);
	if (rc != SMTP_PROTO_OK)
		return rc;
	if (r->nlines == 0) {
		r->code = code;
		elen = enh_len(text, tlen, (char)('0' + code / 100));
		if (elen > 0 && elen < sizeof r->enh) {
			memcpy(r->enh, text, elen);
			r->enh[elen] = '\0';
		}
	} else if (code != r->code)
		return SMTP_PROTO_EREPLY;
	if (++r->nlines > SMTP_PROTO_REPLY_LINES_MAX)
		return SMTP_PROTO_EREPLY;

	/* Drop a repeated "2.0.0 " so the text reads as the server meant. */
	elen = strlen(r->enh);
	if (elen > 0 && tlen >= elen && memcmp(text, r->enh, elen) == 0 &&
	    (tlen == elen || text[elen] == ' ')) {
		text += elen;
		tlen -= elen;
		if (tlen > 0) {
			text++;
			tlen--;
		}
	}
	if (r->nlines > 1)
		reply_ehlo_keyword(r, text, tlen);

	room = sizeof r->text - 1 - r->text_len;
	if (r->nlines > 1) {
		if (room == 0)
			r->truncated = true;
		else {
			r->text[r->text_len++] = '\n';
			room--;
		}
	}
	if (tlen > room) {
		tlen = room;
		r->truncated = true;
	}
	memcpy(r->text + r->text_len, text, tlen);
	r->text_len += tlen;
	r->text[r->text_len] = '\0';

	if (!last)
		return SMTP_PROTO_AGAIN;
	r->complete = true;
	return SMTP_PROTO_OK;
}
