/*
 * dsn_dump - write one sample DSN to stdout, for tests/integration/
 * test_dsn_format.py, which parses it with Python's email package.
 *
 *   dsn_dump [--delayed|--delivered] [--ret=full|hdrs] [--envid=X]
 *            [--orcpt=X] [--notify=BITS] [--sender=ADDR] [--rcpt=ADDR]
 *            [--smtputf8] [--big] [--bounce]
 *
 * The original message is fixed (a few headers and a short body); --big
 * claims it is larger than DSN_FULL_MAX.  Exit status: 0 a report was
 * written, 3 no report (a DSN_SKIP_* status, named on stderr), 1 an error.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/dsn.h"

static const char sample_headers[] =
    "Received: from client.example.org ([192.0.2.7])\r\n"
    "\tby backup-mx.example.net with ESMTP id 0000018D2A5B7C01\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.com\r\n"
    "Subject: quarterly report\r\n"
    "Message-ID: <q1@example.org>\r\n"
    "\r\n";
static const char sample_body[] =
    "Hello Bob,\r\n"
    "\r\n"
    "the numbers are attached.\r\n"
    "-- \r\n"
    "Alice\r\n";

static unsigned
parse_notify(const char *s)
{
	unsigned n = 0;
	char *copy = strdup(s), *save = NULL;

	if (copy == NULL)
		return 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (strcasecmp(t, "NEVER") == 0)
			n |= ENV_NOTIFY_NEVER;
		else if (strcasecmp(t, "SUCCESS") == 0)
			n |= ENV_NOTIFY_SUCCESS;
		else if (strcasecmp(t, "FAILURE") == 0)
			n |= ENV_NOTIFY_FAILURE;
		else if (strcasecmp(t, "DELAY") == 0)
			n |= ENV_NOTIFY_DELAY;
	}
	free(copy);
	return n;
}

static int
write_all(const char *p, size_t n)
{
	return fwrite(p, 1, n, stdout) == n ? 0 : -1;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "delayed", no_argument, NULL, 'd' },
		{ "delivered", no_argument, NULL, 'D' },
		{ "ret", required_argument, NULL, 'r' },
		{ "envid", required_argument, NULL, 'e' },
		{ "orcpt", required_argument, NULL, 'o' },
		{ "notify", required_argument, NULL, 'n' },
		{ "sender", required_argument, NULL, 's' },
		{ "rcpt", required_argument, NULL, 't' },
		{ "smtputf8", no_argument, NULL, 'u' },
		{ "big", no_argument, NULL, 'b' },
		{ "bounce", no_argument, NULL, 'B' },
		{ NULL, 0, NULL, 0 },
	};
	struct dsn_rcpt rc[2];
	struct dsn_report r;
	struct dsn_output out;
	int c, st;

	memset(rc, 0, sizeof(rc));
	memset(&r, 0, sizeof(r));
	rc[0].addr = "bob@example.com";
	rc[0].action = DSN_ACTION_FAILED;
	rc[0].remote_mta = "mx1.example.com";
	rc[0].diagnostic = "550-5.1.1 <bob@example.com>: Recipient address rejected:\r\n"
	    "550 5.1.1 User unknown in virtual mailbox table";
	rc[0].last_attempt_ms = 1739440800000;        /* 2025-02-13 10:00 UTC */
	rc[1].addr = "carol@example.com";
	rc[1].action = DSN_ACTION_FAILED;
	rc[1].diagnostic = "message expired after 5 days in the queue";
	rc[1].diagnostic_local = true;
	rc[1].status = "4.4.7";
	rc[1].last_attempt_ms = 1739440800000;

	r.hostname = "backup-mx.example.net";
	r.sender = "alice@example.org";
	r.queue_id = "0000018D2A5B7C01";
	r.arrival_ms = 1739008800000;                 /* 5 days earlier */
	r.now_ms = 1739440801000;
	r.nonce = 0x5eed5eed12345678ull;
	r.headers = sample_headers;
	r.headers_len = sizeof(sample_headers) - 1;
	r.message_size = sizeof(sample_headers) - 1 + sizeof(sample_body) - 1;
	r.rcpt = rc;
	r.nrcpt = 2;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
		case 'D':
			for (int i = 0; i < 2; i++) {
				rc[i].action = c == 'd' ? DSN_ACTION_DELAYED :
				    DSN_ACTION_DELIVERED;
				rc[i].status = NULL;
				rc[i].retry_until_ms = r.arrival_ms +
				    5LL * 86400000;
			}
			rc[0].diagnostic = c == 'd' ?
			    "451 4.3.0 Temporary failure, try again later" :
			    "250 2.0.0 Ok: queued as 4QX1";
			rc[1].diagnostic = c == 'd' ?
			    "connect to mx1.example.com: connection refused" :
			    NULL;
			r.now_ms = r.arrival_ms + 4LL * 3600000;
			break;
		case 'r':
			r.ret = strcmp(optarg, "full") == 0 ? ENV_RET_FULL :
			    strcmp(optarg, "hdrs") == 0 ? ENV_RET_HDRS :
			    ENV_RET_NONE;
			break;
		case 'e':
			r.envid = optarg;
			break;
		case 'o':
			rc[0].orcpt = optarg;
			break;
		case 'n':
			rc[0].notify = rc[1].notify = parse_notify(optarg);
			break;
		case 's':
			r.sender = optarg;
			break;
		case 't':
			rc[0].addr = optarg;
			break;
		case 'u':
			r.smtputf8 = true;
			break;
		case 'b':
			r.message_size = 10u * 1024 * 1024;
			break;
		case 'B':
			r.is_bounce = true;
			break;
		default:
			fprintf(stderr, "usage: dsn_dump [options]\n");
			return 1;
		}
	}

	st = dsn_build(&r, &out);
	if (st > 0) {
		fprintf(stderr, "dsn_dump: %s\n", dsn_strerror(st));
		return 3;
	}
	if (st < 0) {
		fprintf(stderr, "dsn_dump: %s\n", dsn_strerror(st));
		return 1;
	}
	st = write_all(out.prefix, out.prefix_len);
	/* The caller's part: stream the body between prefix and suffix. */
	if (st == 0 && out.include_body)
		st = write_all(sample_body, sizeof(sample_body) - 1);
	if (st == 0)
		st = write_all(out.suffix, out.suffix_len);
	dsn_output_free(&out);
	if (st != 0 || fflush(stdout) != 0) {
		perror("dsn_dump: stdout");
		return 1;
	}
	return 0;
}
