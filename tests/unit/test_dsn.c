/*
 * test_dsn.c - RFC 3464 reports: structure, content and who gets one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/dsn.h"

static const char hdrs[] =
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.com\r\n"
    "Subject: hello\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "\r\n";
static const char body[] = "Hi Bob,\r\nsee you.\r\n";

struct fixture {
	struct dsn_rcpt rc[3];
	struct dsn_report r;
	struct dsn_output out;
	char *all;                    /* prefix + body (if any) + suffix */
};

static void
fixture_init(struct fixture *f)
{
	memset(f, 0, sizeof(*f));
	f->rc[0].addr = "bob@example.com";
	f->rc[0].action = DSN_ACTION_FAILED;
	f->rc[0].remote_mta = "mx1.example.com";
	f->rc[0].diagnostic = "550 5.1.1 <bob@example.com>: user unknown";
	f->rc[0].last_attempt_ms = 1739440800000;
	f->r.hostname = "backup-mx.example.net";
	f->r.sender = "alice@example.org";
	f->r.queue_id = "0000018D2A5B7C01";
	f->r.arrival_ms = 1739008800000;
	f->r.now_ms = 1739440801000;
	f->r.nonce = 0x0123456789abcdefull;
	f->r.headers = hdrs;
	f->r.headers_len = sizeof(hdrs) - 1;
	f->r.message_size = sizeof(hdrs) - 1 + sizeof(body) - 1;
	f->r.rcpt = f->rc;
	f->r.nrcpt = 1;
}

/* Build, then join the pieces the way the drain will send them. */
static int
build(struct fixture *f)
{
	int st = dsn_build(&f->r, &f->out);
	size_t n;

	if (st != DSN_OK)
		return st;
	n = f->out.prefix_len + f->out.suffix_len + sizeof(body);
	f->all = malloc(n + 1);
	assert_non_null(f->all);
	memcpy(f->all, f->out.prefix, f->out.prefix_len);
	n = f->out.prefix_len;
	if (f->out.include_body) {
		memcpy(f->all + n, body, sizeof(body) - 1);
		n += sizeof(body) - 1;
	}
	memcpy(f->all + n, f->out.suffix, f->out.suffix_len);
	f->all[n + f->out.suffix_len] = '\0';
	assert_int_equal(strlen(f->all), n + f->out.suffix_len);
	return st;
}

static void
fixture_done(struct fixture *f)
{
	dsn_output_free(&f->out);
	free(f->all);
	f->all = NULL;
}

static size_t
count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
		n++;
	return n;
}

/* Does a line equal to LINE occur (CRLF-delimited)? */
static bool
has_line(const char *all, const char *line)
{
	size_t l = strlen(line);

	for (const char *p = all; p != NULL; p = strstr(p, "\r\n")) {
		if (p != all)
			p += 2;
		if (strncmp(p, line, l) == 0 && p[l] == '\r' && p[l + 1] == '\n')
			return true;
		if (*p == '\0')
			break;
	}
	return false;
}

/* CRLF only, no bare CR or LF, no line over 998 octets, three parts with
 * their boundary and one closing delimiter. */
static void
assert_well_formed(const char *all)
{
	size_t col = 0;
	const char *b, *e;
	char boundary[128], delim[140];

	for (const char *p = all; *p; p++) {
		if (*p == '\n')
			assert_true(p > all && p[-1] == '\r');
		if (*p == '\r')
			assert_true(p[1] == '\n');
		if (*p == '\r' || *p == '\n') {
			col = 0;
		} else {
			col++;
			assert_true(col <= 998);
		}
	}
	assert_true(strncmp(all, "Date: ", 6) == 0);
	b = strstr(all, "boundary=\"");
	assert_non_null(b);
	b += strlen("boundary=\"");
	e = strchr(b, '"');
	assert_non_null(e);
	assert_true((size_t)(e - b) < 71 && e > b);
	memcpy(boundary, b, (size_t)(e - b));
	boundary[e - b] = '\0';
	snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
	assert_true(count(all, delim) >= 2);
	snprintf(delim, sizeof(delim), "\r\n--%s--\r\n", boundary);
	assert_int_equal(count(all, delim), 1);
	/* The closing delimiter ends the message. */
	assert_string_equal(all + strlen(all) - strlen(delim), delim);
	/* The header block ends before the preamble. */
	assert_non_null(strstr(all, "\r\n\r\nThis is a MIME-encapsulated message."));
}

/* A bounce has every required header and RFC 3464 field, and returns the
 * whole small message. */
static void
test_failed_structure(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_true(has_line(f.all, "From: \"Mail Delivery System\" <MAILER-DAEMON@backup-mx.example.net>"));
	assert_true(has_line(f.all, "To: <alice@example.org>"));
	assert_true(has_line(f.all, "Subject: Undelivered Mail Returned to Sender"));
	assert_true(has_line(f.all, "Date: Thu, 13 Feb 2025 10:00:01 +0000"));
	assert_true(has_line(f.all, "Auto-Submitted: auto-replied"));
	assert_true(has_line(f.all, "MIME-Version: 1.0"));
	assert_non_null(strstr(f.all, "\r\nMessage-ID: <"));
	assert_true(has_line(f.all, "Content-Type: multipart/report; report-type=delivery-status;"));
	assert_true(has_line(f.all, "Content-Type: text/plain; charset=us-ascii"));
	assert_true(has_line(f.all, "Content-Type: message/delivery-status"));
	assert_true(has_line(f.all, "Content-Type: message/rfc822"));
	assert_true(has_line(f.all, "Reporting-MTA: dns; backup-mx.example.net"));
	assert_true(has_line(f.all, "Arrival-Date: Sat, 8 Feb 2025 10:00:00 +0000"));
	assert_true(has_line(f.all, "Final-Recipient: rfc822; bob@example.com"));
	assert_true(has_line(f.all, "Action: failed"));
	assert_true(has_line(f.all, "Status: 5.1.1"));
	assert_true(has_line(f.all, "Remote-MTA: dns; mx1.example.com"));
	assert_true(has_line(f.all, "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.com>: user unknown"));
	assert_true(has_line(f.all, "Last-Attempt-Date: Thu, 13 Feb 2025 10:00:00 +0000"));
	assert_null(strstr(f.all, "Will-Retry-Until"));
	assert_null(strstr(f.all, "Original-Envelope-Id"));
	assert_null(strstr(f.all, "Original-Recipient"));
	assert_true(f.out.include_body);
	assert_false(f.out.smtputf8);
	assert_false(f.out.eightbit);
	assert_int_equal(f.out.nrcpt, 1);
	/* The original follows intact: its headers, an empty line, its body. */
	assert_non_null(strstr(f.all, "Message-ID: <m1@example.org>\r\n\r\nHi Bob,\r\nsee you.\r\n\r\n--"));
	fixture_done(&f);
}

/* A delay warning says delayed, when retries end, and carries headers only. */
static void
test_delayed_structure(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	f.rc[0].action = DSN_ACTION_DELAYED;
	f.rc[0].diagnostic = "451 4.3.0 try again later";
	f.rc[0].retry_until_ms = 1739440800000;
	f.r.ret = ENV_RET_FULL;
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_true(has_line(f.all, "Subject: Delayed Mail (still being retried)"));
	assert_true(has_line(f.all, "Action: delayed"));
	assert_true(has_line(f.all, "Status: 4.3.0"));
	assert_true(has_line(f.all, "Will-Retry-Until: Thu, 13 Feb 2025 10:00:00 +0000"));
	assert_true(has_line(f.all, "Content-Type: text/rfc822-headers"));
	assert_null(strstr(f.all, "message/rfc822"));
	assert_false(f.out.include_body);
	assert_null(strstr(f.all, "Hi Bob"));
	fixture_done(&f);

	/* A delay without an enhanced code gets the class default. */
	fixture_init(&f);
	f.rc[0].action = DSN_ACTION_DELAYED;
	f.rc[0].diagnostic = "connection refused";
	f.rc[0].diagnostic_local = true;
	assert_int_equal(build(&f), DSN_OK);
	assert_true(has_line(f.all, "Status: 4.0.0"));
	assert_true(has_line(f.all, "Diagnostic-Code: X-mxspool; connection refused"));
	fixture_done(&f);
}

/* RET=HDRS returns headers only, RET=FULL (and no RET) the whole message,
 * except when it is big or binary. */
static void
test_ret(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	f.r.ret = ENV_RET_HDRS;
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_false(f.out.include_body);
	assert_true(has_line(f.all, "Content-Type: text/rfc822-headers"));
	assert_true(has_line(f.all, "Subject: hello"));
	assert_null(strstr(f.all, "Hi Bob"));
	fixture_done(&f);

	fixture_init(&f);
	f.r.ret = ENV_RET_FULL;
	assert_int_equal(build(&f), DSN_OK);
	assert_true(f.out.include_body);
	assert_true(has_line(f.all, "Content-Type: message/rfc822"));
	assert_non_null(strstr(f.all, "Hi Bob"));
	fixture_done(&f);

	fixture_init(&f);
	f.r.ret = ENV_RET_FULL;
	f.r.message_size = DSN_FULL_MAX + 1;
	assert_int_equal(build(&f), DSN_OK);
	assert_false(f.out.include_body);
	assert_true(has_line(f.all, "Content-Type: text/rfc822-headers"));
	fixture_done(&f);

	fixture_init(&f);
	f.r.body = ENV_BODY_BINARYMIME;
	assert_int_equal(build(&f), DSN_OK);
	assert_false(f.out.include_body);
	fixture_done(&f);

	/* An 8BITMIME original returned whole makes the report 8bit. */
	fixture_init(&f);
	f.r.body = ENV_BODY_8BITMIME;
	assert_int_equal(build(&f), DSN_OK);
	assert_true(f.out.include_body);
	assert_true(f.out.eightbit);
	assert_true(count(f.all, "Content-Transfer-Encoding: 8bit\r\n") == 2);
	fixture_done(&f);
}

/* ENVID and ORCPT appear, xtext-decoded. */
static void
test_envid_orcpt(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	f.r.envid = "QQ+2B314";
	f.rc[0].orcpt = "rfc822;bob+2Bsales@example.com";
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_true(has_line(f.all, "Original-Envelope-Id: QQ+314"));
	assert_true(has_line(f.all, "Original-Recipient: rfc822;bob+sales@example.com"));
	/* RFC 3464 order: Original-Recipient before Final-Recipient. */
	assert_true(strstr(f.all, "Original-Recipient:") <
	    strstr(f.all, "Final-Recipient:"));
	fixture_done(&f);
}

/* No report to the null sender or about a report; OUT stays empty. */
static void
test_null_sender(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	f.r.sender = "";
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NULL_SENDER);
	assert_null(f.out.prefix);
	assert_null(f.out.suffix);
	f.r.sender = "<>";
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NULL_SENDER);
	f.r.sender = NULL;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NULL_SENDER);
	f.r.sender = "alice@example.org";
	f.r.is_bounce = true;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NULL_SENDER);
	assert_null(f.out.prefix);
	assert_string_equal(dsn_strerror(DSN_SKIP_NULL_SENDER),
	    "no report for the null sender or for a report");
}

/* NOTIFY: NEVER suppresses; without FAILURE no bounce, without DELAY no
 * delay warning; not given means FAILURE,DELAY; SUCCESS only on request. */
static void
test_notify(void **state)
{
	struct fixture f;

	(void)state;
	assert_false(dsn_wanted(ENV_NOTIFY_NEVER, DSN_ACTION_FAILED));
	assert_true(dsn_wanted(0, DSN_ACTION_FAILED));
	assert_true(dsn_wanted(0, DSN_ACTION_DELAYED));
	assert_false(dsn_wanted(0, DSN_ACTION_DELIVERED));
	assert_false(dsn_wanted(ENV_NOTIFY_SUCCESS, DSN_ACTION_FAILED));
	assert_true(dsn_wanted(ENV_NOTIFY_SUCCESS, DSN_ACTION_DELIVERED));
	assert_false(dsn_wanted(ENV_NOTIFY_FAILURE, DSN_ACTION_DELAYED));
	assert_true(dsn_wanted(ENV_NOTIFY_FAILURE | ENV_NOTIFY_DELAY,
	    DSN_ACTION_DELAYED));
	assert_false(dsn_wanted(ENV_NOTIFY_DELAY, DSN_ACTION_FAILED));

	fixture_init(&f);
	f.rc[0].notify = ENV_NOTIFY_NEVER;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NOTIFY);
	assert_null(f.out.prefix);
	f.rc[0].notify = ENV_NOTIFY_DELAY;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NOTIFY);
	f.rc[0].notify = ENV_NOTIFY_FAILURE;
	f.rc[0].action = DSN_ACTION_DELAYED;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_SKIP_NOTIFY);

	/* Mixed: only the recipients that asked are reported. */
	fixture_init(&f);
	f.rc[0].notify = ENV_NOTIFY_NEVER;
	f.rc[1] = f.rc[0];
	f.rc[1].addr = "carol@example.com";
	f.rc[1].notify = 0;
	f.rc[2] = f.rc[0];
	f.rc[2].addr = "dave@example.com";
	f.rc[2].notify = ENV_NOTIFY_FAILURE;
	f.r.nrcpt = 3;
	assert_int_equal(build(&f), DSN_OK);
	assert_int_equal(f.out.nrcpt, 2);
	assert_null(strstr(f.all, "\r\n<bob@example.com>: "));
	assert_non_null(strstr(f.all, "\r\n<carol@example.com>: "));
	assert_true(has_line(f.all, "Final-Recipient: rfc822; carol@example.com"));
	assert_true(has_line(f.all, "Final-Recipient: rfc822; dave@example.com"));
	assert_false(has_line(f.all, "Final-Recipient: rfc822; bob@example.com"));
	fixture_done(&f);

	/* A success report, when asked for. */
	fixture_init(&f);
	f.rc[0].notify = ENV_NOTIFY_SUCCESS;
	f.rc[0].action = DSN_ACTION_DELIVERED;
	f.rc[0].diagnostic = "250 2.0.0 Ok: queued";
	assert_int_equal(build(&f), DSN_OK);
	assert_true(has_line(f.all, "Action: delivered"));
	assert_true(has_line(f.all, "Status: 2.0.0"));
	assert_false(f.out.include_body);
	fixture_done(&f);
}

/* Nothing from the envelope or a remote reply can start a header line of its
 * own; long replies are folded under 998 octets. */
static void
test_injection_and_folding(void **state)
{
	struct fixture f;
	char *longdiag;

	(void)state;
	fixture_init(&f);
	f.r.envid = "x+0D+0ABcc:+20evil@example.net";
	f.rc[0].orcpt = "rfc822;a+0D+0ABcc:+20evil@example.net";
	f.rc[0].diagnostic = "550 no\r\nBcc: evil@example.net\nX: y";
	f.rc[0].remote_mta = "mx\r\nBcc: evil";
	f.r.sender = "alice@example.org>\r\nBcc: evil@example.net";
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_null(strstr(f.all, "\r\nBcc:"));
	assert_null(strstr(f.all, "\r\nX: y"));
	fixture_done(&f);

	longdiag = malloc(5000);
	assert_non_null(longdiag);
	memcpy(longdiag, "550 5.7.1 ", 10);
	for (int i = 10; i < 4999; i++)
		longdiag[i] = (i % 97 == 0 || i > 3000) ? 'w' : (i % 7 ? 'a' : ' ');
	longdiag[4999] = '\0';
	fixture_init(&f);
	f.rc[0].diagnostic = longdiag;
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);              /* every line <= 998 */
	assert_true(has_line(f.all, "Status: 5.7.1"));
	fixture_done(&f);
	free(longdiag);
}

/* The original's header section: LF endings become CRLF, the body after the
 * empty line is not taken, and an oversized section is cut at a line end. */
static void
test_headers_normalised(void **state)
{
	struct fixture f;
	char *big;
	size_t n = 0;

	(void)state;
	fixture_init(&f);
	f.r.headers = "Subject: lf only\nFrom: a@b\n\nBODY TEXT\n";
	f.r.headers_len = strlen(f.r.headers);
	f.r.ret = ENV_RET_HDRS;
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_true(has_line(f.all, "Subject: lf only"));
	assert_true(has_line(f.all, "From: a@b"));
	assert_null(strstr(f.all, "BODY TEXT"));
	fixture_done(&f);

	big = malloc(200000);
	assert_non_null(big);
	while (n + 40 < 199000)
		n += (size_t)sprintf(big + n, "X-Filler-%06zu: 0123456789abcdef\r\n", n);
	fixture_init(&f);
	f.r.headers = big;
	f.r.headers_len = n;
	f.r.ret = ENV_RET_HDRS;
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_true(f.out.prefix_len < DSN_HEADERS_MAX + 8192);
	assert_true(f.out.prefix_len > DSN_HEADERS_MAX);
	fixture_done(&f);
	free(big);

	/* Without headers there is no third part. */
	fixture_init(&f);
	f.r.headers = NULL;
	f.r.headers_len = 0;
	assert_int_equal(build(&f), DSN_OK);
	assert_false(f.out.include_body);
	assert_null(strstr(f.all, "rfc822-headers"));
	assert_null(strstr(f.all, "message/rfc822"));
	fixture_done(&f);
}

/* SMTPUTF8 originals get the RFC 6533 types. */
static void
test_smtputf8(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	f.r.smtputf8 = true;
	f.rc[0].addr = "j\xc3\xb6rg@example.com";
	assert_int_equal(build(&f), DSN_OK);
	assert_well_formed(f.all);
	assert_true(f.out.smtputf8);
	assert_true(f.out.eightbit);
	assert_true(has_line(f.all, "Content-Type: multipart/report; report-type=global-delivery-status;"));
	assert_true(has_line(f.all, "Content-Type: message/global-delivery-status"));
	assert_true(has_line(f.all, "Content-Type: message/global"));
	assert_true(has_line(f.all, "Final-Recipient: utf-8; j\xc3\xb6rg@example.com"));
	assert_true(has_line(f.all, "Content-Type: text/plain; charset=utf-8"));
	fixture_done(&f);

	/* 8-bit bytes in the original's headers make that part (and the
	 * report) 8bit, returned as they are. */
	fixture_init(&f);
	f.r.headers = "Subject: Gr\xfc\xdf" "e\r\n\r\n";
	f.r.headers_len = strlen(f.r.headers);
	f.r.ret = ENV_RET_HDRS;
	assert_int_equal(build(&f), DSN_OK);
	assert_true(f.out.eightbit);
	assert_false(f.out.smtputf8);
	assert_int_equal(count(f.all, "Content-Transfer-Encoding: 8bit\r\n"), 2);
	assert_true(has_line(f.all, "Subject: Gr\xfc\xdf" "e"));
	fixture_done(&f);

	/* Not SMTPUTF8: non-ASCII in a reply is masked, the report stays 7bit. */
	fixture_init(&f);
	f.rc[0].diagnostic = "550 5.1.1 unbekannter Empf\xc3\xa4nger";
	assert_int_equal(build(&f), DSN_OK);
	assert_false(f.out.eightbit);
	assert_non_null(strstr(f.all, "Empf??nger"));
	fixture_done(&f);
}

/* Bad input is refused, not guessed at. */
static void
test_invalid(void **state)
{
	struct fixture f;

	(void)state;
	fixture_init(&f);
	f.r.hostname = NULL;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_EINVAL);
	fixture_init(&f);
	f.r.nrcpt = 0;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_EINVAL);
	fixture_init(&f);
	f.rc[0].addr = NULL;
	assert_int_equal(dsn_build(&f.r, &f.out), DSN_EINVAL);
	assert_null(f.out.prefix);
	dsn_output_free(&f.out);                /* harmless on an empty output */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_failed_structure),
		cmocka_unit_test(test_delayed_structure),
		cmocka_unit_test(test_ret),
		cmocka_unit_test(test_envid_orcpt),
		cmocka_unit_test(test_null_sender),
		cmocka_unit_test(test_notify),
		cmocka_unit_test(test_injection_and_folding),
		cmocka_unit_test(test_headers_normalised),
		cmocka_unit_test(test_smtputf8),
		cmocka_unit_test(test_invalid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
