/*
 * relay.c - the daemon's shared resources and the wiring between modules.
 *
 * Owns what more than one module uses: the counters, the one DNS resolver
 * (the drain and, later, intake-time lookups share its cache), the inbound
 * and outbound TLS contexts.  Each is created here and freed here, once.
 * A reload builds the new config and contexts first and hands them to every
 * module only when all of them were built, so a bad file or certificate
 * changes nothing.  The SMTP server's hooks (a message accepted, an ETRN)
 * are connected to the drain here: smtp_server knows nothing of drain.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>

#include "mxspool/config.h"
#include "mxspool/dns.h"
#include "mxspool/drain.h"
#include "mxspool/fleet.h"
#include "mxspool/log.h"
#include "mxspool/relay.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/stats.h"
#include "mxspool/tls.h"
#include "mxspool/util.h"
#include "mxspool/verify.h"

/*
 * The protocol is one datagram to the unix socket named in NOTIFY_SOCKET
 * ('@' = abstract namespace); libsystemd is not needed for that.
 */
void
relay_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t slen;
	size_t plen;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@'))
		return;
	plen = strlen(path);
	if (plen >= sizeof(sun.sun_path))
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, plen);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	slen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL,
	    (struct sockaddr *)&sun, slen) < 0)
		log_event(LOG_LEVEL_WARN, "notify", "state=%s error=\"%s\"",
		    state, strerror(errno));
	close(fd);
}

/* ---- shared resources --------------------------------------------------- */

/* "host:port,[v6]:port" for c-ares, from [server] dns_servers; "" = none. */
static void
relay_dns_servers(const struct config *cfg, char *buf, size_t len)
{
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < cfg->ndns_servers; i++) {
		const struct config_hostport *h = &cfg->dns_servers[i];
		bool v6 = strchr(h->host, ':') != NULL && h->host[0] != '[';
		int n = snprintf(buf + off, len - off, "%s%s%s%s:%u",
		    off ? "," : "", v6 ? "[" : "", h->host, v6 ? "]" : "",
		    h->port ? h->port : 53);

		if (n < 0 || (size_t)n >= len - off) {
			buf[off] = '\0';
			break;
		}
		off += (size_t)n;
	}
}

static int
relay_tls_server_new(const struct config *cfg, struct tls_ctx **out,
    char *err, size_t errlen)
{
	char why[512];

	*out = NULL;
	if (cfg->tls_cert == NULL || cfg->tls_key == NULL)
		return 0;
	if (tls_server_ctx_new(cfg->tls_cert, cfg->tls_key, out, why,
	    sizeof(why)) != TLS_OK) {
		*out = NULL;
		snprintf(err, errlen, "%s:0: [tls] cert/key: %s", cfg->path, why);
		return -1;
	}
	if (tls_ctx_set_ciphers(*out, cfg->tls_ciphers, cfg->tls_ciphersuites,
	    why, sizeof(why)) != TLS_OK) {
		tls_ctx_free(*out);
		*out = NULL;
		snprintf(err, errlen, "%s:0: [tls] %s", cfg->path, why);
		return -1;
	}
	return 0;
}

/*
 * The outbound context.  A failure is logged and delivery goes on without
 * TLS where the mode allows it (smtp_client refuses a required/verify
 * session without a context), as it did before the context moved here.
 */
static struct tls_ctx *
relay_tls_client_new(const struct config *cfg)
{
	struct tls_ctx *ctx = NULL;
	enum tls_client_mode m;
	char err[256];

	if (cfg->tls_outbound == CONFIG_TLS_OUT_NONE)
		return NULL;
	m = cfg->tls_outbound == CONFIG_TLS_OUT_VERIFY ? TLS_CLIENT_VERIFY :
	    cfg->tls_outbound == CONFIG_TLS_OUT_REQUIRED ? TLS_CLIENT_REQUIRED :
	    TLS_CLIENT_OPPORTUNISTIC;
	if (tls_client_ctx_new(m, cfg->tls_ca_file, &ctx, err, sizeof(err)) != TLS_OK) {
		log_event(LOG_LEVEL_ERR, "tls", "role=client error=\"%s\"", err);
		return NULL;
	}
	return ctx;
}

static bool
relay_str_changed(const char *a, const char *b)
{
	return (a == NULL) != (b == NULL) || (a != NULL && strcmp(a, b) != 0);
}

/* ---- the fleet: the drain's shared budget in Redis (fleet.h) ------------ */

static int64_t
relay_gate_take(void *arg, const char *tenant, const struct drain_gate_ask *a)
{
	struct relay *r = arg;
	struct fleet_ask fa = { a->rate, a->limit, a->burst, a->bandwidth,
	    a->concurrency, a->size, a->new_conn };

	return fleet_take(r->fleet, tenant, &fa);
}

static void
relay_gate_done(void *arg, const char *tenant, bool failed)
{
	struct relay *r = arg;

	fleet_conn_done(r->fleet, tenant, failed);
}

static void
relay_fleet_wake(void *arg, const char *tenant)
{
	struct relay *r = arg;

	if (r->drain)
		drain_kick(r->drain, tenant);
}

/* What this node publishes about each tenant. */
static size_t
relay_fleet_figures(void *arg, struct fleet_figures *out, size_t max)
{
	struct relay *r = arg;
	int64_t now = util_now_ms();
	size_t n = 0;

	for (size_t i = 0; i < r->cfg->ntenants && n < max; i++) {
		const char *name = r->cfg->tenants[i].name;
		struct fleet_figures *f = &out[n++];
		struct spool_tenant_stats ss;
		struct drain_status ds;

		memset(f, 0, sizeof(*f));
		snprintf(f->tenant, sizeof(f->tenant), "%s", name);
		snprintf(f->primary_state, sizeof(f->primary_state), "unknown");
		if (r->spool) {
			memset(&ss, 0, sizeof(ss));
			ss.oldest_arrival_ms = -1;
			spool_tenant_stats(r->spool, name, &ss);
			f->queued_messages = ss.messages;
			f->queued_bytes = ss.bytes;
			if (ss.oldest_arrival_ms >= 0 && ss.oldest_arrival_ms < now)
				f->oldest_age_s = (now - ss.oldest_arrival_ms) / 1000;
			f->held = spool_is_held(r->spool, name);
		}
		memset(&ds, 0, sizeof(ds));
		if (r->drain && drain_status(r->drain, name, &ds) == 0) {
			snprintf(f->primary_state, sizeof(f->primary_state), "%s",
			    ds.primary_state);
			f->drain_rate = ds.drain_rate;
			f->drain_rate_limit = ds.drain_rate_limit;
		}
	}
	return n;
}

static int
relay_fleet_start(struct relay *r, char *err, size_t errlen)
{
	struct fleet_deps fd;

	if (!r->cfg->has_fleet)
		return 0;
	memset(&fd, 0, sizeof(fd));
	fd.loop = r->loop;
	fd.arg = r;
	fd.wake = relay_fleet_wake;
	fd.figures = relay_fleet_figures;
	r->gate = calloc(1, sizeof(*r->gate));
	if (r->gate == NULL || fleet_new(&fd, r->cfg, &r->fleet) != 0) {
		snprintf(err, errlen, "cannot start the fleet (out of memory)");
		return -1;
	}
	r->gate->arg = r;
	r->gate->take = relay_gate_take;
	r->gate->done = relay_gate_done;
	return 0;
}

int
relay_init(struct relay *r, uv_loop_t *loop, struct config *cfg, char *err,
    size_t errlen)
{
	char servers[2048];

	r->loop = loop;
	r->cfg = cfg;
	r->started_ms = util_now_ms();
	if ((r->stats = stats_new()) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	relay_dns_servers(cfg, servers, sizeof(servers));
	if (dns_new(loop, servers[0] ? servers : NULL, &r->dns) != DNS_OK) {
		r->dns = NULL;
		snprintf(err, errlen, "cannot start the DNS resolver (dns_servers = %s)",
		    servers[0] ? servers : "resolv.conf");
		return -1;
	}
	if (relay_tls_server_new(cfg, &r->tls_server, err, errlen) != 0)
		return -1;
	r->tls_client = relay_tls_client_new(cfg);
	return relay_fleet_start(r, err, errlen);
}

/* ---- hooks: what the SMTP server tells the rest of the relay ------------ */

static void
relay_on_accepted(void *arg, const char *tenant, double latency_s)
{
	struct relay *r = arg;

	stats_add(r->stats, tenant, STAT_ACCEPTED, 1);
	stats_observe(r->stats, tenant, STAT_HIST_ACCEPT, latency_s);
	if (r->drain)
		drain_kick(r->drain, tenant);
}

static void
relay_on_etrn(void *arg, const char *tenant)
{
	struct relay *r = arg;

	if (r->drain)
		(void)drain_flush(r->drain, tenant);
}

/* recipients = learn: the SMTP server asks the verifier. */
static enum verify_answer
relay_learn_rcpt(void *arg, const char *tenant, const char *addr,
    verify_cb cb, void *cb_arg)
{
	struct relay *r = arg;

	if (r->verify == NULL)
		return VERIFY_TEMPFAIL;
	return verify_rcpt(r->verify, tenant, addr, cb, cb_arg);
}

/* Every recipient the primary accepted is a valid one. */
static void
relay_on_delivered(void *arg, const char *tenant, const char *rcpt)
{
	struct relay *r = arg;

	verify_learn(r->verify, tenant, rcpt);
}

/* The verifier's view of RCPT's primary: the drain's. */
static bool
relay_verify_primary(void *arg, const char *tenant, const char *rcpt,
    struct verify_primary *out)
{
	struct relay *r = arg;

	return r->drain != NULL && drain_primary_target(r->drain, tenant, rcpt,
	    &out->addr, out->host, sizeof(out->host), &out->rate_limit);
}

int
relay_bind_smtp(struct relay *r, char *err, size_t errlen)
{
	struct smtp_server_deps deps;

	memset(&deps, 0, sizeof(deps));
	deps.loop = r->loop;
	deps.hooks.arg = r;
	deps.hooks.on_accepted = relay_on_accepted;
	deps.hooks.on_etrn = relay_on_etrn;
	deps.hooks.learn_rcpt = relay_learn_rcpt;
	deps.dns = r->dns;
	return smtp_server_new(&deps, r->cfg, r->tls_server, &r->server, err, errlen);
}

static void
relay_apply_quotas(struct relay *r)
{
	spool_set_disk_reserve(r->spool, r->cfg->disk_reserve);
	for (size_t i = 0; i < r->cfg->ntenants; i++) {
		const struct config_tenant *t = &r->cfg->tenants[i];

		spool_set_quota(r->spool, t->name, t->quota, t->quota_messages);
	}
}

/* The caches live in the spool: SPOOL_DIR/recipients/TENANT. */
static int
relay_verify_start(struct relay *r)
{
	struct verify_deps vd;
	char dir[4096];
	int n = snprintf(dir, sizeof(dir), "%s/recipients", r->cfg->spool_dir);

	if (n < 0 || (size_t)n >= sizeof(dir))
		return -1;
	memset(&vd, 0, sizeof(vd));
	vd.loop = r->loop;
	vd.dir = dir;
	vd.primary = relay_verify_primary;
	vd.arg = r;
	return verify_new(&vd, r->cfg, r->tls_client, &r->verify);
}

int
relay_start(struct relay *r, char *err, size_t errlen)
{
	struct drain_deps deps;

	relay_apply_quotas(r);
	memset(&deps, 0, sizeof(deps));
	deps.loop = r->loop;
	deps.spool = r->spool;
	deps.dns = r->dns;
	deps.stats = r->stats;
	deps.gate = r->fleet ? r->gate : NULL;
	deps.on_delivered = relay_on_delivered;
	deps.hook_arg = r;
	if (drain_new(&deps, r->cfg, r->tls_client, &r->drain) != 0) {
		snprintf(err, errlen, "cannot start the drain scheduler");
		return EX_SOFTWARE;
	}
	if (relay_verify_start(r) != 0) {
		snprintf(err, errlen, "cannot start the recipient verifier");
		return EX_SOFTWARE;
	}
	if (smtp_server_start(r->server, r->spool) != 0) {
		snprintf(err, errlen, "cannot start serving");
		return EX_OSERR;
	}
	return 0;
}

/* ---- reload ------------------------------------------------------------- */

static bool
relay_hostports_differ(const struct config_hostport *a, size_t na,
    const struct config_hostport *b, size_t nb)
{
	if (na != nb)
		return true;
	for (size_t i = 0; i < na; i++)
		if (strcmp(a[i].host, b[i].host) != 0 || a[i].port != b[i].port)
			return true;
	return false;
}

/*
 * What a reload cannot change without a restart: each such key is named in
 * a log line and in r->restart_keys (for `mxspoolctl reload`), never
 * silently ignored.  Everything else in the file takes effect at once.
 */
static void
relay_note_restart_keys(struct relay *r, const struct config *old,
    const struct config *new)
{
	const char *keys[12];
	size_t n = 0, off = 0;

	if (relay_hostports_differ(old->listen, old->nlisten, new->listen, new->nlisten))
		keys[n++] = "listen";
	if (strcmp(old->spool_dir, new->spool_dir) != 0)
		keys[n++] = "spool_dir";
	if (strcmp(old->control_socket, new->control_socket) != 0)
		keys[n++] = "control_socket";
	if (relay_str_changed(old->user, new->user))
		keys[n++] = "user";
	if (relay_hostports_differ(old->dns_servers, old->ndns_servers,
	    new->dns_servers, new->ndns_servers))
		keys[n++] = "dns_servers";
	if (old->has_metrics != new->has_metrics || (old->has_metrics &&
	    relay_hostports_differ(&old->metrics_listen, 1, &new->metrics_listen, 1)))
		keys[n++] = "metrics_listen";
	if (old->commit_window_ms != new->commit_window_ms)
		keys[n++] = "commit_window";
	if (old->has_fleet != new->has_fleet || (old->has_fleet &&
	    relay_hostports_differ(&old->fleet_redis, 1, &new->fleet_redis, 1)))
		keys[n++] = "redis";
	if (old->has_fleet && new->has_fleet &&
	    strcmp(old->fleet_node, new->fleet_node) != 0)
		keys[n++] = "node";
	if (relay_str_changed(old->fleet_password, new->fleet_password))
		keys[n++] = "redis_password";
	/* Keys changed by an earlier reload and still waiting stay listed:
	 * the running daemon still uses the values it started with. */
	r->restart_keys[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		log_event(LOG_LEVEL_WARN, "reload", "key=%s note=\"takes effect at "
		    "the next restart\"", keys[i]);
		off += (size_t)snprintf(r->restart_keys + off,
		    sizeof(r->restart_keys) - off, "%s%s", off ? " " : "", keys[i]);
		if (off >= sizeof(r->restart_keys))
			break;
	}
}

static void
relay_reload_refused(const char *err)
{
	char q[1200];

	log_event(LOG_LEVEL_ERR, "reload", "result=refused error=%s",
	    log_quote(q, sizeof(q), err));
	relay_notify("READY=1");
}

int
relay_reload(struct relay *r, char *err, size_t errlen)
{
	struct config *cfg = NULL, *old = r->cfg;
	struct tls_ctx *tls = NULL, *client = r->tls_client;
	bool new_client;
	char q[1200];

	relay_notify("RELOADING=1");
	if (config_load(old->path, &cfg, err, errlen) != 0) {
		relay_reload_refused(err);
		return -1;
	}
	/* Certificates are re-read so that a renewed one is picked up; a file
	 * that OpenSSL refuses makes the whole reload fail. */
	if (relay_tls_server_new(cfg, &tls, err, errlen) != 0) {
		config_free(cfg);
		relay_reload_refused(err);
		return -1;
	}
	/*
	 * The outbound context is made again at every reload too, so that a
	 * renewed ca_file is read even under the same name.  When that fails
	 * (logged) but the settings are the same, the running context stays:
	 * a broken CA bundle must not turn verify into "no TLS context".
	 */
	new_client = cfg->tls_outbound != old->tls_outbound ||
	    relay_str_changed(cfg->tls_ca_file, old->tls_ca_file);
	client = relay_tls_client_new(cfg);
	if (client == NULL && !new_client)
		client = r->tls_client;      /* kept; nothing to free below */
	else
		new_client = true;
	relay_note_restart_keys(r, r->started_cfg ? r->started_cfg : old, cfg);
	/*
	 * The listen, spool and control keys keep their old values until a
	 * restart; everything else is taken from the new file as a whole.
	 * Connections already in TLS keep their own reference to the old
	 * contexts (tls_ctx_free drops only ours).
	 */
	r->cfg = cfg;
	if (r->server)
		smtp_server_apply_config(r->server, cfg, tls);
	tls_ctx_free(r->tls_server);
	r->tls_server = tls;
	if (r->drain)
		drain_apply_config(r->drain, cfg, client);
	if (r->verify)
		verify_apply_config(r->verify, cfg, client);
	if (new_client) {
		tls_ctx_free(r->tls_client);
		r->tls_client = client;
	}
	if (r->spool)
		relay_apply_quotas(r);
	if (r->started_cfg == NULL)
		r->started_cfg = old;
	else
		config_free(old);
	log_event(LOG_LEVEL_INFO, "reload", "result=ok file=%s tenants=%zu",
	    log_quote(q, sizeof(q), cfg->path), cfg->ntenants);
	relay_notify("READY=1");
	return 0;
}

/* ---- the end ------------------------------------------------------------ */

struct relay_close {
	void (*done)(void *arg);
	void *arg;
};

static void
relay_on_dns_freed(void *arg)
{
	struct relay_close *c = arg;
	void (*done)(void *) = c->done;
	void *darg = c->arg;

	free(c);
	if (done)
		done(darg);
}

static void relay_close_dns(struct relay *r, void (*done)(void *arg),
    void *arg);

struct relay_close_fleet {
	struct relay *r;
	void (*done)(void *arg);
	void *arg;
};

static void
relay_on_fleet_closed(void *arg)
{
	struct relay_close_fleet *c = arg;
	struct relay *r = c->r;
	void (*done)(void *) = c->done;
	void *darg = c->arg;

	free(c);
	relay_close_dns(r, done, darg);
}

/* The fleet first (the drain, closed already, gave back its leases), then
 * the resolver. */
static void
relay_on_verify_closed(void *arg)
{
	struct relay_close_fleet *c = arg;
	struct relay *r = c->r;
	void (*done)(void *) = c->done;
	void *darg = c->arg;

	free(c);
	relay_close(r, done, darg);
}

void
relay_close(struct relay *r, void (*done)(void *arg), void *arg)
{
	struct relay_close_fleet *c;
	struct fleet *f = r->fleet;

	/* The verifier first (the server that asked it is closed): its
	 * caches are written before the rest goes. */
	if (r->verify != NULL) {
		struct verify *v = r->verify;

		r->verify = NULL;
		if ((c = malloc(sizeof(*c))) == NULL) {
			verify_close(v, NULL, NULL);
		} else {
			c->r = r;
			c->done = done;
			c->arg = arg;
			verify_close(v, relay_on_verify_closed, c);
			return;
		}
	}

	r->fleet = NULL;
	if (f == NULL || (c = malloc(sizeof(*c))) == NULL) {
		/* No fleet, or no memory to wait: fleet_close still closes. */
		fleet_close(f, NULL, NULL);
		relay_close_dns(r, done, arg);
		return;
	}
	c->r = r;
	c->done = done;
	c->arg = arg;
	fleet_close(f, relay_on_fleet_closed, c);
}

static void
relay_close_dns(struct relay *r, void (*done)(void *arg), void *arg)
{
	struct relay_close *c;

	if (r->dns == NULL || (c = malloc(sizeof(*c))) == NULL) {
		/* No resolver, or no memory to wait for it: dns_free still
		 * closes its handles, without telling us. */
		dns_free(r->dns, NULL, NULL);
		r->dns = NULL;
		if (done)
			done(arg);
		return;
	}
	c->done = done;
	c->arg = arg;
	dns_free(r->dns, relay_on_dns_freed, c);
	r->dns = NULL;
}

void
relay_free(struct relay *r)
{
	tls_ctx_free(r->tls_server);
	tls_ctx_free(r->tls_client);
	r->tls_server = r->tls_client = NULL;
	free(r->gate);
	r->gate = NULL;
	stats_free(r->stats);
	r->stats = NULL;
	config_free(r->cfg);
	config_free(r->started_cfg);
	r->cfg = r->started_cfg = NULL;
}
