/*
 * test_config.c - config_load(), config_tenant_set() and the
 * config_parse_* helpers.
 *
 * Every config is written to a mkstemp() file, loaded, and either checked
 * field by field or checked for the exact "FILE:LINE: " prefix and a key
 * phrase of its error message.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mxspool/config.h"

/* The smallest valid config: lines 1-2 [server], lines 3-4 one tenant. */
#define SERVER "[server]\nspool_dir = /var/spool/mxspool\n"
#define TENANT "[tenant:a]\ndomains = a.example\n"

static const char *
tmpdir(void)
{
	const char *d = getenv("TMPDIR");

	return d != NULL && *d != '\0' ? d : "/tmp";
}

/* Write TEXT to a new temporary file; PATH receives its name. */
static void
write_file(char *path, size_t len, const char *text)
{
	FILE *fp;
	int fd;

	snprintf(path, len, "%s/mxspool-test-config-XXXXXX", tmpdir());
	fd = mkstemp(path);
	assert_true(fd >= 0);
	fp = fdopen(fd, "w");
	assert_non_null(fp);
	assert_int_equal(fputs(text, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
}

static struct config *
load_ok(const char *text)
{
	char path[256], err[CONFIG_ERRLEN] = "";
	struct config *cfg = NULL;
	int rc;

	write_file(path, sizeof(path), text);
	rc = config_load(path, &cfg, err, sizeof(err));
	unlink(path);
	if (rc != 0)
		fail_msg("config refused: %s\n--- config ---\n%s", err, text);
	assert_non_null(cfg);
	return cfg;
}

/* The load must fail with "FILE:LINE: " and a message containing PHRASE. */
static void
expect_fail(const char *text, unsigned line, const char *phrase)
{
	char path[256], err[CONFIG_ERRLEN] = "", prefix[300];
	struct config *cfg = NULL;
	int rc;

	write_file(path, sizeof(path), text);
	rc = config_load(path, &cfg, err, sizeof(err));
	unlink(path);
	if (rc != -1)
		fail_msg("config accepted, expected line %u \"%s\"\n--- config ---\n%s",
		    line, phrase, text);
	assert_null(cfg);
	snprintf(prefix, sizeof(prefix), "%s:%u: ", path, line);
	if (strncmp(err, prefix, strlen(prefix)) != 0)
		fail_msg("wanted prefix \"%s\", got \"%s\"", prefix, err);
	if (strstr(err, phrase) == NULL)
		fail_msg("wanted \"%s\" in \"%s\"", phrase, err);
}

/* A config naming a file, with the path substituted for the one %s. */
static void
expect_fail_fmt(unsigned line, const char *phrase, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
expect_fail_fmt(unsigned line, const char *phrase, const char *fmt, ...)
{
	char text[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	expect_fail(text, line, phrase);
}

/* ---- value parsers ---- */

static void
test_parse_size(void **state)
{
	/* Sizes are bytes with optional K/M/G/T (powers of 1024) and B/iB. */
	uint64_t v = 0;

	(void)state;
	assert_int_equal(config_parse_size("1048576", &v), 0);
	assert_int_equal(v, 1048576);
	assert_int_equal(config_parse_size("512K", &v), 0);
	assert_int_equal(v, 512 * 1024);
	assert_int_equal(config_parse_size("10G", &v), 0);
	assert_int_equal(v, 10ULL << 30);
	assert_int_equal(config_parse_size("10GB", &v), 0);
	assert_int_equal(v, 10ULL << 30);
	assert_int_equal(config_parse_size("3MiB", &v), 0);
	assert_int_equal(v, 3ULL << 20);
	assert_int_equal(config_parse_size("50m", &v), 0);
	assert_int_equal(v, 50ULL << 20);
	assert_int_equal(config_parse_size("100B", &v), 0);
	assert_int_equal(v, 100);
	assert_int_equal(config_parse_size("0", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(config_parse_size("", &v), -1);
	assert_int_equal(config_parse_size("G", &v), -1);
	assert_int_equal(config_parse_size("-1", &v), -1);
	assert_int_equal(config_parse_size("1.5G", &v), -1);
	assert_int_equal(config_parse_size("10X", &v), -1);
	assert_int_equal(config_parse_size("10GG", &v), -1);
	assert_int_equal(config_parse_size("10iB", &v), -1);
	assert_int_equal(config_parse_size("99999999999G", &v), -1);
	assert_int_equal(config_parse_size("18446744073709551616", &v), -1);
	assert_int_equal(config_parse_size(NULL, &v), -1);
}

static void
test_parse_duration(void **state)
{
	/* Durations take ms/s/m/h/d/w, a bare number is seconds, pairs add up. */
	uint64_t ms = 0;

	(void)state;
	assert_int_equal(config_parse_duration("30", &ms), 0);
	assert_int_equal(ms, 30000);
	assert_int_equal(config_parse_duration("30s", &ms), 0);
	assert_int_equal(ms, 30000);
	assert_int_equal(config_parse_duration("5m", &ms), 0);
	assert_int_equal(ms, 300000);
	assert_int_equal(config_parse_duration("4h", &ms), 0);
	assert_int_equal(ms, 4ULL * 3600000);
	assert_int_equal(config_parse_duration("5d", &ms), 0);
	assert_int_equal(ms, 5ULL * 86400000);
	assert_int_equal(config_parse_duration("1w", &ms), 0);
	assert_int_equal(ms, 7ULL * 86400000);
	assert_int_equal(config_parse_duration("250ms", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_equal(config_parse_duration("1h30m", &ms), 0);
	assert_int_equal(ms, 5400000);
	assert_int_equal(config_parse_duration("0", &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(config_parse_duration("", &ms), -1);
	assert_int_equal(config_parse_duration("s", &ms), -1);
	assert_int_equal(config_parse_duration("5M", &ms), -1);
	assert_int_equal(config_parse_duration("5 m", &ms), -1);
	assert_int_equal(config_parse_duration("5min", &ms), -1);
	assert_int_equal(config_parse_duration("1h30", &ms), -1);
	assert_int_equal(config_parse_duration("-5s", &ms), -1);
	assert_int_equal(config_parse_duration("99999999999999999999d", &ms), -1);
	assert_int_equal(config_parse_duration("999999999999999w", &ms), -1);
}

static void
test_parse_hostport(void **state)
{
	/* host[:port] and [v6]:port parse; bad ports, brackets and garbage do not. */
	struct config_hostport hp;

	(void)state;
	assert_int_equal(config_parse_hostport("127.0.0.1:2525", 25, &hp), 0);
	assert_string_equal(hp.host, "127.0.0.1");
	assert_int_equal(hp.port, 2525);
	assert_int_equal(config_parse_hostport("mx.example.net", 25, &hp), 0);
	assert_string_equal(hp.host, "mx.example.net");
	assert_int_equal(hp.port, 25);
	assert_int_equal(config_parse_hostport("[::1]:587", 25, &hp), 0);
	assert_string_equal(hp.host, "::1");
	assert_int_equal(hp.port, 587);
	assert_int_equal(config_parse_hostport("[2001:db8::2]", 53, &hp), 0);
	assert_string_equal(hp.host, "2001:db8::2");
	assert_int_equal(hp.port, 53);
	assert_int_equal(config_parse_hostport("host:65535", 0, &hp), 0);
	assert_int_equal(hp.port, 65535);

	assert_int_equal(config_parse_hostport("host", 0, &hp), -1);
	assert_int_equal(config_parse_hostport("host:0", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("host:65536", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("host:", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("host:25x", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("host:-1", 25, &hp), -1);
	assert_int_equal(config_parse_hostport(":25", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("[::1", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("[::1]25", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("[]:25", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("[1.2.3.4]:25", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("[nonsense]:25", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("::1", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("300.1.1.1", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("bad_host!", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("-bad.example", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("*:25", 25, &hp), -1);
	assert_int_equal(config_parse_hostport("mx.example..:25", 25, &hp), -1);
}

static void
test_parse_cidr(void **state)
{
	/* Addresses and CIDRs of both families parse; bad prefixes and host bits do not. */
	struct config_cidr c;

	(void)state;
	assert_int_equal(config_parse_cidr("192.0.2.7", &c), 0);
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 32);
	assert_int_equal(config_parse_cidr("10.0.0.0/8", &c), 0);
	assert_int_equal(c.prefix, 8);
	assert_int_equal(config_parse_cidr("0.0.0.0/0", &c), 0);
	assert_int_equal(config_parse_cidr("::1", &c), 0);
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.prefix, 128);
	assert_int_equal(config_parse_cidr("2001:db8::/32", &c), 0);
	assert_int_equal(c.prefix, 32);
	assert_int_equal(config_parse_cidr("[2001:db8::]/48", &c), 0);
	assert_int_equal(c.prefix, 48);

	assert_int_equal(config_parse_cidr("10.0.0.1/8", &c), -1);
	assert_int_equal(config_parse_cidr("10.0.0.0/33", &c), -1);
	assert_int_equal(config_parse_cidr("2001:db8::/129", &c), -1);
	assert_int_equal(config_parse_cidr("10.0.0.0/", &c), -1);
	assert_int_equal(config_parse_cidr("10.0.0.0/8x", &c), -1);
	assert_int_equal(config_parse_cidr("10.0.0/8", &c), -1);
	assert_int_equal(config_parse_cidr("example.com", &c), -1);
	assert_int_equal(config_parse_cidr("/8", &c), -1);
	assert_int_equal(config_parse_cidr("[::1", &c), -1);
}

static void
test_cidr_match(void **state)
{
	/* A CIDR matches exactly the addresses under its prefix, v4-mapped v6 included. */
	struct config_cidr c;
	uint8_t a4[4], a6[16];

	(void)state;
	assert_int_equal(config_parse_cidr("192.0.2.0/24", &c), 0);
	inet_pton(AF_INET, "192.0.2.200", a4);
	assert_true(config_cidr_match(&c, AF_INET, a4));
	inet_pton(AF_INET, "192.0.3.1", a4);
	assert_false(config_cidr_match(&c, AF_INET, a4));
	inet_pton(AF_INET6, "::ffff:192.0.2.9", a6);
	assert_true(config_cidr_match(&c, AF_INET6, a6));
	inet_pton(AF_INET6, "2001:db8::1", a6);
	assert_false(config_cidr_match(&c, AF_INET6, a6));

	assert_int_equal(config_parse_cidr("10.128.0.0/9", &c), 0);
	inet_pton(AF_INET, "10.200.1.1", a4);
	assert_true(config_cidr_match(&c, AF_INET, a4));
	inet_pton(AF_INET, "10.127.1.1", a4);
	assert_false(config_cidr_match(&c, AF_INET, a4));

	assert_int_equal(config_parse_cidr("2001:db8::/32", &c), 0);
	inet_pton(AF_INET6, "2001:db8:ffff::1", a6);
	assert_true(config_cidr_match(&c, AF_INET6, a6));
	inet_pton(AF_INET6, "2001:db9::1", a6);
	assert_false(config_cidr_match(&c, AF_INET6, a6));
	inet_pton(AF_INET, "32.1.13.184", a4);
	assert_false(config_cidr_match(&c, AF_INET, a4));

	assert_int_equal(config_parse_cidr("0.0.0.0/0", &c), 0);
	assert_true(config_cidr_match(&c, AF_INET, a4));
}

/* ---- whole files ---- */

static void
test_defaults(void **state)
{
	/* The smallest config gets every default from DESIGN.md. */
	struct config *cfg = load_ok(SERVER TENANT);
	const struct config_tenant *t;
	char host[256] = "";

	(void)state;
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	host[sizeof(host) - 1] = '\0';
	assert_string_equal(cfg->hostname, host);
	assert_int_equal(cfg->nlisten, 2);
	assert_string_equal(cfg->listen[0].host, "0.0.0.0");
	assert_int_equal(cfg->listen[0].port, 25);
	assert_string_equal(cfg->listen[1].host, "::");
	assert_int_equal(cfg->listen[1].port, 25);
	assert_string_equal(cfg->spool_dir, "/var/spool/mxspool");
	assert_string_equal(cfg->control_socket, "/run/mxspool/control.sock");
	assert_false(cfg->has_metrics);
	assert_null(cfg->user);
	assert_int_equal(cfg->max_connections, 10000);
	assert_int_equal(cfg->max_connections_per_ip, 50);
	assert_int_equal(cfg->max_message_size, 50ULL << 20);
	assert_int_equal(cfg->max_recipients, 1000);
	assert_int_equal(cfg->max_line_length, 1000);
	assert_int_equal(cfg->max_errors, 20);
	assert_int_equal(cfg->smtp_timeout_ms, 5 * 60 * 1000);
	assert_int_equal(cfg->disk_reserve, 1ULL << 30);
	assert_int_equal(cfg->queue_lifetime_ms, 5ULL * 86400 * 1000);
	assert_int_equal(cfg->delay_warning_ms, 4ULL * 3600 * 1000);
	assert_int_equal(cfg->ndns_servers, 0);
	assert_int_equal(cfg->mx_port, 25);
	assert_false(cfg->has_bounce_relay);
	assert_int_equal(cfg->commit_window_ms, 0);
	assert_null(cfg->tls_cert);
	assert_null(cfg->tls_key);
	assert_null(cfg->tls_ca_file);
	assert_int_equal(cfg->tls_outbound, CONFIG_TLS_OUT_OPPORTUNISTIC);

	assert_int_equal(cfg->ntenants, 1);
	t = &cfg->tenants[0];
	assert_string_equal(t->name, "a");
	assert_int_equal(t->ndomains, 1);
	assert_string_equal(t->domains[0], "a.example");
	assert_true(t->primary_mx);
	assert_int_equal(t->nprimaries, 0);
	assert_null(t->recipients_file);
	assert_int_equal(t->nrecipients, 0);
	assert_int_equal(t->quota, 10ULL << 30);
	assert_int_equal(t->quota_messages, 1000000);
	assert_true(t->drain_rate == 50.0);
	assert_true(t->drain_initial_rate == 2.0);
	assert_true(t->drain_burst == 0.0);
	assert_int_equal(t->drain_bandwidth, 0);
	assert_int_equal(t->drain_concurrency, 4);
	assert_int_equal(t->drain_ramp_ms, 5 * 60 * 1000);
	assert_int_equal(t->messages_per_connection, 100);
	assert_int_equal(t->probe_interval_ms, 30 * 1000);
	assert_int_equal(t->probe_up_after, 2);
	assert_int_equal(t->netrn_from, 1);
	assert_int_equal(t->etrn_from[0].family, AF_INET);
	assert_int_equal(t->etrn_from[0].prefix, 32);
	assert_memory_equal(t->etrn_from[0].addr, "\x7f\x00\x00\x01", 4);
	assert_true(config_tenant_accepts(t, "anyone@a.example"));
	config_free(cfg);
}

static void
test_full_round_trip(void **state)
{
	/* Every key of every section is parsed into the value written. */
	char cert[256], key[256], ca[256], rcpt[256], text[4096];
	struct config *cfg;
	const struct config_tenant *t, *u;

	(void)state;
	write_file(cert, sizeof(cert), "cert\n");
	write_file(key, sizeof(key), "key\n");
	write_file(ca, sizeof(ca), "ca\n");
	write_file(rcpt, sizeof(rcpt),
	    "# who may receive mail\n"
	    "Alice@Alpha.Example\n"
	    "bob@alpha.example   # trailing comment\n"
	    "\n"
	    "   @beta.example\n"
	    "alice@alpha.example.\n");
	snprintf(text, sizeof(text),
	    "; every key\n"
	    "[server]\n"
	    "hostname = mx2.example.net.\n"
	    "listen = 127.0.0.1:2525, [::1]:2526,\n"
	    "    192.0.2.1 ; port 25 by default\n"
	    "spool_dir = /var/spool/test\n"
	    "control_socket = /run/test.sock\n"
	    "metrics_listen = 127.0.0.1:9100\n"
	    "user = mxspool\n"
	    "max_connections = 500\n"
	    "max_connections_per_ip = 5\n"
	    "max_message_size = 10M\n"
	    "max_recipients = 100\n"
	    "max_line_length = 2000\n"
	    "max_errors = 7\n"
	    "smtp_timeout = 90s\n"
	    "disk_reserve = 512K\n"
	    "queue_lifetime = 3d\n"
	    "delay_warning = 0\n"
	    "dns_servers = 127.0.0.1:5353 [::1]\n"
	    "mx_port = 2525\n"
	    "bounce_relay = smarthost.example.net:587\n"
	    "commit_window = 5ms\n"
	    "\n"
	    "[tls]\n"
	    "cert = %s\n"
	    "key = %s\n"
	    "outbound = verify\n"
	    "ca_file = %s\n"
	    "\n"
	    "[tenant:alpha]\n"
	    "domains = Alpha.Example, beta.example.\n"
	    "primary = mx1.alpha.example:2526, [2001:db8::1]\n"
	    "recipients = %s\n"
	    "quota = 1G\n"
	    "quota_messages = 5000\n"
	    "drain_rate = 12.5\n"
	    "drain_bandwidth = 1M\n"
	    "drain_concurrency = 3\n"
	    "drain_ramp = 1h30m\n"
	    "drain_initial_rate = 0.5\n"
	    "drain_burst = 20\n"
	    "messages_per_connection = 50\n"
	    "probe_interval = 10s\n"
	    "probe_up_after = 3\n"
	    "etrn_from = 192.0.2.0/24, 2001:db8::/32\n"
	    "\n"
	    "[tenant:b-2_x]\n"
	    "domains =\n"
	    "    gamma.example\n"
	    "    delta.example\n"
	    "etrn_from =\n",
	    cert, key, ca, rcpt);
	cfg = load_ok(text);
	unlink(cert);
	unlink(key);
	unlink(ca);
	unlink(rcpt);

	assert_string_equal(cfg->hostname, "mx2.example.net");
	assert_int_equal(cfg->nlisten, 3);
	assert_string_equal(cfg->listen[0].host, "127.0.0.1");
	assert_int_equal(cfg->listen[0].port, 2525);
	assert_string_equal(cfg->listen[1].host, "::1");
	assert_int_equal(cfg->listen[1].port, 2526);
	assert_string_equal(cfg->listen[2].host, "192.0.2.1");
	assert_int_equal(cfg->listen[2].port, 25);
	assert_string_equal(cfg->spool_dir, "/var/spool/test");
	assert_string_equal(cfg->control_socket, "/run/test.sock");
	assert_true(cfg->has_metrics);
	assert_string_equal(cfg->metrics_listen.host, "127.0.0.1");
	assert_int_equal(cfg->metrics_listen.port, 9100);
	assert_string_equal(cfg->user, "mxspool");
	assert_int_equal(cfg->max_connections, 500);
	assert_int_equal(cfg->max_connections_per_ip, 5);
	assert_int_equal(cfg->max_message_size, 10ULL << 20);
	assert_int_equal(cfg->max_recipients, 100);
	assert_int_equal(cfg->max_line_length, 2000);
	assert_int_equal(cfg->max_errors, 7);
	assert_int_equal(cfg->smtp_timeout_ms, 90000);
	assert_int_equal(cfg->disk_reserve, 512 * 1024);
	assert_int_equal(cfg->queue_lifetime_ms, 3ULL * 86400000);
	assert_int_equal(cfg->delay_warning_ms, 0);
	assert_int_equal(cfg->ndns_servers, 2);
	assert_string_equal(cfg->dns_servers[0].host, "127.0.0.1");
	assert_int_equal(cfg->dns_servers[0].port, 5353);
	assert_string_equal(cfg->dns_servers[1].host, "::1");
	assert_int_equal(cfg->dns_servers[1].port, 53);
	assert_int_equal(cfg->mx_port, 2525);
	assert_true(cfg->has_bounce_relay);
	assert_string_equal(cfg->bounce_relay.host, "smarthost.example.net");
	assert_int_equal(cfg->bounce_relay.port, 587);
	assert_int_equal(cfg->commit_window_ms, 5);
	assert_string_equal(cfg->tls_cert, cert);
	assert_string_equal(cfg->tls_key, key);
	assert_string_equal(cfg->tls_ca_file, ca);
	assert_int_equal(cfg->tls_outbound, CONFIG_TLS_OUT_VERIFY);

	assert_int_equal(cfg->ntenants, 2);
	t = config_tenant_by_name(cfg, "alpha");
	assert_non_null(t);
	assert_int_equal(t->ndomains, 2);
	assert_string_equal(t->domains[0], "alpha.example");
	assert_string_equal(t->domains[1], "beta.example");
	assert_false(t->primary_mx);
	assert_int_equal(t->nprimaries, 2);
	assert_string_equal(t->primaries[0].host, "mx1.alpha.example");
	assert_int_equal(t->primaries[0].port, 2526);
	assert_string_equal(t->primaries[1].host, "2001:db8::1");
	assert_int_equal(t->primaries[1].port, 25);
	assert_string_equal(t->recipients_file, rcpt);
	assert_int_equal(t->nrecipients, 3);
	assert_string_equal(t->recipients[0], "@beta.example");
	assert_string_equal(t->recipients[1], "alice@alpha.example");
	assert_string_equal(t->recipients[2], "bob@alpha.example");
	assert_int_equal(t->quota, 1ULL << 30);
	assert_int_equal(t->quota_messages, 5000);
	assert_true(t->drain_rate == 12.5);
	assert_int_equal(t->drain_bandwidth, 1 << 20);
	assert_int_equal(t->drain_concurrency, 3);
	assert_int_equal(t->drain_ramp_ms, 5400000);
	assert_true(t->drain_initial_rate == 0.5);
	assert_true(t->drain_burst == 20.0);
	assert_int_equal(t->messages_per_connection, 50);
	assert_int_equal(t->probe_interval_ms, 10000);
	assert_int_equal(t->probe_up_after, 3);
	assert_int_equal(t->netrn_from, 2);
	assert_int_equal(t->etrn_from[0].family, AF_INET);
	assert_int_equal(t->etrn_from[0].prefix, 24);
	assert_int_equal(t->etrn_from[1].family, AF_INET6);
	assert_int_equal(t->etrn_from[1].prefix, 32);

	u = config_tenant_by_name(cfg, "b-2_x");
	assert_non_null(u);
	assert_int_equal(u->ndomains, 2);
	assert_string_equal(u->domains[0], "gamma.example");
	assert_string_equal(u->domains[1], "delta.example");
	assert_true(u->primary_mx);
	assert_int_equal(u->netrn_from, 0);
	assert_null(config_tenant_by_name(cfg, "nobody"));

	/* The recipients list: full addresses and whole domains, any case. */
	assert_true(config_tenant_accepts(t, "alice@alpha.example"));
	assert_true(config_tenant_accepts(t, "ALICE@Alpha.Example"));
	assert_true(config_tenant_accepts(t, "bob@alpha.example."));
	assert_false(config_tenant_accepts(t, "carol@alpha.example"));
	assert_true(config_tenant_accepts(t, "anyone@Beta.Example"));
	assert_false(config_tenant_accepts(t, "alice@gamma.example"));
	assert_false(config_tenant_accepts(t, "alice"));
	assert_false(config_tenant_accepts(t, "@beta.example"));
	assert_false(config_tenant_accepts(t, ""));
	assert_true(config_tenant_accepts(u, "whoever@gamma.example"));
	config_free(cfg);
}

static void
test_tenant_for_domain(void **state)
{
	/* Domain lookup is exact, case-insensitive, ignores one trailing dot, and
	 * also works on a config built by hand (no index). */
	struct config *cfg = load_ok(SERVER
	    "[tenant:one]\ndomains = one.example, Shared.Example\n"
	    "[tenant:two]\ndomains = two.example\n"
	    "[tenant:three]\ndomains = a.three.example z.three.example\n");
	const char *d = "TWO.example.xyz";
	struct config hand;

	(void)state;
	assert_string_equal(config_tenant_for_domain(cfg, "one.example", 11)->name, "one");
	assert_string_equal(config_tenant_for_domain(cfg, "ONE.EXAMPLE.", 12)->name, "one");
	assert_string_equal(config_tenant_for_domain(cfg, "shared.example", 14)->name, "one");
	assert_string_equal(config_tenant_for_domain(cfg, d, 11)->name, "two");
	assert_string_equal(config_tenant_for_domain(cfg, "z.three.example", 15)->name, "three");
	assert_string_equal(config_tenant_for_domain(cfg, "a.three.example", 15)->name, "three");
	assert_null(config_tenant_for_domain(cfg, d, 15));
	assert_null(config_tenant_for_domain(cfg, "sub.one.example", 15));
	assert_null(config_tenant_for_domain(cfg, "three.example", 13));
	assert_null(config_tenant_for_domain(cfg, "one.exampl", 10));
	assert_null(config_tenant_for_domain(cfg, "", 0));
	assert_null(config_tenant_for_domain(cfg, ".", 1));

	hand = *cfg;
	hand.domain_index = NULL;
	hand.ndomain_index = 0;
	assert_string_equal(config_tenant_for_domain(&hand, "Two.Example.", 12)->name, "two");
	assert_null(config_tenant_for_domain(&hand, "sub.two.example", 15));
	config_free(cfg);
}

static void
test_many_domains(void **state)
{
	/* Thousands of domains across tenants, over continuation lines, all resolve. */
	size_t cap = 200000, o = 0;
	char *text = malloc(cap), name[64];
	struct config *cfg;

	(void)state;
	assert_non_null(text);
	o += (size_t)snprintf(text + o, cap - o, SERVER);
	for (int t = 0; t < 10; t++) {
		o += (size_t)snprintf(text + o, cap - o, "[tenant:t%d]\ndomains =\n", t);
		for (int i = 0; i < 300; i++)
			o += (size_t)snprintf(text + o, cap - o, "  d%d-%d.example,\n", i, t);
	}
	cfg = load_ok(text);
	free(text);
	for (int t = 0; t < 10; t++) {
		for (int i = 0; i < 300; i++) {
			const struct config_tenant *ten;
			int n = snprintf(name, sizeof(name), "D%d-%d.Example", i, t);

			ten = config_tenant_for_domain(cfg, name, (size_t)n);
			assert_non_null(ten);
			assert_int_equal(ten->name[1] - '0', t);
		}
	}
	assert_int_equal(cfg->ndomain_index, 3000);
	config_free(cfg);
}

static void
test_unknown_section_and_key(void **state)
{
	/* Unknown sections and keys are refused at their line with the allowed names. */
	(void)state;
	expect_fail(SERVER TENANT "[servre]\n", 5, "unknown section \"[servre]\"");
	expect_fail(SERVER TENANT "[Server]\n", 5, "did you mean [server]?");
	expect_fail(SERVER TENANT "[tenant]\n", 5, "[tenant:NAME]");
	expect_fail("[server]\nlistn = 0.0.0.0:25\n", 2,
	    "unknown key \"listn\" in [server]; did you mean \"listen\"? "
	    "(allowed: hostname, listen, spool_dir,");
	expect_fail(SERVER TENANT "drain_rat = 5\n", 5,
	    "unknown key \"drain_rat\" in [tenant:a]; did you mean \"drain_rate\"?");
	expect_fail(SERVER "[tls]\nfoo = bar\n", 4,
	    "unknown key \"foo\" in [tls] (allowed: cert, key, outbound, ca_file, "
	    "ciphers, ciphersuites)");
	expect_fail("spool_dir = /x\n" SERVER TENANT, 1, "outside any section");
	expect_fail(SERVER "= value\n" TENANT, 3, "missing key name");
}

static void
test_syntax(void **state)
{
	/* Lines that are not INI, and over-long lines, are refused at their line. */
	char text[1024], longcomment[600];

	(void)state;
	expect_fail(SERVER "just words\n" TENANT, 3, "syntax error");
	/* A line without "=" opens no key, so the indented line after it is a
	 * key line of its own, as inih reads it (found by the fuzzer). */
	expect_fail("[server]\nspool_di\n  max_errors: 3\n" TENANT, 2, "syntax error");
	expect_fail(SERVER TENANT "[tls\n", 5, "no closing ]");
	expect_fail(SERVER TENANT "[tls] junk\n", 5, "unexpected text after the section header");
	expect_fail(SERVER "max_errors\x01 = 3\n" TENANT, 3, "\\x01");
	snprintf(text, sizeof(text), SERVER TENANT "domains2 = %0198d\n", 0);
	expect_fail(text, 5, "line too long (209 characters, max 198): split the list "
	    "over indented continuation lines");
	/* A long comment is fine: inih never sees its text. */
	memset(longcomment, 'c', sizeof(longcomment) - 1);
	longcomment[sizeof(longcomment) - 1] = '\0';
	snprintf(text, sizeof(text), SERVER "# %s\n" TENANT, longcomment);
	config_free(load_ok(text));
	/* A line of exactly the maximum (198) still loads; one more does not. */
	{
		char host[200];
		struct config *cfg;

		memset(host, 'x', 187);
		host[62] = host[125] = '.';
		host[187] = '\0';
		snprintf(text, sizeof(text), SERVER "hostname = %s\n" TENANT, host);
		cfg = load_ok(text);
		assert_int_equal(strlen(cfg->hostname), 187);
		config_free(cfg);
		snprintf(text, sizeof(text), SERVER "hostname = %sx\n" TENANT, host);
		expect_fail(text, 3, "line too long (199 characters, max 198)");
	}
}

static void
test_line_counting(void **state)
{
	/* Line numbers count comments, blank lines, continuations, CRLF and a BOM. */
	(void)state;
	expect_fail("\xef\xbb\xbf; comment\n"
	    "[server]\r\n"
	    "\r\n"
	    "# another\n"
	    "listen = 127.0.0.1:1,\n"
	    "   ; comment inside a list\n"
	    "\n"
	    "   127.0.0.2:2\n"
	    "spool_dir = /x ; inline\n"
	    "max_errors = 0\n", 10, "max_errors: \"0\" must be a whole number >= 1");
}

static void
test_continuation(void **state)
{
	/* Lists continue on indented lines; scalars and key-like lines do not. */
	struct config *cfg;

	(void)state;
	cfg = load_ok("[server]\nspool_dir = /x\nlisten = 127.0.0.1:1\n"
	    "  127.0.0.2:2, [::1]:3\n"
	    "[tenant:a]\ndomains = a.example,\n\tb.example\n"
	    "etrn_from = 10.0.0.0/8\n    ::1\n");
	assert_int_equal(cfg->nlisten, 3);
	assert_int_equal(cfg->listen[2].port, 3);
	assert_int_equal(cfg->tenants[0].ndomains, 2);
	assert_int_equal(cfg->tenants[0].netrn_from, 2);
	config_free(cfg);

	expect_fail(SERVER "max_errors = 5\n  6\n" TENANT, 4,
	    "continues max_errors, which takes a single value");
	expect_fail(SERVER "listen = 127.0.0.1:25\n  max_errors = 5\n" TENANT, 4,
	    "looks like a new key: remove the indentation");
	/* An indented first key after a section header is a plain key. */
	cfg = load_ok("[server]\n  spool_dir = /x\n[tenant:a]\n  domains = a.example\n");
	assert_string_equal(cfg->spool_dir, "/x");
	config_free(cfg);
}

static void
test_bad_values(void **state)
{
	/* Values that are not a size, duration, number, port, name or choice are refused. */
	(void)state;
	expect_fail(SERVER "max_message_size = 50X\n" TENANT, 3,
	    "max_message_size: \"50X\" is not a size");
	expect_fail(SERVER "max_message_size = 0\n" TENANT, 3,
	    "max_message_size: \"0\" must be larger than 0");
	expect_fail(SERVER "smtp_timeout = 5 minutes\n" TENANT, 3,
	    "smtp_timeout: \"5 minutes\" is not a duration");
	expect_fail(SERVER "smtp_timeout = 0\n" TENANT, 3, "must be longer than 0");
	expect_fail(SERVER "queue_lifetime = 0s\n" TENANT, 3, "queue_lifetime: \"0s\" must be longer than 0");
	expect_fail(SERVER "max_connections = ten\n" TENANT, 3,
	    "max_connections: \"ten\" must be a whole number >= 1");
	expect_fail(SERVER "max_recipients = -1\n" TENANT, 3, "must be a whole number");
	expect_fail(SERVER "max_connections = 99999999999\n" TENANT, 3, "must be a whole number");
	expect_fail(SERVER "max_line_length = 512\n" TENANT, 3,
	    "max_line_length: \"512\" must be a whole number from 1000 to 1048576");
	expect_fail(SERVER "mx_port = 0\n" TENANT, 3, "mx_port: \"0\" must be a port number from 1 to 65535");
	expect_fail(SERVER "hostname = bad_name\n" TENANT, 3, "is not a host name");
	expect_fail(SERVER "hostname =\n" TENANT, 3, "is not a host name: it is empty");
	expect_fail(SERVER "user = root user\n" TENANT, 3, "is not a user name");
	expect_fail("[server]\nspool_dir =\n" TENANT, 2, "spool_dir: must not be empty");
	expect_fail(SERVER "control_socket = /"
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
	    TENANT, 3, "a unix socket path may have at most 107");
	expect_fail(SERVER "[tls]\noutbound = always\n" TENANT, 4,
	    "outbound: \"always\" must be one of none, opportunistic, required, verify");
	expect_fail(SERVER TENANT "drain_rate = fast\n", 5, "drain_rate: \"fast\" must be a number > 0");
	expect_fail(SERVER TENANT "quota = lots\n", 5, "quota: \"lots\" is not a size");
	expect_fail(SERVER TENANT "drain_ramp = 5 m\n", 5, "drain_ramp: \"5 m\" is not a duration");
	expect_fail(SERVER TENANT "drain_burst = 0.5\n", 5, "drain_burst: \"0.5\" must be 0");
	expect_fail(SERVER TENANT "recipients =\n", 5, "recipients: must not be empty");
	expect_fail(SERVER "max_errors = 20 # note\n" TENANT, 3,
	    "(an inline comment starts with \" ;\", not \"#\")");
}

static void
test_bad_addresses(void **state)
{
	/* host:port and [v6]:port forms that do not parse are refused with the reason. */
	(void)state;
	expect_fail(SERVER "listen = 127.0.0.1:0\n" TENANT, 3,
	    "listen: \"127.0.0.1:0\" is not host[:port] or [IPv6]:port: it has a port out of range (1-65535)");
	expect_fail(SERVER "listen = 127.0.0.1:70000\n" TENANT, 3, "out of range (1-65535)");
	expect_fail(SERVER "listen = [::1:25\n" TENANT, 3, "has no ] after the IPv6 address");
	expect_fail(SERVER "listen = ::1:25\n" TENANT, 3, "write it in brackets");
	expect_fail(SERVER "listen = 127.0.0.1:2525, @@@\n" TENANT, 3, "listen: \"@@@\"");
	expect_fail(SERVER "listen = [::1]x\n" TENANT, 3, "has text after ]");
	expect_fail(SERVER "listen =\n" TENANT, 3, "listen: needs at least one host:port");
	expect_fail(SERVER "metrics_listen = 127.0.0.1:abc\n" TENANT, 3,
	    "metrics_listen: \"127.0.0.1:abc\" is not host[:port]");
	expect_fail(SERVER "bounce_relay = relay.example:\n" TENANT, 3, "has no port after the colon");
	expect_fail(SERVER "dns_servers = ns.example.net\n" TENANT, 3,
	    "dns_servers: \"ns.example.net\" is not an IP address");
	expect_fail(SERVER "dns_servers = 999.1.1.1\n" TENANT, 3, "invalid IPv4 address");
	expect_fail(SERVER TENANT "primary = 127.0.0.1:0\n", 5, "primary: \"127.0.0.1:0\"");
	expect_fail(SERVER TENANT "primary = mx, 127.0.0.1\n", 5, "\"mx\" stands alone");
	expect_fail(SERVER TENANT "primary = 127.0.0.1, MX\n", 5, "\"mx\" stands alone");
	expect_fail(SERVER TENANT "primary =\n", 5, "primary: write mx");
	expect_fail(SERVER TENANT "etrn_from = 10.0.0.1/8\n", 5,
	    "etrn_from: \"10.0.0.1/8\" is not an address or CIDR");
	expect_fail(SERVER TENANT "etrn_from = 10.0.0.1/8\n", 5, "bits set beyond the prefix");
	expect_fail(SERVER TENANT "etrn_from = 2001:db8::/200\n", 5, "not 0-128");
	expect_fail(SERVER TENANT "etrn_from = localhost\n", 5, "is not an IPv4 or IPv6 address");
}

static void
test_primary_forms(void **state)
{
	/* primary is the word mx (any case) or an ordered host[:port] list. */
	struct config *cfg = load_ok(SERVER TENANT "primary = MX\n");

	(void)state;
	assert_true(cfg->tenants[0].primary_mx);
	assert_int_equal(cfg->tenants[0].nprimaries, 0);
	config_free(cfg);
	cfg = load_ok(SERVER TENANT "primary = b.example:26 a.example\n");
	assert_false(cfg->tenants[0].primary_mx);
	assert_int_equal(cfg->tenants[0].nprimaries, 2);
	assert_string_equal(cfg->tenants[0].primaries[0].host, "b.example");
	assert_int_equal(cfg->tenants[0].primaries[0].port, 26);
	assert_string_equal(cfg->tenants[0].primaries[1].host, "a.example");
	config_free(cfg);
}

static void
test_tenant_names(void **state)
{
	/* Tenant names are 1-64 characters of [a-z0-9_-]. */
	char text[512];
	struct config *cfg;

	(void)state;
	expect_fail(SERVER "[tenant:Upper]\ndomains = a.example\n", 3,
	    "tenant name \"Upper\" may only use a-z, 0-9, _ and -");
	expect_fail(SERVER "[tenant:a b]\ndomains = a.example\n", 3, "may only use a-z");
	expect_fail(SERVER "[tenant:]\ndomains = a.example\n", 3, "must have 1 to 64 characters");
	snprintf(text, sizeof(text), SERVER "[tenant:%065d]\ndomains = a.example\n", 0);
	expect_fail(text, 3, "must have 1 to 64 characters");
	snprintf(text, sizeof(text), SERVER "[tenant:%064d]\ndomains = a.example\n", 0);
	cfg = load_ok(text);
	assert_int_equal(strlen(cfg->tenants[0].name), 64);
	config_free(cfg);
}

static void
test_domains(void **state)
{
	/* A domain belongs to one tenant (case and trailing dot ignored) and must be a DNS name. */
	(void)state;
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = x.example, A.Example.\n", 6,
	    "domains: a.example is already served by [tenant:a] (line 4): "
	    "each domain belongs to exactly one tenant");
	expect_fail(SERVER "[tenant:a]\ndomains = a.example,\n  b.example, a.example\n", 5,
	    "a.example is listed twice in [tenant:a] (also at line 4)");
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = bad..example\n", 6,
	    "domains: \"bad..example\" is not a mail domain: it has an empty label");
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = b.example..\n", 6,
	    "domains: \"b.example..\" is not a mail domain: it has an empty label");
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = .\n", 6, "it is empty");
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = 192.0.2.1\n", 6, "looks like an IP address");
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = under_score.example\n", 6,
	    "may only hold letters, digits");
	expect_fail(SERVER TENANT "[tenant:b]\ndomains = -a.example\n", 6, "starting with -");
}

static void
test_missing_required(void **state)
{
	/* spool_dir and domains are required, reported at line 0 or the section's line. */
	(void)state;
	expect_fail(TENANT, 0, "[server] needs spool_dir = ...");
	expect_fail("[server]\nmax_errors = 5\n" TENANT, 1, "[server] needs spool_dir");
	expect_fail(SERVER "[tenant:a]\nquota = 1G\n", 3,
	    "[tenant:a] needs domains = ...");
	expect_fail(SERVER "[tenant:a]\n", 3, "[tenant:a] needs domains");
	expect_fail(SERVER "[tenant:a]\ndomains =\n", 4, "[tenant:a] needs domains");
	expect_fail(SERVER, 0, "no [tenant:NAME] section");
	expect_fail("", 0, "[server] needs spool_dir");
}

static void
test_duplicates(void **state)
{
	/* Sections and keys may each appear once. */
	(void)state;
	expect_fail(SERVER TENANT "[tenant:a]\ndomains = b.example\n", 5,
	    "duplicate section [tenant:a] (first at line 3)");
	expect_fail(SERVER TENANT "[server]\nmax_errors = 3\n", 5,
	    "duplicate section [server] (first at line 1)");
	expect_fail(SERVER "[tls]\n[tls]\n" TENANT, 4, "duplicate section [tls] (first at line 3)");
	expect_fail(SERVER "max_errors = 3\n\nmax_errors = 4\n" TENANT, 5,
	    "duplicate key \"max_errors\" in [server] (first set at line 3)");
	expect_fail(SERVER TENANT "domains = c.example\n", 5,
	    "duplicate key \"domains\" in [tenant:a] (first set at line 4)");
}

static void
test_nonsense(void **state)
{
	/* Values that parse but cannot work are refused with the reason. */
	(void)state;
	expect_fail(SERVER TENANT "drain_rate = 0\n", 5, "drain_rate: \"0\" must be a number > 0");
	expect_fail(SERVER TENANT "drain_rate = 0.0\n", 5, "must be a number > 0");
	expect_fail(SERVER TENANT "drain_initial_rate = 0\n", 5, "drain_initial_rate: \"0\" must be a number > 0");
	expect_fail(SERVER TENANT "drain_rate = 1\n", 5,
	    "drain_initial_rate (2) is above drain_rate (1)");
	expect_fail(SERVER TENANT "drain_initial_rate = 10\ndrain_rate = 5\n", 5,
	    "drain_initial_rate (10) is above drain_rate (5)");
	expect_fail(SERVER TENANT "quota = 1M\n", 5,
	    "quota of [tenant:a] (1M) is below max_message_size (50M)");
	expect_fail(SERVER "max_message_size = 20G\n" TENANT, 3,
	    "quota of [tenant:a] (10G) is below max_message_size (20G)");
	expect_fail(SERVER TENANT "drain_concurrency = 0\n", 5,
	    "drain_concurrency: \"0\" must be a whole number from 1 to 10000");
	expect_fail(SERVER TENANT "messages_per_connection = 0\n", 5,
	    "messages_per_connection: \"0\" must be a whole number >= 1");
	expect_fail(SERVER TENANT "probe_up_after = 0\n", 5,
	    "probe_up_after: \"0\" must be a whole number from 1 to 1000");
	expect_fail(SERVER TENANT "probe_interval = 0s\n", 5, "must be longer than 0");
	expect_fail(SERVER TENANT "quota_messages = 0\n", 5, "quota_messages: \"0\" must be a whole number >= 1");
}

static void
test_files(void **state)
{
	/* Recipients and TLS files must be readable regular files when loaded. */
	char cert[256], rcpt[256];
	struct config *cfg;
	char text[1024];

	(void)state;
	expect_fail(SERVER TENANT "recipients = /nonexistent/rcpt\n", 5,
	    "recipients: cannot read \"/nonexistent/rcpt\": No such file or directory");
	expect_fail(SERVER TENANT "recipients = /\n", 5, "recipients: \"/\" is not a regular file");
	expect_fail(SERVER "[tls]\ncert = /nonexistent/cert.pem\n" TENANT, 4,
	    "cert: cannot read \"/nonexistent/cert.pem\"");
	expect_fail(SERVER "[tls]\nkey = /nonexistent/key.pem\n" TENANT, 4, "key: cannot read");
	expect_fail(SERVER "[tls]\nca_file = /\n" TENANT, 4, "ca_file: \"/\" is not a regular file");

	write_file(cert, sizeof(cert), "pem\n");
	expect_fail_fmt(4, "cert is set but key is not", SERVER "[tls]\ncert = %s\n" TENANT, cert);
	expect_fail_fmt(5, "key is set but cert is not",
	    SERVER "[tls]\noutbound = none\nkey = %s\n" TENANT, cert);
	/* outbound = verify without ca_file uses the system store. */
	cfg = load_ok(SERVER "[tls]\noutbound = verify\n" TENANT);
	assert_int_equal(cfg->tls_outbound, CONFIG_TLS_OUT_VERIFY);
	assert_null(cfg->tls_ca_file);
	config_free(cfg);
	cfg = load_ok(SERVER "[tls]\noutbound = NONE\n" TENANT);
	assert_int_equal(cfg->tls_outbound, CONFIG_TLS_OUT_NONE);
	config_free(cfg);
	cfg = load_ok(SERVER "[tls]\noutbound = required\n" TENANT);
	assert_int_equal(cfg->tls_outbound, CONFIG_TLS_OUT_REQUIRED);
	config_free(cfg);
	unlink(cert);

	/* Errors inside a recipients file name that file and its line. */
	write_file(rcpt, sizeof(rcpt), "# list\nok@a.example\nnot-an-address\n");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	{
		char path[256], err[CONFIG_ERRLEN], prefix[512];
		struct config *c2 = NULL;

		write_file(path, sizeof(path), text);
		assert_int_equal(config_load(path, &c2, err, sizeof(err)), -1);
		snprintf(prefix, sizeof(prefix), "%s:3: \"not-an-address\" is not a recipient", rcpt);
		if (strncmp(err, prefix, strlen(prefix)) != 0)
			fail_msg("wanted \"%s\", got \"%s\"", prefix, err);
		snprintf(prefix, sizeof(prefix), "(recipients of [tenant:a], %s:5)", path);
		if (strstr(err, prefix) == NULL)
			fail_msg("wanted \"%s\" in \"%s\"", prefix, err);
		unlink(path);
	}
	unlink(rcpt);
	write_file(rcpt, sizeof(rcpt), "ok@a.example\nsomeone@other.example\n");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	{
		char path[256], err[CONFIG_ERRLEN], prefix[512];
		struct config *c2 = NULL;

		write_file(path, sizeof(path), text);
		assert_int_equal(config_load(path, &c2, err, sizeof(err)), -1);
		snprintf(prefix, sizeof(prefix), "%s:2: \"someone@other.example\": the domain "
		    "is not one of the tenant's domains", rcpt);
		if (strncmp(err, prefix, strlen(prefix)) != 0)
			fail_msg("wanted \"%s\", got \"%s\"", prefix, err);
		unlink(path);
	}
	unlink(rcpt);
	/* recipients = any (any case) means no list. */
	cfg = load_ok(SERVER TENANT "recipients = Any\n");
	assert_null(cfg->tenants[0].recipients_file);
	assert_true(config_tenant_accepts(&cfg->tenants[0], "x@a.example"));
	config_free(cfg);
}

static void
test_recipients_fuzz_findings(void **state)
{
	/* What fuzz_recipients found: an empty file accepts nobody (and does
	 * not hand bsearch() a NULL array); a quoted local part that is a plain
	 * dot-string is listed unquoted, as the SMTP parser hands it over; a
	 * domain with two trailing dots is refused, not stored with one. */
	char rcpt[256], text[1024], path[256], err[CONFIG_ERRLEN];
	struct config *cfg, *c2 = NULL;
	const struct config_tenant *t;

	(void)state;
	write_file(rcpt, sizeof(rcpt), "");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	cfg = load_ok(text);
	t = &cfg->tenants[0];
	assert_int_equal(t->nrecipients, 0);
	assert_false(config_tenant_accepts(t, "anyone@a.example"));
	config_free(cfg);
	unlink(rcpt);

	write_file(rcpt, sizeof(rcpt), "\"John.Doe\"@a.example\n\"a(b\"@a.example\n");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	cfg = load_ok(text);
	t = &cfg->tenants[0];
	assert_int_equal(t->nrecipients, 2);
	assert_true(config_tenant_accepts(t, "john.doe@a.example"));
	assert_true(config_tenant_accepts(t, "\"a(b\"@a.example"));
	config_free(cfg);
	unlink(rcpt);

	write_file(rcpt, sizeof(rcpt), "x@a.example..\n");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	write_file(path, sizeof(path), text);
	assert_int_equal(config_load(path, &c2, err, sizeof(err)), -1);
	assert_null(c2);
	if (strstr(err, "the domain is not one of the tenant's domains") == NULL)
		fail_msg("wanted a refusal of x@a.example.., got \"%s\"", err);
	unlink(path);
	unlink(rcpt);
}

static void
test_reload_sees_file_changes(void **state)
{
	/* Loading again picks up an edited recipients file. */
	char rcpt[256], text[1024];
	struct config *cfg;
	FILE *fp;

	(void)state;
	write_file(rcpt, sizeof(rcpt), "first@a.example\n");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	cfg = load_ok(text);
	assert_true(config_tenant_accepts(&cfg->tenants[0], "first@a.example"));
	assert_false(config_tenant_accepts(&cfg->tenants[0], "second@a.example"));
	config_free(cfg);
	fp = fopen(rcpt, "w");
	assert_non_null(fp);
	fputs("second@a.example\n", fp);
	assert_int_equal(fclose(fp), 0);
	cfg = load_ok(text);
	assert_false(config_tenant_accepts(&cfg->tenants[0], "first@a.example"));
	assert_true(config_tenant_accepts(&cfg->tenants[0], "second@a.example"));
	config_free(cfg);
	unlink(rcpt);
}

static void
test_open_and_stream(void **state)
{
	/* A missing file is line 0; a NUL byte is refused; the stream API names its input. */
	char err[CONFIG_ERRLEN];
	struct config *cfg = (struct config *)&err;
	static const char nul[] = SERVER "max_errors = 3\0\n" TENANT;
	FILE *fp;

	(void)state;
	assert_int_equal(config_load("/nonexistent/mx.ini", &cfg, err, sizeof(err)), -1);
	assert_null(cfg);
	assert_string_equal(err, "/nonexistent/mx.ini:0: cannot open the config file: "
	    "No such file or directory");

	fp = fmemopen((void *)nul, sizeof(nul) - 1, "r");
	assert_non_null(fp);
	assert_int_equal(config_load_stream(fp, "mem.ini", &cfg, err, sizeof(err)), -1);
	fclose(fp);
	assert_string_equal(err, "mem.ini:3: line contains a NUL byte: is this a text file?");

	fp = fmemopen((void *)(SERVER TENANT), strlen(SERVER TENANT), "r");
	assert_non_null(fp);
	assert_int_equal(config_load_stream(fp, "mem.ini", &cfg, err, sizeof(err)), 0);
	fclose(fp);
	assert_string_equal(cfg->path, "mem.ini");
	config_free(cfg);
	config_free(NULL);

	/* A tiny error buffer is filled, cut, and still terminated. */
	fp = fmemopen((void *)SERVER, strlen(SERVER), "r");
	assert_non_null(fp);
	assert_int_equal(config_load_stream(fp, "mem.ini", &cfg, err, 12), -1);
	fclose(fp);
	assert_string_equal(err, "mem.ini:0: ");
}

static void
test_example_file_is_defaults(void **state)
{
	/* contrib/mxspool.ini.example loads and every value in it is the default. */
	const char *src = getenv("MXSPOOL_SRCDIR");
	char path[1024], err[CONFIG_ERRLEN];
	struct config *ex = NULL, *def;
	const struct config_tenant *a, *b;

	(void)state;
	snprintf(path, sizeof(path), "%s/contrib/mxspool.ini.example",
	    src != NULL && *src != '\0' ? src : "..");
	if (access(path, R_OK) != 0)
		skip();
	if (config_load(path, &ex, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	def = load_ok(SERVER TENANT);
#define SAME(f) assert_true(ex->f == def->f)
	assert_string_equal(ex->hostname, def->hostname);
	assert_int_equal(ex->nlisten, def->nlisten);
	for (size_t i = 0; i < ex->nlisten; i++) {
		assert_string_equal(ex->listen[i].host, def->listen[i].host);
		SAME(listen[i].port);
	}
	assert_string_equal(ex->spool_dir, def->spool_dir);
	assert_string_equal(ex->control_socket, def->control_socket);
	SAME(has_metrics);
	assert_null(ex->user);
	SAME(max_connections);
	SAME(max_connections_per_ip);
	SAME(max_message_size);
	SAME(max_recipients);
	SAME(max_line_length);
	SAME(max_errors);
	SAME(smtp_timeout_ms);
	SAME(disk_reserve);
	SAME(queue_lifetime_ms);
	SAME(delay_warning_ms);
	SAME(ndns_servers);
	SAME(mx_port);
	SAME(has_bounce_relay);
	SAME(commit_window_ms);
	SAME(client_message_rate);
	SAME(client_recipient_rate);
	SAME(ndnsbl);
	SAME(ndnsbl_allow);
	SAME(dnsbl_timeout_ms);
	assert_null(ex->tls_cert);
	assert_null(ex->tls_key);
	assert_null(ex->tls_ca_file);
	SAME(tls_outbound);
	SAME(ntenants);
#undef SAME
	a = &ex->tenants[0];
	b = &def->tenants[0];
#define SAME(f) assert_true(a->f == b->f)
	assert_int_equal(a->ndomains, 2);
	SAME(primary_mx);
	SAME(nprimaries);
	assert_null(a->recipients_file);
	SAME(quota);
	SAME(quota_messages);
	SAME(drain_rate);
	SAME(drain_initial_rate);
	SAME(drain_burst);
	SAME(drain_bandwidth);
	SAME(drain_concurrency);
	SAME(drain_ramp_ms);
	SAME(messages_per_connection);
	SAME(probe_interval_ms);
	SAME(probe_up_after);
	SAME(netrn_from);
	assert_memory_equal(&a->etrn_from[0], &b->etrn_from[0], sizeof(a->etrn_from[0]));
#undef SAME
	config_free(ex);
	config_free(def);
}

/* ---- run-time changes: config_tenant_set() ---- */

/* Load TEXT from memory as "t.ini"; returns config_load_stream()'s rc. */
static int
load_mem(const char *text, struct config **cfg, char *err, size_t errlen)
{
	FILE *fp = fmemopen((void *)(uintptr_t)text, strlen(text), "r");
	int rc;

	assert_non_null(fp);
	rc = config_load_stream(fp, "t.ini", cfg, err, errlen);
	fclose(fp);
	return rc;
}

/* The message of ERR after its "t.ini:LINE: " prefix. */
static const char *
strip_where(const char *err)
{
	const char *p = strchr(err, ':');

	assert_non_null(p);
	p = strchr(p + 1, ':');
	assert_non_null(p);
	assert_int_equal(p[1], ' ');
	return p + 2;
}

/* config_tenant_set(T, KEY, VALUE) must refuse with exactly MESSAGE (or,
 * when MESSAGE starts with "~", a message containing the rest) and leave
 * T unchanged. */
static void
expect_set_fail(struct config_tenant *t, const char *key, const char *value,
    const char *message)
{
	struct config_tenant before = *t;
	char err[CONFIG_ERRLEN] = "";

	if (config_tenant_set(t, key, value, err, sizeof(err)) != -1)
		fail_msg("%s=%s was accepted", key, value);
	if (message[0] == '~' ? strstr(err, message + 1) == NULL :
	    strcmp(err, message) != 0)
		fail_msg("%s=%s: wanted \"%s\", got \"%s\"", key, value, message, err);
	assert_memory_equal(&before, t, sizeof(before));
}

static void
expect_set_ok(struct config_tenant *t, const char *key, const char *value)
{
	char err[CONFIG_ERRLEN] = "x";

	if (config_tenant_set(t, key, value, err, sizeof(err)) != 0)
		fail_msg("%s=%s refused: %s", key, value, err);
	assert_string_equal(err, "");
}

static void
test_runtime_set_bounds(void **state)
{
	/* config_tenant_set() takes and refuses what the file does, with the
	 * file's bounds and messages minus "FILE:LINE: ", and changes nothing
	 * when it refuses. */
	struct config *cfg = load_ok(SERVER TENANT);
	struct config_tenant *t = &cfg->tenants[0];

	(void)state;
	expect_set_fail(t, "drain_concurrency", "0",
	    "drain_concurrency: \"0\" must be a whole number from 1 to 10000");
	expect_set_fail(t, "drain_concurrency", "10001",
	    "drain_concurrency: \"10001\" must be a whole number from 1 to 10000");
	expect_set_fail(t, "drain_concurrency", "100000", "~from 1 to 10000");
	expect_set_ok(t, "drain_concurrency", "10000");
	assert_int_equal(t->drain_concurrency, 10000);
	expect_set_fail(t, "drain_rate", "0", "drain_rate: \"0\" must be a number > 0");
	expect_set_fail(t, "drain_rate", "1e9", "~up to 1000000");
	expect_set_fail(t, "drain_rate", "-5", "~must be a number > 0");
	expect_set_ok(t, "drain_rate", "12.5");
	assert_true(t->drain_rate == 12.5);
	expect_set_ok(t, "drain_ramp", "5m");
	assert_int_equal(t->drain_ramp_ms, 5 * 60 * 1000);
	expect_set_ok(t, "drain_ramp", "0");
	assert_int_equal(t->drain_ramp_ms, 0);
	expect_set_fail(t, "probe_interval", "0",
	    "probe_interval: \"0\" must be longer than 0");
	expect_set_ok(t, "probe_interval", "1h30m");
	assert_int_equal(t->probe_interval_ms, 90 * 60 * 1000);
	expect_set_fail(t, "drain_burst", "0.5", "~must be 0 (one second's worth)");
	expect_set_ok(t, "drain_burst", "0");
	expect_set_ok(t, "drain_bandwidth", "10M");
	assert_int_equal(t->drain_bandwidth, 10 * 1024 * 1024);
	expect_set_fail(t, "messages_per_connection", "0", "~must be a whole number >= 1");
	expect_set_ok(t, "messages_per_connection", "4294967295");
	expect_set_fail(t, "drain_rate", "20 # note",
	    "~(an inline comment starts with \" ;\", not \"#\")");

	/* Unknown keys and keys only the file may set name what is settable. */
	expect_set_fail(t, "drain_rat", "5",
	    "unknown key \"drain_rat\"; did you mean \"drain_rate\"? (settable "
	    "at run time: drain_rate, drain_bandwidth, drain_concurrency, "
	    "drain_ramp, drain_initial_rate, drain_burst, "
	    "messages_per_connection, probe_interval)");
	expect_set_fail(t, "nonsense", "5", "~settable at run time: drain_rate,");
	expect_set_fail(t, "domains", "b.example",
	    "~domains: cannot be changed at run time");
	expect_set_fail(t, "domains", "b.example", "~probe_interval)");
	assert_int_equal(t->ndomains, 1);
	assert_string_equal(t->domains[0], "a.example");
	expect_set_fail(t, "probe_up_after", "3", "~cannot be changed at run time");
	expect_set_fail(t, "quota", "1G", "~cannot be changed at run time");
	expect_set_fail(t, "recipients", "any", "~cannot be changed at run time");
	expect_set_fail(t, "", "5", "~unknown key \"\"");
	expect_set_fail(t, NULL, "5", "~no tenant, key or value");
	expect_set_fail(t, "drain_rate", NULL, "~no tenant, key or value");
	assert_int_equal(config_tenant_set(NULL, "drain_rate", "5", NULL, 0), -1);
	config_free(cfg);
}

static void
test_runtime_set_cross_check(void **state)
{
	/* drain_initial_rate may not exceed drain_rate, whichever of the two
	 * "set" changes, exactly as the loader refuses it. */
	struct config *cfg = load_ok(SERVER TENANT "drain_rate = 10\n"
	    "drain_initial_rate = 5\n");
	struct config_tenant *t = &cfg->tenants[0];
	const char *why =
	    "drain_initial_rate (20) is above drain_rate (10): the drain starts "
	    "at drain_initial_rate and ramps up to drain_rate";

	(void)state;
	expect_set_fail(t, "drain_initial_rate", "20", why);
	expect_fail(SERVER TENANT "drain_rate = 10\ndrain_initial_rate = 20\n", 6, why);
	expect_set_fail(t, "drain_rate", "4",
	    "drain_initial_rate (5) is above drain_rate (4): the drain starts "
	    "at drain_initial_rate and ramps up to drain_rate");
	expect_set_ok(t, "drain_initial_rate", "10");
	expect_set_ok(t, "drain_initial_rate", "1");
	expect_set_ok(t, "drain_rate", "1");
	assert_true(t->drain_rate == 1 && t->drain_initial_rate == 1);
	config_free(cfg);
}

/* The drain fields a run-time key may change, compared one by one. */
static void
assert_same_drain_fields(const struct config_tenant *a,
    const struct config_tenant *b)
{
	assert_true(a->drain_rate == b->drain_rate);
	assert_true(a->drain_initial_rate == b->drain_initial_rate);
	assert_true(a->drain_burst == b->drain_burst);
	assert_int_equal(a->drain_bandwidth, b->drain_bandwidth);
	assert_int_equal(a->drain_concurrency, b->drain_concurrency);
	assert_int_equal(a->drain_ramp_ms, b->drain_ramp_ms);
	assert_int_equal(a->messages_per_connection, b->messages_per_connection);
	assert_int_equal(a->probe_interval_ms, b->probe_interval_ms);
}

static void
test_runtime_keys_match_file(void **state)
{
	/* Every key config_runtime_keys() lists is a config file key, and for
	 * each of a range of values the file and config_tenant_set() agree:
	 * both accept it with the same result, or both refuse it with the
	 * same message. */
	static const char *const expected[] = {
		"drain_rate", "drain_bandwidth", "drain_concurrency", "drain_ramp",
		"drain_initial_rate", "drain_burst", "messages_per_connection",
		"probe_interval", NULL,
	};
	static const char *const values[] = {
		"", "0", "1", "2", "0.5", "2.5", "49", "51", "999", "1000",
		"1001", "9999", "10000", "10001", "1000000", "1000001",
		"4294967295", "4294967296", "18446744073709551616", "-1", "1e3",
		"abc", "5m", "5M", "1h30m", "30s", "0s", "100ms", "10G", "1K",
		"64KiB", "20 # c", ".5", "2.",
	};
	const char *const *keys = config_runtime_keys();
	struct config *def = load_ok(SERVER TENANT);
	size_t n = 0;

	(void)state;
	assert_ptr_equal(keys, config_runtime_keys());
	for (; keys[n] != NULL; n++) {
		assert_non_null(expected[n]);
		assert_string_equal(keys[n], expected[n]);
	}
	assert_null(expected[n]);
	for (size_t i = 0; keys[i] != NULL; i++) {
		for (size_t j = 0; j < sizeof(values) / sizeof(values[0]); j++) {
			char text[512], ferr[CONFIG_ERRLEN] = "", serr[CONFIG_ERRLEN] = "";
			struct config *cfg = NULL;
			struct config_tenant t = def->tenants[0];
			int frc, src;

			snprintf(text, sizeof(text), SERVER TENANT "%s = %s\n",
			    keys[i], values[j]);
			frc = load_mem(text, &cfg, ferr, sizeof(ferr));
			src = config_tenant_set(&t, keys[i], values[j], serr,
			    sizeof(serr));
			if (frc != src)
				fail_msg("%s = %s: file rc %d (%s), set rc %d (%s)",
				    keys[i], values[j], frc, ferr, src, serr);
			if (frc == 0) {
				assert_same_drain_fields(&cfg->tenants[0], &t);
				config_free(cfg);
			} else {
				assert_string_equal(strip_where(ferr), serr);
			}
		}
	}
	config_free(def);
}

/* A tenant's queue_lifetime / delay_warning win; a tenant without them takes
 * [server]'s, also when [server] comes after the tenant in the file. */
static void
test_tenant_lifetime_overrides(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok("[tenant:a]\ndomains = a.example\nqueue_lifetime = 3d\n"
	    "delay_warning = 0\n"
	    "[tenant:b]\ndomains = b.example\n"
	    "[server]\nspool_dir = /var/spool/mxspool\nqueue_lifetime = 7d\n"
	    "delay_warning = 2h\n");
	assert_int_equal(cfg->tenants[0].queue_lifetime_ms, 3ull * 86400 * 1000);
	assert_int_equal(cfg->tenants[0].delay_warning_ms, 0);
	assert_int_equal(cfg->tenants[1].queue_lifetime_ms, 7ull * 86400 * 1000);
	assert_int_equal(cfg->tenants[1].delay_warning_ms, 2ull * 3600 * 1000);
	config_free(cfg);
	/* Defaults: 5d and 4h for everybody. */
	cfg = load_ok(SERVER TENANT);
	assert_int_equal(cfg->tenants[0].queue_lifetime_ms, 5ull * 86400 * 1000);
	assert_int_equal(cfg->tenants[0].delay_warning_ms, 4ull * 3600 * 1000);
	assert_int_equal(cfg->max_received, 50);
	assert_null(cfg->postmaster);
	config_free(cfg);
	expect_fail(SERVER TENANT "queue_lifetime = 0\n", 5, "queue_lifetime");
	expect_fail(SERVER TENANT "delay_warning = soon\n", 5, "delay_warning");
}

/* max_received has bounds; postmaster must be a plain address in a
 * tenant's domain (the mail has to go to a primary we forward to). */
static void
test_max_received_and_postmaster(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok(SERVER "max_received = 30\npostmaster = Hostmaster@A.Example\n"
	    TENANT);
	assert_int_equal(cfg->max_received, 30);
	assert_string_equal(cfg->postmaster, "Hostmaster@a.example");
	config_free(cfg);
	expect_fail(SERVER "max_received = 0\n" TENANT, 3, "max_received");
	expect_fail(SERVER "postmaster = nobody\n" TENANT, 3, "local@domain");
	expect_fail(SERVER "postmaster = <pm@a.example>\n" TENANT, 3, "plain address");
	expect_fail(SERVER "postmaster = pm@b.example\n" TENANT, 3,
	    "not in a domain of any tenant");
	cfg = load_ok(SERVER "postmaster =\n" TENANT);
	assert_null(cfg->postmaster);
	config_free(cfg);
}

/* control_group is a group name (existence is checked at bind time);
 * control_readonly is group or any. */
static void
test_control_access_keys(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok(SERVER TENANT);
	assert_null(cfg->control_group);
	assert_false(cfg->control_readonly_any);
	config_free(cfg);
	cfg = load_ok(SERVER "control_group = mail-admins\ncontrol_readonly = any\n" TENANT);
	assert_string_equal(cfg->control_group, "mail-admins");
	assert_true(cfg->control_readonly_any);
	config_free(cfg);
	expect_fail(SERVER "control_group = ad mins\n" TENANT, 3, "not a group name");
	expect_fail(SERVER "control_readonly = some\n" TENANT, 3, "must be group");
}

/* [tls] ciphers and ciphersuites: unset (NULL: tls.c's AEAD defaults), a
 * list is kept as written, spaces or quotes are refused with the line. */
static void
test_tls_cipher_keys(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok(SERVER TENANT);
	assert_null(cfg->tls_ciphers);
	assert_null(cfg->tls_ciphersuites);
	config_free(cfg);
	cfg = load_ok(SERVER "[tls]\nciphers = ECDHE+AESGCM:!aNULL:@SECLEVEL=2\n"
	    "ciphersuites = TLS_AES_256_GCM_SHA384\n" TENANT);
	assert_string_equal(cfg->tls_ciphers, "ECDHE+AESGCM:!aNULL:@SECLEVEL=2");
	assert_string_equal(cfg->tls_ciphersuites, "TLS_AES_256_GCM_SHA384");
	config_free(cfg);
	cfg = load_ok(SERVER "[tls]\nciphers =\n" TENANT);
	assert_null(cfg->tls_ciphers);
	config_free(cfg);
	expect_fail(SERVER "[tls]\nciphers = ECDHE AESGCM\n" TENANT, 4,
	    "not an OpenSSL cipher list");
	expect_fail(SERVER "[tls]\nciphersuites = \"TLS_AES_128_GCM_SHA256\"\n"
	    TENANT, 4, "not an OpenSSL cipher list");
}

/* client_limit_exempt: loopback by default; a list replaces it; empty
 * exempts nobody. */
static void
test_client_limit_exempt(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok(SERVER TENANT);
	assert_int_equal(cfg->nclient_limit_exempt, 2);
	config_free(cfg);
	cfg = load_ok(SERVER "client_limit_exempt = 192.0.2.0/24, 2001:db8::/32, 10.1.2.3\n" TENANT);
	assert_int_equal(cfg->nclient_limit_exempt, 3);
	config_free(cfg);
	cfg = load_ok(SERVER "client_limit_exempt =\n" TENANT);
	assert_int_equal(cfg->nclient_limit_exempt, 0);
	config_free(cfg);
	expect_fail(SERVER "client_limit_exempt = 300.1.1.1\n" TENANT, 3, "client_limit_exempt");
}

/* recipients = learn (issue 11): learn alone, learn+FILE (the file read
 * as a plain FILE), the verify_* keys, their defaults and bounds. */
static void
test_learn_keys(void **state)
{
	struct config *cfg;
	const struct config_tenant *t;
	char rcpt[256], text[1024];

	(void)state;
	cfg = load_ok(SERVER TENANT);
	t = &cfg->tenants[0];
	assert_false(t->recipients_learn);
	assert_false(t->unknown_recipient_accept);
	assert_int_equal(t->verify_timeout_ms, 5000);
	assert_int_equal(t->verify_valid_ttl_ms, 31ULL * 24 * 3600 * 1000);
	assert_int_equal(t->verify_invalid_ttl_ms, 3ULL * 3600 * 1000);
	assert_int_equal(t->verify_cache_size, 100000);
	assert_int_equal(t->verify_concurrency, 2);
	assert_true(t->verify_rate == 5.0);
	config_free(cfg);

	cfg = load_ok(SERVER TENANT "recipients = LEARN\nunknown_recipient = accept\n"
	    "verify_timeout = 200ms\nverify_valid_ttl = 7d\nverify_invalid_ttl = 10m\n"
	    "verify_cache_size = 10\nverify_concurrency = 1\nverify_rate = 0.5\n");
	t = &cfg->tenants[0];
	assert_true(t->recipients_learn);
	assert_null(t->recipients_file);
	assert_true(t->unknown_recipient_accept);
	assert_int_equal(t->verify_timeout_ms, 200);
	assert_int_equal(t->verify_valid_ttl_ms, 7ULL * 24 * 3600 * 1000);
	assert_int_equal(t->verify_invalid_ttl_ms, 600000);
	assert_int_equal(t->verify_cache_size, 10);
	assert_int_equal(t->verify_concurrency, 1);
	assert_true(t->verify_rate == 0.5);
	/* learn accepts everything at the config level: policy.c asks. */
	assert_true(config_tenant_accepts(t, "x@a.example"));
	config_free(cfg);

	write_file(rcpt, sizeof(rcpt), "ok@a.example\n");
	snprintf(text, sizeof(text), SERVER TENANT "recipients = learn+%s\n", rcpt);
	cfg = load_ok(text);
	t = &cfg->tenants[0];
	assert_true(t->recipients_learn);
	assert_string_equal(t->recipients_file, rcpt);
	assert_int_equal(t->nrecipients, 1);
	config_free(cfg);
	snprintf(text, sizeof(text), SERVER TENANT "recipients = %s\n", rcpt);
	cfg = load_ok(text);
	assert_false(cfg->tenants[0].recipients_learn);   /* a plain FILE */
	config_free(cfg);
	unlink(rcpt);

	expect_fail(SERVER TENANT "recipients = learn+\n", 5, "learn+ needs the path");
	expect_fail(SERVER TENANT "recipients = learn+/nonexistent/x\n", 5,
	    "recipients: cannot read");
	expect_fail(SERVER TENANT "unknown_recipient = maybe\n", 5, "must be tempfail");
	expect_fail(SERVER TENANT "verify_timeout = 10ms\n", 5, "verify_timeout");
	expect_fail(SERVER TENANT "verify_concurrency = 0\n", 5, "verify_concurrency");
	expect_fail(SERVER TENANT "verify_cache_size = 0\n", 5, "verify_cache_size");
	expect_fail(SERVER TENANT "verify_rate = 0\n", 5, "verify_rate");
}

/* DNSBL and per-client rates (issue 11): defaults, a tenant takes
 * [server]'s zones wherever [server] stands unless it sets its own (empty:
 * none), zones are names, rates 0..1000000. */
static void
test_abuse_keys(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok(SERVER TENANT);
	assert_int_equal(cfg->ndnsbl, 0);
	assert_int_equal(cfg->tenants[0].ndnsbl, 0);
	assert_int_equal(cfg->ndnsbl_allow, 2);
	assert_int_equal(cfg->dnsbl_timeout_ms, 5000);
	assert_int_equal(cfg->client_message_rate, 0);
	assert_int_equal(cfg->client_recipient_rate, 0);
	config_free(cfg);
	cfg = load_ok(TENANT "[tenant:b]\ndomains = b.example\ndnsbl = Own.Example.\n"
	    "[tenant:c]\ndomains = c.example\ndnsbl =\n"
	    SERVER "dnsbl = zen.example, bl.example\ndnsbl_allow =\n"
	    "dnsbl_timeout = 1500ms\nclient_message_rate = 30\n"
	    "client_recipient_rate = 1000000\n");
	assert_int_equal(cfg->ndnsbl, 2);
	assert_int_equal(cfg->tenants[0].ndnsbl, 2);
	assert_string_equal(cfg->tenants[0].dnsbl[1], "bl.example");
	assert_int_equal(cfg->tenants[1].ndnsbl, 1);
	assert_string_equal(cfg->tenants[1].dnsbl[0], "own.example");
	assert_int_equal(cfg->tenants[2].ndnsbl, 0);
	assert_int_equal(cfg->ndnsbl_allow, 0);
	assert_int_equal(cfg->dnsbl_timeout_ms, 1500);
	assert_int_equal(cfg->client_message_rate, 30);
	assert_int_equal(cfg->client_recipient_rate, 1000000);
	config_free(cfg);
	expect_fail(SERVER "dnsbl = zen..example\n" TENANT, 3, "is not a DNS zone");
	expect_fail(SERVER "dnsbl = 192.0.2.1\n" TENANT, 3, "dnsbl");
	expect_fail(SERVER TENANT "dnsbl = a b_\n", 5, "dnsbl");
	expect_fail(SERVER "client_message_rate = 1000001\n" TENANT, 3,
	    "client_message_rate");
	expect_fail(SERVER "dnsbl_timeout = 0\n" TENANT, 3, "dnsbl_timeout");
	expect_fail(SERVER "dnsbl_allow = 10.0.0.0/33\n" TENANT, 3, "dnsbl_allow");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_hostport),
		cmocka_unit_test(test_parse_cidr),
		cmocka_unit_test(test_cidr_match),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_full_round_trip),
		cmocka_unit_test(test_tenant_for_domain),
		cmocka_unit_test(test_many_domains),
		cmocka_unit_test(test_unknown_section_and_key),
		cmocka_unit_test(test_syntax),
		cmocka_unit_test(test_line_counting),
		cmocka_unit_test(test_continuation),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_bad_addresses),
		cmocka_unit_test(test_primary_forms),
		cmocka_unit_test(test_tenant_names),
		cmocka_unit_test(test_domains),
		cmocka_unit_test(test_missing_required),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_nonsense),
		cmocka_unit_test(test_files),
		cmocka_unit_test(test_recipients_fuzz_findings),
		cmocka_unit_test(test_reload_sees_file_changes),
		cmocka_unit_test(test_open_and_stream),
		cmocka_unit_test(test_example_file_is_defaults),
		cmocka_unit_test(test_runtime_set_bounds),
		cmocka_unit_test(test_runtime_set_cross_check),
		cmocka_unit_test(test_runtime_keys_match_file),
		cmocka_unit_test(test_tenant_lifetime_overrides),
		cmocka_unit_test(test_max_received_and_postmaster),
		cmocka_unit_test(test_control_access_keys),
		cmocka_unit_test(test_client_limit_exempt),
		cmocka_unit_test(test_learn_keys),
		cmocka_unit_test(test_abuse_keys),
		cmocka_unit_test(test_tls_cipher_keys),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
