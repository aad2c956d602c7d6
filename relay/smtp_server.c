/*
 * smtp_server.c - inbound ESMTP: the listeners, the limits checked when a
 * connection arrives, and shutdown.
 *
 * Each accepted connection becomes a session (smtp_session.c), which runs
 * the command table (smtp_session_cmd.c) and the mail transaction
 * (smtp_session_tx.c); smtp_server_internal.h describes how they share the
 * structs and who frees what.
 *
 * Ownership: the server owns its listeners and sessions.  It is freed, and
 * the DONE callback of smtp_server_close() runs, only once every listener,
 * every session and the grace timer are closed (smtp_server_maybe_done()).
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxspool/anvil.h"
#include "mxspool/config.h"
#include "mxspool/log.h"
#include "mxspool/policy.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/smtp_server.h"
#include "mxspool/util.h"

#include "smtp_server_internal.h"

#define SMTP_BACKLOG     511

/* FNV-1a of the address text. */
static size_t
smtp_ip_bucket(const char *ip)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *)ip; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % SMTP_IPCOUNT_BUCKETS;
}

/* Count SESS for its address; its new count, or 0 when out of memory. */
static unsigned
smtp_ip_add(struct smtp_session *sess)
{
	struct smtp_server *srv = sess->srv;
	size_t b = smtp_ip_bucket(sess->peer_ip);
	struct smtp_ipcount *c;

	for (c = srv->ipcount[b]; c != NULL; c = c->next)
		if (strcmp(c->ip, sess->peer_ip) == 0)
			break;
	if (c == NULL) {
		if ((c = calloc(1, sizeof(*c))) == NULL)
			return 0;
		snprintf(c->ip, sizeof(c->ip), "%s", sess->peer_ip);
		c->next = srv->ipcount[b];
		srv->ipcount[b] = c;
	}
	sess->ipc = c;
	return ++c->n;
}

void
smtp_server_ip_release(struct smtp_session *sess)
{
	struct smtp_server *srv = sess->srv;
	struct smtp_ipcount *c = sess->ipc, **pp;

	if (c == NULL)
		return;
	sess->ipc = NULL;
	if (--c->n > 0)
		return;
	for (pp = &srv->ipcount[smtp_ip_bucket(c->ip)]; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	free(c);
}

static void
smtp_sockaddr_ip(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
			inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], buf, (socklen_t)len);
		else
			inet_ntop(AF_INET6, &s6->sin6_addr, buf, (socklen_t)len);
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf,
		    (socklen_t)len);
	}
}

static void
smtp_on_connection(uv_stream_t *listener, int status)
{
	struct smtp_server *srv = listener->data;
	const struct config *cfg = srv->cfg;
	struct smtp_session *sess;
	unsigned nip;
	int namelen;

	if (status != 0 || srv->closing)
		return;
	/* Not calloc: see the end of struct smtp_session. */
	sess = malloc(sizeof(*sess));
	if (sess == NULL)
		return;   /* the connection stays in the backlog; retried later */
	memset(sess, 0, offsetof(struct smtp_session, out));
	sess->srv = srv;
	sess->id = ++srv->last_session_id;
	uv_tcp_init(srv->loop, &sess->tcp);
	uv_timer_init(srv->loop, &sess->timer);
	sess->tcp.data = sess;
	sess->timer.data = sess;
	sess->open_handles = 2;
	sess->next = srv->sessions;
	if (srv->sessions)
		srv->sessions->prev = sess;
	srv->sessions = sess;
	srv->nsessions++;
	if (uv_accept(listener, (uv_stream_t *)&sess->tcp) != 0) {
		smtp_session_close(sess, "accept failed");
		return;
	}
	namelen = sizeof(sess->peer);
	uv_tcp_getpeername(&sess->tcp, (struct sockaddr *)&sess->peer, &namelen);
	smtp_sockaddr_ip(&sess->peer, sess->peer_ip, sizeof(sess->peer_ip));
	uv_tcp_nodelay(&sess->tcp, 1);
	smtp_proto_lines_init(&sess->lines, 0);

	log_event(LOG_LEVEL_INFO, "connect", "session=%" PRIu64 " client=%s", sess->id,
	    sess->peer_ip);
	/* Closed sessions waiting for their close callbacks (or a commit) hold
	 * no socket: like the per-address counts, do not count them.  libuv accepts
	 * in a loop, so a client refused a moment ago can still be here. */
	if (srv->nsessions - srv->nclosing > cfg->max_connections) {
		smtp_session_reply(sess, "421 4.7.0 %s Error: too many connections", cfg->hostname);
		smtp_session_reply_close(sess, "max_connections");
		return;
	}
	if ((nip = smtp_ip_add(sess)) == 0) {
		smtp_session_reply(sess, "421 4.3.0 %s Error: out of memory", cfg->hostname);
		smtp_session_reply_close(sess, "out of memory");
		return;
	}
	if (nip > cfg->max_connections_per_ip &&
	    !policy_client_limit_exempt(cfg, (const struct sockaddr *)&sess->peer)) {
		smtp_session_reply(sess, "421 4.7.0 %s Error: too many connections from %s",
		    cfg->hostname, sess->peer_ip);
		smtp_session_reply_close(sess, "max_connections_per_ip");
		return;
	}
	smtp_abuse_connect(sess);
	smtp_session_start(sess);   /* may destroy */
}

static int
smtp_resolve_listen(const struct config_hostport *hp, struct sockaddr_storage *ss)
{
	const char *host = hp->host;

	if (host[0] == '\0' || strcmp(host, "*") == 0)
		host = "0.0.0.0";
	if (uv_ip4_addr(host, hp->port, (struct sockaddr_in *)ss) == 0)
		return 0;
	if (uv_ip6_addr(host, hp->port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	if (strcmp(host, "localhost") == 0)
		return uv_ip4_addr("127.0.0.1", hp->port, (struct sockaddr_in *)ss);
	return -1;
}

static void
smtp_on_listener_closed(uv_handle_t *h)
{
	struct smtp_server *srv = h->data;

	srv->open_listeners--;
	smtp_server_maybe_done(srv);
}

/*
 * systemd socket activation (mxspool.socket): LISTEN_PID names us and
 * LISTEN_FDS counts the listening sockets from fd 3 on.  Returns how many
 * were taken over (0 when not activated), or -1 with ERR.
 */
static int
smtp_server_inherit(struct smtp_server *srv, char *err, size_t errlen)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	long n;
	int rc;

	if (pid == NULL || fds == NULL || atol(pid) != (long)getpid())
		return 0;
	n = atol(fds);
	if (n <= 0 || n > 64) {
		snprintf(err, errlen, "LISTEN_FDS=%s: expected 1..64 sockets", fds);
		return -1;
	}
	srv->listeners = xcalloc((size_t)n, sizeof(*srv->listeners));
	for (long i = 0; i < n; i++) {
		uv_tcp_t *l = &srv->listeners[i];

		uv_tcp_init(srv->loop, l);
		l->data = srv;
		srv->nlisteners++;
		srv->open_listeners++;
		rc = uv_tcp_open(l, (uv_os_sock_t)(3 + i));
		if (rc == 0)
			rc = uv_listen((uv_stream_t *)l, SMTP_BACKLOG, smtp_on_connection);
		if (rc != 0) {
			snprintf(err, errlen, "socket activation: fd %ld: %s", 3 + i, uv_strerror(rc));
			return -1;
		}
	}
	/* Children (none today) must not think the sockets are theirs. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	srv->inherited = true;
	return (int)n;
}

int
smtp_server_new(const struct smtp_server_deps *deps, const struct config *cfg,
    struct tls_ctx *tls, struct smtp_server **out, char *err, size_t errlen)
{
	struct smtp_server *srv = xcalloc(1, sizeof(*srv));
	int rc;

	srv->loop = deps->loop;
	srv->hooks = deps->hooks;
	srv->dns = deps->dns;
	/* Without the table (no memory) nobody is rate-limited. */
	srv->anvil = anvil_new();
	srv->cfg = cfg;
	srv->tls = tls;
	*out = srv;
	rc = smtp_server_inherit(srv, err, errlen);
	if (rc < 0)
		return -1;
	if (rc == 0)
		srv->listeners = xcalloc(cfg->nlisten, sizeof(*srv->listeners));
	for (size_t i = 0; rc == 0 && i < cfg->nlisten; i++) {
		const struct config_hostport *hp = &cfg->listen[i];
		struct sockaddr_storage ss;
		uv_tcp_t *l = &srv->listeners[i];
		int brc;

		if (smtp_resolve_listen(hp, &ss) != 0) {
			snprintf(err, errlen, "listen %s:%u: not an IP address", hp->host, hp->port);
			return -1;
		}
		uv_tcp_init(srv->loop, l);
		l->data = srv;
		srv->nlisteners++;
		srv->open_listeners++;
		/* One socket per family: [::]:25 must not also claim IPv4. */
		brc = uv_tcp_bind(l, (struct sockaddr *)&ss,
		    ss.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
		if (brc == 0)
			brc = uv_listen((uv_stream_t *)l, SMTP_BACKLOG, smtp_on_connection);
		if (brc != 0) {
			snprintf(err, errlen, "listen %s%s%s:%u: %s", ss.ss_family == AF_INET6 ? "[" : "",
			    hp->host, ss.ss_family == AF_INET6 ? "]" : "", hp->port, uv_strerror(brc));
			return -1;
		}
	}
	return 0;
}

void
smtp_server_apply_config(struct smtp_server *s, const struct config *cfg,
    struct tls_ctx *tls)
{
	s->cfg = cfg;
	s->tls = tls;
}

int
smtp_server_start(struct smtp_server *s, struct spool *spool)
{
	char addrs[512];
	size_t off = 0;
	const struct config *cfg = s->cfg;

	s->spool = spool;
	addrs[0] = '\0';
	if (s->inherited)
		snprintf(addrs, sizeof(addrs), "systemd(%zu)", s->nlisteners);
	for (size_t i = 0; !s->inherited && i < cfg->nlisten && off < sizeof(addrs); i++)
		off += (size_t)snprintf(addrs + off, sizeof(addrs) - off, "%s%s:%u",
		    i ? "," : "", cfg->listen[i].host, cfg->listen[i].port);
	log_event(LOG_LEVEL_INFO, "listen", "smtp=%s starttls=%s", addrs,
	    s->tls ? "yes" : "no");
	return 0;
}

unsigned
smtp_server_connections(const struct smtp_server *s)
{
	return s->nsessions;
}

void
smtp_server_abuse_counts(const struct smtp_server *s,
    struct smtp_server_abuse *out)
{
	*out = s->abuse;
}

int
smtp_server_local_port(const struct smtp_server *s, size_t i)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	if (i >= s->nlisteners ||
	    uv_tcp_getsockname(&s->listeners[i], (struct sockaddr *)&ss, &len) != 0)
		return -1;
	if (ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((const struct sockaddr_in *)&ss)->sin_port);
}

static void
smtp_on_grace_closed(uv_handle_t *h)
{
	struct smtp_server *srv = h->data;

	srv->grace_open = false;
	smtp_server_maybe_done(srv);
}

void
smtp_server_maybe_done(struct smtp_server *srv)
{
	void (*done)(void *) = srv->done;
	void *arg = srv->done_arg;

	if (!srv->closing || srv->nsessions > 0 || srv->open_listeners > 0)
		return;
	/* The grace timer goes last; its close callback comes back here. */
	if (srv->grace_open) {
		if (!uv_is_closing((uv_handle_t *)&srv->grace))
			uv_close((uv_handle_t *)&srv->grace, smtp_on_grace_closed);
		return;
	}
	free(srv->listeners);
	anvil_free(srv->anvil);
	free(srv);
	if (done)
		done(arg);
}

static void
smtp_on_grace(uv_timer_t *t)
{
	struct smtp_server *srv = t->data;

	for (struct smtp_session *s = srv->sessions, *next; s; s = next) {
		next = s->next;
		if (s->state == SMTP_STATE_COMMIT)
			continue;   /* the journal answers soon; the client gets it */
		smtp_session_close(s, "shutdown");
	}
}

/* Idle sessions get 421 (busy ones go on). */
static void
smtp_server_tell_idle(struct smtp_server *srv)
{
	for (struct smtp_session *s = srv->sessions, *next; s; s = next) {
		next = s->next;
		if (s->closing)
			continue;
		if (s->state == SMTP_STATE_INIT || s->state == SMTP_STATE_HELO ||
		    s->state == SMTP_STATE_QUIT) {
			smtp_session_reply(s, "421 4.3.2 %s Service shutting down",
			    srv->cfg->hostname);
			smtp_session_reply_close(s, "shutdown");
		}
	}
}

static void
smtp_server_stop_listening(struct smtp_server *srv, void (*done)(void *arg),
    void *arg)
{
	srv->closing = true;
	srv->done = done;
	srv->done_arg = arg;
	for (size_t i = 0; i < srv->nlisteners; i++)
		uv_close((uv_handle_t *)&srv->listeners[i], smtp_on_listener_closed);
}

/*
 * Handover: how much longer SESS must stay silent to count as idle (0: it
 * is idle now), or -1 when it is busy (a transaction, a command being read
 * or waiting, TLS, closing): busy sessions have the whole grace.  Idle is
 * measured from the session's last input or output, not from the start of
 * the handover: a client that has just been greeted, or answered, is about
 * to send its next command, and a 421 then crosses it (the client sends
 * into a closed connection and sees it reset).
 */
long long
smtp_server_handover_idle_left(const struct smtp_session *s, uint64_t now,
    unsigned idle_ms)
{
	uint64_t quiet;

	if (s->closing || (s->state != SMTP_STATE_INIT && s->state != SMTP_STATE_HELO) ||
	    s->inlen > 0 || s->parked || s->pending > 0)
		return -1;
	quiet = now > s->active_ms ? now - s->active_ms : 0;
	return quiet >= idle_ms ? 0 : (long long)(idle_ms - quiet);
}

#define SMTP_HANDOVER_TICK_MS 100   /* busy sessions may turn idle: look again */

/* Handover: idle sessions get 421; until the grace is over, look again when
 * the next one may have become idle. */
static void
smtp_on_handover_tick(uv_timer_t *t)
{
	struct smtp_server *srv = t->data;
	uint64_t now = uv_now(srv->loop), next;

	if (now >= srv->handover_deadline_ms) {
		smtp_on_grace(t);
		return;
	}
	next = srv->handover_deadline_ms - now;
	if (next > SMTP_HANDOVER_TICK_MS)
		next = SMTP_HANDOVER_TICK_MS;
	for (struct smtp_session *s = srv->sessions, *n; s; s = n) {
		long long left = smtp_server_handover_idle_left(s, now,
		    srv->handover_idle_ms);

		n = s->next;
		if (left == 0) {
			smtp_session_reply(s, "421 4.3.2 %s Service shutting down",
			    srv->cfg->hostname);
			smtp_session_reply_close(s, "shutdown");
		} else if (left > 0 && (uint64_t)left < next) {
			next = (uint64_t)left;
		}
	}
	uv_timer_start(&srv->grace, smtp_on_handover_tick, next, 0);
}

void
smtp_server_close_handover(struct smtp_server *srv, unsigned idle_ms,
    unsigned grace_ms, void (*done)(void *arg), void *arg)
{
	smtp_server_stop_listening(srv, done, arg);
	srv->handover_idle_ms = idle_ms;
	srv->handover_deadline_ms = uv_now(srv->loop) + grace_ms;
	uv_timer_init(srv->loop, &srv->grace);
	srv->grace.data = srv;
	srv->grace_open = true;
	/* At once: sessions silent for idle_ms already need not wait. */
	uv_timer_start(&srv->grace, smtp_on_handover_tick, 0, 0);
	uv_unref((uv_handle_t *)&srv->grace);
	smtp_server_maybe_done(srv);
}

size_t
smtp_server_listen_fds(const struct smtp_server *s, int *fds, size_t max)
{
	size_t n = 0;

	for (size_t i = 0; i < s->nlisteners && n < max; i++) {
		uv_os_fd_t fd;

		if (uv_fileno((const uv_handle_t *)&s->listeners[i], &fd) == 0)
			fds[n++] = fd;
	}
	return n;
}

void
smtp_server_close(struct smtp_server *srv, unsigned grace_ms,
    void (*done)(void *arg), void *arg)
{
	smtp_server_stop_listening(srv, done, arg);
	/* Idle sessions are told at once; busy ones get the grace period. */
	smtp_server_tell_idle(srv);
	uv_timer_init(srv->loop, &srv->grace);
	srv->grace.data = srv;
	srv->grace_open = true;
	uv_timer_start(&srv->grace, smtp_on_grace, grace_ms, 0);
	uv_unref((uv_handle_t *)&srv->grace);
	smtp_server_maybe_done(srv);
}
