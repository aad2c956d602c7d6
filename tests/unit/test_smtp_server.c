/*
 * test_smtp_server.c - the inbound SMTP server on a real libuv loop, spoken
 * to over a real TCP socket on 127.0.0.1, with the spool on its RAM backend.
 *
 * The test thread is both the client and the loop: every wait polls the
 * client socket together with the loop's backend fd and runs the loop
 * without blocking, until the awaited bytes arrive or a deadline passes
 * (WAIT_MS; nothing here depends on timing otherwise).  The hooks record
 * what the server told the rest of the relay.  Every test ends with
 * smtp_server_close() + spool_close() and asserts that the loop then closes
 * with no handle left (uv_loop_close() == 0).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/smtp_proto.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/tls.h"

#include "../../relay/smtp_server_internal.h"

#define WAIT_MS 10000   /* any single wait; generous for ASan on a busy box */

/* ---- fixture ---------------------------------------------------------------- */

struct rec {
	int accepted;
	char accepted_tenant[64];
	int etrn;
	char etrn_tenant[64];
	/* recipients = learn: what the server asked the verifier hook, and
	 * the answer it waits for (learn_cb NULL: none pending). */
	int learn_asked;
	char learn_addr[256];
	char learn_tenant[64];
	verify_cb learn_cb;
	void *learn_arg;
};

struct fx {
	uv_loop_t loop;
	char dir[64];
	struct config *cfg;
	struct tls_ctx *tls;
	struct spool *sp;
	struct smtp_server *srv;
	int port;
	struct rec rec;
	bool srv_done, sp_done;
};

struct client {
	struct fx *fx;
	int fd;
	SSL_CTX *ssl_ctx;
	SSL *ssl;
	char buf[16384];
	size_t len;
	bool eof;
};

static void
on_accepted(void *arg, const char *tenant, double latency_s)
{
	struct rec *r = arg;

	assert_true(latency_s >= 0 && latency_s < 60);
	r->accepted++;
	snprintf(r->accepted_tenant, sizeof(r->accepted_tenant), "%s", tenant);
}

static void
on_etrn(void *arg, const char *tenant)
{
	struct rec *r = arg;

	r->etrn++;
	snprintf(r->etrn_tenant, sizeof(r->etrn_tenant), "%s", tenant);
}

/* The verifier stand-in: "now-ok..." and "now-no..." are answered at
 * once, anything else waits until the test calls rec.learn_cb. */
static enum verify_answer
learn_rcpt(void *arg, const char *tenant, const char *addr, verify_cb cb,
    void *cb_arg)
{
	struct rec *r = arg;

	r->learn_asked++;
	snprintf(r->learn_addr, sizeof(r->learn_addr), "%s", addr);
	snprintf(r->learn_tenant, sizeof(r->learn_tenant), "%s", tenant);
	if (strncmp(addr, "now-ok", 6) == 0)
		return VERIFY_ACCEPT;
	if (strncmp(addr, "now-no", 6) == 0)
		return VERIFY_REJECT;
	assert_null(r->learn_cb);   /* one RCPT of a session at a time */
	r->learn_cb = cb;
	r->learn_arg = cb_arg;
	return VERIFY_PENDING;
}

/* Give the pending verification its answer. */
static void
learn_answer(struct rec *r, enum verify_answer a)
{
	verify_cb cb = r->learn_cb;

	assert_non_null(cb);
	r->learn_cb = NULL;
	cb(r->learn_arg, a);
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait (at most MS) for FD (or -1) or the loop, then run the loop once
 * without blocking. */
static void
pump(struct fx *fx, int fd, int ms)
{
	struct pollfd p[2] = {
		{ .fd = uv_backend_fd(&fx->loop), .events = POLLIN },
		{ .fd = fd, .events = POLLIN },
	};
	int t = uv_backend_timeout(&fx->loop);

	if (t < 0 || t > ms)
		t = ms;
	(void)poll(p, fd >= 0 ? 2 : 1, t);
	uv_run(&fx->loop, UV_RUN_NOWAIT);
}

/* Config text: the [server] keys in EXTRA come after the defaults. */
static struct fx *
fx_new(const char *extra, bool with_tls)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	char text[2048], err[512];
	struct spool_options so = { .backend = "ram", .disk_reserve = 1000 };
	struct smtp_server_deps deps;
	FILE *fp;

	assert_non_null(fx);
	assert_int_equal(uv_loop_init(&fx->loop), 0);
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/test_smtp_server.XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	snprintf(text, sizeof(text),
	    "[server]\n"
	    "hostname = mx.test\n"
	    "listen = 127.0.0.1:25\n"
	    "spool_dir = %s/spool\n"
	    "control_socket = %s/control.sock\n"
	    "%s\n"
	    "[tenant:acme]\n"
	    "domains = example.test\n"
	    "primary = 127.0.0.1:9\n"
	    "[tenant:other]\n"
	    "domains = other.test\n"
	    "primary = 127.0.0.1:9\n"
	    "etrn_from = 192.0.2.0/24\n"
	    "[tenant:learn]\n"
	    "domains = learn.test\n"
	    "primary = 127.0.0.1:9\n"
	    "recipients = learn\n",
	    fx->dir, fx->dir, extra ? extra : "");
	fp = fmemopen(text, strlen(text), "r");
	assert_non_null(fp);
	if (config_load_stream(fp, "test.ini", &fx->cfg, err, sizeof(err)) != 0)
		fail_msg("config: %s", err);
	fclose(fp);
	/* The config file wants a port in 1-65535; port 0 lets the kernel pick
	 * a free one, which smtp_server_local_port() then tells. */
	assert_int_equal(fx->cfg->nlisten, 1);
	fx->cfg->listen[0].port = 0;
	if (with_tls) {
		char cmd[512], cert[128], key[128];

		snprintf(cert, sizeof(cert), "%s/cert.pem", fx->dir);
		snprintf(key, sizeof(key), "%s/key.pem", fx->dir);
		snprintf(cmd, sizeof(cmd), "openssl req -x509 -newkey ec -pkeyopt "
		    "ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=mx.test "
		    "-keyout %s -out %s >/dev/null 2>&1", key, cert);
		if (system(cmd) != 0 ||
		    tls_server_ctx_new(cert, key, &fx->tls, err, sizeof(err)) != TLS_OK)
			fx->tls = NULL;   /* the caller skips */
	}
	assert_int_equal(spool_open(&fx->loop, &so, &fx->sp, NULL), 0);
	memset(&deps, 0, sizeof(deps));
	deps.loop = &fx->loop;
	deps.hooks.arg = &fx->rec;
	deps.hooks.on_accepted = on_accepted;
	deps.hooks.on_etrn = on_etrn;
	deps.hooks.learn_rcpt = learn_rcpt;
	if (smtp_server_new(&deps, fx->cfg, fx->tls, &fx->srv, err, sizeof(err)) != 0)
		fail_msg("smtp_server_new: %s", err);
	assert_int_equal(smtp_server_start(fx->srv, fx->sp), 0);
	fx->port = smtp_server_local_port(fx->srv, 0);
	assert_true(fx->port > 0);
	assert_int_equal(smtp_server_local_port(fx->srv, 1), -1);
	return fx;
}

static void
on_srv_done(void *arg)
{
	((struct fx *)arg)->srv_done = true;
}

static void
on_sp_done(void *arg)
{
	((struct fx *)arg)->sp_done = true;
}

static void
fx_close_server(struct fx *fx)
{
	int64_t end = now_ms() + WAIT_MS;

	smtp_server_close(fx->srv, 1000, on_srv_done, fx);
	while (!fx->srv_done && now_ms() < end)
		pump(fx, -1, 20);
	assert_true(fx->srv_done);
}

/* Shut everything down (the server unless a test did) and prove the loop
 * is left with nothing open. */
static void
fx_free(struct fx *fx)
{
	char cmd[128];
	int64_t end = now_ms() + WAIT_MS;

	if (!fx->srv_done)
		fx_close_server(fx);
	spool_close(fx->sp, on_sp_done, fx);
	while (!fx->sp_done && now_ms() < end)
		pump(fx, -1, 20);
	assert_true(fx->sp_done);
	assert_int_equal(uv_run(&fx->loop, UV_RUN_NOWAIT), 0);
	assert_int_equal(uv_loop_close(&fx->loop), 0);
	tls_ctx_free(fx->tls);
	config_free(fx->cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	assert_int_equal(system(cmd), 0);
	free(fx);
}

/* ---- client ------------------------------------------------------------------ */

static void client_expect(struct client *c, const char *want);

static struct client *
client_new(struct fx *fx)
{
	struct client *c = calloc(1, sizeof(*c));
	struct sockaddr_in sin = { .sin_family = AF_INET };
	int one = 1;

	assert_non_null(c);
	c->fx = fx;
	sin.sin_port = htons((uint16_t)fx->port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(c->fd >= 0);
	/* Blocking connect: the kernel completes it from the listen backlog. */
	assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
	client_expect(c, "220 mx.test ESMTP mxspool");
	return c;
}

static void
client_free(struct client *c)
{
	if (c->ssl)
		SSL_free(c->ssl);
	if (c->ssl_ctx)
		SSL_CTX_free(c->ssl_ctx);
	close(c->fd);
	free(c);
}

/* Read what is there into c->buf; false if nothing came. */
static bool
client_fill(struct client *c)
{
	ssize_t n;

	if (c->eof || c->len == sizeof(c->buf))
		return false;
	if (c->ssl) {
		int r = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len));

		if (r > 0) {
			c->len += (size_t)r;
			return true;
		}
		r = SSL_get_error(c->ssl, r);
		if (r != SSL_ERROR_WANT_READ && r != SSL_ERROR_WANT_WRITE)
			c->eof = true;
		return false;
	}
	n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
	if (n > 0) {
		c->len += (size_t)n;
		return true;
	}
	if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
		c->eof = true;
	return false;
}

static void
client_send(struct client *c, const void *data, size_t len)
{
	const char *p = data;
	int64_t end = now_ms() + WAIT_MS;

	while (len > 0 && now_ms() < end) {
		ssize_t n;

		if (c->ssl) {
			int r = SSL_write(c->ssl, p, (int)len);

			n = r > 0 ? r : -1;
			if (r <= 0 && SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ &&
			    SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_WRITE)
				fail_msg("SSL_write failed");
		} else {
			n = send(c->fd, p, len, MSG_NOSIGNAL);
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				fail_msg("send: %s", strerror(errno));
		}
		if (n > 0) {
			p += n;
			len -= (size_t)n;
		} else {
			pump(c->fx, -1, 10);
		}
	}
	assert_int_equal(len, 0);
}

static void
client_sendf(struct client *c, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < sizeof(buf));
	client_send(c, buf, (size_t)n);
}

/* The next reply line (CRLF cut) into LINE; false on EOF or timeout. */
static bool
client_line(struct client *c, char *line, size_t cap)
{
	int64_t end = now_ms() + WAIT_MS;
	char *crlf;

	while ((crlf = memmem(c->buf, c->len, "\r\n", 2)) == NULL) {
		if (client_fill(c))
			continue;
		if (c->eof || now_ms() >= end)
			return false;
		pump(c->fx, c->fd, 20);
	}
	size_t n = (size_t)(crlf - c->buf);

	assert_true(n < cap);
	memcpy(line, c->buf, n);
	line[n] = '\0';
	c->len -= n + 2;
	memmove(c->buf, crlf + 2, c->len);
	return true;
}

/* A whole (possibly multi-line) reply: its last line into LAST, every line
 * joined by '\n' into ALL (may be NULL). */
static void
client_reply(struct client *c, char *last, size_t cap, char *all, size_t allcap)
{
	if (all)
		all[0] = '\0';
	do {
		if (!client_line(c, last, cap))
			fail_msg("no reply (eof=%d)", c->eof);
		if (all) {
			strncat(all, last, allcap - strlen(all) - 2);
			strcat(all, "\n");
		}
	} while (strlen(last) > 3 && last[3] == '-');
}

static void
client_expect(struct client *c, const char *want)
{
	char got[1024];

	client_reply(c, got, sizeof(got), NULL, 0);
	assert_string_equal(got, want);
}

/* A reply starting with PREFIX. */
static void
client_expect_prefix(struct client *c, const char *prefix)
{
	char got[1024];

	client_reply(c, got, sizeof(got), NULL, 0);
	if (strncmp(got, prefix, strlen(prefix)) != 0)
		fail_msg("got \"%s\", want \"%s...\"", got, prefix);
}

static void
client_cmd(struct client *c, const char *cmd, const char *want)
{
	client_sendf(c, "%s\r\n", cmd);
	client_expect(c, want);
}

static void
client_expect_eof(struct client *c)
{
	int64_t end = now_ms() + WAIT_MS;

	while (!c->eof && now_ms() < end) {
		if (!client_fill(c))
			pump(c->fx, c->fd, 20);
		c->len = 0;   /* nothing more is expected; drop it */
	}
	assert_true(c->eof);
}

static void
client_ehlo(struct client *c, char *all, size_t allcap)
{
	char last[512];

	client_sendf(c, "EHLO client.test\r\n");
	client_reply(c, last, sizeof(last), all, allcap);
	assert_string_equal(last, "250 CHUNKING");
}

/* One message to RCPT through DATA; returns after the final reply. */
static void
client_message(struct client *c, const char *rcpt, const char *want_prefix)
{
	client_sendf(c, "MAIL FROM:<s@client.test>\r\n");
	client_expect(c, "250 2.1.0 Ok");
	client_sendf(c, "RCPT TO:<%s>\r\n", rcpt);
	client_expect(c, "250 2.1.5 Ok");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: t\r\n\r\nbody\r\n.\r\n");
	client_expect_prefix(c, want_prefix);
}

/* ---- tests -------------------------------------------------------------------- */

/* Commands out of order get their 503 (or 554) and change nothing; the
 * informational commands answer as documented. */
static void
test_command_sequence(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_cmd(c, "MAIL FROM:<a@client.test>", "503 5.5.1 Error: send HELO/EHLO first");
	client_cmd(c, "ETRN example.test", "503 5.5.1 Error: send HELO/EHLO first");
	client_cmd(c, "RCPT TO:<u@example.test>", "503 5.5.1 Error: need MAIL command");
	client_cmd(c, "DATA", "503 5.5.1 Error: need RCPT command");
	client_cmd(c, "STARTTLS", "502 5.5.1 Error: command not implemented");
	client_cmd(c, "HELO client.test", "250 mx.test");
	client_cmd(c, "RCPT TO:<u@example.test>", "503 5.5.1 Error: need MAIL command");
	client_cmd(c, "DATA", "503 5.5.1 Error: need RCPT command");
	client_cmd(c, "MAIL FROM:<a@client.test>", "250 2.1.0 Ok");
	client_cmd(c, "MAIL FROM:<b@client.test>", "503 5.5.1 Error: nested MAIL command");
	client_cmd(c, "DATA", "554 5.5.1 Error: no valid recipients");
	client_cmd(c, "ETRN example.test", "503 5.5.1 Error: MAIL transaction in progress");
	client_cmd(c, "RCPT TO:<u@example.test>", "250 2.1.5 Ok");
	client_cmd(c, "RSET", "250 2.0.0 Ok");
	/* RSET dropped the transaction: RCPT and DATA need a MAIL again. */
	client_cmd(c, "RCPT TO:<u@example.test>", "503 5.5.1 Error: need MAIL command");
	client_cmd(c, "DATA", "503 5.5.1 Error: need RCPT command");
	client_cmd(c, "NOOP", "250 2.0.0 Ok");
	client_cmd(c, "NOOP anything", "250 2.0.0 Ok");
	client_cmd(c, "VRFY u@example.test",
	    "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
	client_cmd(c, "EXPN list", "502 5.5.1 Error: EXPN command is disabled");
	/* No [tls]: HELP does not name STARTTLS (EHLO does not offer it). */
	client_cmd(c, "HELP", "214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA "
	    "BDAT RSET NOOP QUIT VRFY HELP ETRN");
	client_cmd(c, "QUIT", "221 2.0.0 Bye");
	client_expect_eof(c);
	assert_int_equal(fx->rec.accepted, 0);
	client_free(c);
	fx_free(fx);
}

/* on_accepted runs once per message the spool made durable, after the 250,
 * with the tenant of its recipients. */
static void
test_accept_hook_per_message(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	char all[2048];

	client_ehlo(c, all, sizeof(all));
	assert_non_null(strstr(all, "250-PIPELINING\n"));
	assert_null(strstr(all, "STARTTLS"));
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	assert_int_equal(fx->rec.accepted, 1);
	assert_string_equal(fx->rec.accepted_tenant, "acme");
	client_message(c, "v@other.test", "250 2.0.0 Ok: queued as ");
	assert_int_equal(fx->rec.accepted, 2);
	assert_string_equal(fx->rec.accepted_tenant, "other");
	assert_int_equal(spool_total_messages(fx->sp), 2);
	client_cmd(c, "QUIT", "221 2.0.0 Bye");
	client_free(c);
	fx_free(fx);
}

/* A commit the spool fails is answered 451, nothing is queued and the hook
 * is not called; the session goes on and the next message is accepted. */
static void
test_commit_failure_is_451(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	assert_int_equal(spool_ram_fail_next(fx->sp, SPOOL_EIO), 0);
	client_message(c, "u@example.test", "451 4.3.0 Error: queue file write error");
	assert_int_equal(fx->rec.accepted, 0);
	assert_int_equal(spool_total_messages(fx->sp), 0);
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	assert_int_equal(fx->rec.accepted, 1);
	client_free(c);
	fx_free(fx);
}

/* Disk below the reserve: 452 4.3.1 at MAIL.  A full tenant quota: 452
 * 4.3.1 at RCPT, naming the recipient. */
static void
test_storage_full_is_452(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	assert_int_equal(spool_ram_set_free_bytes(fx->sp, 500), 0);   /* < reserve */
	client_cmd(c, "MAIL FROM:<a@client.test>", "452 4.3.1 Insufficient system storage");
	assert_int_equal(spool_ram_set_free_bytes(fx->sp, (uint64_t)1 << 30), 0);
	spool_set_quota(fx->sp, "acme", 0, 1);
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	client_cmd(c, "MAIL FROM:<a@client.test>", "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<u@example.test>",
	    "452 4.3.1 <u@example.test>: Insufficient system storage");
	/* Another tenant is not affected. */
	client_cmd(c, "RCPT TO:<v@other.test>", "250 2.1.5 Ok");
	client_free(c);
	fx_free(fx);
}

/* max_recipients: the next RCPT gets 452 4.5.3 and the message still goes
 * with the ones accepted. */
static void
test_max_recipients(void **state)
{
	struct fx *fx = fx_new("max_recipients = 2", false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	client_cmd(c, "MAIL FROM:<a@client.test>", "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<u1@example.test>", "250 2.1.5 Ok");
	client_cmd(c, "RCPT TO:<u2@example.test>", "250 2.1.5 Ok");
	client_cmd(c, "RCPT TO:<u3@example.test>", "452 4.5.3 Error: too many recipients");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: t\r\n\r\nbody\r\n.\r\n");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");
	assert_int_equal(fx->rec.accepted, 1);
	client_free(c);
	fx_free(fx);
}

/* max_errors: the error that reaches the limit is answered, then 421 and
 * the connection is closed.  Refusals for order (503) count too. */
static void
test_max_errors_closes(void **state)
{
	struct fx *fx = fx_new("max_errors = 3", false);
	struct client *c = client_new(fx);

	client_cmd(c, "XYZZY", "500 5.5.2 Error: command not recognized");
	client_cmd(c, "MAIL FROM:<a@client.test>", "503 5.5.1 Error: send HELO/EHLO first");
	client_sendf(c, "AUTH PLAIN\r\n");
	client_expect(c, "503 5.5.1 Error: authentication not enabled");
	client_expect(c, "421 4.7.0 mx.test Error: too many errors");
	client_expect_eof(c);
	client_free(c);
	fx_free(fx);
}

/* A command line over 512 octets is refused as too long, the rest of it
 * is dropped, and the session goes on. */
static void
test_line_too_long(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	char line[2100];

	memset(line, 'a', sizeof(line) - 1);
	memcpy(line, "NOOP ", 5);
	line[sizeof(line) - 1] = '\0';
	client_sendf(c, "%s\r\n", line);
	client_expect(c, "500 5.5.2 Error: line too long");
	client_cmd(c, "NOOP", "250 2.0.0 Ok");
	client_free(c);
	fx_free(fx);
}

/* PIPELINING: commands sent in one write are answered in order, including
 * the ones behind the end of data (they wait for the commit). */
static void
test_pipelining(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	client_sendf(c, "MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n"
	    "RCPT TO:<x@elsewhere.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\n");
	client_expect(c, "250 2.1.0 Ok");
	client_expect(c, "250 2.1.5 Ok");
	client_expect_prefix(c, "550 5.7.1 ");
	client_expect(c, "250 2.1.5 Ok");
	client_expect(c, "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: p\r\n\r\none\r\n.\r\nMAIL FROM:<b@client.test>\r\n"
	    "RCPT TO:<w@example.test>\r\nRSET\r\nNOOP\r\nQUIT\r\n");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");
	client_expect(c, "250 2.1.0 Ok");
	client_expect(c, "250 2.1.5 Ok");
	client_expect(c, "250 2.0.0 Ok");
	client_expect(c, "250 2.0.0 Ok");
	client_expect(c, "221 2.0.0 Bye");
	client_expect_eof(c);
	assert_int_equal(fx->rec.accepted, 1);
	client_free(c);
	fx_free(fx);
}

/* BDAT without recipients: its chunk is read and dropped (never run as
 * commands), and a session without HELO stays without HELO. */
static void
test_bdat_refused_chunk(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	const char *evil = "EHLO evil.test\r\nMAIL FROM:<e@client.test>\r\n";

	client_sendf(c, "BDAT %zu LAST\r\n%sNOOP\r\n", strlen(evil), evil);
	client_expect(c, "503 5.5.1 Error: need RCPT command");
	client_expect(c, "250 2.0.0 Ok");
	client_cmd(c, "MAIL FROM:<a@client.test>", "503 5.5.1 Error: send HELO/EHLO first");
	client_ehlo(c, NULL, 0);
	client_cmd(c, "MAIL FROM:<a@client.test>", "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<u@example.test>", "250 2.1.5 Ok");
	client_sendf(c, "BDAT 6\r\nSubjecBDAT 11 LAST\r\nt: x\r\n\r\nb\r\n");
	client_expect(c, "250 2.0.0 Ok: 6 octets received");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");
	client_cmd(c, "DATA", "503 5.5.1 Error: need RCPT command");
	assert_int_equal(fx->rec.accepted, 1);
	client_free(c);
	fx_free(fx);
}

/* ETRN: allowed for the client's address -> on_etrn with the tenant; an
 * etrn_from that does not list 127.0.0.1 -> 459 and no hook. */
static void
test_etrn(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	client_cmd(c, "ETRN example.test",
	    "251 2.0.0 OK, no messages waiting for node example.test");
	assert_int_equal(fx->rec.etrn, 1);
	assert_string_equal(fx->rec.etrn_tenant, "acme");
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	client_cmd(c, "ETRN @example.test", "250 2.0.0 Queuing started");
	assert_int_equal(fx->rec.etrn, 2);
	client_cmd(c, "ETRN other.test",
	    "459 4.7.1 Client host rejected: not allowed to use ETRN");
	client_cmd(c, "ETRN nowhere.test",
	    "459 4.7.1 <nowhere.test>: not a domain this server spools for");
	client_cmd(c, "ETRN #queue", "458 4.1.0 Unable to queue messages for node queue");
	assert_int_equal(fx->rec.etrn, 2);
	client_free(c);
	fx_free(fx);
}

/* Closing the server tells an idle session 421 and closes it; the done
 * callback runs once every handle is closed. */
static void
test_close_idle_session(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	assert_int_equal(smtp_server_connections(fx->srv), 1);
	fx_close_server(fx);
	client_expect(c, "421 4.3.2 mx.test Service shutting down");
	client_expect_eof(c);
	client_free(c);
	fx_free(fx);
}

/* Drive the client side of a TLS handshake on C's socket. */
static void
client_starttls(struct client *c)
{
	int64_t end = now_ms() + WAIT_MS;
	int r;

	c->ssl_ctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(c->ssl_ctx);
	SSL_CTX_set_verify(c->ssl_ctx, SSL_VERIFY_NONE, NULL);
	c->ssl = SSL_new(c->ssl_ctx);
	assert_non_null(c->ssl);
	SSL_set_fd(c->ssl, c->fd);
	assert_int_equal(c->len, 0);   /* nothing in clear after the 220 */
	while ((r = SSL_connect(c->ssl)) != 1 && now_ms() < end) {
		r = SSL_get_error(c->ssl, r);
		if (r != SSL_ERROR_WANT_READ && r != SSL_ERROR_WANT_WRITE)
			fail_msg("TLS handshake failed: %d", r);
		pump(c->fx, c->fd, 20);
	}
	assert_int_equal(r, 1);
}

/* STARTTLS: what was pipelined behind it in clear is discarded, not run
 * inside TLS; the session restarts without HELO; no second STARTTLS. */
static void
test_starttls_discards_pipelined(void **state)
{
	struct fx *fx = fx_new(NULL, true);
	struct client *c;
	char all[2048];

	if (fx->tls == NULL) {
		fx_free(fx);
		skip();   /* no openssl(1) to make a certificate */
	}
	c = client_new(fx);
	client_ehlo(c, all, sizeof(all));
	assert_non_null(strstr(all, "250-STARTTLS\n"));
	client_cmd(c, "HELP", "214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA "
	    "BDAT RSET NOOP QUIT VRFY HELP STARTTLS ETRN");
	client_cmd(c, "MAIL FROM:<a@client.test>", "250 2.1.0 Ok");
	client_sendf(c, "STARTTLS\r\nRSET\r\nMAIL FROM:<evil@client.test>\r\n");
	client_expect(c, "220 2.0.0 Ready to start TLS");
	client_starttls(c);
	/* Had RSET/MAIL run, their replies would come first. */
	client_cmd(c, "MAIL FROM:<a@client.test>", "503 5.5.1 Error: send HELO/EHLO first");
	client_ehlo(c, all, sizeof(all));
	assert_null(strstr(all, "STARTTLS"));
	client_cmd(c, "STARTTLS", "554 5.5.1 Error: TLS already active");
	client_cmd(c, "HELP", "214 2.0.0 See RFC 5321; commands: HELO EHLO MAIL RCPT DATA "
	    "BDAT RSET NOOP QUIT VRFY HELP ETRN");
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	assert_int_equal(fx->rec.accepted, 1);
	/* The client's close_notify ends the session like a FIN. */
	SSL_shutdown(c->ssl);
	client_expect_eof(c);
	client_free(c);
	fx_free(fx);
}

/* ---- issue 10: intake rules ------------------------------------------------- */

/* N "Received:" fields, a folded line after each, then a Received: in the
 * body (which never counts). */
static size_t
hops_message(char *buf, size_t cap, unsigned n)
{
	size_t len = 0;

	for (unsigned i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s: from h%u.test\r\n"
		    "\tby mx%u.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
		    i % 2 ? "RECEIVED" : "Received", i, i);
	len += (size_t)snprintf(buf + len, cap - len, "Subject: loop\r\n\r\n"
	    "Received: in the body\r\n");
	assert_true(len < cap);
	return len;
}

static void
client_rcpt(struct client *c, const char *mail, const char *rcpt)
{
	client_sendf(c, "MAIL FROM:<s@client.test>%s\r\n", mail);
	client_expect(c, "250 2.1.0 Ok");
	client_sendf(c, "RCPT TO:<%s>\r\n", rcpt);
	client_expect(c, "250 2.1.5 Ok");
}

/* max_received = 3: three client Received: fields pass (ours is not
 * counted), four get 554 5.4.6 at the end of data and nothing is queued;
 * the same through BDAT with the chunks cut inside a field name. */
static void
test_loop_detection(void **state)
{
	struct fx *fx = fx_new("max_received = 3", false);
	struct client *c = client_new(fx);
	char msg[4096];
	size_t len;

	client_ehlo(c, NULL, 0);
	len = hops_message(msg, sizeof(msg), 4);
	client_rcpt(c, "", "u@example.test");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_send(c, msg, len);
	client_cmd(c, ".", "554 5.4.6 Too many hops: more than 3 Received: header fields");
	assert_int_equal(spool_total_messages(fx->sp), 0);

	len = hops_message(msg, sizeof(msg), 3);
	client_rcpt(c, "", "u@example.test");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_send(c, msg, len);
	client_sendf(c, ".\r\n");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");
	assert_int_equal(spool_total_messages(fx->sp), 1);

	/* BDAT: 4 fields, the second chunk starts with "ived:" of the 4th. */
	len = hops_message(msg, sizeof(msg), 4);
	char *cut = strstr(strstr(msg, "mx2.test"), "RECE") + 4;
	size_t first = (size_t)(cut - msg);

	client_rcpt(c, "", "u@example.test");
	client_sendf(c, "BDAT %zu\r\n", first);
	client_send(c, msg, first);
	client_expect_prefix(c, "250 2.0.0 Ok: ");
	client_sendf(c, "BDAT %zu LAST\r\n", len - first);
	client_send(c, msg + first, len - first);
	client_expect(c, "554 5.4.6 Too many hops: more than 3 Received: header fields");
	assert_int_equal(spool_total_messages(fx->sp), 1);
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	assert_int_equal(spool_total_messages(fx->sp), 2);
	client_free(c);
	fx_free(fx);
}

/* A bare LF or CR in DATA: the message is read to its true end and
 * refused there with 550 5.5.2 (a "\n.\n" inside does not end it), nothing
 * is queued, and the session goes on. */
static void
test_bare_newline_in_data(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	client_rcpt(c, "", "u@example.test");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: x\r\n\r\nbare\nLF\n.\nNOOP\r\n.\r\n");
	client_expect(c, "550 5.5.2 Error: bare <LF> received in message data");
	client_rcpt(c, "", "u@example.test");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: x\r\n\r\nbare\rCR\r\n.\r\n");
	client_expect(c, "550 5.5.2 Error: bare <CR> received in message data");
	assert_int_equal(spool_total_messages(fx->sp), 0);
	client_cmd(c, "NOOP", "250 2.0.0 Ok");
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	assert_int_equal(spool_total_messages(fx->sp), 1);
	client_free(c);
	fx_free(fx);
}

/* Message content sent behind DATA before our 354 (RFC 2920 3.1): 554
 * 5.5.0 and the connection is closed; nothing is queued.  DATA last in a
 * pipelined group is fine (test_pipelining). */
static void
test_content_before_354_refused(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);

	client_ehlo(c, NULL, 0);
	client_sendf(c, "MAIL FROM:<a@client.test>\r\nRCPT TO:<u@example.test>\r\n"
	    "DATA\r\nSubject: eager\r\n\r\nx\r\n.\r\nQUIT\r\n");
	client_expect(c, "250 2.1.0 Ok");
	client_expect(c, "250 2.1.5 Ok");
	client_expect(c, "554 5.5.0 Error: SMTP protocol synchronization");
	client_expect_eof(c);
	assert_int_equal(spool_total_messages(fx->sp), 0);
	assert_int_equal(fx->rec.accepted, 0);
	client_free(c);
	fx_free(fx);
}

struct loaded {
	struct fx *fx;
	spool_qid qid;
	bool done;
	char rcpt[256], orcpt[256], tenant[64];
};

static int
first_item(void *arg, const struct spool_item *item)
{
	((struct loaded *)arg)->qid = item->qid;
	return 1;
}

static void
on_loaded(void *arg, int status, struct spool_msg *m)
{
	struct loaded *l = arg;
	const struct spool_envelope *env;

	assert_int_equal(status, 0);
	env = spool_msg_envelope(m);
	assert_int_equal(env->nrcpt, 1);
	snprintf(l->rcpt, sizeof(l->rcpt), "%s", env->rcpt[0].addr);
	snprintf(l->orcpt, sizeof(l->orcpt), "%s",
	    env->rcpt[0].orcpt ? env->rcpt[0].orcpt : "(none)");
	snprintf(l->tenant, sizeof(l->tenant), "%s", env->tenant);
	spool_msg_free(m);
	l->done = true;
}

/* The envelope of the oldest message. */
static void
load_first(struct fx *fx, struct loaded *l)
{
	int64_t end = now_ms() + WAIT_MS;

	memset(l, 0, sizeof(*l));
	spool_foreach(fx->sp, NULL, first_item, l);
	assert_true(l->qid != 0);
	assert_int_equal(spool_load(fx->sp, l->qid, on_loaded, l), 0);
	while (!l->done && now_ms() < end)
		pump(fx, -1, 20);
	assert_true(l->done);
}

/* RCPT TO:<Postmaster> (any case, RFC 5321 4.5.1) is accepted and queued
 * for postmaster@ the first tenant's first domain, with the original form
 * as its ORCPT; a configured postmaster wins (tenant "other" here). */
static void
test_postmaster(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	struct loaded l;

	client_ehlo(c, NULL, 0);
	client_message(c, "PostMaster", "250 2.0.0 Ok: queued as ");
	load_first(fx, &l);
	assert_string_equal(l.rcpt, "postmaster@example.test");
	assert_string_equal(l.orcpt, "rfc822;PostMaster");
	assert_string_equal(l.tenant, "acme");
	client_free(c);
	fx_free(fx);

	fx = fx_new("postmaster = hostmaster@other.test", false);
	c = client_new(fx);
	client_ehlo(c, NULL, 0);
	client_sendf(c, "MAIL FROM:<s@client.test>\r\n");
	client_expect(c, "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<u@example.test>", "250 2.1.5 Ok");
	client_cmd(c, "RCPT TO:<postmaster>", "452 4.5.3 <postmaster>: Recipient of "
	    "another destination: send it in a new transaction");
	client_cmd(c, "RSET", "250 2.0.0 Ok");
	client_sendf(c, "MAIL FROM:<s@client.test>\r\n");
	client_expect(c, "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<POSTMASTER> NOTIFY=NEVER ORCPT=rfc822;pm+40x.test",
	    "250 2.1.5 Ok");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: t\r\n\r\nbody\r\n.\r\n");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");
	load_first(fx, &l);
	assert_string_equal(l.rcpt, "hostmaster@other.test");
	assert_string_equal(l.orcpt, "rfc822;pm+40x.test");
	assert_string_equal(l.tenant, "other");
	client_free(c);
	fx_free(fx);
}

static void
on_caps_set(void *arg, int status)
{
	assert_int_equal(status, 0);
	*(bool *)arg = true;
}

static void
fx_set_caps(struct fx *fx, const char *tenant, unsigned ext, uint64_t size_max)
{
	struct spool_caps caps = { .ext = ext, .size_max = size_max, .seen_ms = 1 };
	int64_t end = now_ms() + WAIT_MS;
	bool done = false;

	assert_int_equal(spool_set_caps(fx->sp, tenant, &caps, on_caps_set, &done), 0);
	while (!done && now_ms() < end)
		pump(fx, -1, 20);
	assert_true(done);
}

/* Capability matching at intake, on the RAM spool: with acme's primary
 * known to take 1000 octets and no SMTPUTF8, SIZE=2000 is refused at the
 * first RCPT (552 5.3.4), SMTPUTF8 too (555 5.6.7), and a DATA beyond 1000
 * octets at its end (552 5.3.4), nothing queued; the other tenant, whose
 * primary is unknown, takes all of it. */
static void
test_primary_caps(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	char body[1600];

	client_ehlo(c, NULL, 0);
	fx_set_caps(fx, "acme", SMTP_EXT_SIZE | SMTP_EXT_8BITMIME, 1000);
	client_cmd(c, "MAIL FROM:<s@client.test> SIZE=2000", "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<u@example.test>", "552 5.3.4 Message size exceeds "
	    "the primary's limit (1000 octets)");
	client_cmd(c, "RCPT TO:<v@other.test>", "250 2.1.5 Ok");
	client_cmd(c, "RCPT TO:<u@example.test>", "452 4.5.3 <u@example.test>: "
	    "Recipient of another destination: send it in a new transaction");
	client_cmd(c, "RSET", "250 2.0.0 Ok");
	client_cmd(c, "MAIL FROM:<s@client.test> SIZE=500 SMTPUTF8", "250 2.1.0 Ok");
	client_cmd(c, "RCPT TO:<u@example.test>", "555 5.6.7 SMTPUTF8 is not "
	    "supported by the primary of this domain");
	client_cmd(c, "RCPT TO:<v@other.test>", "250 2.1.5 Ok");
	client_cmd(c, "RSET", "250 2.0.0 Ok");

	/* 20 lines of 80 octets */
	memset(body, 'x', sizeof(body));
	for (size_t i = 78; i < sizeof(body); i += 80)
		memcpy(body + i, "\r\n", 2);
	client_rcpt(c, " SIZE=900", "u@example.test");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: big\r\n\r\n");
	client_send(c, body, sizeof(body));
	client_cmd(c, ".", "552 5.3.4 Message size exceeds the primary's limit "
	    "(1000 octets)");
	client_rcpt(c, "", "u@example.test");
	client_sendf(c, "BDAT %zu LAST\r\n", sizeof(body));
	client_send(c, body, sizeof(body));
	client_expect(c, "552 5.3.4 Message size exceeds the primary's limit "
	    "(1000 octets)");
	assert_int_equal(spool_total_messages(fx->sp), 0);
	client_message(c, "u@example.test", "250 2.0.0 Ok: queued as ");
	client_rcpt(c, "", "v@other.test");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_send(c, body, sizeof(body));
	client_sendf(c, ".\r\n");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");

	/* The primary learned SMTPUTF8 and a bigger SIZE: accepted. */
	fx_set_caps(fx, "acme", SMTP_EXT_SMTPUTF8, 0);
	client_rcpt(c, " SMTPUTF8 SIZE=5000", "u@example.test");
	client_cmd(c, "RSET", "250 2.0.0 Ok");
	client_free(c);
	fx_free(fx);
}

/* recipients = learn: a tenant's RCPT waits for the verifier with the
 * session's input stopped, so a pipelined RCPT behind it is neither asked
 * nor answered before it; each answer gives its reply (250, 550 5.1.1,
 * 450 4.1.1), in order; other tenants never ask. */
static void
test_learn_rcpt_waits(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	int64_t end;

	client_ehlo(c, NULL, 0);
	client_sendf(c, "MAIL FROM:<a@client.test>\r\nRCPT TO:<wait1@learn.test>\r\n"
	    "RCPT TO:<now-ok@learn.test>\r\nRCPT TO:<u@example.test>\r\nNOOP\r\n");
	client_expect(c, "250 2.1.0 Ok");
	/* Nothing more comes while the verifier has not answered. */
	end = now_ms() + 300;
	while (now_ms() < end) {
		(void)client_fill(c);
		pump(fx, c->fd, 20);
	}
	assert_int_equal(c->len, 0);
	assert_int_equal(fx->rec.learn_asked, 1);
	assert_string_equal(fx->rec.learn_addr, "wait1@learn.test");
	assert_string_equal(fx->rec.learn_tenant, "learn");
	learn_answer(&fx->rec, VERIFY_REJECT);
	client_expect_prefix(c, "550 5.1.1 <wait1@learn.test>: ");
	client_expect(c, "250 2.1.5 Ok");        /* now-ok, answered at once */
	assert_int_equal(fx->rec.learn_asked, 2);
	/* One message, one tenant: acme's address waits for the next one. */
	client_expect_prefix(c, "452 4.5.3 ");
	client_expect(c, "250 2.0.0 Ok");
	client_sendf(c, "RCPT TO:<wait2@learn.test>\r\n");
	while (fx->rec.learn_cb == NULL && now_ms() < end + WAIT_MS)
		pump(fx, c->fd, 20);
	learn_answer(&fx->rec, VERIFY_TEMPFAIL);
	client_expect_prefix(c, "450 4.1.1 <wait2@learn.test>: ");
	client_sendf(c, "RCPT TO:<wait3@learn.test>\r\n");
	while (fx->rec.learn_cb == NULL && now_ms() < end + 2 * WAIT_MS)
		pump(fx, c->fd, 20);
	learn_answer(&fx->rec, VERIFY_ACCEPT);
	client_expect(c, "250 2.1.5 Ok");
	client_cmd(c, "DATA", "354 End data with <CR><LF>.<CR><LF>");
	client_sendf(c, "Subject: l\r\n\r\nbody\r\n.\r\n");
	client_expect_prefix(c, "250 2.0.0 Ok: queued as ");
	assert_int_equal(fx->rec.accepted, 1);
	assert_string_equal(fx->rec.accepted_tenant, "learn");
	assert_int_equal(fx->rec.learn_asked, 4);
	client_free(c);
	fx_free(fx);
}

/* A client that leaves while its RCPT waits: the session stays allocated
 * until the answer comes (which then finds a closing session, not freed
 * memory), and the server's close waits for it. */
static void
test_learn_client_gone(void **state)
{
	struct fx *fx = fx_new(NULL, false);
	struct client *c = client_new(fx);
	int64_t end;

	client_ehlo(c, NULL, 0);
	client_cmd(c, "MAIL FROM:<a@client.test>", "250 2.1.0 Ok");
	client_sendf(c, "RCPT TO:<gone@learn.test>\r\n");
	end = now_ms() + WAIT_MS;
	while (fx->rec.learn_cb == NULL && now_ms() < end)
		pump(fx, c->fd, 20);
	assert_non_null(fx->rec.learn_cb);
	client_free(c);
	smtp_server_close(fx->srv, 1000, on_srv_done, fx);
	end = now_ms() + 300;
	while (now_ms() < end)
		pump(fx, -1, 20);
	assert_false(fx->srv_done);   /* the session is still owed an answer */
	learn_answer(&fx->rec, VERIFY_ACCEPT);
	end = now_ms() + WAIT_MS;
	while (!fx->srv_done && now_ms() < end)
		pump(fx, -1, 20);
	assert_true(fx->srv_done);
	fx_free(fx);
}

/* SIGUSR2: idle is silence since the last input or output, in the states
 * between commands only (an injected clock: the times are arguments). */
static void
test_handover_idle_rule(void **state)
{
	struct smtp_session *s = calloc(1, sizeof(*s));
	enum smtp_state busy[] = { SMTP_STATE_MAIL, SMTP_STATE_RCPT, SMTP_STATE_DATA,
	    SMTP_STATE_BDAT, SMTP_STATE_COMMIT, SMTP_STATE_TLS, SMTP_STATE_QUIT };

	(void)state;
	assert_non_null(s);
	s->active_ms = 10000;
	for (int st = SMTP_STATE_INIT; st <= SMTP_STATE_HELO; st++) {
		s->state = (enum smtp_state)st;
		/* Just greeted or answered: about to speak, not idle. */
		assert_int_equal(smtp_server_handover_idle_left(s, 10000, 2000), 2000);
		assert_int_equal(smtp_server_handover_idle_left(s, 11500, 2000), 500);
		assert_int_equal(smtp_server_handover_idle_left(s, 11999, 2000), 1);
		assert_int_equal(smtp_server_handover_idle_left(s, 12000, 2000), 0);
		assert_int_equal(smtp_server_handover_idle_left(s, 99000, 2000), 0);
		/* A clock behind the last activity counts as no silence. */
		assert_int_equal(smtp_server_handover_idle_left(s, 9000, 2000), 2000);
	}
	s->state = SMTP_STATE_HELO;
	for (size_t i = 0; i < sizeof(busy) / sizeof(busy[0]); i++) {
		s->state = busy[i];
		assert_int_equal(smtp_server_handover_idle_left(s, 99000, 2000), -1);
	}
	s->state = SMTP_STATE_HELO;
	s->inlen = 3;            /* part of a command has arrived */
	assert_int_equal(smtp_server_handover_idle_left(s, 99000, 2000), -1);
	s->inlen = 0;
	s->parked = true;        /* a command waits for a DNSBL answer */
	assert_int_equal(smtp_server_handover_idle_left(s, 99000, 2000), -1);
	s->parked = false;
	s->pending = 1;          /* a spool callback outstanding */
	assert_int_equal(smtp_server_handover_idle_left(s, 99000, 2000), -1);
	s->pending = 0;
	s->closing = true;
	assert_int_equal(smtp_server_handover_idle_left(s, 99000, 2000), -1);
	free(s);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_command_sequence),
		cmocka_unit_test(test_accept_hook_per_message),
		cmocka_unit_test(test_commit_failure_is_451),
		cmocka_unit_test(test_storage_full_is_452),
		cmocka_unit_test(test_max_recipients),
		cmocka_unit_test(test_max_errors_closes),
		cmocka_unit_test(test_line_too_long),
		cmocka_unit_test(test_pipelining),
		cmocka_unit_test(test_bdat_refused_chunk),
		cmocka_unit_test(test_etrn),
		cmocka_unit_test(test_close_idle_session),
		cmocka_unit_test(test_starttls_discards_pipelined),
		cmocka_unit_test(test_loop_detection),
		cmocka_unit_test(test_bare_newline_in_data),
		cmocka_unit_test(test_content_before_354_refused),
		cmocka_unit_test(test_postmaster),
		cmocka_unit_test(test_primary_caps),
		cmocka_unit_test(test_learn_rcpt_waits),
		cmocka_unit_test(test_learn_client_gone),
		cmocka_unit_test(test_handover_idle_rule),
	};

	/* A hung test must not hang "make check": every wait is bounded, and
	 * this bounds the whole run. */
	alarm(300);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
