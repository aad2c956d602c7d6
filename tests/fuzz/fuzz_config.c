/*
 * fuzz_config.c - libFuzzer target: the config loader and value parsers.
 *
 * The input is a whole INI file, fed to config_load_stream() through
 * fmemopen().  Whatever the bytes, the loader must either refuse with one
 * "fuzz.ini:LINE: ..." message, or return a config that keeps the
 * invariants config.h promises (and that the rest of the daemon relies on
 * without checking again): at least one tenant, every domain lower case and
 * found by config_tenant_for_domain(), recipients sorted, rates and quotas
 * consistent.  Then the first line of the input goes through each exported
 * config_parse_* helper, which must agree with itself.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "mxspool/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void
check_error(const char *err)
{
	const char *p = err + strlen("fuzz.ini:");

	CHECK(strncmp(err, "fuzz.ini:", 9) == 0);
	CHECK(*p >= '0' && *p <= '9');
	while (*p >= '0' && *p <= '9')
		p++;
	CHECK(p[0] == ':' && p[1] == ' ' && p[2] != '\0');
}

static void
check_domain_lookup(const struct config *cfg, const struct config_tenant *t,
    const char *d)
{
	char buf[300];
	size_t len = strlen(d);

	CHECK(len > 0 && len < 254 && d[len - 1] != '.');
	for (size_t i = 0; i < len; i++)
		CHECK(!(d[i] >= 'A' && d[i] <= 'Z'));
	CHECK(config_tenant_for_domain(cfg, d, len) == t);
	/* Upper case with a trailing dot finds the same tenant. */
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(d[i] >= 'a' && d[i] <= 'z' ? d[i] - 32 : d[i]);
	buf[len] = '.';
	CHECK(config_tenant_for_domain(cfg, buf, len + 1) == t);
}

static void
check_config(const struct config *cfg)
{
	size_t total = 0;

	CHECK(cfg->spool_dir != NULL && cfg->hostname != NULL);
	CHECK(cfg->nlisten >= 1);
	for (size_t i = 0; i < cfg->nlisten; i++)
		CHECK(cfg->listen[i].port != 0 && cfg->listen[i].host[0] != '\0');
	CHECK(cfg->max_line_length >= 1000 && cfg->max_message_size > 0);
	CHECK(cfg->smtp_timeout_ms > 0 && cfg->queue_lifetime_ms > 0);
	CHECK((cfg->tls_cert == NULL) == (cfg->tls_key == NULL));
	CHECK(cfg->ntenants >= 1);
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const struct config_tenant *t = &cfg->tenants[i];
		size_t nlen = strlen(t->name);

		CHECK(nlen >= 1 && nlen <= CONFIG_TENANT_NAME_MAX);
		CHECK(config_tenant_by_name(cfg, t->name) == t);
		CHECK(t->ndomains >= 1);
		CHECK(t->primary_mx || t->nprimaries >= 1);
		CHECK(!(t->primary_mx && t->nprimaries > 0));
		CHECK(t->drain_rate > 0 && t->drain_initial_rate > 0);
		CHECK(t->drain_initial_rate <= t->drain_rate);
		CHECK(t->drain_burst == 0 || t->drain_burst >= 1);
		CHECK(t->quota >= cfg->max_message_size);
		CHECK(t->drain_concurrency >= 1 && t->messages_per_connection >= 1);
		CHECK(t->probe_up_after >= 1 && t->probe_interval_ms > 0);
		CHECK((t->recipients_file == NULL) == (t->recipients == NULL) ||
		    t->nrecipients == 0);
		for (size_t j = 0; j < t->ndomains; j++)
			check_domain_lookup(cfg, t, t->domains[j]);
		for (size_t j = 1; j < t->nrecipients; j++)
			CHECK(strcmp(t->recipients[j - 1], t->recipients[j]) < 0);
		for (size_t j = 0; j < t->nrecipients; j++)
			CHECK(config_tenant_accepts(t, t->recipients[j]) ||
			    t->recipients[j][0] == '@');
		for (size_t j = 0; j < t->netrn_from; j++)
			CHECK(t->etrn_from[j].prefix <=
			    (t->etrn_from[j].family == AF_INET ? 32u : 128u));
		total += t->ndomains;
	}
	CHECK(cfg->ndomain_index == total);
}

static void
check_parsers(const uint8_t *data, size_t size)
{
	char line[512];
	size_t n = 0;
	uint64_t v, v2;
	struct config_hostport hp;
	struct config_cidr c;

	while (n < size && n < sizeof(line) - 1 && data[n] != '\n' && data[n] != '\0') {
		line[n] = (char)data[n];
		n++;
	}
	line[n] = '\0';
	if (config_parse_size(line, &v) == 0)
		CHECK(config_parse_size(line, &v2) == 0 && v == v2);
	if (config_parse_duration(line, &v) == 0)
		CHECK(config_parse_duration(line, &v2) == 0 && v == v2);
	if (config_parse_hostport(line, 0, &hp) == 0)
		CHECK(hp.port != 0 && strlen(hp.host) <= CONFIG_HOST_MAX);
	if (config_parse_hostport(line, 25, &hp) == 0)
		CHECK(hp.port != 0 && hp.host[0] != '\0');
	if (config_parse_cidr(line, &c) == 0) {
		CHECK(c.family == AF_INET || c.family == AF_INET6);
		CHECK(c.prefix <= (c.family == AF_INET ? 32u : 128u));
		/* A CIDR always matches its own network address. */
		CHECK(config_cidr_match(&c, c.family, c.addr));
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[CONFIG_ERRLEN];
	struct config *cfg = NULL;
	char *copy;
	FILE *fp;

	/* fmemopen() wants a writable buffer of at least one byte. */
	copy = malloc(size + 1);
	if (copy == NULL)
		return 0;
	memcpy(copy, data, size);
	copy[size] = '\0';
	fp = fmemopen(copy, size ? size : 1, "r");
	if (fp == NULL) {
		free(copy);
		return 0;
	}
	if (config_load_stream(fp, "fuzz.ini", &cfg, err, sizeof(err)) == 0) {
		CHECK(cfg != NULL);
		check_config(cfg);
		config_free(cfg);
	} else {
		CHECK(cfg == NULL);
		check_error(err);
	}
	fclose(fp);
	free(copy);
	check_parsers(data, size);
	return 0;
}
