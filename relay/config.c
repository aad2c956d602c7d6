/*
 * config.c - the INI file (inih) turned into a validated struct config,
 * and the run-time changes of "mxspoolctl set".
 *
 * One key table per section (server_keys, tls_keys, tenant_keys) says, for
 * every key, its kind, field, bounds and whether "mxspoolctl set" may change
 * it (KEY_RUNTIME).  The single-value setters store a value or write a
 * "key: message" reason; the loader prefixes "FILE:LINE: ", and
 * config_tenant_set() passes the reason on as it is, so the config file and
 * the control socket apply one set of rules.  Keys are found by name, never
 * by their position in a table.  The pure value parsers (numbers, sizes,
 * durations, host:port, CIDRs, DNS names) live in config_value.c; the
 * recipients entries' normalisation and the lookups by domain and address
 * in config_recipients.c.
 *
 * inih splits lines into section / name / value and strips comments, but the
 * system build (Debian, r55) has four limits we must work around:
 *
 *  - its handler gets no line number, so we feed inih through our own
 *    ini_reader (loader_read) which counts the lines it hands out; every
 *    handler call belongs to the line handed out last;
 *  - lines longer than its 200-byte buffer are silently cut in two and the
 *    tail is parsed as a line of its own, so the reader refuses such lines
 *    itself with a message that names the cure (continuation lines);
 *  - section names are cut at 49 bytes (too short for [tenant:NAME] with a
 *    64-byte NAME), so the reader parses section headers itself and hands
 *    inih a stub "[s]" that only resets its continuation state;
 *  - "; comments" are stripped from name=value lines but not from indented
 *    continuation lines, so the reader strips those.
 *
 * The reader therefore classifies each line exactly as inih's
 * ini_parse_stream does (comment, continuation, section, name=value), in the
 * same order, so that it knows whether the next handler call is a new key or
 * an indented continuation of the previous one.  The first error stops the
 * parse: the reader returns NULL once one is recorded.
 *
 * Checks that need the whole file run after the parse (loader_finish):
 * required keys, cert/key pairs, per-tenant consistency, domains claimed
 * twice (found by sorting every domain with the line it was written on,
 * which also gives the sorted index config_tenant_for_domain() searches),
 * and last the recipients files, whose entries are checked against that
 * index.
 *
 * Ownership: a struct config and everything it points to is allocated here
 * and freed by config_free().  Memory comes from the x-allocators (abort on
 * exhaustion), which util.h allows for configuration data.  The loader never
 * logs; it reports one "FILE:LINE: message" line through the caller's buffer.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/util.h"
#include "config_internal.h"

/* An entry of the domain index: the domain string belongs to the tenant. */
/* Limits of values we accept; the unit is in the name. */
#define RATE_MAX 1000000.0            /* messages per second */
#define TOKEN_MAX 256                 /* longest list item (a line is shorter) */
#define SOCKET_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* Defaults from DESIGN.md "Config file". */
#define DEF_LISTEN_PORT 25
#define DEF_METRICS_PORT 9325
#define DEF_DNS_PORT 53
#define DEF_SMTP_PORT 25
#define DEF_REDIS_PORT 6379

static bool
str_ieq(const char *a, const char *b)
{
	size_t la = strlen(a);

	return la == strlen(b) && util_strncasecmp(a, b, la) == 0;
}

/* Grow an array by one element, doubling its capacity at powers of two. */
static void *
array_grow(void *arr, size_t n, size_t elsize)
{
	if (n == 0 || (n & (n - 1)) == 0)
		arr = xrealloc(arr, (n ? 2 * n : 1) * elsize);
	return arr;
}

/* ---- the key tables ---- */

enum section_kind { SECT_NONE, SECT_SERVER, SECT_TLS, SECT_TENANT, SECT_FLEET };

enum key_kind {
	KIND_UINT,          /* unsigned, range min..max */
	KIND_U64,           /* uint64_t count, range min..max */
	KIND_SIZE,          /* uint64_t bytes, at least min */
	KIND_DURATION,      /* uint64_t ms, at least min */
	KIND_RATE,          /* double > 0 */
	KIND_BURST,         /* double, 0 or >= 1 */
	KIND_PORT,          /* uint16_t */
	KIND_HOSTNAME,      /* char *, a DNS name */
	KIND_PATH,          /* char *, not empty */
	KIND_SOCKET,        /* char *, fits in sun_path */
	KIND_USER,          /* char *, empty: NULL */
	KIND_FILE,          /* char *, readable regular file; empty: NULL */
	KIND_HOSTPORT,      /* struct config_hostport + bool has_ at off2 */
	KIND_HOSTPORT_LIST, /* struct config_hostport * + size_t count at off2 */
	KIND_DNS_LIST,      /* same, IP literals only */
	KIND_TLS_OUTBOUND,
	KIND_DOMAINS,
	KIND_PRIMARY,
	KIND_RECIPIENTS,
	KIND_CIDR_LIST,
	KIND_ADDRESS,       /* char *, local@domain; empty: NULL */
	KIND_GROUP,         /* char *, a group name; empty: NULL */
	KIND_READONLY,      /* bool: "group" or "any" */
	KIND_UNKNOWN_RCPT,  /* bool: "accept" (true) or "tempfail" */
	KIND_ZONES,         /* char ** + size_t count at off2: DNS zones */
	KIND_CIPHERS,       /* char *, an OpenSSL cipher list; empty: NULL */
	KIND_SECRET,        /* char *, any text; empty: NULL */
};

/*
 * KEY_RUNTIME: "mxspoolctl set" may change the key of a running tenant
 * (config_tenant_set).  Only for keys whose kind stores a plain number:
 * config_tenant_set works on a shallow copy of the tenant.
 */
#define KEY_RUNTIME 0x1u

struct key {
	const char *name;
	enum key_kind kind;
	size_t off;                   /* the field in struct config or config_tenant */
	size_t off2;                  /* its count or has_ flag, for some kinds */
	uint64_t min, max;
	uint16_t defport;
	unsigned flags;               /* KEY_* */
};

#define S(f) offsetof(struct config, f)
#define T(f) offsetof(struct config_tenant, f)

static const struct key server_keys[] = {
	{ "hostname", KIND_HOSTNAME, S(hostname), 0, 0, 0, 0, 0 },
	{ "listen", KIND_HOSTPORT_LIST, S(listen), S(nlisten), 0, 0, DEF_LISTEN_PORT, 0 },
	{ "spool_dir", KIND_PATH, S(spool_dir), 0, 0, 0, 0, 0 },
	{ "control_socket", KIND_SOCKET, S(control_socket), 0, 0, 0, 0, 0 },
	{ "control_group", KIND_GROUP, S(control_group), 0, 0, 0, 0, 0 },
	{ "control_readonly", KIND_READONLY, S(control_readonly_any), 0, 0, 0, 0, 0 },
	{ "metrics_listen", KIND_HOSTPORT, S(metrics_listen), S(has_metrics), 0, 0, DEF_METRICS_PORT, 0 },
	{ "user", KIND_USER, S(user), 0, 0, 0, 0, 0 },
	{ "max_connections", KIND_UINT, S(max_connections), 0, 1, UINT32_MAX, 0, 0 },
	{ "max_connections_per_ip", KIND_UINT, S(max_connections_per_ip), 0, 1, UINT32_MAX, 0, 0 },
	{ "client_limit_exempt", KIND_CIDR_LIST, S(client_limit_exempt), S(nclient_limit_exempt), 0, 0, 0, 0 },
	{ "client_message_rate", KIND_UINT, S(client_message_rate), 0, 0, 1000000, 0, 0 },
	{ "client_recipient_rate", KIND_UINT, S(client_recipient_rate), 0, 0, 1000000, 0, 0 },
	{ "dnsbl", KIND_ZONES, S(dnsbl), S(ndnsbl), 0, 0, 0, 0 },
	{ "dnsbl_allow", KIND_CIDR_LIST, S(dnsbl_allow), S(ndnsbl_allow), 0, 0, 0, 0 },
	{ "dnsbl_timeout", KIND_DURATION, S(dnsbl_timeout_ms), 0, 1, 0, 0, 0 },
	{ "max_message_size", KIND_SIZE, S(max_message_size), 0, 1, 0, 0, 0 },
	{ "max_recipients", KIND_UINT, S(max_recipients), 0, 1, UINT32_MAX, 0, 0 },
	/* RFC 5321 4.5.3.1.6: a server must take text lines of 1000 octets. */
	{ "max_line_length", KIND_UINT, S(max_line_length), 0, 1000, 1048576, 0, 0 },
	{ "max_errors", KIND_UINT, S(max_errors), 0, 1, UINT32_MAX, 0, 0 },
	{ "smtp_timeout", KIND_DURATION, S(smtp_timeout_ms), 0, 1, 0, 0, 0 },
	{ "disk_reserve", KIND_SIZE, S(disk_reserve), 0, 0, 0, 0, 0 },
	{ "queue_lifetime", KIND_DURATION, S(queue_lifetime_ms), 0, 1, 0, 0, 0 },
	{ "delay_warning", KIND_DURATION, S(delay_warning_ms), 0, 0, 0, 0, 0 },
	/* RFC 5321 6.3: a loop shows as a pile of Received: fields. */
	{ "max_received", KIND_UINT, S(max_received), 0, 1, 10000, 0, 0 },
	{ "postmaster", KIND_ADDRESS, S(postmaster), 0, 0, 0, 0, 0 },
	{ "dns_servers", KIND_DNS_LIST, S(dns_servers), S(ndns_servers), 0, 0, DEF_DNS_PORT, 0 },
	{ "mx_port", KIND_PORT, S(mx_port), 0, 0, 0, 0, 0 },
	{ "bounce_relay", KIND_HOSTPORT, S(bounce_relay), S(has_bounce_relay), 0, 0, DEF_SMTP_PORT, 0 },
	{ "commit_window", KIND_DURATION, S(commit_window_ms), 0, 0, 0, 0, 0 },
};

static const struct key tls_keys[] = {
	{ "cert", KIND_FILE, S(tls_cert), 0, 0, 0, 0, 0 },
	{ "key", KIND_FILE, S(tls_key), 0, 0, 0, 0, 0 },
	{ "outbound", KIND_TLS_OUTBOUND, S(tls_outbound), 0, 0, 0, 0, 0 },
	{ "ca_file", KIND_FILE, S(tls_ca_file), 0, 0, 0, 0, 0 },
	/* Checked by OpenSSL when the server context is made (start and
	 * reload, which refuses a list it cannot use); empty: tls.c's
	 * defaults. */
	{ "ciphers", KIND_CIPHERS, S(tls_ciphers), 0, 0, 0, 0, 0 },
	{ "ciphersuites", KIND_CIPHERS, S(tls_ciphersuites), 0, 0, 0, 0, 0 },
};

/* [fleet]: the shared drain budget in Redis (fleet.c).  All three wait for
 * a restart (relay_note_restart_keys): the connection is made once. */
static const struct key fleet_keys[] = {
	{ "redis", KIND_HOSTPORT, S(fleet_redis), S(has_fleet), 0, 0, DEF_REDIS_PORT, 0 },
	{ "node", KIND_HOSTNAME, S(fleet_node), 0, 0, 0, 0, 0 },
	{ "redis_password", KIND_SECRET, S(fleet_password), 0, 0, 0, 0, 0 },
};

static const struct key tenant_keys[] = {
	{ "domains", KIND_DOMAINS, T(domains), T(ndomains), 0, 0, 0, 0 },
	{ "primary", KIND_PRIMARY, T(primaries), T(nprimaries), 0, 0, DEF_SMTP_PORT, 0 },
	{ "recipients", KIND_RECIPIENTS, T(recipients_file), T(recipients_learn), 0, 0, 0, 0 },
	/* recipients = learn (verify.c): how unknown addresses are verified at
	 * the primary and how long the answers are kept.  All take effect at
	 * a reload (the verifier re-reads them; the cache is kept). */
	{ "unknown_recipient", KIND_UNKNOWN_RCPT, T(unknown_recipient_accept), 0, 0, 0, 0, 0 },
	{ "verify_timeout", KIND_DURATION, T(verify_timeout_ms), 0, 100, 0, 0, 0 },
	{ "verify_valid_ttl", KIND_DURATION, T(verify_valid_ttl_ms), 0, 1, 0, 0, 0 },
	{ "verify_invalid_ttl", KIND_DURATION, T(verify_invalid_ttl_ms), 0, 1, 0, 0, 0 },
	{ "verify_cache_size", KIND_U64, T(verify_cache_size), 0, 1, 10000000, 0, 0 },
	{ "verify_concurrency", KIND_UINT, T(verify_concurrency), 0, 1, 100, 0, 0 },
	{ "verify_rate", KIND_RATE, T(verify_rate), 0, 0, 0, 0, 0 },
	{ "quota", KIND_SIZE, T(quota), 0, 1, 0, 0, 0 },
	{ "quota_messages", KIND_U64, T(quota_messages), 0, 1, UINT64_MAX, 0, 0 },
	{ "drain_rate", KIND_RATE, T(drain_rate), 0, 0, 0, 0, KEY_RUNTIME },
	{ "drain_bandwidth", KIND_SIZE, T(drain_bandwidth), 0, 0, 0, 0, KEY_RUNTIME },
	{ "drain_concurrency", KIND_UINT, T(drain_concurrency), 0, 1, 10000, 0, KEY_RUNTIME },
	{ "drain_ramp", KIND_DURATION, T(drain_ramp_ms), 0, 0, 0, 0, KEY_RUNTIME },
	{ "drain_initial_rate", KIND_RATE, T(drain_initial_rate), 0, 0, 0, 0, KEY_RUNTIME },
	{ "drain_burst", KIND_BURST, T(drain_burst), 0, 0, 0, 0, KEY_RUNTIME },
	{ "messages_per_connection", KIND_UINT, T(messages_per_connection), 0, 1, UINT32_MAX, 0, KEY_RUNTIME },
	{ "probe_interval", KIND_DURATION, T(probe_interval_ms), 0, 1, 0, 0, KEY_RUNTIME },
	{ "probe_up_after", KIND_UINT, T(probe_up_after), 0, 1, 1000, 0, 0 },
	{ "etrn_from", KIND_CIDR_LIST, T(etrn_from), T(netrn_from), 0, 0, 0, 0 },
	{ "queue_lifetime", KIND_DURATION, T(queue_lifetime_ms), 0, 1, 0, 0, 0 },
	{ "delay_warning", KIND_DURATION, T(delay_warning_ms), 0, 0, 0, 0, 0 },
	{ "dnsbl", KIND_ZONES, T(dnsbl), T(ndnsbl), 0, 0, 0, 0 },
};

#undef S
#undef T

#define NSERVER (sizeof(server_keys) / sizeof(server_keys[0]))
#define NTLS (sizeof(tls_keys) / sizeof(tls_keys[0]))
#define NTENANT (sizeof(tenant_keys) / sizeof(tenant_keys[0]))
#define NFLEET (sizeof(fleet_keys) / sizeof(fleet_keys[0]))

static const struct key *
section_keys(enum section_kind sect, size_t *n)
{
	switch (sect) {
	case SECT_SERVER: *n = NSERVER; return server_keys;
	case SECT_TLS: *n = NTLS; return tls_keys;
	case SECT_TENANT: *n = NTENANT; return tenant_keys;
	case SECT_FLEET: *n = NFLEET; return fleet_keys;
	default: *n = 0; return NULL;
	}
}

/* The entry called NAME in KEYS, or NULL. */
static const struct key *
key_find(const struct key *keys, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(name, keys[i].name) == 0)
			return &keys[i];
	return NULL;
}

/*
 * The line on which key NAME of a SECT section was set (0: not set), read
 * from LINES, the per-key array kept parallel to that section's table.  The
 * cross-checks name keys by name, so the tables may be reordered freely;
 * a name missing from its table is a bug in this file, hence abort().
 */
static unsigned
key_line(enum section_kind sect, const unsigned *lines, const char *name)
{
	size_t n;
	const struct key *keys = section_keys(sect, &n);
	const struct key *k = key_find(keys, n, name);

	if (k == NULL)
		abort();
	return lines[k - keys];
}

/* Levenshtein distance, capped: enough to suggest "listen" for "listn". */
static unsigned
edit_distance(const char *a, const char *b)
{
	unsigned row[64];
	size_t la = strlen(a), lb = strlen(b);

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		row[j] = (unsigned)j;
	for (size_t i = 1; i <= la; i++) {
		unsigned diag = row[0];

		row[0] = (unsigned)i;
		for (size_t j = 1; j <= lb; j++) {
			unsigned up = row[j];
			unsigned cost = ch_lower((unsigned char)a[i - 1]) ==
			    ch_lower((unsigned char)b[j - 1]) ? 0 : 1;
			unsigned best = diag + cost;

			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* The names of the KEYS that have every flag in FLAGS, ", "-separated. */
static const char *
key_names(const struct key *keys, size_t n, unsigned flags, char *buf,
    size_t len)
{
	size_t o = 0;
	bool any = false;

	buf[0] = '\0';
	for (size_t i = 0; i < n && o < len; i++) {
		if ((keys[i].flags & flags) != flags)
			continue;
		o += (size_t)snprintf(buf + o, len - o, "%s%s", any ? ", " : "",
		    keys[i].name);
		any = true;
	}
	return buf;
}

/* "; did you mean "x"?" for the closest of those KEYS, or "". */
static const char *
key_suggest(const struct key *keys, size_t n, unsigned flags,
    const char *name, char *buf, size_t len)
{
	unsigned best = 3;

	buf[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		unsigned d = edit_distance(name, keys[i].name);

		if ((keys[i].flags & flags) == flags && d < best) {
			best = d;
			snprintf(buf, len, "; did you mean \"%s\"?", keys[i].name);
		}
	}
	return buf;
}

/* ---- messages ---- */

/*
 * Render S for a message: in double quotes, with control bytes escaped and
 * long values cut, so that a binary file cannot garble the error line.
 */
static const char *
quote(char *buf, size_t len, const char *s)
{
	size_t o = 0;

	buf[o++] = '"';
	for (; *s != '\0' && o + 8 < len; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
		} else {
			buf[o++] = (char)c;
		}
	}
	if (*s != '\0') {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

#define QBUF 80

/* Write "KEY: "VALUE" WHAT" into MSG; returns -1 for the caller to pass on. */
static int
value_msg(char *msg, size_t len, const struct key *k, const char *value,
    const char *what)
{
	char q[QBUF];
	const char *hash = strchr(value, '#');
	/* "key = 20 # note" is a classic from other config formats. */
	bool hint = hash != NULL && hash > value && ch_space((unsigned char)hash[-1]);

	snprintf(msg, len, "%s: %s %s%s", k->name, quote(q, sizeof(q), value),
	    what, hint ? " (an inline comment starts with \" ;\", not \"#\")" : "");
	return -1;
}

/* Render a byte count the way a postmaster wrote it: 50M, not 52428800. */
static const char *
fmt_size(char *buf, size_t len, uint64_t v)
{
	if (v != 0 && v % GIB == 0)
		snprintf(buf, len, "%lluG", (unsigned long long)(v / GIB));
	else if (v != 0 && v % MIB == 0)
		snprintf(buf, len, "%lluM", (unsigned long long)(v / MIB));
	else if (v != 0 && v % KIB == 0)
		snprintf(buf, len, "%lluK", (unsigned long long)(v / KIB));
	else
		snprintf(buf, len, "%llu bytes", (unsigned long long)v);
	return buf;
}

/*
 * ---- value setters: one per single-value kind ----
 *
 * Each stores V into the field K names in BASE (a struct config or a
 * struct config_tenant) and returns 0, or leaves the field alone and
 * returns -1 with "KEY: message" in MSG.  They know nothing of files or
 * lines: the loader prefixes "FILE:LINE: ", config_tenant_set() nothing,
 * so the file and "mxspoolctl set" apply one set of rules.
 */

#define FIELD(base, off, type) ((type *)(void *)((char *)(base) + (off)))

static int
set_number(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	uint64_t n;
	char what[160];

	if (config__u64_reason(v, &n) != NULL || n < k->min || n > k->max) {
		if (k->max == UINT32_MAX || k->max == UINT64_MAX)
			snprintf(what, sizeof(what), "must be a whole number >= %llu",
			    (unsigned long long)k->min);
		else
			snprintf(what, sizeof(what),
			    "must be a whole number from %llu to %llu",
			    (unsigned long long)k->min, (unsigned long long)k->max);
		return value_msg(msg, len, k, v, what);
	}
	if (k->kind == KIND_UINT)
		*FIELD(base, k->off, unsigned) = (unsigned)n;
	else
		*FIELD(base, k->off, uint64_t) = n;
	return 0;
}

static int
set_size(const struct key *k, void *base, const char *v, char *msg, size_t len)
{
	uint64_t n;

	if (config__size_reason(v, &n) != NULL)
		return value_msg(msg, len, k, v,
		    "is not a size: write a number of bytes with an optional "
		    "K, M or G suffix (powers of 1024), e.g. 50M or 10G");
	if (n < k->min)
		return value_msg(msg, len, k, v, "must be larger than 0");
	*FIELD(base, k->off, uint64_t) = n;
	return 0;
}

static int
set_duration(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	uint64_t ms;

	if (config__duration_reason(v, &ms) != NULL)
		return value_msg(msg, len, k, v,
		    "is not a duration: write a number with a unit ms, s, m, h, "
		    "d or w, e.g. 30s, 5m, 4h, 5d (a bare number means seconds)");
	if (ms < k->min)
		return value_msg(msg, len, k, v, "must be longer than 0");
	*FIELD(base, k->off, uint64_t) = ms;
	return 0;
}

static int
set_rate(const struct key *k, void *base, const char *v, char *msg, size_t len)
{
	double r;

	if (config__decimal_reason(v, &r) != NULL || r > RATE_MAX)
		return value_msg(msg, len, k, v,
		    k->kind == KIND_BURST ?
		    "must be a number of messages: 0 (one second's worth) or 1 to 1000000" :
		    "must be a number > 0 (messages per second, up to 1000000)");
	if (k->kind == KIND_RATE && r <= 0)
		return value_msg(msg, len, k, v, "must be a number > 0");
	/* A bucket shallower than one message could never send anything. */
	if (k->kind == KIND_BURST && r > 0 && r < 1)
		return value_msg(msg, len, k, v,
		    "must be 0 (one second's worth) or at least 1 message");
	*FIELD(base, k->off, double) = r;
	return 0;
}

static int
set_port(const struct key *k, void *base, const char *v, char *msg, size_t len)
{
	uint16_t p;

	if (config__port_reason(v, &p) != NULL)
		return value_msg(msg, len, k, v,
		    "must be a port number from 1 to 65535");
	*FIELD(base, k->off, uint16_t) = p;
	return 0;
}

static void
set_string(void *base, const struct key *k, const char *v)
{
	char **field = FIELD(base, k->off, char *);

	free(*field);
	*field = *v ? xstrdup(v) : NULL;
}

static int
set_hostname(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	const char *why = config__domain_reason(v, strlen(v));
	char what[160];

	if (why != NULL) {
		snprintf(what, sizeof(what),
		    "is not a host name: it %s (write the name this relay's "
		    "address resolves to, e.g. backup-mx.example.net)", why);
		return value_msg(msg, len, k, v, what);
	}
	/* Stored without the root dot: it goes into EHLO and Received:. */
	free(*FIELD(base, k->off, char *));
	*FIELD(base, k->off, char *) = xstrndup(v,
	    strlen(v) - (v[strlen(v) - 1] == '.'));
	return 0;
}

static int
set_path(const struct key *k, void *base, const char *v, char *msg, size_t len)
{
	if (*v == '\0') {
		snprintf(msg, len, "%s: must not be empty: write a path", k->name);
		return -1;
	}
	if (k->kind == KIND_SOCKET && strlen(v) > SOCKET_PATH_MAX) {
		snprintf(msg, len,
		    "%s: path is %zu characters long; a unix socket path may "
		    "have at most %zu", k->name, strlen(v), SOCKET_PATH_MAX);
		return -1;
	}
	set_string(base, k, v);
	return 0;
}

static int
set_user(const struct key *k, void *base, const char *v, char *msg, size_t len)
{
	for (const char *p = v; *p != '\0'; p++)
		if (!ch_alnum((unsigned char)*p) && *p != '_' && *p != '-' &&
		    *p != '.')
			return value_msg(msg, len, k, v,
			    "is not a user name (letters, digits, _, - and .)");
	if (*v == '-')
		return value_msg(msg, len, k, v, "is not a user name");
	set_string(base, k, v);
	return 0;
}

/* An OpenSSL cipher list or TLS 1.3 suite list: what OpenSSL accepts is
 * its business (tls.c), but stray spaces or quotes are caught here, with a
 * line number. */
static int
set_ciphers(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	for (const char *p = v; *p != '\0'; p++)
		if (!ch_alnum((unsigned char)*p) && strchr(":+-!@=_.,", *p) == NULL)
			return value_msg(msg, len, k, v, "is not an OpenSSL cipher "
			    "list (names joined by ':', e.g. ECDHE+AESGCM:ECDHE+CHACHA20)");
	set_string(base, k, v);
	return 0;
}

/* A group name as useradd(8) takes them; whether it exists is checked when
 * the daemon binds the socket (a config may be checked on another host). */
static int
set_group(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	for (const char *p = v; *p != '\0'; p++)
		if (!ch_alnum((unsigned char)*p) && *p != '_' && *p != '-' &&
		    *p != '.')
			return value_msg(msg, len, k, v,
			    "is not a group name (letters, digits, _, - and .)");
	if (*v == '-')
		return value_msg(msg, len, k, v, "is not a group name");
	set_string(base, k, v);
	return 0;
}

static int
set_readonly(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	bool *field = FIELD(base, k->off, bool);

	if (str_ieq(v, "group"))
		*field = false;
	else if (str_ieq(v, "any"))
		*field = true;
	else
		return value_msg(msg, len, k, v, "must be group (read-only commands "
		    "for the same peers as the others) or any (status, queue, show "
		    "and watch for every local user)");
	return 0;
}

/* A mailbox for our own use (postmaster): local@domain, plain ASCII, no
 * quoting; whether the domain is a tenant's is checked at the end. */
static int
set_address(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	const char *at = strrchr(v, '@');
	const char *why;

	if (*v == '\0') {
		set_string(base, k, v);
		return 0;
	}
	for (const char *p = v; *p != '\0'; p++)
		if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f ||
		    strchr("<>()[]\\,;:\"", *p) != NULL)
			return value_msg(msg, len, k, v, "is not a plain address "
			    "(write it as local@domain, without <> or quotes)");
	if (at == NULL || at == v || at[1] == '\0' || strchr(v, '@') != at)
		return value_msg(msg, len, k, v, "is not an address: it needs "
		    "local@domain, e.g. postmaster@example.com");
	if ((why = config__domain_reason(at + 1, strlen(at + 1))) != NULL) {
		char what[160];

		snprintf(what, sizeof(what), "has a bad domain: it %s", why);
		return value_msg(msg, len, k, v, what);
	}
	set_string(base, k, v);
	util_lower(*FIELD(base, k->off, char *) + (size_t)(at - v) + 1);
	return 0;
}

/*
 * A certificate, key or CA file must be readable now: finding out at the
 * first STARTTLS, hours later, is the worst time.  Only regular files are
 * taken, so that a path to a FIFO or device cannot hang the loader.
 */
static int
set_file(const struct key *k, void *base, const char *v, char *msg, size_t len)
{
	char q[QBUF];
	struct stat st;
	FILE *fp;

	if (*v != '\0') {
		fp = fopen(v, "re");
		if (fp == NULL) {
			snprintf(msg, len, "%s: cannot read %s: %s", k->name,
			    quote(q, sizeof(q), v), strerror(errno));
			return -1;
		}
		if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
			fclose(fp);
			snprintf(msg, len, "%s: %s is not a regular file", k->name,
			    quote(q, sizeof(q), v));
			return -1;
		}
		fclose(fp);
	}
	set_string(base, k, v);
	return 0;
}

static int
set_hostport(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	struct config_hostport hp;
	const char *why;
	char what[200];

	if (*v == '\0') {
		*FIELD(base, k->off2, bool) = false;
		return 0;
	}
	why = config__hostport_reason(v, k->defport, &hp);
	if (why != NULL) {
		snprintf(what, sizeof(what),
		    "is not host[:port] or [IPv6]:port: it %s", why);
		return value_msg(msg, len, k, v, what);
	}
	*FIELD(base, k->off, struct config_hostport) = hp;
	*FIELD(base, k->off2, bool) = true;
	return 0;
}

static int
set_tls_outbound(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	static const char *const names[] = { "none", "opportunistic", "required", "verify" };
	static const enum config_tls_outbound vals[] = {
		CONFIG_TLS_OUT_NONE, CONFIG_TLS_OUT_OPPORTUNISTIC,
		CONFIG_TLS_OUT_REQUIRED, CONFIG_TLS_OUT_VERIFY,
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (str_ieq(v, names[i])) {
			*FIELD(base, k->off, enum config_tls_outbound) = vals[i];
			return 0;
		}
	}
	return value_msg(msg, len, k, v,
	    "must be one of none, opportunistic, required, verify");
}

static int
set_recipients(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	if (*v == '\0') {
		snprintf(msg, len,
		    "recipients: must not be empty: write any, or the path of a "
		    "file with one address or @domain per line");
		return -1;
	}
	/* learn and learn+FILE: the file (if any) is read like a plain FILE
	 * and always wins; what it lacks is verified (policy.c, verify.c). */
	*FIELD(base, k->off2, bool) = false;
	if (str_ieq(v, "learn")) {
		*FIELD(base, k->off2, bool) = true;
		v = "";
	} else if (util_strncasecmp(v, "learn+", 6) == 0) {
		if (v[6] == '\0') {
			snprintf(msg, len, "recipients: learn+ needs the path of a "
			    "file after the +, e.g. learn+/etc/mxspool/users");
			return -1;
		}
		*FIELD(base, k->off2, bool) = true;
		v += 6;
	} else if (str_ieq(v, "any")) {
		v = "";
	}
	set_string(base, k, v);
	return 0;
}

static int
set_unknown_rcpt(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	bool *field = FIELD(base, k->off, bool);

	if (str_ieq(v, "accept"))
		*field = true;
	else if (str_ieq(v, "tempfail"))
		*field = false;
	else
		return value_msg(msg, len, k, v, "must be tempfail (450 4.1.1 for "
		    "an address not yet learned while the primary is down) or "
		    "accept (250)");
	return 0;
}

/* Apply one single-value key (not a list); 0, or -1 with MSG. */
static int
key_set_value(const struct key *k, void *base, const char *v, char *msg,
    size_t len)
{
	switch (k->kind) {
	case KIND_UINT:
	case KIND_U64: return set_number(k, base, v, msg, len);
	case KIND_SIZE: return set_size(k, base, v, msg, len);
	case KIND_DURATION: return set_duration(k, base, v, msg, len);
	case KIND_RATE:
	case KIND_BURST: return set_rate(k, base, v, msg, len);
	case KIND_PORT: return set_port(k, base, v, msg, len);
	case KIND_HOSTNAME: return set_hostname(k, base, v, msg, len);
	case KIND_PATH:
	case KIND_SOCKET: return set_path(k, base, v, msg, len);
	case KIND_USER: return set_user(k, base, v, msg, len);
	case KIND_FILE: return set_file(k, base, v, msg, len);
	case KIND_HOSTPORT: return set_hostport(k, base, v, msg, len);
	case KIND_TLS_OUTBOUND: return set_tls_outbound(k, base, v, msg, len);
	case KIND_RECIPIENTS: return set_recipients(k, base, v, msg, len);
	case KIND_ADDRESS: return set_address(k, base, v, msg, len);
	case KIND_GROUP: return set_group(k, base, v, msg, len);
	case KIND_READONLY: return set_readonly(k, base, v, msg, len);
	case KIND_UNKNOWN_RCPT: return set_unknown_rcpt(k, base, v, msg, len);
	case KIND_CIPHERS: return set_ciphers(k, base, v, msg, len);
	case KIND_SECRET: set_string(base, k, v); return 0;
	default:
		snprintf(msg, len, "%s: internal error", k->name);
		return -1;
	}
}

/*
 * Cross-checks between a tenant's keys that config_tenant_set() can break.
 * The ramp climbs from drain_initial_rate to drain_rate, so the start may
 * not lie above the ceiling.  0, or -1 with MSG.
 */
static int
tenant_check_rates(const struct config_tenant *t, char *msg, size_t len)
{
	if (t->drain_initial_rate > t->drain_rate) {
		snprintf(msg, len,
		    "drain_initial_rate (%g) is above drain_rate (%g): the drain "
		    "starts at drain_initial_rate and ramps up to drain_rate",
		    t->drain_initial_rate, t->drain_rate);
		return -1;
	}
	return 0;
}

/* ---- run-time changes: "mxspoolctl set TENANT KEY=VALUE" ---- */

static const char *runtime_keys[NTENANT + 1];
static pthread_once_t runtime_keys_once = PTHREAD_ONCE_INIT;

static void
runtime_keys_init(void)
{
	size_t n = 0;

	for (size_t i = 0; i < NTENANT; i++)
		if (tenant_keys[i].flags & KEY_RUNTIME)
			runtime_keys[n++] = tenant_keys[i].name;
	runtime_keys[n] = NULL;
}

const char *const *
config_runtime_keys(void)
{
	(void)pthread_once(&runtime_keys_once, runtime_keys_init);
	return runtime_keys;
}

int
config_tenant_set(struct config_tenant *t, const char *key, const char *value,
    char *err, size_t errlen)
{
	char msg[CONFIG_ERRLEN], names[256], hint[128], q[QBUF];
	const struct key *k = key != NULL ? key_find(tenant_keys, NTENANT, key) : NULL;
	struct config_tenant next;

	if (t == NULL || key == NULL || value == NULL) {
		snprintf(msg, sizeof(msg), "no tenant, key or value given");
		goto fail;
	}
	if (k == NULL || !(k->flags & KEY_RUNTIME)) {
		key_names(tenant_keys, NTENANT, KEY_RUNTIME, names, sizeof(names));
		if (k != NULL)
			snprintf(msg, sizeof(msg), "%s: cannot be changed at run "
			    "time: edit the config file and reload (settable at "
			    "run time: %s)", k->name, names);
		else
			snprintf(msg, sizeof(msg),
			    "unknown key %s%s (settable at run time: %s)",
			    quote(q, sizeof(q), key),
			    key_suggest(tenant_keys, NTENANT, KEY_RUNTIME, key, hint,
			    sizeof(hint)), names);
		goto fail;
	}
	/* A copy, so that a refused value leaves T as it was.  Shallow is
	 * enough: KEY_RUNTIME keys are numbers and touch no pointer. */
	next = *t;
	if (key_set_value(k, &next, value, msg, sizeof(msg)) != 0 ||
	    tenant_check_rates(&next, msg, sizeof(msg)) != 0)
		goto fail;
	*t = next;
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	return 0;
fail:
	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "%s", msg);
	return -1;
}

/* ---- the loader ---- */

/* Where a tenant's section and keys were written, for later messages. */
struct tenant_meta {
	unsigned section_line;
	unsigned lines[NTENANT];
};

/* A domain and the line it was written on, for the duplicate check. */
struct domain_seen {
	const char *domain;           /* owned by the tenant's domains[] */
	size_t tenant;
	unsigned line;
};

struct loader {
	const char *name;             /* the file name in messages */
	FILE *fp;
	char *buf;                    /* getline() buffer */
	size_t bufcap;
	unsigned lineno;              /* the line handed to inih last */

	/* Mirror of inih's state: is there a key an indented line continues? */
	bool have_prev_key;
	bool cont;                    /* the current line is a continuation */
	const struct key *prev_key;

	enum section_kind sect;
	size_t tenant;                /* current tenant when sect == SECT_TENANT */
	unsigned server_line, tls_line, fleet_line;
	unsigned server_lines[NSERVER];
	unsigned tls_lines[NTLS];
	unsigned fleet_lines[NFLEET];
	struct tenant_meta *tmeta;
	struct domain_seen *doms;
	size_t ndoms;

	struct config *cfg;
	char *err;
	size_t errlen;
	bool failed;
	unsigned err_line;
};

static int loader_fail(struct loader *ld, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record the first error as "FILE:LINE: message"; later ones are dropped. */
static int
loader_fail(struct loader *ld, unsigned line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ld->failed)
		return -1;
	ld->failed = true;
	ld->err_line = line;
	if (ld->err == NULL || ld->errlen == 0)
		return -1;
	n = snprintf(ld->err, ld->errlen, "%s:%u: ", ld->name, line);
	if (n < 0 || (size_t)n >= ld->errlen)
		return -1;
	va_start(ap, fmt);
	vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* A bad list item on the current line: value_msg() with FILE:LINE. */
static int
fail_value(struct loader *ld, const struct key *k, const char *value,
    const char *what)
{
	char msg[CONFIG_ERRLEN];

	value_msg(msg, sizeof(msg), k, value, what);
	return loader_fail(ld, ld->lineno, "%s", msg);
}

static unsigned *
section_lines(struct loader *ld)
{
	switch (ld->sect) {
	case SECT_SERVER: return ld->server_lines;
	case SECT_TLS: return ld->tls_lines;
	case SECT_FLEET: return ld->fleet_lines;
	case SECT_TENANT: return ld->tmeta[ld->tenant].lines;
	default: return NULL;
	}
}

static void *
section_base(struct loader *ld)
{
	if (ld->sect == SECT_TENANT)
		return &ld->cfg->tenants[ld->tenant];
	return ld->cfg;
}

static const char *
section_label(struct loader *ld, char *buf, size_t len)
{
	switch (ld->sect) {
	case SECT_SERVER: return "[server]";
	case SECT_TLS: return "[tls]";
	case SECT_FLEET: return "[fleet]";
	case SECT_TENANT:
		snprintf(buf, len, "[tenant:%s]", ld->cfg->tenants[ld->tenant].name);
		return buf;
	default: return "(no section)";
	}
}

static int
fail_unknown_key(struct loader *ld, const char *name)
{
	char q[QBUF], label[96], allowed[512], hint[128];
	size_t n;
	const struct key *keys = section_keys(ld->sect, &n);

	key_names(keys, n, 0, allowed, sizeof(allowed));
	if (*name == '\0')
		return loader_fail(ld, ld->lineno,
		    "missing key name before \"=\" in %s (allowed: %s)",
		    section_label(ld, label, sizeof(label)), allowed);
	return loader_fail(ld, ld->lineno, "unknown key %s in %s%s (allowed: %s)",
	    quote(q, sizeof(q), name), section_label(ld, label, sizeof(label)),
	    key_suggest(keys, n, 0, name, hint, sizeof(hint)), allowed);
}

/* -- lists: items are separated by commas and/or white space -- */

static void
list_clear(struct loader *ld, const struct key *k, void *base)
{
	size_t *n = FIELD(base, k->off2, size_t);

	if (k->kind == KIND_DOMAINS || k->kind == KIND_ZONES) {
		char **doms = *FIELD(base, k->off, char **);

		for (size_t i = 0; i < *n; i++)
			free(doms[i]);
		/* The duplicate check must forget the domains of this tenant. */
		size_t keep = 0;
		for (size_t i = 0; i < ld->ndoms; i++)
			if (k->kind == KIND_ZONES || ld->doms[i].tenant != ld->tenant)
				ld->doms[keep++] = ld->doms[i];
		ld->ndoms = keep;
	}
	free(*FIELD(base, k->off, void *));
	*FIELD(base, k->off, void *) = NULL;
	*n = 0;
}

static int
item_hostport(struct loader *ld, const struct key *k, void *base, const char *tok)
{
	struct config_hostport hp, **arr = FIELD(base, k->off, struct config_hostport *);
	size_t *n = FIELD(base, k->off2, size_t);
	unsigned char bin[16];
	const char *why;
	char what[200];

	if (k->kind == KIND_PRIMARY) {
		struct config_tenant *t = base;

		if (str_ieq(tok, "mx")) {
			if (*n > 0 || t->primary_mx)
				return loader_fail(ld, ld->lineno,
				    "primary: \"mx\" stands alone: write either "
				    "primary = mx or a list of host[:port]");
			t->primary_mx = true;
			return 0;
		}
		if (t->primary_mx)
			return loader_fail(ld, ld->lineno,
			    "primary: \"mx\" stands alone: write either "
			    "primary = mx or a list of host[:port]");
	}
	why = config__hostport_reason(tok, k->defport, &hp);
	if (why != NULL) {
		snprintf(what, sizeof(what),
		    "is not host[:port] or [IPv6]:port: it %s", why);
		return fail_value(ld, k, tok, what);
	}
	/* c-ares takes server addresses, not names it would have to resolve. */
	if (k->kind == KIND_DNS_LIST && inet_pton(AF_INET, hp.host, bin) != 1 &&
	    inet_pton(AF_INET6, hp.host, bin) != 1)
		return fail_value(ld, k, tok,
		    "is not an IP address: name servers are given as "
		    "address[:port] or [IPv6]:port");
	*arr = array_grow(*arr, *n, sizeof(**arr));
	(*arr)[(*n)++] = hp;
	return 0;
}

/* A mail domain of a tenant, or a DNSBL zone (KIND_ZONES). */
static int
item_domain(struct loader *ld, const struct key *k, void *base, const char *tok)
{
	char ***arr = FIELD(base, k->off, char **);
	size_t *n = FIELD(base, k->off2, size_t), len = strlen(tok);
	const char *why = config__domain_reason(tok, len);
	char what[160], *d;

	if (why == NULL && config__all_digits_and_dots(tok, len))
		why = "looks like an IP address";
	if (why != NULL) {
		snprintf(what, sizeof(what), "is not a %s: it %s",
		    k->kind == KIND_ZONES ? "DNS zone" : "mail domain", why);
		return fail_value(ld, k, tok, what);
	}
	if (tok[len - 1] == '.')
		len--;
	d = xstrndup(tok, len);
	util_lower(d);
	*arr = array_grow(*arr, *n, sizeof(**arr));
	(*arr)[(*n)++] = d;
	if (k->kind == KIND_ZONES)
		return 0;
	ld->doms = array_grow(ld->doms, ld->ndoms, sizeof(*ld->doms));
	ld->doms[ld->ndoms++] = (struct domain_seen){
		.domain = d, .tenant = ld->tenant, .line = ld->lineno,
	};
	return 0;
}

static int
item_cidr(struct loader *ld, const struct key *k, void *base, const char *tok)
{
	struct config_cidr c, **arr = FIELD(base, k->off, struct config_cidr *);
	size_t *n = FIELD(base, k->off2, size_t);
	const char *why = config__cidr_reason(tok, &c);
	char what[200];

	if (why != NULL) {
		snprintf(what, sizeof(what),
		    "is not an address or CIDR (e.g. 192.0.2.0/24, 2001:db8::/32): it %s",
		    why);
		return fail_value(ld, k, tok, what);
	}
	*arr = array_grow(*arr, *n, sizeof(**arr));
	(*arr)[(*n)++] = c;
	return 0;
}

static int
set_list(struct loader *ld, const struct key *k, void *base, const char *v,
    bool first)
{
	char tok[TOKEN_MAX];

	if (first) {
		list_clear(ld, k, base);
		if (k->kind == KIND_PRIMARY)
			((struct config_tenant *)base)->primary_mx = false;
	}
	/* A continuation line that looks like a key almost always lost its way. */
	if (!first && strchr(v, '=') != NULL)
		return loader_fail(ld, ld->lineno,
		    "this indented line continues %s from an earlier line, but "
		    "looks like a new key: remove the indentation", k->name);
	while (*v != '\0') {
		size_t len = 0;
		int r;

		while (*v == ',' || ch_space((unsigned char)*v))
			v++;
		while (v[len] != '\0' && v[len] != ',' &&
		    !ch_space((unsigned char)v[len]))
			len++;
		if (len == 0)
			break;
		if (len >= sizeof(tok))
			return loader_fail(ld, ld->lineno, "%s: item too long", k->name);
		memcpy(tok, v, len);
		tok[len] = '\0';
		v += len;
		switch (k->kind) {
		case KIND_DOMAINS:
		case KIND_ZONES: r = item_domain(ld, k, base, tok); break;
		case KIND_CIDR_LIST: r = item_cidr(ld, k, base, tok); break;
		default: r = item_hostport(ld, k, base, tok); break;
		}
		if (r != 0)
			return -1;
	}
	return 0;
}

static bool
key_is_list(const struct key *k)
{
	switch (k->kind) {
	case KIND_HOSTPORT_LIST:
	case KIND_DNS_LIST:
	case KIND_DOMAINS:
	case KIND_ZONES:
	case KIND_PRIMARY:
	case KIND_CIDR_LIST:
		return true;
	default:
		return false;
	}
}

static int
key_apply(struct loader *ld, const struct key *k, const char *v, bool first)
{
	void *base = section_base(ld);
	char msg[CONFIG_ERRLEN];

	if (key_is_list(k))
		return set_list(ld, k, base, v, first);
	if (!first)
		return loader_fail(ld, ld->lineno,
		    "this indented line continues %s, which takes a single value "
		    "(only lists may go on over indented lines): remove the "
		    "indentation", k->name);
	if (key_set_value(k, base, v, msg, sizeof(msg)) != 0)
		return loader_fail(ld, ld->lineno, "%s", msg);
	return 0;
}

/* inih's handler: one call per name=value line and per continuation line. */
static int
loader_handle(void *user, const char *section, const char *name,
    const char *value)
{
	struct loader *ld = user;
	const struct key *keys, *k;
	size_t n;
	unsigned *lines;
	char q[QBUF], label[96];

	if (ld->failed)
		return 0;
	if (ld->cont) {
		/* Cannot happen while the reader mirrors inih; refuse, not crash. */
		if (ld->prev_key == NULL || strcmp(name, ld->prev_key->name) != 0) {
			loader_fail(ld, ld->lineno, "cannot tell which key this "
			    "indented line continues: remove the indentation");
			return 0;
		}
		return key_apply(ld, ld->prev_key, value, false) == 0;
	}
	if (ld->sect == SECT_NONE) {
		loader_fail(ld, ld->lineno,
		    "%s is outside any section: put it under [server], [tls] "
		    "or [tenant:NAME]", quote(q, sizeof(q), name));
		return 0;
	}
	keys = section_keys(ld->sect, &n);
	lines = section_lines(ld);
	k = key_find(keys, n, name);
	if (k == NULL) {
		fail_unknown_key(ld, name);
		return 0;
	}
	if (lines[k - keys] != 0) {
		loader_fail(ld, ld->lineno,
		    "duplicate key \"%s\" in %s (first set at line %u): "
		    "set each key once; continue a list on indented lines",
		    name, section_label(ld, label, sizeof(label)), lines[k - keys]);
		return 0;
	}
	lines[k - keys] = ld->lineno;
	ld->prev_key = k;
	return key_apply(ld, k, value, true) == 0;
}

static void
tenant_defaults(struct config_tenant *t)
{
	memset(t, 0, sizeof(*t));
	t->primary_mx = true;
	t->quota = 10 * GIB;
	t->quota_messages = 1000000;
	t->drain_rate = 50;
	t->drain_initial_rate = 2;
	t->drain_burst = 0;
	t->drain_bandwidth = 0;
	t->drain_concurrency = 4;
	t->drain_ramp_ms = 5 * MIN_MS;
	t->messages_per_connection = 100;
	t->probe_interval_ms = 30 * SEC_MS;
	t->probe_up_after = 2;
	t->verify_timeout_ms = 5 * SEC_MS;
	t->verify_valid_ttl_ms = 31 * DAY_MS;
	t->verify_invalid_ttl_ms = 3 * HOUR_MS;
	t->verify_cache_size = 100000;
	t->verify_concurrency = 2;
	t->verify_rate = 5;
	t->etrn_from = xcalloc(1, sizeof(*t->etrn_from));
	t->netrn_from = 1;
	(void)config__cidr_reason("127.0.0.1", &t->etrn_from[0]);
	/* Unset: loader_finish() gives the [server] value, wherever in the
	 * file [server] comes. */
	t->queue_lifetime_ms = UINT64_MAX;
	t->delay_warning_ms = UINT64_MAX;
}

static int
enter_tenant(struct loader *ld, const char *tname, unsigned line)
{
	struct config *cfg = ld->cfg;
	size_t len = strlen(tname);
	char q[QBUF];

	if (len == 0 || len > CONFIG_TENANT_NAME_MAX)
		return loader_fail(ld, line,
		    "tenant name %s must have 1 to %d characters from a-z, 0-9, _ and -",
		    quote(q, sizeof(q), tname), CONFIG_TENANT_NAME_MAX);
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)tname[i];

		if (!((c >= 'a' && c <= 'z') || ch_digit(c) || c == '_' || c == '-'))
			return loader_fail(ld, line,
			    "tenant name %s may only use a-z, 0-9, _ and - "
			    "(lower case; it appears in logs, metrics and mxspoolctl)",
			    quote(q, sizeof(q), tname));
	}
	for (size_t i = 0; i < cfg->ntenants; i++)
		if (strcmp(cfg->tenants[i].name, tname) == 0)
			return loader_fail(ld, line,
			    "duplicate section [tenant:%s] (first at line %u): "
			    "put all of a tenant's keys in one section",
			    tname, ld->tmeta[i].section_line);
	cfg->tenants = array_grow(cfg->tenants, cfg->ntenants, sizeof(*cfg->tenants));
	ld->tmeta = array_grow(ld->tmeta, cfg->ntenants, sizeof(*ld->tmeta));
	tenant_defaults(&cfg->tenants[cfg->ntenants]);
	memcpy(cfg->tenants[cfg->ntenants].name, tname, len + 1);
	memset(&ld->tmeta[cfg->ntenants], 0, sizeof(ld->tmeta[0]));
	ld->tmeta[cfg->ntenants].section_line = line;
	ld->tenant = cfg->ntenants++;
	ld->sect = SECT_TENANT;
	return 0;
}

static int
enter_section(struct loader *ld, const char *name, unsigned line)
{
	char q[QBUF];
	unsigned *seen = NULL;
	enum section_kind kind = SECT_NONE;

	if (strcmp(name, "server") == 0) {
		seen = &ld->server_line;
		kind = SECT_SERVER;
	} else if (strcmp(name, "tls") == 0) {
		seen = &ld->tls_line;
		kind = SECT_TLS;
	} else if (strcmp(name, "fleet") == 0) {
		seen = &ld->fleet_line;
		kind = SECT_FLEET;
	} else if (strncmp(name, "tenant:", 7) == 0) {
		return enter_tenant(ld, name + 7, line);
	}
	if (seen == NULL) {
		const char *hint = "";

		char label[QBUF];

		if (str_ieq(name, "server"))
			hint = "; did you mean [server]?";
		else if (str_ieq(name, "tls"))
			hint = "; did you mean [tls]?";
		else if (str_ieq(name, "fleet"))
			hint = "; did you mean [fleet]?";
		else if (util_strncasecmp(name, "tenant", 6) == 0)
			hint = "; a tenant section is written [tenant:NAME], e.g. [tenant:example]";
		snprintf(label, sizeof(label), "[%s]", name);
		return loader_fail(ld, line,
		    "unknown section %s%s (allowed: [server], [tls], [fleet], [tenant:NAME])",
		    quote(q, sizeof(q), label), hint);
	}
	if (*seen != 0)
		return loader_fail(ld, line,
		    "duplicate section [%s] (first at line %u): put all its keys "
		    "in one section", name, *seen);
	*seen = line;
	ld->sect = kind;
	return 0;
}

/*
 * Parse "[name]" the way inih does (the first ']' that is not inside an
 * inline comment closes it), but without its 49-byte cut, and refuse
 * trailing text that inih would silently ignore.
 */
static int
parse_header(struct loader *ld, char *start)
{
	char *p = start + 1, *end, *after;
	bool was_space = false;

	for (end = p; *end != '\0' && *end != ']'; end++) {
		if (was_space && *end == ';')
			break;
		was_space = ch_space((unsigned char)*end);
	}
	if (*end != ']')
		return loader_fail(ld, ld->lineno,
		    "section header has no closing ]: write [server], [tls] or [tenant:NAME]");
	*end = '\0';
	for (after = end + 1; ch_space((unsigned char)*after); after++)
		;
	if (*after != '\0' && *after != ';' && *after != '#')
		return loader_fail(ld, ld->lineno,
		    "unexpected text after the section header [%s]", p);
	return enter_section(ld, p, ld->lineno);
}

/*
 * Does this name=value line leave inih with a key that an indented line may
 * continue?  inih's rule: a '=' or ':' comes before any inline comment (a
 * ';' after white space) and the name before it is not empty.
 */
static bool
line_opens_key(const char *start)
{
	bool was_space = false;
	const char *p;

	for (p = start; *p != '\0' && *p != '=' && *p != ':'; p++) {
		if (was_space && *p == ';')
			return false;
		was_space = ch_space((unsigned char)*p);
	}
	if (*p == '\0')
		return false;
	while (p > start && ch_space((unsigned char)p[-1]))
		p--;
	return p > start;
}

/*
 * The ini_reader: hands inih one line at a time and classifies it the way
 * ini_parse_stream will (same order of tests), so that loader_handle knows
 * what the next call means.  Returns NULL at end of file or after an error.
 */
static char *
loader_read(char *str, int num, void *stream)
{
	struct loader *ld = stream;
	ssize_t got;
	size_t len;
	char *line, *start;

	if (ld->failed)
		return NULL;
	errno = 0;
	got = getline(&ld->buf, &ld->bufcap, ld->fp);
	if (got < 0) {
		if (ferror(ld->fp))
			loader_fail(ld, ld->lineno + 1, "read error: %s",
			    strerror(errno ? errno : EIO));
		return NULL;
	}
	ld->lineno++;
	line = ld->buf;
	len = (size_t)got;
	if (memchr(line, '\0', len) != NULL) {
		loader_fail(ld, ld->lineno,
		    "line contains a NUL byte: is this a text file?");
		return NULL;
	}
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		line[--len] = '\0';
	if (ld->lineno == 1 && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
		line += 3;
		len -= 3;
	}
	for (start = line; ch_space((unsigned char)*start); start++)
		;
	ld->cont = false;
	if (num < 4)
		return NULL;
	if (*start == '\0' || *start == ';' || *start == '#') {
		/* Comments may be as long as they like: inih gets an empty line. */
		str[0] = '\0';
		return str;
	}
	if ((size_t)num - 2 < len) {
		loader_fail(ld, ld->lineno,
		    "line too long (%zu characters, max %d): split the list over "
		    "indented continuation lines (a line that starts with blanks "
		    "continues the key above it)", len, num - 2);
		return NULL;
	}
	if (start > line && ld->have_prev_key) {
		ld->cont = true;
		/* inih r55 strips "; comment" from name=value lines but not from
		 * continuation lines; do it here so both read alike. */
		for (char *p = start + 1; *p != '\0'; p++) {
			if (*p == ';' && ch_space((unsigned char)p[-1])) {
				*p = '\0';
				len = (size_t)(p - line);
				break;
			}
		}
	} else if (*start == '[') {
		ld->have_prev_key = false;
		if (parse_header(ld, start) != 0)
			return NULL;
		/* inih only needs to see a section start to reset its state. */
		memcpy(str, "[s]\n", 5);
		return str;
	} else {
		ld->have_prev_key = line_opens_key(start);
	}
	memcpy(str, line, len);
	str[len] = '\n';
	str[len + 1] = '\0';
	return str;
}

/* ---- after the parse: defaults that need the whole file, cross-checks ---- */

/*
 * Load a recipients file: one "user@domain" or "@domain" per line, '#'
 * comments, blank lines, any case.  Errors name the recipients file and its
 * line, and the config line that points to it.
 */
static int
load_recipients(struct loader *ld, struct config_tenant *t, unsigned cfgline)
{
	const char *path = t->recipients_file;
	struct stat st;
	char *buf = NULL, q[QBUF], where[300];
	size_t cap = 0, keep;
	unsigned line = 0;
	ssize_t got;
	int rc = -1;
	FILE *fp = fopen(path, "re");

	if (fp == NULL)
		return loader_fail(ld, cfgline, "recipients: cannot read %s: %s",
		    quote(q, sizeof(q), path), strerror(errno));
	if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
		loader_fail(ld, cfgline, "recipients: %s is not a regular file",
		    quote(q, sizeof(q), path));
		goto done;
	}
	snprintf(where, sizeof(where), "(recipients of [tenant:%s], %s:%u)",
	    t->name, ld->name, cfgline);
	while ((got = getline(&buf, &cap, fp)) >= 0) {
		char *s = buf, *e, *at;

		line++;
		if (memchr(buf, '\0', (size_t)got) != NULL) {
			/* Errors on the file's own lines carry its name and line;
			 * WHERE points back to the config line naming it. */
			ld->name = path;
			loader_fail(ld, line, "contains a NUL byte %s", where);
			goto done;
		}
		while (ch_space((unsigned char)*s))
			s++;
		/* '#' starts a comment at the start of a line or after a blank. */
		for (e = s; *e != '\0'; e++)
			if (*e == '#' && (e == s || ch_space((unsigned char)e[-1])))
				break;
		while (e > s && ch_space((unsigned char)e[-1]))
			e--;
		*e = '\0';
		if (*s == '\0')
			continue;
		at = strrchr(s, '@');
		if (at == NULL || at[1] == '\0' || strpbrk(s, " \t") != NULL ||
		    (size_t)(e - s) >= ADDR_MAX) {
			ld->name = path;
			loader_fail(ld, line,
			    "%s is not a recipient: write user@domain or @domain, one per line %s",
			    quote(q, sizeof(q), s), where);
			goto done;
		}
		if (e[-1] == '.')
			*--e = '\0';
		util_lower(s);
		at = config__recipients_unquote(s, at);
		/* One trailing dot was dropped above; a second one would be
		 * stored and never match (fuzz_recipients, 32-two-dots). */
		if (config__domain_reason(at + 1, strlen(at + 1)) != NULL ||
		    at[strlen(at) - 1] == '.' ||
		    config_tenant_for_domain(ld->cfg, at + 1, strlen(at + 1)) != t) {
			ld->name = path;
			loader_fail(ld, line,
			    "%s: the domain is not one of the tenant's domains %s",
			    quote(q, sizeof(q), s), where);
			goto done;
		}
		t->recipients = array_grow(t->recipients, t->nrecipients,
		    sizeof(*t->recipients));
		t->recipients[t->nrecipients++] = xstrdup(s);
	}
	if (ferror(fp)) {
		loader_fail(ld, cfgline, "recipients: read error on %s",
		    quote(q, sizeof(q), path));
		goto done;
	}
	if (t->nrecipients > 0)
		qsort(t->recipients, t->nrecipients, sizeof(*t->recipients),
		    config__cmp_str);
	/* Duplicates are harmless; drop them so that the array stays a set. */
	keep = 0;
	for (size_t i = 0; i < t->nrecipients; i++) {
		if (keep > 0 && strcmp(t->recipients[keep - 1], t->recipients[i]) == 0)
			free(t->recipients[i]);
		else
			t->recipients[keep++] = t->recipients[i];
	}
	t->nrecipients = keep;
	rc = 0;
done:
	free(buf);
	fclose(fp);
	return rc;
}

/* Order by domain, then by line, so that a duplicate is reported where it
 * is written the second time. */
static int
cmp_domain_seen(const void *a, const void *b)
{
	const struct domain_seen *x = a, *y = b;
	int c = strcmp(x->domain, y->domain);

	if (c != 0)
		return c;
	return x->line < y->line ? -1 : x->line > y->line;
}

static int
build_domain_index(struct loader *ld)
{
	struct config *cfg = ld->cfg;

	/* Sort (domain, line) pairs built while parsing; neighbours collide. */
	if (ld->ndoms > 1)
		qsort(ld->doms, ld->ndoms, sizeof(*ld->doms), cmp_domain_seen);
	for (size_t i = 1; i < ld->ndoms; i++) {
		const struct domain_seen *p = &ld->doms[i - 1], *c = &ld->doms[i];
		const char *d = c->domain;

		if (strcmp(d, p->domain) != 0)
			continue;
		if (p->tenant == c->tenant)
			return loader_fail(ld, c->line,
			    "domains: %s is listed twice in [tenant:%s] (also at line %u)",
			    d, cfg->tenants[c->tenant].name, p->line);
		return loader_fail(ld, c->line,
		    "domains: %s is already served by [tenant:%s] (line %u): "
		    "each domain belongs to exactly one tenant",
		    d, cfg->tenants[p->tenant].name, p->line);
	}
	cfg->ndomain_index = ld->ndoms;
	cfg->domain_index = xcalloc(ld->ndoms, sizeof(*cfg->domain_index));
	/* ld->doms is sorted by domain already, and now free of duplicates. */
	for (size_t i = 0; i < ld->ndoms; i++) {
		cfg->domain_index[i].domain = ld->doms[i].domain;
		cfg->domain_index[i].tenant = &cfg->tenants[ld->doms[i].tenant];
	}
	return 0;
}

static unsigned
first_line(unsigned a, unsigned b, unsigned c)
{
	return a ? a : b ? b : c;
}

/* The whole-file checks of one tenant; the rate check is the one
 * config_tenant_set() applies as well. */
static int
check_tenant(struct loader *ld, size_t i)
{
	struct config *cfg = ld->cfg;
	struct config_tenant *t = &cfg->tenants[i];
	const unsigned *lines = ld->tmeta[i].lines;
	unsigned section = ld->tmeta[i].section_line;
	char a[32], b[32], msg[CONFIG_ERRLEN];

	if (t->ndomains == 0)
		return loader_fail(ld,
		    first_line(key_line(SECT_TENANT, lines, "domains"), section, 0),
		    "[tenant:%s] needs domains = ...: the mail domains this relay "
		    "is backup MX for, e.g. domains = example.com, example.org",
		    t->name);
	if (!t->primary_mx && t->nprimaries == 0)
		return loader_fail(ld, key_line(SECT_TENANT, lines, "primary"),
		    "primary: write mx (the domain's own MX hosts) or a list of host[:port]");
	if (tenant_check_rates(t, msg, sizeof(msg)) != 0)
		return loader_fail(ld,
		    first_line(key_line(SECT_TENANT, lines, "drain_initial_rate"),
		    key_line(SECT_TENANT, lines, "drain_rate"), section),
		    "%s", msg);
	if (t->quota < cfg->max_message_size)
		return loader_fail(ld,
		    first_line(key_line(SECT_TENANT, lines, "quota"),
		    key_line(SECT_SERVER, ld->server_lines, "max_message_size"),
		    section),
		    "quota of [tenant:%s] (%s) is below max_message_size (%s): "
		    "the tenant could not hold even one message",
		    t->name, fmt_size(a, sizeof(a), t->quota),
		    fmt_size(b, sizeof(b), cfg->max_message_size));
	return 0;
}

/* [fleet]: hiredis 0.14 resolves a host name with a blocking
 * getaddrinfo(), which must not run on the loop: an address is required.
 * The node name defaults to the machine's name (gethostname), not to
 * [server] hostname, which equal-preference MX hosts may share. */
static int
check_fleet(struct loader *ld)
{
	struct config *cfg = ld->cfg;
	unsigned char bin[16];
	char host[CONFIG_HOST_MAX + 1];

	if (!cfg->has_fleet)
		return 0;
	if (inet_pton(AF_INET, cfg->fleet_redis.host, bin) != 1 &&
	    inet_pton(AF_INET6, cfg->fleet_redis.host, bin) != 1)
		return loader_fail(ld,
		    key_line(SECT_FLEET, ld->fleet_lines, "redis"),
		    "redis: %s is not an IP address: write the Redis server's "
		    "address, e.g. redis = 10.0.0.5:6379 (names are not resolved, "
		    "hiredis would block the loop doing it)", cfg->fleet_redis.host);
	if (cfg->fleet_node == NULL) {
		if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		cfg->fleet_node = xstrdup(host);
	}
	return 0;
}

static int
loader_finish(struct loader *ld)
{
	struct config *cfg = ld->cfg;

	if (cfg->spool_dir == NULL)
		return loader_fail(ld, ld->server_line,
		    "[server] needs spool_dir = ...: the directory that holds "
		    "the journal, e.g. spool_dir = /var/spool/mxspool");
	if (cfg->nlisten == 0)
		return loader_fail(ld,
		    key_line(SECT_SERVER, ld->server_lines, "listen"),
		    "listen: needs at least one host:port, e.g. listen = 0.0.0.0:25, [::]:25");
	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		return loader_fail(ld,
		    first_line(key_line(SECT_TLS, ld->tls_lines, "cert"),
		    key_line(SECT_TLS, ld->tls_lines, "key"), 0),
		    "%s is set but %s is not: inbound STARTTLS needs both cert "
		    "and key (or neither)",
		    cfg->tls_cert ? "cert" : "key", cfg->tls_cert ? "key" : "cert");
	if (check_fleet(ld) != 0)
		return -1;
	if (cfg->ntenants == 0)
		return loader_fail(ld, 0,
		    "no [tenant:NAME] section: without a tenant the relay accepts "
		    "no mail; add one with domains = ...");
	for (size_t i = 0; i < cfg->ntenants; i++) {
		struct config_tenant *t = &cfg->tenants[i];

		if (t->queue_lifetime_ms == UINT64_MAX)
			t->queue_lifetime_ms = cfg->queue_lifetime_ms;
		if (t->delay_warning_ms == UINT64_MAX)
			t->delay_warning_ms = cfg->delay_warning_ms;
		for (size_t j = 0; key_line(SECT_TENANT, ld->tmeta[i].lines,
		    "dnsbl") == 0 && j < cfg->ndnsbl; j++) {
			t->dnsbl = array_grow(t->dnsbl, t->ndnsbl, sizeof(*t->dnsbl));
			t->dnsbl[t->ndnsbl++] = xstrdup(cfg->dnsbl[j]);
		}
		if (check_tenant(ld, i) != 0)
			return -1;
	}
	if (build_domain_index(ld) != 0)
		return -1;
	if (cfg->postmaster != NULL &&
	    config_tenant_for_domain(cfg, strrchr(cfg->postmaster, '@') + 1,
	    strlen(strrchr(cfg->postmaster, '@') + 1)) == NULL)
		return loader_fail(ld,
		    key_line(SECT_SERVER, ld->server_lines, "postmaster"),
		    "postmaster: %s is not in a domain of any tenant: mail to "
		    "<Postmaster> must go to a primary this relay forwards to",
		    cfg->postmaster);
	/* Last, so that each entry's domain is checked through the index. */
	for (size_t i = 0; i < cfg->ntenants; i++)
		if (cfg->tenants[i].recipients_file != NULL &&
		    load_recipients(ld, &cfg->tenants[i],
		    key_line(SECT_TENANT, ld->tmeta[i].lines, "recipients")) != 0)
			return -1;
	return 0;
}

static struct config *
config_defaults(const char *name)
{
	struct config *cfg = xcalloc(1, sizeof(*cfg));
	char host[CONFIG_HOST_MAX + 1];

	cfg->path = xstrdup(name);
	if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	cfg->hostname = xstrdup(host);
	cfg->listen = xcalloc(2, sizeof(*cfg->listen));
	cfg->nlisten = 2;
	(void)config__hostport_reason("0.0.0.0", DEF_LISTEN_PORT, &cfg->listen[0]);
	(void)config__hostport_reason("[::]", DEF_LISTEN_PORT, &cfg->listen[1]);
	cfg->control_socket = xstrdup("/run/mxspool/control.sock");
	cfg->max_connections = 10000;
	cfg->max_connections_per_ip = 50;
	cfg->max_message_size = 50 * MIB;
	cfg->max_recipients = 1000;
	cfg->max_line_length = 1000;
	cfg->max_errors = 20;
	cfg->smtp_timeout_ms = 5 * MIN_MS;
	cfg->disk_reserve = 1 * GIB;
	cfg->queue_lifetime_ms = 5 * DAY_MS;
	cfg->delay_warning_ms = 4 * HOUR_MS;
	cfg->client_limit_exempt = xcalloc(2, sizeof(*cfg->client_limit_exempt));
	cfg->nclient_limit_exempt = 2;
	(void)config__cidr_reason("127.0.0.0/8", &cfg->client_limit_exempt[0]);
	(void)config__cidr_reason("::1", &cfg->client_limit_exempt[1]);
	cfg->dnsbl_allow = xcalloc(2, sizeof(*cfg->dnsbl_allow));
	cfg->ndnsbl_allow = 2;
	(void)config__cidr_reason("127.0.0.0/8", &cfg->dnsbl_allow[0]);
	(void)config__cidr_reason("::1", &cfg->dnsbl_allow[1]);
	cfg->dnsbl_timeout_ms = 5 * SEC_MS;
	cfg->max_received = 50;
	cfg->mx_port = 25;
	cfg->commit_window_ms = 0;
	cfg->tls_outbound = CONFIG_TLS_OUT_OPPORTUNISTIC;
	return cfg;
}

int
config_load_stream(FILE *fp, const char *name, struct config **out, char *err,
    size_t errlen)
{
	struct loader ld;
	int rc;

	memset(&ld, 0, sizeof(ld));
	ld.name = name;
	ld.fp = fp;
	ld.err = err;
	ld.errlen = errlen;
	ld.cfg = config_defaults(name);
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	rc = ini_parse_stream(loader_read, &ld, loader_handle, &ld);
	/* inih itself refuses lines that are neither comment, section nor
	 * name=value; the first error wins, whichever side found it. */
	if (rc > 0 && (!ld.failed || (unsigned)rc < ld.err_line)) {
		ld.failed = false;
		loader_fail(&ld, (unsigned)rc,
		    "syntax error: expected \"key = value\", \"[section]\", "
		    "an indented continuation line or a ; comment");
	} else if (rc < 0 && !ld.failed) {
		loader_fail(&ld, 0, "cannot parse: %s",
		    rc == -2 ? "out of memory" : "cannot read");
	}
	if (!ld.failed)
		loader_finish(&ld);
	free(ld.buf);
	free(ld.tmeta);
	free(ld.doms);
	if (ld.failed) {
		config_free(ld.cfg);
		*out = NULL;
		return -1;
	}
	*out = ld.cfg;
	return 0;
}

int
config_load(const char *path, struct config **out, char *err, size_t errlen)
{
	FILE *fp = fopen(path, "re");
	int rc;

	*out = NULL;
	if (fp == NULL) {
		if (err != NULL && errlen > 0)
			snprintf(err, errlen, "%s:0: cannot open the config file: %s",
			    path, strerror(errno));
		return -1;
	}
	rc = config_load_stream(fp, path, out, err, errlen);
	fclose(fp);
	return rc;
}

static void
tenant_free(struct config_tenant *t)
{
	for (size_t i = 0; i < t->ndomains; i++)
		free(t->domains[i]);
	free(t->domains);
	free(t->primaries);
	free(t->recipients_file);
	for (size_t i = 0; i < t->nrecipients; i++)
		free(t->recipients[i]);
	free(t->recipients);
	free(t->etrn_from);
	config__strv_free(t->dnsbl, t->ndnsbl);
}

void
config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->hostname);
	free(cfg->listen);
	free(cfg->spool_dir);
	free(cfg->control_socket);
	free(cfg->user);
	free(cfg->postmaster);
	free(cfg->client_limit_exempt);
	free(cfg->dnsbl_allow);
	config__strv_free(cfg->dnsbl, cfg->ndnsbl);
	free(cfg->control_group);
	free(cfg->dns_servers);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_ca_file);
	free(cfg->tls_ciphers);
	free(cfg->tls_ciphersuites);
	free(cfg->fleet_node);
	free(cfg->fleet_password);
	for (size_t i = 0; i < cfg->ntenants; i++)
		tenant_free(&cfg->tenants[i]);
	free(cfg->tenants);
	free(cfg->domain_index);
	free(cfg);
}
