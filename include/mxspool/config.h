/*
 * config.h - the validated, immutable configuration of one mxspoold.
 *
 * config_load() parses the INI file with inih into a struct config that is
 * never modified afterwards: a reload builds a new one and swaps the pointer,
 * so anything holding the old one (a running delivery) keeps a consistent
 * view until it lets go.  All sizes are bytes, all durations milliseconds.
 */
#ifndef MXSPOOL_CONFIG_H
#define MXSPOOL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_TENANT_NAME_MAX 64
#define CONFIG_HOST_MAX 255
/* A buffer this large holds any config_load() message uncut. */
#define CONFIG_ERRLEN 1024

/* A host[:port] or [v6]:port pair as written; host is not resolved here. */
struct config_hostport {
	char host[CONFIG_HOST_MAX + 1];
	uint16_t port;
};

/* An address or CIDR for etrn_from: family is AF_INET or AF_INET6. */
struct config_cidr {
	int family;
	uint8_t addr[16];
	unsigned prefix;
};

enum config_tls_outbound {
	CONFIG_TLS_OUT_NONE,
	CONFIG_TLS_OUT_OPPORTUNISTIC,
	CONFIG_TLS_OUT_REQUIRED,
	CONFIG_TLS_OUT_VERIFY,
};

struct config_tenant {
	char name[CONFIG_TENANT_NAME_MAX + 1];
	char **domains;               /* lower case, no trailing dot */
	size_t ndomains;
	bool primary_mx;              /* primary = mx */
	struct config_hostport *primaries;
	size_t nprimaries;
	char *recipients_file;        /* NULL: recipients = any (or learn) */
	char **recipients;            /* sorted, lower case: "user@dom" or "@dom" */
	size_t nrecipients;
	/* recipients = learn | learn+FILE: what the FILE (if any) lacks is
	 * verified at the primary and cached (verify.h). */
	bool recipients_learn;
	bool unknown_recipient_accept;  /* unknown_recipient = accept */
	uint64_t verify_timeout_ms;
	uint64_t verify_valid_ttl_ms, verify_invalid_ttl_ms;
	uint64_t verify_cache_size;   /* entries */
	unsigned verify_concurrency;  /* probe sessions at once */
	double verify_rate;           /* RCPT probes per second, at most */
	uint64_t quota;
	uint64_t quota_messages;
	double drain_rate;            /* messages per second, the ceiling */
	double drain_initial_rate;
	double drain_burst;           /* 0 = one second's worth */
	uint64_t drain_bandwidth;     /* bytes per second, 0 = unlimited */
	unsigned drain_concurrency;
	uint64_t drain_ramp_ms;
	unsigned messages_per_connection;
	uint64_t probe_interval_ms;
	unsigned probe_up_after;
	struct config_cidr *etrn_from;
	size_t netrn_from;
	/* The tenant's own, or [server]'s when the tenant does not set it. */
	uint64_t queue_lifetime_ms;
	uint64_t delay_warning_ms;    /* 0 = off */
	char **dnsbl;                 /* the tenant's own, or [server]'s (copied) */
	size_t ndnsbl;
};

struct config {
	char *path;
	char *hostname;
	struct config_hostport *listen;
	size_t nlisten;
	char *spool_dir;
	char *control_socket;
	char *control_group;          /* may use the socket; NULL: the daemon's */
	bool control_readonly_any;    /* status/queue/show/watch for everybody */
	bool has_metrics;
	struct config_hostport metrics_listen;
	char *user;                   /* NULL: no privilege drop */
	unsigned max_connections;
	unsigned max_connections_per_ip;
	struct config_cidr *client_limit_exempt;  /* not held to _per_ip */
	size_t nclient_limit_exempt;
	/* Intake abuse limits (anvil.h, dnsbl.h): per client IP and minute,
	 * 0 = off; DNSBL zones (lower case), clients never looked up, and
	 * how long RCPT may wait for the answers. */
	unsigned client_message_rate;
	unsigned client_recipient_rate;
	char **dnsbl;
	size_t ndnsbl;
	struct config_cidr *dnsbl_allow;
	size_t ndnsbl_allow;
	uint64_t dnsbl_timeout_ms;
	uint64_t max_message_size;
	unsigned max_recipients;
	unsigned max_line_length;     /* text lines in DATA, RFC 5321 4.5.3.1.6 */
	unsigned max_errors;          /* bad commands before 421 */
	uint64_t smtp_timeout_ms;
	uint64_t disk_reserve;
	uint64_t queue_lifetime_ms;   /* defaults for tenants that set none */
	uint64_t delay_warning_ms;    /* 0 = off */
	unsigned max_received;        /* more Received: fields: 554 5.4.6 */
	char *postmaster;             /* where RCPT TO:<Postmaster> goes, or NULL */
	struct config_hostport *dns_servers;
	size_t ndns_servers;
	uint16_t mx_port;
	bool has_bounce_relay;
	struct config_hostport bounce_relay;
	uint64_t commit_window_ms;

	char *tls_cert;               /* NULL unless configured */
	char *tls_key;
	char *tls_ca_file;
	char *tls_ciphers;            /* inbound TLS 1.2 list, NULL: tls.c default */
	char *tls_ciphersuites;       /* inbound TLS 1.3 suites, NULL: default */
	enum config_tls_outbound tls_outbound;

	/* [fleet]: several relays share each tenant's drain budget through
	 * one Redis (fleet.h).  has_fleet false: no fleet (the default). */
	bool has_fleet;
	struct config_hostport fleet_redis;   /* an IP address and port */
	char *fleet_node;             /* this relay's name in the fleet */
	char *fleet_password;         /* AUTH, or NULL */

	struct config_tenant *tenants;
	size_t ntenants;

	/* Private to config.c: every tenant domain, sorted, for the binary
	 * search in config_tenant_for_domain().  NULL in a config built by
	 * hand (tests of other modules); lookups then scan the tenants. */
	struct config_domain_ref *domain_index;
	size_t ndomain_index;
};

/*
 * Parse and validate FILE.  On success returns 0 and stores a new config in
 * *out (free with config_free()).  On failure returns -1 and writes one line
 * "FILE:LINE: what is wrong and what is allowed" into err (LINE is 0 when the
 * problem is not tied to a line, e.g. a missing required key).
 */
int config_load(const char *path, struct config **out, char *err, size_t errlen);
/* The same for an open stream (not closed here); NAME is used in messages
 * and as cfg->path.  For the fuzz target and for callers that opened the
 * file themselves. */
int config_load_stream(FILE *fp, const char *name, struct config **out,
    char *err, size_t errlen);
void config_free(struct config *cfg);

/* Tenant serving DOMAIN (case-insensitive, trailing dot ignored), or NULL. */
const struct config_tenant *config_tenant_for_domain(const struct config *cfg,
    const char *domain, size_t len);
const struct config_tenant *config_tenant_by_name(const struct config *cfg,
    const char *name);

/* Is ADDR (user@domain, any case) accepted by the tenant's recipients list? */
bool config_tenant_accepts(const struct config_tenant *t, const char *addr);

/*
 * Change one key of a running tenant ("mxspoolctl set TENANT KEY=VALUE")
 * under exactly the rules of the config file: the same key table, parser,
 * bounds and messages as config_load(), and the same cross-check between
 * drain_initial_rate and drain_rate (the start of the ramp may not lie
 * above its ceiling).  KEY must be one of config_runtime_keys().
 *
 * On success stores the value into T and returns 0.  On failure T is left
 * exactly as it was and -1 is returned with one line in ERR: the loader's
 * message without its "FILE:LINE: " prefix, e.g. "drain_concurrency:
 * \"0\" must be a whole number from 1 to 10000"; an unknown key, or one
 * that only the config file may change, is refused with the list of the
 * keys that may be set.  Only the fields of KEY are written (never a
 * pointer), so T may be a stack copy that is not part of a struct config.
 */
int config_tenant_set(struct config_tenant *t, const char *key,
    const char *value, char *err, size_t errlen);
/* The names of the tenant keys config_tenant_set() takes, NULL-terminated,
 * in config file order (static storage, for help texts and errors). */
const char *const *config_runtime_keys(void);

/* Value parsers, exported for the control socket's "set" and for tests.
 * Each returns 0 or -1 and never accepts trailing garbage. */
int config_parse_size(const char *s, uint64_t *out);
int config_parse_duration(const char *s, uint64_t *out_ms);
int config_parse_hostport(const char *s, uint16_t default_port,
    struct config_hostport *out);
int config_parse_cidr(const char *s, struct config_cidr *out);
bool config_cidr_match(const struct config_cidr *c, int family,
    const void *addr);

#endif
