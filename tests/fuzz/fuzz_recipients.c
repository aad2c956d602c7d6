/*
 * fuzz_recipients.c - libFuzzer target: a tenant's recipients file (the
 * loader in relay/config.c) and the RCPT decision that reads it
 * (policy_check_rcpt, relay/policy.c).
 *
 * The input is the whole recipients file.  It is put in a memfd, which the
 * fixed config below names as /proc/self/fd/N, so the real loader opens,
 * stats and reads it exactly as it reads a file on disk.  Whatever the
 * bytes, the load either fails with a message naming the file or a config
 * line, or yields a list for which:
 *   - entries are sorted, unique, lower case, without blanks, with an '@'
 *     and a domain of the tenant's own ("@domain" entries accept the whole
 *     domain);
 *   - every address line of the file is accepted by config_tenant_accepts
 *     (what the operator listed gets in, in any case, with a trailing dot;
 *     a quoted local part in the form the SMTP parser gives it);
 *   - every listed address that the SMTP parser takes as RCPT TO:<...>
 *     gets POLICY_OK for the tenant from policy_check_rcpt, and a local
 *     part that is listed nowhere in the file gets POLICY_UNKNOWN_USER.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/policy.h"
#include "mxspool/smtp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define LINE_MAX_FUZZ 300   /* longer lines are refused by the loader */

static const char config_fmt[] =
    "[server]\n"
    "hostname = mx.test\n"
    "listen = 127.0.0.1:25\n"
    "spool_dir = /nonexistent/spool\n"
    "control_socket = /nonexistent/control.sock\n"
    "[tenant:acme]\n"
    "domains = example.test, sub.example.test, xn--bcher-kva.test\n"
    "primary = 127.0.0.1:9\n"
    "recipients = /proc/self/fd/%d\n"
    "[tenant:other]\n"
    "domains = other.test\n"
    "primary = 127.0.0.1:9\n";

static bool
blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' ||
	    c == '\v';
}

/* The address on LINE as the file format defines it ('#' comments at the
 * start or after a blank, blanks trimmed), into OUT; false if none. */
static bool
line_address(const char *line, size_t len, char *out, size_t outlen)
{
	size_t s = 0, e;

	while (s < len && blank(line[s]))
		s++;
	for (e = s; e < len; e++)
		if (line[e] == '#' && (e == s || blank(line[e - 1])))
			break;
	while (e > s && blank(line[e - 1]))
		e--;
	if (e == s || e - s >= outlen)
		return false;
	memcpy(out, line + s, e - s);
	out[e - s] = '\0';
	return true;
}

static void
check_policy(const struct config *cfg, const struct config_tenant *t,
    const char *addr)
{
	char line[600];
	struct smtp_cmd cmd;
	struct smtp_path path;
	const struct config_tenant *got;
	enum policy_verdict v;
	int n;

	n = snprintf(line, sizeof(line), "RCPT TO:<%s>", addr);
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	if (smtp_proto_parse_command(line, (size_t)n, &cmd) != 0 ||
	    cmd.verb != SMTP_VERB_RCPT)
		return;
	if (smtp_proto_parse_path(cmd.path, cmd.path_len, SMTP_PATH_FORWARD,
	    true, &path) != 0 || path.postmaster)
		return;
	v = policy_check_rcpt(cfg, &path, "", &got);
	CHECK(v == POLICY_OK && got == t);
	/* Once a transaction belongs to the other tenant, not this one. */
	CHECK(policy_check_rcpt(cfg, &path, "other", &got) == POLICY_OTHER_TENANT);
}

static void
check_list(const struct config *cfg, const uint8_t *data, size_t size)
{
	const struct config_tenant *t = config_tenant_by_name(cfg, "acme");
	char addr[LINE_MAX_FUZZ];
	size_t start = 0;

	CHECK(t != NULL && t->recipients_file != NULL);
	for (size_t i = 0; i < t->nrecipients; i++) {
		const char *r = t->recipients[i], *at = strrchr(r, '@');

		CHECK(i == 0 || strcmp(t->recipients[i - 1], r) < 0);
		CHECK(at != NULL && at[1] != '\0');
		CHECK(strpbrk(r, " \t") == NULL);
		for (const char *p = r; *p; p++)
			CHECK(!(*p >= 'A' && *p <= 'Z'));
		CHECK(config_tenant_for_domain(cfg, at + 1, strlen(at + 1)) == t);
		if (at == r) {
			char any[300];

			snprintf(any, sizeof(any), "Someone%s", r);
			CHECK(config_tenant_accepts(t, any));
		} else {
			CHECK(config_tenant_accepts(t, r));
			check_policy(cfg, t, r);
		}
	}
	/* Every address line of the file is accepted as it was written. */
	for (size_t i = 0; i <= size; i++) {
		if (i < size && data[i] != '\n')
			continue;
		if (line_address((const char *)data + start, i - start, addr,
		    sizeof(addr)) && addr[0] != '@') {
			/* A quoted local part is looked up as the parser
			 * hands it over, which check_policy() does. */
			if (addr[0] != '"')
				CHECK(config_tenant_accepts(t, addr));
			check_policy(cfg, t, addr);
		}
		start = i + 1;
	}
	/* A user nobody listed: refused unless a whole domain is listed. */
	{
		struct smtp_path p = { .addr = "zz-unlisted-9@example.test",
		    .local = "zz-unlisted-9", .domain = "example.test" };
		const struct config_tenant *got;
		bool wildcard = config_tenant_accepts(t, "x@example.test") &&
		    config_tenant_accepts(t, "y-other@example.test");
		enum policy_verdict v = policy_check_rcpt(cfg, &p, "", &got);

		bool named = false;

		/* Named anywhere, in any case (the load succeeded: no NULs). */
		for (size_t i = 0; i + 13 <= size && !named; i++)
			named = strncasecmp((const char *)data + i, "zz-unlisted-9",
			    13) == 0;
		if (!named && !wildcard)
			CHECK(v == POLICY_UNKNOWN_USER);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char text[sizeof(config_fmt) + 32], err[CONFIG_ERRLEN];
	struct config *cfg = NULL;
	FILE *fp;
	int fd, n;

	fd = memfd_create("recipients", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (size > 0 && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	n = snprintf(text, sizeof(text), config_fmt, fd);
	fp = fmemopen(text, (size_t)n, "r");
	if (fp == NULL) {
		close(fd);
		return 0;
	}
	err[0] = '\0';
	if (config_load_stream(fp, "fuzz.ini", &cfg, err, sizeof(err)) == 0) {
		CHECK(cfg != NULL);
		check_list(cfg, data, size);
		config_free(cfg);
	} else {
		/* The file's own line ("/proc/self/fd/N:LINE: ...") or the
		 * config line naming it. */
		CHECK(cfg == NULL && err[0] != '\0');
		CHECK(strncmp(err, "/proc/self/fd/", 14) == 0 ||
		    strncmp(err, "fuzz.ini:", 9) == 0);
	}
	fclose(fp);
	close(fd);
	return 0;
}
