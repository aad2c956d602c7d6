/*
 * fuzz_smtp_command.c - libFuzzer target: command framing, command lines,
 * paths and ESMTP parameters.
 *
 * The input is a byte stream from an SMTP client.  Byte 0 picks options
 * (SMTPUTF8 declared or not); the rest is split into lines twice, once in a
 * single buffer and once fed one octet at a time, and the two runs must see
 * exactly the same lines and errors.  Each line is parsed as a command and,
 * for MAIL and RCPT, down to the path and parameters; whatever comes out
 * must satisfy the properties the relay-control code relies on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/smtp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static bool
has_upper(const char *s)
{
	for (; *s; s++)
		if (*s >= 'A' && *s <= 'Z')
			return true;
	return false;
}

static void
check_path(const struct smtp_path *p, enum smtp_path_kind kind, bool utf8)
{
	size_t dlen = strlen(p->domain);

	CHECK(strlen(p->addr) <= SMTP_PROTO_ADDR_MAX);
	CHECK(strlen(p->local) <= SMTP_PROTO_LOCAL_MAX);
	CHECK(!has_upper(p->domain));
	if (p->null) {
		CHECK(kind == SMTP_PATH_REVERSE);
		CHECK(p->addr[0] == '\0' && dlen == 0);
		return;
	}
	if (p->postmaster) {
		CHECK(kind == SMTP_PATH_FORWARD && dlen == 0);
		return;
	}
	CHECK(dlen > 0);
	if (kind == SMTP_PATH_FORWARD) {
		/* What relay control depends on: nothing in a recipient that
		 * accepted can route anywhere but to DOMAIN. */
		CHECK(!p->ip_literal && p->domain[0] != '[');
		CHECK(strpbrk(p->local, "@%!") == NULL);
		CHECK(smtp_proto_valid_domain(p->domain, dlen, utf8));
	}
	if (!utf8)
		CHECK(!p->utf8);
}

static void
check_command(const char *line, size_t len, bool utf8)
{
	struct smtp_cmd cmd;
	int r = smtp_proto_parse_command(line, len, &cmd);

	CHECK(smtp_proto_status_reply(r) != NULL);
	CHECK(r <= SMTP_PROTO_OK);
	CHECK(cmd.arg != NULL && cmd.path != NULL && cmd.params != NULL);
	if (r != SMTP_PROTO_OK)
		return;
	CHECK(cmd.arg >= line && cmd.arg + cmd.arg_len <= line + len);
	if (cmd.verb == SMTP_VERB_MAIL) {
		struct smtp_mail m;

		CHECK(cmd.path_len >= 2 && cmd.path[0] == '<');
		r = smtp_proto_parse_mail(&cmd, &m);
		if (r == SMTP_PROTO_OK) {
			check_path(&m.from, SMTP_PATH_REVERSE, m.params.smtputf8);
			CHECK(strlen(m.params.envid) <= SMTP_PROTO_ENVID_MAX);
		}
	} else if (cmd.verb == SMTP_VERB_RCPT) {
		struct smtp_rcpt rc;

		r = smtp_proto_parse_rcpt(&cmd, utf8, &rc);
		if (r == SMTP_PROTO_OK) {
			check_path(&rc.to, SMTP_PATH_FORWARD, utf8);
			if (rc.params.notify & ENV_NOTIFY_NEVER)
				CHECK(rc.params.notify == ENV_NOTIFY_NEVER);
		}
	} else if (cmd.verb == SMTP_VERB_ETRN) {
		CHECK(cmd.etrn_kind == 0 || cmd.etrn_kind == '@' ||
		    cmd.etrn_kind == '#');
		CHECK(strlen(cmd.etrn_node) > 0);
	}
	CHECK(smtp_proto_status_reply(r) != NULL);
}

/* Also run the path and parameter parsers on the raw line. */
static void
check_raw(const char *line, size_t len, bool utf8)
{
	struct smtp_path p;
	struct smtp_mail_params mp;
	struct smtp_rcpt_params rp;

	if (smtp_proto_parse_path(line, len, SMTP_PATH_FORWARD, utf8, &p) ==
	    SMTP_PROTO_OK)
		check_path(&p, SMTP_PATH_FORWARD, utf8);
	if (smtp_proto_parse_path(line, len, SMTP_PATH_REVERSE, utf8, &p) ==
	    SMTP_PROTO_OK)
		check_path(&p, SMTP_PATH_REVERSE, utf8);
	(void)smtp_proto_parse_mail_params(line, len, &mp);
	(void)smtp_proto_parse_rcpt_params(line, len, utf8, &rp);
	(void)smtp_proto_valid_helo(line, len);
}

/* FNV-1a over the events of one framing run. */
static uint64_t
mix(uint64_t h, const void *p, size_t n)
{
	const unsigned char *c = p;

	for (size_t i = 0; i < n; i++) {
		h ^= c[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static uint64_t
event(uint64_t h, int r, const char *line, size_t len, bool utf8, bool parse)
{
	h = mix(h, &r, sizeof r);
	if (r == SMTP_PROTO_OK) {
		CHECK(len <= SMTP_PROTO_LINE_MAX - 2);
		for (size_t i = 0; i < len; i++)
			CHECK(line[i] != '\r' && line[i] != '\n' && line[i] != '\0');
		h = mix(h, &len, sizeof len);
		h = mix(h, line, len);
		if (parse) {
			check_command(line, len, utf8);
			check_raw(line, len, utf8);
		}
	}
	return h;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_line_reader lr;
	const char *in = (const char *)data + 1, *line;
	size_t n, pos = 0, line_len, consumed, wlen = 0;
	uint64_t h1 = 14695981039346656037ULL, h2 = h1;
	char win[SMTP_PROTO_LINE_MAX];
	bool utf8;
	int r;

	if (size == 0)
		return 0;
	utf8 = data[0] & 1;
	n = size - 1;

	/* Run 1: the whole stream in one buffer. */
	smtp_proto_lines_init(&lr, 0);
	for (;;) {
		r = smtp_proto_next_line(&lr, in + pos, n - pos, &line,
		    &line_len, &consumed);
		CHECK(consumed <= n - pos);
		pos += consumed;
		if (r == SMTP_PROTO_AGAIN)
			break;
		CHECK(consumed > 0);
		h1 = event(h1, r, line, line_len, utf8, true);
	}

	/* Run 2: one octet at a time through a window of LINE_MAX octets,
	 * which is all a session buffers. */
	smtp_proto_lines_init(&lr, 0);
	for (size_t i = 0; i < n; i++) {
		CHECK(wlen < sizeof win);
		win[wlen++] = in[i];
		for (;;) {
			r = smtp_proto_next_line(&lr, win, wlen, &line,
			    &line_len, &consumed);
			CHECK(consumed <= wlen);
			if (r != SMTP_PROTO_AGAIN)
				h2 = event(h2, r, line, line_len, utf8, false);
			memmove(win, win + consumed, wlen - consumed);
			wlen -= consumed;
			if (r == SMTP_PROTO_AGAIN)
				break;
		}
	}
	CHECK(h1 == h2);
	return 0;
}
