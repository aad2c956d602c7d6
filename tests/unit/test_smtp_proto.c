/*
 * test_smtp_proto.c - the pure SMTP parser: command lines, line framing,
 * paths (with the classic open-relay tricks), ESMTP parameters, the DATA
 * decoder (with SMTP smuggling sequences fed in every split), xtext and
 * replies.
 *
 * Most tests are tables: one row per case, checked with a message naming
 * the row, so a failure says which input broke.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/smtp_proto.h"

#define N_ELEMS(a) (sizeof (a) / sizeof (a)[0])
#define OURS "example.test"

/* Fail with a message naming the row when GOT != WANT (statuses). */
#define CHECK_STATUS(got, want, what)                                       \
	do {                                                                \
		int got_ = (got), want_ = (want);                           \
		if (got_ != want_)                                          \
			fail_msg("%s: got %s (%d), want %s (%d)", (what),   \
			    smtp_proto_status_name(got_), got_,             \
			    smtp_proto_status_name(want_), want_);          \
	} while (0)

#define CHECK_STR(got, want, what)                                          \
	do {                                                                \
		if (strcmp((got), (want)) != 0)                             \
			fail_msg("%s: got \"%s\", want \"%s\"", (what),     \
			    (got), (want));                                 \
	} while (0)

/* ---- command lines ---------------------------------------------------------- */

static const struct cmd_case {
	const char *line;
	int status;
	enum smtp_verb verb;
	const char *arg;              /* NULL: not checked */
} cmd_cases[] = {
	{ "NOOP", SMTP_PROTO_OK, SMTP_VERB_NOOP, "" },
	{ "noop", SMTP_PROTO_OK, SMTP_VERB_NOOP, "" },
	{ "NoOp anything at all", SMTP_PROTO_OK, SMTP_VERB_NOOP, "anything at all" },
	{ "  QUIT  ", SMTP_PROTO_OK, SMTP_VERB_QUIT, "" },
	{ "QUIT now", SMTP_PROTO_ESYNTAX, SMTP_VERB_QUIT, NULL },
	{ "DATA", SMTP_PROTO_OK, SMTP_VERB_DATA, "" },
	{ "data ", SMTP_PROTO_OK, SMTP_VERB_DATA, "" },
	{ "DATA x", SMTP_PROTO_ESYNTAX, SMTP_VERB_DATA, NULL },
	{ "RSET", SMTP_PROTO_OK, SMTP_VERB_RSET, "" },
	{ "RSET x", SMTP_PROTO_ESYNTAX, SMTP_VERB_RSET, NULL },
	{ "STARTTLS", SMTP_PROTO_OK, SMTP_VERB_STARTTLS, "" },
	{ "starttls x", SMTP_PROTO_ESYNTAX, SMTP_VERB_STARTTLS, NULL },
	{ "EHLO", SMTP_PROTO_ESYNTAX, SMTP_VERB_EHLO, NULL },
	{ "EHLO   ", SMTP_PROTO_ESYNTAX, SMTP_VERB_EHLO, NULL },
	{ "EHLO client.example.org", SMTP_PROTO_OK, SMTP_VERB_EHLO, "client.example.org" },
	{ "ehlo my_host extra words", SMTP_PROTO_OK, SMTP_VERB_EHLO, "my_host" },
	{ "HELO [192.0.2.1]", SMTP_PROTO_OK, SMTP_VERB_HELO, "[192.0.2.1]" },
	{ "VRFY", SMTP_PROTO_ESYNTAX, SMTP_VERB_VRFY, NULL },
	{ "VRFY user", SMTP_PROTO_OK, SMTP_VERB_VRFY, "user" },
	{ "EXPN list", SMTP_PROTO_OK, SMTP_VERB_EXPN, "list" },
	{ "HELP", SMTP_PROTO_OK, SMTP_VERB_HELP, "" },
	{ "HELP MAIL", SMTP_PROTO_OK, SMTP_VERB_HELP, "MAIL" },
	{ "AUTH PLAIN", SMTP_PROTO_OK, SMTP_VERB_AUTH, "PLAIN" },
	{ "AUTH", SMTP_PROTO_ESYNTAX, SMTP_VERB_AUTH, NULL },
	{ "XYZZY", SMTP_PROTO_EUNKNOWN, SMTP_VERB_UNKNOWN, NULL },
	{ "", SMTP_PROTO_EUNKNOWN, SMTP_VERB_UNKNOWN, NULL },
	{ "MAILFROM:<a@b.example>", SMTP_PROTO_EUNKNOWN, SMTP_VERB_UNKNOWN, NULL },
	{ "MAI", SMTP_PROTO_EUNKNOWN, SMTP_VERB_UNKNOWN, NULL },
	{ "STARTTLSX", SMTP_PROTO_EUNKNOWN, SMTP_VERB_UNKNOWN, NULL },
	{ "MAIL", SMTP_PROTO_ESYNTAX, SMTP_VERB_MAIL, NULL },
	{ "MAIL FROM:", SMTP_PROTO_ESYNTAX, SMTP_VERB_MAIL, NULL },
	{ "MAIL FROM:   ", SMTP_PROTO_ESYNTAX, SMTP_VERB_MAIL, NULL },
	{ "MAIL TO:<a@b.example>", SMTP_PROTO_ESYNTAX, SMTP_VERB_MAIL, NULL },
	{ "MAIL FROM:a@b.example", SMTP_PROTO_ESENDER, SMTP_VERB_MAIL, NULL },
	{ "MAIL FROM:<a@b.example", SMTP_PROTO_ESENDER, SMTP_VERB_MAIL, NULL },
	{ "MAIL FROM:<a@b.example>SIZE=1", SMTP_PROTO_ESENDER, SMTP_VERB_MAIL, NULL },
	{ "RCPT", SMTP_PROTO_ESYNTAX, SMTP_VERB_RCPT, NULL },
	{ "RCPT FROM:<a@example.test>", SMTP_PROTO_ESYNTAX, SMTP_VERB_RCPT, NULL },
	{ "RCPT TO:a@example.test", SMTP_PROTO_ERCPT, SMTP_VERB_RCPT, NULL },
	{ "RCPT TO:<a@example.test>>", SMTP_PROTO_ERCPT, SMTP_VERB_RCPT, NULL },
	{ "BDAT", SMTP_PROTO_ESYNTAX, SMTP_VERB_BDAT, NULL },
	{ "BDAT x", SMTP_PROTO_ESYNTAX, SMTP_VERB_BDAT, NULL },
	{ "BDAT -1", SMTP_PROTO_ESYNTAX, SMTP_VERB_BDAT, NULL },
	{ "BDAT +1", SMTP_PROTO_ESYNTAX, SMTP_VERB_BDAT, NULL },
	{ "BDAT 1 FIRST", SMTP_PROTO_ESYNTAX, SMTP_VERB_BDAT, NULL },
	{ "BDAT 1 LAST x", SMTP_PROTO_ESYNTAX, SMTP_VERB_BDAT, NULL },
	{ "BDAT 18446744073709551616", SMTP_PROTO_ETOOBIG, SMTP_VERB_BDAT, NULL },
	{ "ETRN", SMTP_PROTO_ESYNTAX, SMTP_VERB_ETRN, NULL },
	{ "ETRN @", SMTP_PROTO_ESYNTAX, SMTP_VERB_ETRN, NULL },
	{ "ETRN #", SMTP_PROTO_ESYNTAX, SMTP_VERB_ETRN, NULL },
	{ "ETRN bad_domain", SMTP_PROTO_ESYNTAX, SMTP_VERB_ETRN, NULL },
	{ "ETRN a.example b.example", SMTP_PROTO_ESYNTAX, SMTP_VERB_ETRN, NULL },
	{ "ETRN #bad queue", SMTP_PROTO_ESYNTAX, SMTP_VERB_ETRN, NULL },
};

/* Each command line gives the verb and status in the table, verbs match
 * case-insensitively, and the argument is the trimmed rest of the line. */
static void
test_command_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(cmd_cases); i++) {
		const struct cmd_case *c = &cmd_cases[i];
		struct smtp_cmd cmd;
		int r = smtp_proto_parse_command(c->line, strlen(c->line), &cmd);

		CHECK_STATUS(r, c->status, c->line);
		if (cmd.verb != c->verb)
			fail_msg("%s: verb %s, want %s", c->line,
			    smtp_proto_verb_name(cmd.verb),
			    smtp_proto_verb_name(c->verb));
		if (c->arg != NULL) {
			char arg[SMTP_PROTO_LINE_MAX];

			snprintf(arg, sizeof arg, "%.*s", (int)cmd.arg_len, cmd.arg);
			CHECK_STR(arg, c->arg, c->line);
		}
	}
}

static const struct path_split_case {
	const char *line;
	const char *path;
	const char *params;
} path_split_cases[] = {
	{ "MAIL FROM:<a@b.example>", "<a@b.example>", "" },
	{ "mail from:<>", "<>", "" },
	/* Postfix tolerates the space after the colon; so do we. */
	{ "MAIL FROM: <a@b.example> SIZE=10", "<a@b.example>", "SIZE=10" },
	{ "MAIL FROM:   <a@b.example>    SIZE=10  BODY=8BITMIME  ",
	  "<a@b.example>", "SIZE=10  BODY=8BITMIME" },
	{ "MAIL FROM:<\"a>b\"@c.example> RET=FULL", "<\"a>b\"@c.example>", "RET=FULL" },
	{ "RCPT TO:<bob@example.test> NOTIFY=NEVER", "<bob@example.test>", "NOTIFY=NEVER" },
	{ "RCPT TO: <Postmaster>", "<Postmaster>", "" },
	{ "rcpt to:<\"x\\\"y\"@example.test>", "<\"x\\\"y\"@example.test>", "" },
};

/* MAIL and RCPT lines are split into the bracketed path and the parameter
 * text, with the space after the colon and extra spaces tolerated. */
static void
test_command_path_split(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(path_split_cases); i++) {
		const struct path_split_case *c = &path_split_cases[i];
		struct smtp_cmd cmd;
		char path[SMTP_PROTO_LINE_MAX], params[SMTP_PROTO_LINE_MAX];

		CHECK_STATUS(smtp_proto_parse_command(c->line, strlen(c->line),
		    &cmd), SMTP_PROTO_OK, c->line);
		snprintf(path, sizeof path, "%.*s", (int)cmd.path_len, cmd.path);
		snprintf(params, sizeof params, "%.*s", (int)cmd.params_len,
		    cmd.params);
		CHECK_STR(path, c->path, c->line);
		CHECK_STR(params, c->params, c->line);
	}
}

/* BDAT sizes are decimal and overflow-checked up to 2^64-1; LAST is
 * recognised in any case. */
static void
test_command_bdat(void **state)
{
	struct smtp_cmd cmd;
	const char *l;

	(void)state;
	l = "BDAT 100";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_true(cmd.bdat_size == 100 && !cmd.bdat_last);
	l = "bdat 0 last";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_true(cmd.bdat_size == 0 && cmd.bdat_last);
	l = "BDAT 18446744073709551615 LAST";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_true(cmd.bdat_size == UINT64_MAX && cmd.bdat_last);
	l = "BDAT 99999999999999999999";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_ETOOBIG);
}

/* ETRN gives the kind and a lower-cased domain, or the queue name as is. */
static void
test_command_etrn(void **state)
{
	struct smtp_cmd cmd;
	const char *l;

	(void)state;
	l = "ETRN Example.TEST";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_int_equal(cmd.etrn_kind, 0);
	assert_string_equal(cmd.etrn_node, "example.test");
	l = "ETRN @Example.TEST.";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_int_equal(cmd.etrn_kind, '@');
	assert_string_equal(cmd.etrn_node, "example.test");
	l = "etrn #Queue_1";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_int_equal(cmd.etrn_kind, '#');
	assert_string_equal(cmd.etrn_node, "Queue_1");
}

/* A command line is at most 512 octets with its CRLF: 510 octets parse,
 * 511 are refused as too long. */
static void
test_command_length(void **state)
{
	char line[SMTP_PROTO_LINE_MAX];
	struct smtp_cmd cmd;

	(void)state;
	memset(line, 'x', sizeof line);
	memcpy(line, "NOOP ", 5);
	assert_int_equal(smtp_proto_parse_command(line, SMTP_PROTO_LINE_MAX - 2,
	    &cmd), SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_parse_command(line, SMTP_PROTO_LINE_MAX - 1,
	    &cmd), SMTP_PROTO_ETOOLONG);
}

/* ---- line framing ------------------------------------------------------------ */

/*
 * Run the line reader over STREAM cut into reads at the offsets in CUTS
 * (ascending, NCUTS of them), through a buffer of LR's maximum size as a
 * session would, and describe what it saw: "OK:<line>|" per line, the
 * status name per error, "END" if the buffer ended mid-line or empty.
 */
static void
frame(const char *stream, size_t n, const size_t *cuts, size_t ncuts,
    size_t max, char *desc, size_t desclen)
{
	struct smtp_line_reader lr;
	char win[2048];
	size_t wlen = 0, pos = 0, d = 0;

	smtp_proto_lines_init(&lr, max);
	assert_true(lr.max <= sizeof win);
	desc[0] = '\0';
	for (size_t k = 0; k <= ncuts; k++) {
		size_t next = k < ncuts ? cuts[k] : n;
		const char *line;
		size_t line_len, consumed;
		int r;

		assert_true(wlen + (next - pos) <= sizeof win);
		memcpy(win + wlen, stream + pos, next - pos);
		wlen += next - pos;
		pos = next;
		do {
			r = smtp_proto_next_line(&lr, win, wlen, &line,
			    &line_len, &consumed);
			assert_true(consumed <= wlen);
			if (r == SMTP_PROTO_OK)
				d += (size_t)snprintf(desc + d, desclen - d,
				    "OK:%.*s|", (int)line_len, line);
			else if (r != SMTP_PROTO_AGAIN)
				d += (size_t)snprintf(desc + d, desclen - d,
				    "%s|", smtp_proto_status_name(r));
			assert_true(d < desclen);
			memmove(win, win + consumed, wlen - consumed);
			wlen -= consumed;
		} while (r != SMTP_PROTO_AGAIN);
		/* What a session must be able to buffer. */
		assert_true(wlen < lr.max);
	}
	snprintf(desc + d, desclen - d, "%s", wlen ? "PARTIAL" : "END");
}

static const struct line_case {
	const char *name;
	const char *stream;
	size_t len;                   /* 0: strlen */
	const char *want;
} line_cases[] = {
	{ "two lines", "NOOP\r\nQUIT\r\n", 0, "OK:NOOP|OK:QUIT|END" },
	{ "partial", "NOOP\r\nQU", 0, "OK:NOOP|PARTIAL" },
	{ "partial cr", "NOOP\r", 0, "PARTIAL" },
	{ "empty line", "\r\n", 0, "OK:|END" },
	/* A bare LF is not a line end: the rest up to CRLF is dropped. */
	{ "bare lf", "NOOP\nQUIT\r\nRSET\r\n", 0, "bare_lf|OK:RSET|END" },
	{ "bare lf at start", "\nRSET\r\n", 0, "bare_lf|END" },
	{ "bare cr", "NO\rOP\r\nRSET\r\n", 0, "bare_cr|OK:RSET|END" },
	{ "cr cr lf", "NOOP\r\r\nRSET\r\n", 0, "bare_cr|OK:RSET|END" },
	{ "lf cr", "NOOP\n\rRSET\r\n", 0, "bare_lf|END" },
	{ "nul", "NO\0OP\r\nRSET\r\n", 13, "nul|OK:RSET|END" },
	{ "smuggled dot", "DATA\r\n.\nMAIL FROM:<x@y>\r\n", 0,
	  "OK:DATA|bare_lf|END" },
	{ "error then partial", "a\nb\r", 0, "bare_lf|PARTIAL" },
};

/* Only CRLF ends a line; bare LF, bare CR and NUL are distinct errors and
 * the rest of the offending line is discarded, for the stream in one read,
 * one octet per read, and two reads split at every offset. */
static void
test_lines_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(line_cases); i++) {
		const struct line_case *c = &line_cases[i];
		size_t n = c->len ? c->len : strlen(c->stream);
		size_t cuts[256];
		char desc[1024];

		assert_true(n < N_ELEMS(cuts));
		frame(c->stream, n, NULL, 0, 0, desc, sizeof desc);
		CHECK_STR(desc, c->want, c->name);
		for (size_t k = 0; k < n; k++)
			cuts[k] = k + 1;
		frame(c->stream, n, cuts, n ? n - 1 : 0, 0, desc, sizeof desc);
		CHECK_STR(desc, c->want, c->name);
		for (size_t s = 1; s < n; s++) {
			frame(c->stream, n, &s, 1, 0, desc, sizeof desc);
			CHECK_STR(desc, c->want, c->name);
		}
	}
}

/* A line of exactly max - 2 octets passes, one more octet is "too long",
 * and the tail of the long line is never returned as a command. */
static void
test_lines_too_long(void **state)
{
	char stream[1200], desc[2048], want[1200];
	size_t n;

	(void)state;
	memset(stream, 'x', SMTP_PROTO_LINE_MAX - 2);
	memcpy(stream + SMTP_PROTO_LINE_MAX - 2, "\r\nQUIT\r\n", 8);
	n = SMTP_PROTO_LINE_MAX - 2 + 8;
	frame(stream, n, NULL, 0, 0, desc, sizeof desc);
	snprintf(want, sizeof want, "OK:%.*s|OK:QUIT|END",
	    SMTP_PROTO_LINE_MAX - 2, stream);
	CHECK_STR(desc, want, "max line");

	/* 600 octets whose tail looks like a command. */
	memset(stream, 'x', 601);
	memcpy(stream + 590, "RCPT TO:<x>", 11);
	memcpy(stream + 601, "\r\nQUIT\r\n", 8);
	n = 609;
	frame(stream, n, NULL, 0, 0, desc, sizeof desc);
	CHECK_STR(desc, "line_too_long|OK:QUIT|END", "long line");
	for (size_t s = 1; s < n; s += 7) {
		frame(stream, n, &s, 1, 0, desc, sizeof desc);
		CHECK_STR(desc, "line_too_long|OK:QUIT|END", "long line split");
	}
	/* A small limit: 5 octets with CRLF. */
	frame("abc\r\nabcd\r\nok\r\n", 15, NULL, 0, 5, desc, sizeof desc);
	CHECK_STR(desc, "OK:abc|line_too_long|OK:ok|END", "max 5");
}

/* ---- paths -------------------------------------------------------------------- */

static char long_local[100], long_label[100], long_domain[300], long_addr[300];
static char ok_local[100], ok_label[100], ok_addr[300], ok_addr_want[300];

static void
build_long_inputs(void)
{
	char l63[64], l64[65], d189[190], d190[191];

	memset(l63, 'a', 63);
	l63[63] = '\0';
	memset(l64, 'a', 64);
	l64[64] = '\0';
	snprintf(long_local, sizeof long_local, "<%sb@example.test>", l64);
	snprintf(ok_local, sizeof ok_local, "<%s@example.test>", l64);
	snprintf(long_label, sizeof long_label, "<u@%sb.test>", l63);
	snprintf(ok_label, sizeof ok_label, "<u@%s.test>", l63);
	/* 4 * 64 + 1 = 257 octets: over 255. */
	snprintf(long_domain, sizeof long_domain, "<u@%s.%s.%s.%s.a>", l63, l63,
	    l63, l63);
	/* A domain of 189 octets: three 63-octet labels with dots is 191. */
	snprintf(d189, sizeof d189, "%.63s.%.63s.%.61s", l63, l63, l63);
	snprintf(d190, sizeof d190, "%.63s.%.63s.%.62s", l63, l63, l63);
	/* 64 + 1 + 189 = 254 octets: the limit; with 190: one over. */
	snprintf(ok_addr, sizeof ok_addr, "<%s@%s>", l64, d189);
	snprintf(ok_addr_want, sizeof ok_addr_want, "%s@%s", l64, d189);
	snprintf(long_addr, sizeof long_addr, "<%s@%s>", l64, d190);
}

static const struct path_case {
	enum smtp_path_kind kind;
	bool utf8;
	const char *path;
	int status;
	const char *addr;             /* NULL: not checked */
	const char *domain;
} path_cases[] = {
#define F SMTP_PATH_FORWARD
#define R SMTP_PATH_REVERSE
	{ F, false, "<user@Example.TEST>", SMTP_PROTO_OK, "user@example.test", "example.test" },
	{ F, false, "<User.Name+tag@example.test>", SMTP_PROTO_OK,
	  "User.Name+tag@example.test", "example.test" },
	{ F, false, "<user@example.test.>", SMTP_PROTO_OK, "user@example.test", "example.test" },
	{ F, false, "<user@example.test..>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@.>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<postmaster>", SMTP_PROTO_OK, "postmaster", "" },
	{ F, false, "<PostMaster>", SMTP_PROTO_OK, "PostMaster", "" },
	{ F, false, "<postmaster@example.test>", SMTP_PROTO_OK,
	  "postmaster@example.test", "example.test" },
	{ F, false, "<abuse>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<\"john doe\"@example.test>", SMTP_PROTO_OK,
	  "\"john doe\"@example.test", "example.test" },
	{ F, false, "<\"john.doe\"@example.test>", SMTP_PROTO_OK,
	  "john.doe@example.test", "example.test" },
	{ F, false, "<\"\"@example.test>", SMTP_PROTO_OK, "\"\"@example.test", "example.test" },
	{ F, false, "<\"unterminated@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<\"a\"b@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@-bad.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@bad-.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@a--b.test>", SMTP_PROTO_OK, "user@a--b.test", "a--b.test" },
	{ F, false, "<user@xn--bcher-kva.test>", SMTP_PROTO_OK, NULL, "xn--bcher-kva.test" },
	{ F, false, "<user@a..b>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@exa_mple.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@exa mple.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<a..b@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<.a@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<a.@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<a b@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<user@example.test", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "user@example.test", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, "<j\xc3\xb6rg@ex\xc3\xa4mple.test>", SMTP_PROTO_EUTF8, NULL, NULL },
	{ F, true, "<j\xc3\xb6rg@ex\xc3\xa4mple.test>", SMTP_PROTO_OK,
	  "j\xc3\xb6rg@ex\xc3\xa4mple.test", "ex\xc3\xa4mple.test" },
	{ F, true, "<J\xc3\xb6rg@EX\xc3\x84MPLE.test>", SMTP_PROTO_OK,
	  "J\xc3\xb6rg@ex\xc3\x84mple.test", "ex\xc3\x84mple.test" },
	{ F, true, "<j\xc3\x28rg@example.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, true, "<jorg@ex\xc0\xafmple.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, true, "<jorg@ex\xed\xa0\x80mple.test>", SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, long_local, SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, ok_local, SMTP_PROTO_OK, NULL, "example.test" },
	{ F, false, long_label, SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, ok_label, SMTP_PROTO_OK, NULL, NULL },
	{ F, false, long_domain, SMTP_PROTO_ERCPT, NULL, NULL },
	{ F, false, ok_addr, SMTP_PROTO_OK, ok_addr_want, NULL },
	{ F, false, long_addr, SMTP_PROTO_ERCPT, NULL, NULL },

	{ R, false, "<>", SMTP_PROTO_OK, "", "" },
	{ R, false, "<postmaster>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<Alice@B.Example>", SMTP_PROTO_OK, "Alice@b.example", "b.example" },
	{ R, false, "<user%other@example.org>", SMTP_PROTO_OK, "user%other@example.org", NULL },
	{ R, false, "<host!user@example.org>", SMTP_PROTO_OK, "host!user@example.org", NULL },
	{ R, false, "<\"a@b\"@example.org>", SMTP_PROTO_OK, "\"a@b\"@example.org", NULL },
	{ R, false, "<@a.example,@b.example:user@c.example>", SMTP_PROTO_OK,
	  "user@c.example", "c.example" },
	{ R, false, "<@a.example:>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<@a.example,b.example:u@c.example>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<user@[192.0.2.1]>", SMTP_PROTO_OK, "user@[192.0.2.1]", "[192.0.2.1]" },
	{ R, false, "<user@[IPv6:2001:db8::1]>", SMTP_PROTO_OK, NULL, "[ipv6:2001:db8::1]" },
	{ R, false, "<user@[300.1.1.1]>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<user@[IPv6:nonsense]>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<a@b@c.example>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<a@>", SMTP_PROTO_ESENDER, NULL, NULL },
	{ R, false, "<j\xc3\xb6rg@example.org>", SMTP_PROTO_EUTF8, NULL, NULL },
#undef F
#undef R
};

/* Paths give the address, the lower-cased domain and the right status for
 * each syntax rule and length limit of RFC 5321. */
static void
test_path_table(void **state)
{
	(void)state;
	build_long_inputs();
	for (size_t i = 0; i < N_ELEMS(path_cases); i++) {
		const struct path_case *c = &path_cases[i];
		struct smtp_path p;
		int r = smtp_proto_parse_path(c->path, strlen(c->path), c->kind,
		    c->utf8, &p);

		CHECK_STATUS(r, c->status, c->path);
		if (r != SMTP_PROTO_OK)
			continue;
		if (c->addr != NULL)
			CHECK_STR(p.addr, c->addr, c->path);
		if (c->domain != NULL)
			CHECK_STR(p.domain, c->domain, c->path);
	}
}

/* Flags: the null path, <postmaster>, address literals and UTF-8. */
static void
test_path_flags(void **state)
{
	struct smtp_path p;

	(void)state;
	assert_int_equal(smtp_proto_parse_path("<>", 2, SMTP_PATH_REVERSE,
	    false, &p), SMTP_PROTO_OK);
	assert_true(p.null && !p.postmaster);
	assert_int_equal(smtp_proto_parse_path("<postmaster>", 12,
	    SMTP_PATH_FORWARD, false, &p), SMTP_PROTO_OK);
	assert_true(p.postmaster && !p.null);
	assert_int_equal(smtp_proto_parse_path("<u@[192.0.2.1]>", 15,
	    SMTP_PATH_REVERSE, false, &p), SMTP_PROTO_OK);
	assert_true(p.ip_literal);
	assert_int_equal(smtp_proto_parse_path("<\xc3\xa9@x.example>", 14,
	    SMTP_PATH_REVERSE, true, &p), SMTP_PROTO_OK);
	assert_true(p.utf8);
}

/*
 * The classic open-relay test addresses (the old relay-test suites tried
 * each against a server's own domain) with OURS as our domain and
 * other.com as someone else's.  Each must be refused: by the parser with
 * the status given, or (status OK) by a domain that is not ours.
 */
static const struct relay_case {
	const char *path;
	int status;
} relay_cases[] = {
	{ "<user@other.com>", SMTP_PROTO_OK },
	{ "<user%other.com@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<user%other.com%" OURS "@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<\"user@other.com\"@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<\"user%other.com\"@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<\"other.com!user\"@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<\"user\\@other.com\"@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<user@other.com@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<user@" OURS "@other.com>", SMTP_PROTO_ERELAY },
	{ "<\"user\"@other.com@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<@" OURS ":user@other.com>", SMTP_PROTO_ERELAY },
	{ "<@" OURS ",@other.com:user@other.com>", SMTP_PROTO_ERELAY },
	{ "<@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<other.com!user@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<other.com!user>", SMTP_PROTO_ERCPT },
	{ "<user%other.com>", SMTP_PROTO_ERCPT },
	{ "<\"user@other.com\">", SMTP_PROTO_ERELAY },
	{ "<user@other.com.>", SMTP_PROTO_OK },
	{ "<user@OTHER.COM>", SMTP_PROTO_OK },
	{ "<user@[127.0.0.1]>", SMTP_PROTO_ERELAY },
	{ "<user@[192.0.2.1]>", SMTP_PROTO_ERELAY },
	{ "<user@[IPv6:::1]>", SMTP_PROTO_ERELAY },
	{ "<user%other.com@[127.0.0.1]>", SMTP_PROTO_ERELAY },
	{ "<user@other.com%" OURS ">", SMTP_PROTO_ERCPT },
	{ "<user\\@other.com@" OURS ">", SMTP_PROTO_ERELAY },
	{ "<user@" OURS ".other.com>", SMTP_PROTO_OK },
	{ "<user@" OURS ":25>", SMTP_PROTO_ERCPT },
	{ "<user@" OURS "..>", SMTP_PROTO_ERCPT },
	{ "<user@other.com " OURS ">", SMTP_PROTO_ERCPT },
	{ "<user@other.com>@" OURS, SMTP_PROTO_ERCPT },
	{ "<user@other\xc3\xa9.com>", SMTP_PROTO_EUTF8 },
};

/* Every classic relay trick aimed at OURS is refused, and the plain
 * address at OURS (any case, with a root dot) is accepted as ours. */
static void
test_path_open_relay(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(relay_cases); i++) {
		const struct relay_case *c = &relay_cases[i];
		char line[SMTP_PROTO_LINE_MAX];
		struct smtp_cmd cmd;
		struct smtp_rcpt rcpt;
		int r;

		snprintf(line, sizeof line, "RCPT TO:%s", c->path);
		r = smtp_proto_parse_command(line, strlen(line), &cmd);
		if (r == SMTP_PROTO_OK)
			r = smtp_proto_parse_rcpt(&cmd, false, &rcpt);
		CHECK_STATUS(r, c->status, c->path);
		if (r == SMTP_PROTO_OK && strcmp(rcpt.to.domain, OURS) == 0)
			fail_msg("%s: accepted as ours", c->path);
	}
	{
		static const char *const ours[] = {
			"RCPT TO:<user@" OURS ">", "RCPT TO:<User@EXAMPLE.Test>",
			"RCPT TO: <user@" OURS ".>", "rcpt to:<\"user\"@" OURS ">",
		};

		for (size_t i = 0; i < N_ELEMS(ours); i++) {
			struct smtp_cmd cmd;
			struct smtp_rcpt rcpt;

			CHECK_STATUS(smtp_proto_parse_command(ours[i],
			    strlen(ours[i]), &cmd), SMTP_PROTO_OK, ours[i]);
			CHECK_STATUS(smtp_proto_parse_rcpt(&cmd, false, &rcpt),
			    SMTP_PROTO_OK, ours[i]);
			CHECK_STR(rcpt.to.domain, OURS, ours[i]);
		}
	}
}

/* Domain and HELO syntax helpers. */
static void
test_domain_and_helo(void **state)
{
	(void)state;
	assert_true(smtp_proto_valid_domain("a.example", 9, false));
	assert_true(smtp_proto_valid_domain("localhost", 9, false));
	assert_true(smtp_proto_valid_domain("1.2.3.4", 7, false));
	assert_false(smtp_proto_valid_domain("a.example.", 10, false));
	assert_false(smtp_proto_valid_domain("", 0, false));
	assert_false(smtp_proto_valid_domain("-a", 2, false));
	assert_false(smtp_proto_valid_domain("b\xc3\xbc" "cher", 7, false));
	assert_true(smtp_proto_valid_domain("b\xc3\xbc" "cher", 7, true));
	assert_true(smtp_proto_valid_helo("mx.example.org", 14));
	assert_true(smtp_proto_valid_helo("mx.example.org.", 15));
	assert_true(smtp_proto_valid_helo("[192.0.2.1]", 11));
	assert_true(smtp_proto_valid_helo("[IPv6:2001:db8::1]", 18));
	assert_false(smtp_proto_valid_helo("[192.0.2]", 9));
	assert_false(smtp_proto_valid_helo("my_host", 7));
	assert_false(smtp_proto_valid_helo("192.0.2.1]", 10));
}

/* ---- parameters ------------------------------------------------------------- */

static char envid100[120], envid101[120];

static const struct mail_param_case {
	const char *params;
	int status;
} mail_param_cases[] = {
	{ "", SMTP_PROTO_OK },
	{ "SIZE=1000", SMTP_PROTO_OK },
	{ "size=1000 body=8bitmime", SMTP_PROTO_OK },
	{ "SIZE=18446744073709551615", SMTP_PROTO_OK },
	{ "SIZE=18446744073709551616", SMTP_PROTO_ETOOBIG },
	{ "SIZE=abc", SMTP_PROTO_EPARAMVAL },
	{ "SIZE=-1", SMTP_PROTO_EPARAMVAL },
	{ "SIZE", SMTP_PROTO_EPARAMVAL },
	{ "SIZE=", SMTP_PROTO_EPARAMVAL },
	{ "SIZE=1 SIZE=2", SMTP_PROTO_EPARAMDUP },
	{ "SIZE=1 size=1", SMTP_PROTO_EPARAMDUP },
	{ "BODY=7BIT", SMTP_PROTO_OK },
	{ "BODY=BINARYMIME", SMTP_PROTO_OK },
	{ "BODY=9BIT", SMTP_PROTO_EPARAMVAL },
	{ "SMTPUTF8", SMTP_PROTO_OK },
	{ "SMTPUTF8=yes", SMTP_PROTO_EPARAMVAL },
	{ "SMTPUTF8 SMTPUTF8", SMTP_PROTO_EPARAMDUP },
	{ "RET=FULL", SMTP_PROTO_OK },
	{ "RET=hdrs", SMTP_PROTO_OK },
	{ "RET=ALL", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=QQ314159", SMTP_PROTO_OK },
	{ "ENVID=a+2Bb+3D", SMTP_PROTO_OK },
	{ "ENVID=a+2bb", SMTP_PROTO_EPARAMVAL },
	/* RFC 3461 4.4: the decoded ENVID is printable US-ASCII (space
	 * included); controls, DEL and 8-bit octets are 501 5.5.4. */
	{ "ENVID=a+20b+7E", SMTP_PROTO_OK },
	{ "ENVID=a+0D+0Ab", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=a+00", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=+1F", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=x+7F", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=x+C3+B6", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=a+2", SMTP_PROTO_EPARAMVAL },
	{ "ENVID=", SMTP_PROTO_EPARAMVAL },
	{ envid100, SMTP_PROTO_OK },
	{ envid101, SMTP_PROTO_EPARAMVAL },
	{ "AUTH=<>", SMTP_PROTO_OK },
	{ "AUTH=user+40example.org", SMTP_PROTO_OK },
	{ "XFOO=bar", SMTP_PROTO_EPARAM },
	{ "NOTIFY=NEVER", SMTP_PROTO_EPARAM },
	{ "ORCPT=rfc822;a@b", SMTP_PROTO_EPARAM },
	{ "SIZE=10 XFOO", SMTP_PROTO_EPARAM },
	{ "=x", SMTP_PROTO_ESYNTAX },
	{ "-X=1", SMTP_PROTO_ESYNTAX },
	{ "SI_ZE=1", SMTP_PROTO_ESYNTAX },
	{ "BODY=8BIT\xc3\xa9", SMTP_PROTO_EPARAMVAL },
};

/* MAIL parameters: known keywords in any case with valid values pass;
 * unknown keywords, duplicates and bad values each get their own status. */
static void
test_mail_params_table(void **state)
{
	(void)state;
	snprintf(envid100, sizeof envid100, "ENVID=%0100d", 0);
	snprintf(envid101, sizeof envid101, "ENVID=%0101d", 0);
	for (size_t i = 0; i < N_ELEMS(mail_param_cases); i++) {
		const struct mail_param_case *c = &mail_param_cases[i];
		struct smtp_mail_params p;

		CHECK_STATUS(smtp_proto_parse_mail_params(c->params,
		    strlen(c->params), &p), c->status, c->params);
	}
}

/* MAIL parameter values land in the right fields. */
static void
test_mail_params_values(void **state)
{
	struct smtp_mail_params p;
	const char *s = "size=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>";

	(void)state;
	assert_int_equal(smtp_proto_parse_mail_params(s, strlen(s), &p),
	    SMTP_PROTO_OK);
	assert_true(p.has_size && p.size == 123);
	assert_int_equal(p.body, ENV_BODY_8BITMIME);
	assert_true(p.smtputf8 && p.auth && p.has_envid);
	assert_int_equal(p.ret, ENV_RET_HDRS);
	assert_string_equal(p.envid, "QQ+2B1");
	assert_int_equal(smtp_proto_parse_mail_params("", 0, &p), SMTP_PROTO_OK);
	assert_true(!p.has_size && p.body == ENV_BODY_NONE &&
	    p.ret == ENV_RET_NONE && !p.smtputf8 && !p.has_envid);
}

static const struct rcpt_param_case {
	const char *params;
	bool utf8;
	int status;
	unsigned notify;
} rcpt_param_cases[] = {
	{ "", false, SMTP_PROTO_OK, 0 },
	{ "NOTIFY=NEVER", false, SMTP_PROTO_OK, ENV_NOTIFY_NEVER },
	{ "notify=failure", false, SMTP_PROTO_OK, ENV_NOTIFY_FAILURE },
	{ "NOTIFY=SUCCESS,FAILURE,DELAY", false, SMTP_PROTO_OK,
	  ENV_NOTIFY_SUCCESS | ENV_NOTIFY_FAILURE | ENV_NOTIFY_DELAY },
	{ "NOTIFY=DELAY,SUCCESS", false, SMTP_PROTO_OK,
	  ENV_NOTIFY_SUCCESS | ENV_NOTIFY_DELAY },
	{ "NOTIFY=NEVER,SUCCESS", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=FAILURE,NEVER", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=SUCCESS,,DELAY", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=SUCCESS,", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=SUCCESS,SUCCESS", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=ALWAYS", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "NOTIFY=NEVER NOTIFY=NEVER", false, SMTP_PROTO_EPARAMDUP, 0 },
	{ "ORCPT=rfc822;bob@example.test", false, SMTP_PROTO_OK, 0 },
	{ "ORCPT=rfc822;a+2Bb", false, SMTP_PROTO_OK, 0 },
	{ "ORCPT=rfc822", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc822;", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=;x", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc822;a+zz", false, SMTP_PROTO_EPARAMVAL, 0 },
	/* RFC 3461 4.2: the decoded address is printable US-ASCII. */
	{ "ORCPT=rfc822;a+20b@example.test", false, SMTP_PROTO_OK, 0 },
	{ "ORCPT=rfc822;a+0D+0AX-Bad:+20y@example.test", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc822;a+00@example.test", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc822;a+09@example.test", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc822;a+7F@example.test", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc822;a+FF@example.test", true, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=rfc 822;a", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=utf-8;j\xc3\xb6rg@example.test", false, SMTP_PROTO_EPARAMVAL, 0 },
	{ "ORCPT=utf-8;j\xc3\xb6rg@example.test", true, SMTP_PROTO_OK, 0 },
	{ "ORCPT=rfc822;a@b ORCPT=rfc822;c@d", false, SMTP_PROTO_EPARAMDUP, 0 },
	{ "SIZE=1", false, SMTP_PROTO_EPARAM, 0 },
	{ "XFOO", false, SMTP_PROTO_EPARAM, 0 },
};

/* RCPT parameters: NOTIFY=NEVER only alone, the comma list without
 * repeats, ORCPT as addr-type;xtext, nothing else. */
static void
test_rcpt_params_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(rcpt_param_cases); i++) {
		const struct rcpt_param_case *c = &rcpt_param_cases[i];
		struct smtp_rcpt_params p;
		int r = smtp_proto_parse_rcpt_params(c->params,
		    strlen(c->params), c->utf8, &p);

		CHECK_STATUS(r, c->status, c->params);
		if (r == SMTP_PROTO_OK && p.notify != c->notify)
			fail_msg("%s: notify %#x, want %#x", c->params,
			    p.notify, c->notify);
	}
}

/* ORCPT is kept as received, and NOTIFY bits equal the spool's values. */
static void
test_rcpt_params_values(void **state)
{
	struct smtp_rcpt_params p;
	const char *s = "ORCPT=rfc822;Bob+2B1@example.test NOTIFY=SUCCESS";

	(void)state;
	assert_int_equal(smtp_proto_parse_rcpt_params(s, strlen(s), false, &p),
	    SMTP_PROTO_OK);
	assert_true(p.has_orcpt);
	assert_string_equal(p.orcpt, "rfc822;Bob+2B1@example.test");
	assert_int_equal(p.notify, ENV_NOTIFY_SUCCESS);
	assert_int_equal(ENV_NOTIFY_NEVER | ENV_NOTIFY_SUCCESS |
	    ENV_NOTIFY_FAILURE | ENV_NOTIFY_DELAY, 0xf);
}

static const struct mail_case {
	const char *line;
	int status;
	const char *addr;
} mail_cases[] = {
	{ "MAIL FROM:<a@b.example> SIZE=100", SMTP_PROTO_OK, "a@b.example" },
	{ "MAIL FROM:<>", SMTP_PROTO_OK, "" },
	/* The address is judged before the parameters, as Postfix does. */
	{ "MAIL FROM:<a@@b> XFOO", SMTP_PROTO_ESENDER, NULL },
	{ "MAIL FROM:<a@b.example> XFOO", SMTP_PROTO_EPARAM, NULL },
	{ "MAIL FROM:<a@b.example> SIZE=1 SIZE=1", SMTP_PROTO_EPARAMDUP, NULL },
	{ "MAIL FROM:<j\xc3\xb6rg@b.example>", SMTP_PROTO_EUTF8, NULL },
	{ "MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8", SMTP_PROTO_OK,
	  "j\xc3\xb6rg@b.example" },
	{ "MAIL FROM:<j\xc3\xb6rg@b.example> XFOO", SMTP_PROTO_EPARAM, NULL },
};

/* A whole MAIL command: sender syntax, then parameters, then the
 * SMTPUTF8 declaration for a non-ASCII sender. */
static void
test_parse_mail(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(mail_cases); i++) {
		const struct mail_case *c = &mail_cases[i];
		struct smtp_cmd cmd;
		struct smtp_mail m;
		int r;

		CHECK_STATUS(smtp_proto_parse_command(c->line, strlen(c->line),
		    &cmd), SMTP_PROTO_OK, c->line);
		r = smtp_proto_parse_mail(&cmd, &m);
		CHECK_STATUS(r, c->status, c->line);
		if (r == SMTP_PROTO_OK && c->addr != NULL)
			CHECK_STR(m.from.addr, c->addr, c->line);
	}
}

/* A whole RCPT command: UTF-8 recipients only in an SMTPUTF8
 * transaction, and the parameters after the address. */
static void
test_parse_rcpt(void **state)
{
	struct smtp_cmd cmd;
	struct smtp_rcpt r;
	const char *l = "RCPT TO:<j\xc3\xb6rg@" OURS "> NOTIFY=NEVER";

	(void)state;
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_parse_rcpt(&cmd, false, &r), SMTP_PROTO_EUTF8);
	assert_int_equal(smtp_proto_parse_rcpt(&cmd, true, &r), SMTP_PROTO_OK);
	assert_string_equal(r.to.domain, OURS);
	assert_int_equal(r.params.notify, ENV_NOTIFY_NEVER);
	l = "RCPT TO:<a@" OURS "> NOTIFY=BOGUS";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_parse_rcpt(&cmd, false, &r), SMTP_PROTO_EPARAMVAL);
	/* The wrong verb is a caller bug, not a client error. */
	l = "MAIL FROM:<a@" OURS ">";
	assert_int_equal(smtp_proto_parse_command(l, strlen(l), &cmd), SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_parse_rcpt(&cmd, false, &r), SMTP_PROTO_EINVAL);
}

/* ---- DATA decoder ------------------------------------------------------------- */

struct data_result {
	int status;
	size_t consumed;
	size_t outlen;
	char out[512];
};

/*
 * Decode IN (N octets) cut at CUTS, copying each read into a scratch
 * buffer decoded in place, as a session would with its read buffer.
 */
static void
decode(const char *in, size_t n, const size_t *cuts, size_t ncuts,
    size_t max_line, struct data_result *res)
{
	struct smtp_data_decoder d;
	size_t pos = 0;

	smtp_proto_data_init(&d, max_line);
	memset(res, 0, sizeof *res);
	res->status = SMTP_PROTO_AGAIN;
	assert_true(n <= sizeof res->out);
	for (size_t k = 0; k <= ncuts && res->status == SMTP_PROTO_AGAIN; k++) {
		size_t next = k < ncuts ? cuts[k] : n, chunk = next - pos;
		size_t outlen, consumed;
		char buf[512];

		memcpy(buf, in + pos, chunk);
		res->status = smtp_proto_data_push(&d, buf, chunk, buf,
		    &outlen, &consumed);
		assert_true(outlen <= consumed && consumed <= chunk);
		memcpy(res->out + res->outlen, buf, outlen);
		res->outlen += outlen;
		pos += consumed;
		if (res->status == SMTP_PROTO_AGAIN)
			assert_int_equal(consumed, chunk);
	}
	res->consumed = pos;
}

static const struct data_case {
	const char *name;
	const char *in;
	size_t max_line;
	int status;
	const char *out;              /* NULL: not checked (error) */
	size_t consumed;              /* 0: all of IN */
} data_cases[] = {
	{ "simple", "hello\r\n.\r\n", 0, SMTP_PROTO_OK, "hello\r\n", 0 },
	{ "empty", ".\r\n", 0, SMTP_PROTO_OK, "", 0 },
	{ "empty first line", "\r\n.\r\n", 0, SMTP_PROTO_OK, "\r\n", 0 },
	{ "stuffed first", "..x\r\n.\r\n", 0, SMTP_PROTO_OK, ".x\r\n", 0 },
	{ "stuffed dot line", "a\r\n..\r\n.\r\n", 0, SMTP_PROTO_OK, "a\r\n.\r\n", 0 },
	{ "stuffed dots", "a\r\n...\r\n.\r\n", 0, SMTP_PROTO_OK, "a\r\n..\r\n", 0 },
	{ "dot mid line", "a.b\r\n.\r\n", 0, SMTP_PROTO_OK, "a.b\r\n", 0 },
	{ "pipelined rest", "a\r\n.\r\nMAIL FROM:<x@y>\r\n", 0, SMTP_PROTO_OK,
	  "a\r\n", 6 },
	{ "no end", "a\r\n.", 0, SMTP_PROTO_AGAIN, "a\r\n", 0 },
	{ "no end dot cr", "a\r\n.\r", 0, SMTP_PROTO_AGAIN, "a\r\n", 0 },
	{ "no end text", "abc", 0, SMTP_PROTO_AGAIN, "abc", 0 },
	/* Smuggling: none of these ends the message; the true end does. */
	{ "lf dot lf", "a\n.\nMAIL FROM:<x@y>\r\n.\r\n", 0,
	  SMTP_PROTO_EDATA_BARELF, NULL, 0 },
	{ "cr dot cr", "a\r.\rMAIL FROM:<x@y>\r\n.\r\n", 0,
	  SMTP_PROTO_EDATA_BARECR, NULL, 0 },
	{ "lf dot crlf", "a\n.\r\nRCPT TO:<x@y>\r\n.\r\n", 0,
	  SMTP_PROTO_EDATA_BARELF, NULL, 0 },
	{ "crlf dot lf", "a\r\n.\nDATA\r\n.\r\n", 0, SMTP_PROTO_EDATA_BARELF, NULL, 0 },
	{ "crlf dot cr", "a\r\n.\rDATA\r\n.\r\n", 0, SMTP_PROTO_EDATA_BARECR, NULL, 0 },
	{ "cr crlf dot", "a\r\r\n.\r\n", 0, SMTP_PROTO_EDATA_BARECR, NULL, 0 },
	{ "dot cr cr lf", "a\r\n.\r\r\n.\r\n", 0, SMTP_PROTO_EDATA_BARECR, NULL, 0 },
	{ "lf cr lf dot", "a\n\r\n.\r\n", 0, SMTP_PROTO_EDATA_BARELF, NULL, 0 },
	{ "leading lf dot lf", "\n.\n", 0, SMTP_PROTO_AGAIN, NULL, 0 },
	{ "bare lf only", "line1\nline2\n.\n", 0, SMTP_PROTO_AGAIN, NULL, 0 },
	{ "error then rest", "a\nb\r\n.\r\nQUIT\r\n", 0, SMTP_PROTO_EDATA_BARELF,
	  NULL, 8 },
	/* Line limit 10: 8 octets and CRLF fit, 9 do not; the stuffing dot
	 * does not count. */
	{ "line at limit", "12345678\r\n.\r\n", 10, SMTP_PROTO_OK, "12345678\r\n", 0 },
	{ "line over limit", "123456789\r\n.\r\n", 10, SMTP_PROTO_EDATA_LINE, NULL, 0 },
	{ "stuffed at limit", ".12345678\r\n.\r\n", 10, SMTP_PROTO_OK,
	  "12345678\r\n", 0 },
	{ "second line over", "ok\r\n123456789\r\nok\r\n.\r\n", 10,
	  SMTP_PROTO_EDATA_LINE, NULL, 0 },
	{ "first error wins", "123456789\n\r\n.\r\n", 10, SMTP_PROTO_EDATA_LINE,
	  NULL, 0 },
	{ "binary octets", "\x01\x7f\xff\r\n.\r\n", 0, SMTP_PROTO_OK,
	  "\x01\x7f\xff\r\n", 0 },
};

/* Each DATA case gives the same status, output and end position whether
 * fed in one read, one octet per read, or two reads split at every
 * offset; smuggling sequences never end or split the message. */
static void
test_data_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(data_cases); i++) {
		const struct data_case *c = &data_cases[i];
		size_t n = strlen(c->in), cuts[256];
		size_t want_consumed = c->consumed ? c->consumed : n;
		struct data_result whole, r;

		decode(c->in, n, NULL, 0, c->max_line, &whole);
		CHECK_STATUS(whole.status, c->status, c->name);
		if (whole.consumed != want_consumed)
			fail_msg("%s: consumed %zu, want %zu", c->name,
			    whole.consumed, want_consumed);
		if (c->out != NULL && (whole.outlen != strlen(c->out) ||
		    memcmp(whole.out, c->out, whole.outlen) != 0))
			fail_msg("%s: output \"%.*s\", want \"%s\"", c->name,
			    (int)whole.outlen, whole.out, c->out);

		for (size_t k = 0; k + 1 < n; k++)
			cuts[k] = k + 1;
		decode(c->in, n, cuts, n ? n - 1 : 0, c->max_line, &r);
		if (r.status != whole.status || r.consumed != whole.consumed ||
		    r.outlen != whole.outlen ||
		    memcmp(r.out, whole.out, r.outlen) != 0)
			fail_msg("%s: octet by octet differs", c->name);
		for (size_t s = 1; s < n; s++) {
			decode(c->in, n, &s, 1, c->max_line, &r);
			if (r.status != whole.status ||
			    r.consumed != whole.consumed ||
			    r.outlen != whole.outlen ||
			    memcmp(r.out, whole.out, r.outlen) != 0)
				fail_msg("%s: split at %zu differs", c->name, s);
		}
	}
}

/* The first error is visible before the end, no output follows it, and
 * once the end is consumed further pushes consume nothing. */
static void
test_data_error_and_after_end(void **state)
{
	struct smtp_data_decoder d;
	char buf[64];
	size_t outlen, consumed;

	(void)state;
	smtp_proto_data_init(&d, 0);
	memcpy(buf, "ab\ncd", 5);
	assert_int_equal(smtp_proto_data_push(&d, buf, 5, buf, &outlen,
	    &consumed), SMTP_PROTO_AGAIN);
	assert_int_equal(smtp_proto_data_error(&d), SMTP_PROTO_EDATA_BARELF);
	assert_int_equal(outlen, 2);
	assert_false(smtp_proto_data_done(&d));
	memcpy(buf, "\r\n.\r\nNOOP\r\n", 11);
	assert_int_equal(smtp_proto_data_push(&d, buf, 11, buf, &outlen,
	    &consumed), SMTP_PROTO_EDATA_BARELF);
	assert_int_equal(outlen, 0);
	assert_int_equal(consumed, 5);
	assert_true(smtp_proto_data_done(&d));
	assert_int_equal(smtp_proto_data_push(&d, buf + 5, 6, buf, &outlen,
	    &consumed), SMTP_PROTO_EDATA_BARELF);
	assert_int_equal(consumed, 0);
	assert_int_equal(outlen, 0);

	/* A clean message: OK, and OK again after the end. */
	smtp_proto_data_init(&d, 0);
	memcpy(buf, "x\r\n.\r\n", 6);
	assert_int_equal(smtp_proto_data_push(&d, buf, 6, buf, &outlen,
	    &consumed), SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_data_error(&d), 0);
	assert_int_equal(smtp_proto_data_push(&d, buf, 6, buf, &outlen,
	    &consumed), SMTP_PROTO_OK);
	assert_int_equal(consumed, 0);
}

/* The default text line limit is 1000 octets with CRLF. */
static void
test_data_default_limit(void **state)
{
	static char in[1100];
	struct smtp_data_decoder d;
	size_t outlen, consumed;

	(void)state;
	memset(in, 'x', 998);
	memcpy(in + 998, "\r\n.\r\n", 5);
	smtp_proto_data_init(&d, 0);
	assert_int_equal(smtp_proto_data_push(&d, in, 1003, in, &outlen,
	    &consumed), SMTP_PROTO_OK);
	assert_int_equal(outlen, 1000);
	memset(in, 'x', 999);
	memcpy(in + 999, "\r\n.\r\n", 5);
	smtp_proto_data_init(&d, 0);
	assert_int_equal(smtp_proto_data_push(&d, in, 1004, in, &outlen,
	    &consumed), SMTP_PROTO_EDATA_LINE);
}

/* A NUL anywhere in the text (first octet, after a stuffed dot, before the
 * CRLF, alone on a line) is refused with its own status once the true end
 * of data is read, in every chunking; nothing of the text is output after
 * it.  Issue 14: "\0." must never reach a primary that drops NULs. */
static void
test_data_nul(void **state)
{
	static const struct {
		const char *in;
		size_t n;
	} cases[] = {
		{ "a\0b\r\n.\r\n", 8 },
		{ "\0\r\n.\r\n", 6 },
		{ "ok\r\n\0.\r\n.\r\n", 11 },
		{ "ok\r\n.\0\r\n.\r\n", 11 },
		{ "x\0", 2 },                     /* no end yet */
	};

	(void)state;
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct data_result whole, r;
		size_t n = cases[i].n;

		decode(cases[i].in, n, NULL, 0, 0, &whole);
		if (i == N_ELEMS(cases) - 1) {
			assert_int_equal(whole.status, SMTP_PROTO_AGAIN);
			continue;
		}
		CHECK_STATUS(whole.status, SMTP_PROTO_EDATA_NUL, cases[i].in);
		assert_int_equal(whole.consumed, n);
		for (size_t cut = 1; cut < n; cut++) {
			decode(cases[i].in, n, &cut, 1, 0, &r);
			assert_int_equal(r.status, SMTP_PROTO_EDATA_NUL);
			assert_int_equal(r.consumed, n);
		}
		assert_null(memchr(whole.out, '\0', whole.outlen));
	}
	assert_string_equal(smtp_proto_status_reply(SMTP_PROTO_EDATA_NUL),
	    "554 5.6.0 Error: NUL character in message data (BINARYMIME is not offered)");
}

/* ---- xtext --------------------------------------------------------------------- */

/* xtext encodes '+', '=', controls, space and 8-bit octets as +XX and
 * decodes back; bad hex, lower-case hex, NUL and short buffers are refused. */
static void
test_xtext(void **state)
{
	char out[64];
	size_t len;

	(void)state;
	assert_int_equal(smtp_proto_xtext_encode("a+b=c d\xff", 8, out,
	    sizeof out, &len), SMTP_PROTO_OK);
	assert_string_equal(out, "a+2Bb+3Dc+20d+FF");
	assert_int_equal(len, 16);
	assert_int_equal(smtp_proto_xtext_decode(out, len, out, sizeof out,
	    &len), SMTP_PROTO_OK);
	assert_int_equal(len, 8);
	assert_memory_equal(out, "a+b=c d\xff", 8);
	assert_true(smtp_proto_xtext_valid("QQ+2B1", 6));
	assert_false(smtp_proto_xtext_valid("a+2b", 4));
	assert_false(smtp_proto_xtext_valid("a+2", 3));
	assert_false(smtp_proto_xtext_valid("a=b", 3));
	assert_false(smtp_proto_xtext_valid("a b", 3));
	/* Valid xtext, but not printable once decoded (RFC 3461 4). */
	assert_true(smtp_proto_xtext_printable("a+20+7E+2B", 10));
	assert_true(smtp_proto_xtext_valid("a+0D", 4));
	assert_false(smtp_proto_xtext_printable("a+0D", 4));
	assert_false(smtp_proto_xtext_printable("+1F", 3));
	assert_false(smtp_proto_xtext_printable("+7F", 3));
	assert_false(smtp_proto_xtext_printable("+80", 3));
	assert_false(smtp_proto_xtext_printable("a+2", 3));
	assert_int_equal(smtp_proto_xtext_decode("+00", 3, out, sizeof out,
	    &len), SMTP_PROTO_ESYNTAX);
	assert_int_equal(smtp_proto_xtext_decode("+G0", 3, out, sizeof out,
	    &len), SMTP_PROTO_ESYNTAX);
	assert_int_equal(smtp_proto_xtext_encode("+++", 3, out, 9, &len),
	    SMTP_PROTO_ENOSPC);
	assert_int_equal(smtp_proto_xtext_encode("+++", 3, out, 10, &len),
	    SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_xtext_decode("abc", 3, out, 3, &len),
	    SMTP_PROTO_ENOSPC);
	assert_int_equal(smtp_proto_xtext_decode("", 0, out, 1, &len),
	    SMTP_PROTO_OK);
	assert_int_equal(len, 0);
}

/* ---- replies ------------------------------------------------------------------- */

/* Replies are formatted one "code-enh text" line per text line, the last
 * with a space, and refused when they would not be valid SMTP. */
static void
test_format_reply(void **state)
{
	char buf[256];
	size_t len;
	char big[600];

	(void)state;
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    "2.0.0", "Ok"), SMTP_PROTO_OK);
	assert_string_equal(buf, "250 2.0.0 Ok\r\n");
	assert_int_equal(len, 14);
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    NULL, "mx.example.test\nPIPELINING\nSIZE 1000"), SMTP_PROTO_OK);
	assert_string_equal(buf, "250-mx.example.test\r\n250-PIPELINING\r\n"
	    "250 SIZE 1000\r\n");
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 550,
	    "5.7.1", "Relay\naccess denied"), SMTP_PROTO_OK);
	assert_string_equal(buf, "550-5.7.1 Relay\r\n550 5.7.1 access denied\r\n");
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 354,
	    "", "End data with <CR><LF>.<CR><LF>"), SMTP_PROTO_OK);
	assert_string_equal(buf, "354 End data with <CR><LF>.<CR><LF>\r\n");
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    "2.0.0", ""), SMTP_PROTO_OK);
	assert_string_equal(buf, "250 2.0.0\r\n");
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 221,
	    NULL, NULL), SMTP_PROTO_OK);
	assert_string_equal(buf, "221 \r\n");

	assert_int_equal(smtp_proto_format_reply(buf, 10, &len, 250, "2.0.0",
	    "Ok"), SMTP_PROTO_ENOSPC);
	assert_int_equal(smtp_proto_format_reply(buf, 15, &len, 250, "2.0.0",
	    "Ok"), SMTP_PROTO_OK);
	assert_int_equal(smtp_proto_format_reply(buf, 14, &len, 250, "2.0.0",
	    "Ok"), SMTP_PROTO_ENOSPC);
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 600,
	    NULL, "x"), SMTP_PROTO_EINVAL);
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 199,
	    NULL, "x"), SMTP_PROTO_EINVAL);
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    "5.0.0", "x"), SMTP_PROTO_EINVAL);
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    "2.0", "x"), SMTP_PROTO_EINVAL);
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    NULL, "a\r\n250 injected"), SMTP_PROTO_EINVAL);
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	assert_int_equal(smtp_proto_format_reply(buf, sizeof buf, &len, 250,
	    NULL, big), SMTP_PROTO_EINVAL);
}

static const struct reply_line_case {
	const char *line;
	int status;
	int code;
	bool last;
	const char *text;
} reply_line_cases[] = {
	{ "250 ok", SMTP_PROTO_OK, 250, true, "ok" },
	{ "250-ok", SMTP_PROTO_OK, 250, false, "ok" },
	{ "250", SMTP_PROTO_OK, 250, true, "" },
	{ "250 ", SMTP_PROTO_OK, 250, true, "" },
	{ "554 5.7.1 no", SMTP_PROTO_OK, 554, true, "5.7.1 no" },
	{ "2500", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "25", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "600 x", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "190 x", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "260 x", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "2a0 x", SMTP_PROTO_EREPLY, 0, false, NULL },
	{ "abc", SMTP_PROTO_EREPLY, 0, false, NULL },
};

/* Reply lines: three digits in range, then "-", " " or the end. */
static void
test_parse_reply_line(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(reply_line_cases); i++) {
		const struct reply_line_case *c = &reply_line_cases[i];
		const char *text;
		size_t tlen;
		int code;
		bool last;
		int r = smtp_proto_parse_reply_line(c->line, strlen(c->line),
		    &code, &last, &text, &tlen);

		CHECK_STATUS(r, c->status, c->line);
		if (r != SMTP_PROTO_OK)
			continue;
		assert_int_equal(code, c->code);
		assert_int_equal(last, c->last);
		assert_int_equal(tlen, strlen(c->text));
		assert_memory_equal(text, c->text, tlen);
	}
}

static int
push_all(struct smtp_reply *r, const char *const *lines, size_t n)
{
	int rc = SMTP_PROTO_AGAIN;

	smtp_proto_reply_init(r);
	for (size_t i = 0; i < n; i++)
		rc = smtp_proto_reply_push(r, lines[i], strlen(lines[i]));
	return rc;
}

/* The accumulator joins a multiline reply, strips repeated enhanced codes
 * and finds the EHLO keywords with the SIZE value. */
static void
test_reply_accumulator(void **state)
{
	static const char *const ehlo[] = {
		"250-mx.example.test Hello", "250-PIPELINING", "250-SIZE 52428800",
		"250-8bitmime", "250-SMTPUTF8", "250-DSN", "250-CHUNKING",
		"250-STARTTLS", "250-ENHANCEDSTATUSCODES", "250-BINARYMIME",
		"250-AUTH PLAIN", "250 X-UNKNOWN",
	};
	static const char *const multi[] = {
		"550-5.1.1 No such user", "550-5.1.1 here", "550 5.1.1",
	};
	struct smtp_reply r;
	int rc;

	(void)state;
	rc = push_all(&r, ehlo, N_ELEMS(ehlo));
	assert_int_equal(rc, SMTP_PROTO_OK);
	assert_int_equal(r.code, 250);
	assert_int_equal(r.nlines, N_ELEMS(ehlo));
	assert_int_equal(r.ext, SMTP_EXT_PIPELINING | SMTP_EXT_SIZE |
	    SMTP_EXT_8BITMIME | SMTP_EXT_SMTPUTF8 | SMTP_EXT_DSN |
	    SMTP_EXT_CHUNKING | SMTP_EXT_STARTTLS |
	    SMTP_EXT_ENHANCEDSTATUSCODES | SMTP_EXT_BINARYMIME);
	assert_true(r.size_max == 52428800);
	assert_string_equal(r.enh, "");
	assert_true(strncmp(r.text, "mx.example.test Hello\nPIPELINING\n", 33) == 0);

	rc = push_all(&r, multi, N_ELEMS(multi));
	assert_int_equal(rc, SMTP_PROTO_OK);
	assert_int_equal(r.code, 550);
	assert_string_equal(r.enh, "5.1.1");
	assert_string_equal(r.text, "No such user\nhere\n");

	/* The greeting line is not a keyword, and SIZE without a number. */
	{
		static const char *const g[] = { "250-STARTTLS", "250 SIZE" };

		assert_int_equal(push_all(&r, g, 2), SMTP_PROTO_OK);
		assert_int_equal(r.ext, SMTP_EXT_SIZE);
		assert_true(r.size_max == 0);
	}
	/* RFC 9422 LIMITS: RCPTMAX and MAILMAX kept, unknown names and bad
	 * values ignored, absent = 0. */
	{
		static const char *const l1[] = { "250-mx Hello",
		    "250 LIMITS RCPTMAX=50 rcptdomainmax=5 MailMax=1000" };
		static const char *const l2[] = { "250-mx Hello",
		    "250 LIMITS RCPTMAX=x MAILMAX=0 FOO=7 RCPTMAX" };
		static const char *const l3[] = { "250-mx Hello", "250 SIZE 10" };

		assert_int_equal(push_all(&r, l1, 2), SMTP_PROTO_OK);
		assert_int_equal(r.ext, SMTP_EXT_LIMITS);
		assert_int_equal(r.rcpt_max, 50);
		assert_int_equal(r.mail_max, 1000);
		assert_int_equal(push_all(&r, l2, 2), SMTP_PROTO_OK);
		assert_int_equal(r.ext, SMTP_EXT_LIMITS);
		assert_int_equal(r.rcpt_max, 0);
		assert_int_equal(r.mail_max, 0);
		assert_int_equal(push_all(&r, l3, 2), SMTP_PROTO_OK);
		assert_int_equal(r.rcpt_max, 0);
		assert_int_equal(r.mail_max, 0);
	}
	/* A code change mid-reply, a bad line, a push after the end. */
	{
		static const char *const bad1[] = { "250-a", "251 b" };
		static const char *const bad2[] = { "250-a", "hello" };

		assert_int_equal(push_all(&r, bad1, 2), SMTP_PROTO_EREPLY);
		assert_int_equal(push_all(&r, bad2, 2), SMTP_PROTO_EREPLY);
		smtp_proto_reply_init(&r);
		assert_int_equal(smtp_proto_reply_push(&r, "221 bye", 7), SMTP_PROTO_OK);
		assert_int_equal(smtp_proto_reply_push(&r, "221 bye", 7),
		    SMTP_PROTO_EREPLY);
	}
}

/* An endless multiline reply is refused after SMTP_PROTO_REPLY_LINES_MAX
 * lines, and a long text is cut and marked truncated. */
static void
test_reply_limits(void **state)
{
	struct smtp_reply r;
	char line[SMTP_PROTO_REPLY_LINE_MAX];
	int rc = SMTP_PROTO_AGAIN;
	unsigned i;

	(void)state;
	smtp_proto_reply_init(&r);
	for (i = 0; i < SMTP_PROTO_REPLY_LINES_MAX && rc == SMTP_PROTO_AGAIN; i++)
		rc = smtp_proto_reply_push(&r, "250-more", 8);
	assert_int_equal(rc, SMTP_PROTO_AGAIN);
	assert_int_equal(smtp_proto_reply_push(&r, "250 last", 8),
	    SMTP_PROTO_EREPLY);

	smtp_proto_reply_init(&r);
	memset(line, 'y', sizeof line);
	memcpy(line, "250-", 4);
	for (i = 0; i < 4; i++)
		assert_int_equal(smtp_proto_reply_push(&r, line, 400),
		    SMTP_PROTO_AGAIN);
	assert_int_equal(smtp_proto_reply_push(&r, "250 end", 7), SMTP_PROTO_OK);
	assert_true(r.truncated);
	assert_int_equal(r.text_len, SMTP_PROTO_REPLY_TEXT_MAX - 1);
	assert_int_equal(strlen(r.text), r.text_len);
}

/* Every client-caused status has a reply that starts with its SMTP code
 * and enhanced code, and unknown statuses fall back to a 451. */
static void
test_status_replies(void **state)
{
	static const struct {
		int status;
		const char *prefix;
	} want[] = {
		{ SMTP_PROTO_EUNKNOWN, "500 5.5.2 " },
		{ SMTP_PROTO_ESYNTAX, "501 5.5.4 " },
		{ SMTP_PROTO_ESENDER, "501 5.1.7 Bad sender address syntax" },
		{ SMTP_PROTO_ERCPT, "501 5.1.3 Bad recipient address syntax" },
		{ SMTP_PROTO_ERELAY, "550 5.7.1 Relay access denied" },
		{ SMTP_PROTO_EUTF8, "553 5.6.7 " },
		{ SMTP_PROTO_EPARAM, "555 5.5.4 " },
		{ SMTP_PROTO_EPARAMDUP, "501 5.5.4 " },
		{ SMTP_PROTO_EPARAMVAL, "501 5.5.4 " },
		{ SMTP_PROTO_ETOOBIG, "552 5.3.4 " },
		{ SMTP_PROTO_ETOOLONG, "500 5.5.2 " },
		{ SMTP_PROTO_EBARELF, "500 5.5.2 Error: bare <LF>" },
		{ SMTP_PROTO_EBARECR, "500 5.5.2 Error: bare <CR>" },
		{ SMTP_PROTO_ENUL, "500 5.5.2 " },
		{ SMTP_PROTO_EDATA_BARELF, "550 5.5.2 " },
		{ SMTP_PROTO_EDATA_BARECR, "550 5.5.2 " },
		{ SMTP_PROTO_EDATA_LINE, "554 5.6.0 " },
		{ SMTP_PROTO_ENOSPC, "451 4.3.0 " },
		{ 12345, "451 4.3.0 " },
	};

	(void)state;
	for (size_t i = 0; i < N_ELEMS(want); i++) {
		const char *r = smtp_proto_status_reply(want[i].status);

		if (strncmp(r, want[i].prefix, strlen(want[i].prefix)) != 0)
			fail_msg("status %d: \"%s\"", want[i].status, r);
	}
	assert_string_equal(smtp_proto_status_name(SMTP_PROTO_ERELAY), "relay_denied");
	assert_string_equal(smtp_proto_verb_name(SMTP_VERB_STARTTLS), "STARTTLS");
	assert_string_equal(smtp_proto_verb_name(SMTP_VERB_UNKNOWN), "UNKNOWN");
}

/* ---- Received: counter ----------------------------------------------------- */

static const struct received_case {
	const char *name;
	const char *in;
	uint32_t count;
	bool done;                    /* the header section's end was seen */
} received_cases[] = {
	{ "none", "Subject: x\r\n\r\nbody\r\n", 0, true },
	{ "one", "Received: from a\r\n\r\n", 1, true },
	{ "sample", "Received: from a by b; Mon, 1 Jan 2024\r\n"
	  "RECEIVED: from c\r\n\tby d; Mon, 1 Jan 2024\r\n"
	  "received:x\r\nSubject: hi\r\nReceived : obsolete space\r\n"
	  "Received\t:tab\r\n\r\nReceived: in the body\r\n", 5, true },
	{ "folded not counted", "Subject: a\r\n Received: folded\r\n"
	  "\tReceived: folded\r\n\r\n", 0, true },
	{ "body not counted", "From: a\r\n\r\nReceived: x\r\nReceived: y\r\n", 0, true },
	{ "no header end", "Received: a\r\nReceived: b\r\n", 2, false },
	{ "no header end no crlf", "Received: a\r\nReceived:", 2, false },
	{ "empty message", "", 0, false },
	{ "empty first line", "\r\nReceived: a\r\n", 0, true },
	{ "bare lf empty line", "Received: a\n\nReceived: b\n", 1, true },
	{ "longer name", "Received-SPF: pass\r\nReceivedX: y\r\n\r\n", 0, true },
	{ "shorter name", "Receive: y\r\nReceived\r\nReceived x: z\r\n\r\n", 0, true },
	{ "name mid line", "X: Received: a\r\nX-Received: b\r\n\r\n", 0, true },
	{ "cr then name", "\rReceived: a\r\n\r\n", 0, true },
	{ "8bit", "R\xc3\xa9\x63\x65ived: a\r\nReceived: \xff\r\n\r\n", 1, true },
};

/* Push IN whole, then octet by octet, then in two pieces split at every
 * offset: the count and the end must not depend on the split. */
static void
test_received_counter(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(received_cases); i++) {
		const struct received_case *c = &received_cases[i];
		size_t n = strlen(c->in);
		struct smtp_received_counter rc;

		smtp_proto_received_init(&rc);
		if (smtp_proto_received_push(&rc, c->in, n) != c->count)
			fail_msg("%s: whole: count %u, want %u", c->name,
			    (unsigned)rc.count, (unsigned)c->count);
		if (smtp_proto_received_done(&rc) != c->done)
			fail_msg("%s: whole: done %d", c->name, (int)!c->done);
		smtp_proto_received_init(&rc);
		for (size_t k = 0; k < n; k++)
			smtp_proto_received_push(&rc, c->in + k, 1);
		if (rc.count != c->count || smtp_proto_received_done(&rc) != c->done)
			fail_msg("%s: octet by octet: count %u", c->name,
			    (unsigned)rc.count);
		for (size_t s = 0; s <= n; s++) {
			smtp_proto_received_init(&rc);
			smtp_proto_received_push(&rc, c->in, s);
			smtp_proto_received_push(&rc, c->in + s, n - s);
			if (rc.count != c->count ||
			    smtp_proto_received_done(&rc) != c->done)
				fail_msg("%s: split at %zu: count %u", c->name, s,
				    (unsigned)rc.count);
		}
	}
}

/* 60 fields of a real-looking header: each counts, then the end freezes
 * the count whatever follows; an empty push changes nothing. */
static void
test_received_counter_many(void **state)
{
	struct smtp_received_counter rc;
	char line[128];

	(void)state;
	smtp_proto_received_init(&rc);
	for (unsigned i = 0; i < 60; i++) {
		int n = snprintf(line, sizeof(line), "Received: from h%u.example "
		    "(h%u [192.0.2.%u])\r\n\tby mx.example; Mon, 1 Jan 2024\r\n",
		    i, i, i % 250);

		assert_int_equal(smtp_proto_received_push(&rc, line, (size_t)n), i + 1);
	}
	assert_int_equal(smtp_proto_received_push(&rc, NULL, 0), 60);
	assert_false(smtp_proto_received_done(&rc));
	smtp_proto_received_push(&rc, "\r\n", 2);
	assert_true(smtp_proto_received_done(&rc));
	smtp_proto_received_push(&rc, "Received: x\r\n", 13);
	assert_int_equal(rc.count, 60);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_command_table),
		cmocka_unit_test(test_command_path_split),
		cmocka_unit_test(test_command_bdat),
		cmocka_unit_test(test_command_etrn),
		cmocka_unit_test(test_command_length),
		cmocka_unit_test(test_lines_table),
		cmocka_unit_test(test_lines_too_long),
		cmocka_unit_test(test_path_table),
		cmocka_unit_test(test_path_flags),
		cmocka_unit_test(test_path_open_relay),
		cmocka_unit_test(test_domain_and_helo),
		cmocka_unit_test(test_mail_params_table),
		cmocka_unit_test(test_mail_params_values),
		cmocka_unit_test(test_rcpt_params_table),
		cmocka_unit_test(test_rcpt_params_values),
		cmocka_unit_test(test_parse_mail),
		cmocka_unit_test(test_parse_rcpt),
		cmocka_unit_test(test_data_table),
		cmocka_unit_test(test_data_error_and_after_end),
		cmocka_unit_test(test_data_default_limit),
		cmocka_unit_test(test_data_nul),
		cmocka_unit_test(test_received_counter),
		cmocka_unit_test(test_received_counter_many),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_format_reply),
		cmocka_unit_test(test_parse_reply_line),
		cmocka_unit_test(test_reply_accumulator),
		cmocka_unit_test(test_reply_limits),
		cmocka_unit_test(test_status_replies),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
