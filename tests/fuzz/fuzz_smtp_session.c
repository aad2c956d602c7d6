/*
 * fuzz_smtp_session.c - libFuzzer target, structure-aware: whole SMTP
 * sessions against the real server state machine (relay/smtp_server.c,
 * smtp_session*.c, policy.c) with the spool on its RAM backend.
 *
 * One server and one loop live for the whole run (127.0.0.1, a port the
 * kernel picks); each input is one client connection.  The input is a
 * script, one command per line, its first octet choosing what to send, so
 * the fuzzer works on sessions rather than on bytes:
 *   E/H arg   EHLO/HELO arg (client.test if empty)
 *   M arg     MAIL FROM:arg (<alice@example.org> if empty; params follow)
 *   R arg     RCPT TO:arg (<bob@example.test> if empty)
 *   D text    DATA, then TEXT with '|' as line breaks, then CRLF.CRLF
 *   B text    BDAT <len> LAST with TEXT as the chunk ('+' first: no LAST)
 *   S N Q     RSET, NOOP, QUIT        V/T/P arg  VRFY, ETRN, HELP
 *   X         STARTTLS (the server has a self-signed certificate)
 *   Z bytes   everything after the Z to the end of the input, as it is
 *             (after STARTTLS: a TLS ClientHello, or garbage, for the pump)
 *   anything else is sent as it is, NULs and bare CRs included, with CRLF.
 * Byte 0 of the input picks the size of the client's writes (1..128, so
 * commands arrive split anywhere) and, with its top bit, lock-step (wait
 * for each reply) instead of pipelining.  Either way the client waits, as
 * RFC 5321 and 2920 ask, for the greeting and for the reply to DATA before
 * it sends the text; a wait ends after SYNC_QUIET_MS of silence.  After
 * the script the client waits for the last reply (or silence, or the
 * server's close) and resets the connection.  Checks:
 *   - every reply line is CRLF-terminated, at most 512 octets, and starts
 *     with a 2xx-5xx code and ' ' or '-'; the first is 220 (or 421); after
 *     "220 2.0.0 Ready to start TLS" the bytes are TLS and not checked;
 *   - the session ends by itself once the client is gone (no hang) and
 *     the server has no session left afterwards;
 *   - each on_accepted call is one message in the spool, for a tenant of
 *     the config, and each "250 2.0.0 Ok: queued as" the client read is
 *     one of them (a 250 the reset cut off may be missing).
 * Spooled messages are deleted after each input so memory stays flat.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define SCRIPT_MAX (256u * 1024)
#define REPLY_LINE_MAX 512
#define SESSION_DEADLINE_MS 10000   /* one input; generous for ASan */
/* A wait for a reply gives up after this long without a byte from the
 * server: the script may have put it into DATA ("dAtA" as a raw line),
 * where no reply comes until the end of the text. */
#define SYNC_QUIET_MS 50

struct fz {
	uv_loop_t loop;
	struct config *cfg;
	struct spool *sp;
	struct smtp_server *srv;
	struct tls_ctx *tls;          /* NULL when openssl(1) could not make a cert */
	int port;
	unsigned accepted;
	bool bad_tenant;
	char dir[64];
};

static void
on_accepted(void *arg, const char *tenant, double latency_s)
{
	struct fz *fz = arg;

	(void)latency_s;
	fz->accepted++;
	if (strcmp(tenant, "acme") != 0 && strcmp(tenant, "other") != 0)
		fz->bad_tenant = true;
}

static void
on_etrn(void *arg, const char *tenant)
{
	(void)arg;
	(void)tenant;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct fz *fz_get(void);

/* At exit: the scratch directory with the recipients file and the cert. */
static void
fz_cleanup(void)
{
	static const char *const names[] = { "recipients", "cert.pem", "key.pem" };
	struct fz *fz = fz_get();
	char path[128];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", fz->dir, names[i]);
		(void)unlink(path);
	}
	(void)rmdir(fz->dir);
}

static struct fz *
fz_get(void)
{
	static struct fz *fz;   /* one server for the whole run */
	struct spool_options so = { .backend = "ram", .disk_reserve = 0 };
	struct smtp_server_deps deps = { 0 };
	char text[2048], path[128], err[512], cmd[512], cert[128], key[128];
	FILE *fp;

	if (fz != NULL)
		return fz;
	fz = calloc(1, sizeof(*fz));
	CHECK(fz != NULL && uv_loop_init(&fz->loop) == 0);
	snprintf(fz->dir, sizeof(fz->dir), "/tmp/fuzz_smtp_session.XXXXXX");
	CHECK(mkdtemp(fz->dir) != NULL);
	CHECK(atexit(fz_cleanup) == 0);
	snprintf(path, sizeof(path), "%s/recipients", fz->dir);
	fp = fopen(path, "w");
	CHECK(fp != NULL);
	fputs("bob@example.test\ncarol@example.test\n@sub.example.test\n", fp);
	CHECK(fclose(fp) == 0);
	snprintf(text, sizeof(text),
	    "[server]\n"
	    "hostname = mx.test\n"
	    "listen = 127.0.0.1:25\n"
	    "spool_dir = %s/spool\n"
	    "control_socket = %s/control.sock\n"
	    "max_recipients = 4\n"
	    "max_errors = 8\n"
	    "max_message_size = 64k\n"
	    "max_received = 5\n"
	    "[tenant:acme]\n"
	    "domains = example.test, sub.example.test\n"
	    "primary = 127.0.0.1:9\n"
	    "recipients = %s\n"
	    "[tenant:other]\n"
	    "domains = other.test\n"
	    "primary = 127.0.0.1:9\n"
	    "etrn_from = 127.0.0.0/8\n",
	    fz->dir, fz->dir, path);
	fp = fmemopen(text, strlen(text), "r");
	CHECK(fp != NULL);
	if (config_load_stream(fp, "fuzz.ini", &fz->cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz_smtp_session: config: %s\n", err);
		abort();
	}
	fclose(fp);
	fz->cfg->listen[0].port = 0;   /* the kernel picks */
	/* STARTTLS needs a certificate: a throwaway one, made once. */
	snprintf(cert, sizeof(cert), "%s/cert.pem", fz->dir);
	snprintf(key, sizeof(key), "%s/key.pem", fz->dir);
	snprintf(cmd, sizeof(cmd), "openssl req -x509 -newkey ec -pkeyopt "
	    "ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=mx.test "
	    "-keyout %s -out %s >/dev/null 2>&1", key, cert);
	if (system(cmd) != 0 ||
	    tls_server_ctx_new(cert, key, &fz->tls, err, sizeof(err)) != TLS_OK)
		fz->tls = NULL;
	CHECK(spool_open(&fz->loop, &so, &fz->sp, NULL) == 0);
	deps.loop = &fz->loop;
	deps.hooks.arg = fz;
	deps.hooks.on_accepted = on_accepted;
	deps.hooks.on_etrn = on_etrn;
	if (smtp_server_new(&deps, fz->cfg, fz->tls, &fz->srv, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz_smtp_session: server: %s\n", err);
		abort();
	}
	CHECK(smtp_server_start(fz->srv, fz->sp) == 0);
	fz->port = smtp_server_local_port(fz->srv, 0);
	CHECK(fz->port > 0);
	return fz;
}

/* ---- the script ------------------------------------------------------------ */

#define SYNC_MAX 4096

/* The client bytes, and where it must wait: before octet OFF may go, the
 * server must have given WANT final reply lines (or closed). */
struct buf {
	char *p;
	size_t len;
	unsigned replies;             /* final replies the script asks for */
	bool lockstep;
	size_t nsync;
	struct { size_t off; unsigned want; } sync[SYNC_MAX];
};

static void
sync_here(struct buf *b)
{
	if (b->nsync < SYNC_MAX) {
		b->sync[b->nsync].off = b->len;
		b->sync[b->nsync].want = b->replies;
		b->nsync++;
	}
}

static void
put(struct buf *b, const void *s, size_t n)
{
	if (b->len + n > SCRIPT_MAX)
		n = SCRIPT_MAX - b->len;
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void
puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void
put_arg(struct buf *b, const char *verb, const char *arg, size_t n,
    const char *dflt)
{
	puts_(b, verb);
	if (n > 0)
		put(b, arg, n);
	else
		puts_(b, dflt);
	puts_(b, "\r\n");
}

/* DATA text: '|' is a line break; the end is always sent.  The text waits
 * for the reply to DATA. */
static void
put_data(struct buf *b, const char *s, size_t n)
{
	puts_(b, "DATA\r\n");
	b->replies++;
	sync_here(b);
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '|')
			puts_(b, "\r\n");
		else
			put(b, s + i, 1);
	}
	puts_(b, "\r\n.\r\n");
}

static void
put_bdat(struct buf *b, const char *s, size_t n)
{
	char head[64];
	bool last = !(n > 0 && s[0] == '+');

	if (!last) {
		s++;
		n--;
	}
	snprintf(head, sizeof(head), "BDAT %zu%s\r\n", n, last ? " LAST" : "");
	puts_(b, head);
	put(b, s, n);
}

static void
script_line(struct buf *b, const char *l, size_t n)
{
	const char *a = n > 1 ? l + 1 : "";
	size_t an = n > 1 ? n - 1 : 0;

	/* One space after the letter is part of the grammar, not the arg. */
	if (an > 0 && a[0] == ' ') {
		a++;
		an--;
	}
	if (b->lockstep)
		sync_here(b);
	b->replies++;
	switch (n > 0 ? l[0] : '\0') {
	case 'E': put_arg(b, "EHLO ", a, an, "client.test"); break;
	case 'H': put_arg(b, "HELO ", a, an, "client.test"); break;
	case 'M': put_arg(b, "MAIL FROM:", a, an, "<alice@example.org>"); break;
	case 'R': put_arg(b, "RCPT TO:", a, an, "<bob@example.test>"); break;
	case 'D': put_data(b, a, an); break;
	case 'B': put_bdat(b, a, an); break;
	case 'S': puts_(b, "RSET\r\n"); break;
	case 'N': puts_(b, "NOOP\r\n"); break;
	case 'Q': puts_(b, "QUIT\r\n"); break;
	case 'V': put_arg(b, "VRFY ", a, an, "bob"); break;
	case 'T': put_arg(b, "ETRN ", a, an, "other.test"); break;
	case 'P': put_arg(b, "HELP ", a, an, ""); break;
	case 'X': puts_(b, "STARTTLS\r\n"); break;
	default:
		put(b, l, n);
		puts_(b, "\r\n");
		break;
	}
}

/* ---- the client ------------------------------------------------------------ */

struct replies {
	char line[REPLY_LINE_MAX + 1];
	size_t len;
	unsigned lines, finals, queued;
	bool tls;                     /* STARTTLS answered: the rest is TLS */
};

/* Check every complete reply line in the octets received. */
static void
replies_push(struct replies *r, const char *p, size_t n)
{
	for (size_t i = 0; i < n && !r->tls; i++) {
		CHECK(r->len < REPLY_LINE_MAX);   /* 512 with CRLF */
		r->line[r->len++] = p[i];
		if (p[i] != '\n')
			continue;
		CHECK(r->len >= 6 && r->line[r->len - 2] == '\r');
		for (size_t k = 0; k < r->len - 2; k++)
			CHECK(r->line[k] != '\r' && r->line[k] != '\n' &&
			    r->line[k] != '\0');
		CHECK(r->line[0] >= '2' && r->line[0] <= '5');
		CHECK(r->line[1] >= '0' && r->line[1] <= '9');
		CHECK(r->line[2] >= '0' && r->line[2] <= '9');
		CHECK(r->line[3] == ' ' || r->line[3] == '-');
		if (r->lines == 0)
			CHECK(memcmp(r->line, "220 ", 4) == 0 ||
			    memcmp(r->line, "421 ", 4) == 0);
		if (r->len > 23 && memcmp(r->line, "250 2.0.0 Ok: queued as ", 24) == 0)
			r->queued++;
		if (r->line[3] == ' ')
			r->finals++;
		if (r->len == 30 && memcmp(r->line, "220 2.0.0 Ready to start TLS\r\n",
		    30) == 0)
			r->tls = true;
		r->lines++;
		r->len = 0;
	}
}

/* Wait a little for FD or the loop, then run the loop without blocking. */
static void
pump(struct fz *fz, int fd, short events)
{
	struct pollfd pf[2] = {
		{ .fd = uv_backend_fd(&fz->loop), .events = POLLIN },
		{ .fd = fd, .events = events },
	};
	int t = uv_backend_timeout(&fz->loop);

	if (t < 0 || t > 5)
		t = 5;
	(void)poll(pf, 2, t);
	uv_run(&fz->loop, UV_RUN_NOWAIT);
}

static void
run_session(struct fz *fz, const struct buf *script, size_t step,
    struct replies *rep)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	int64_t end = now_ms() + SESSION_DEADLINE_MS, heard = now_ms();
	size_t sent = 0, next_sync = 0;
	bool eof = false;
	char in[8192];
	int fd, one = 1;

	sin.sin_port = htons((uint16_t)fz->port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* Blocking connect: the kernel completes it from the backlog.  The
	 * machine is shared: while another test floods loopback, the
	 * ephemeral ports can run out for a moment; wait for one rather than
	 * call that a bug of ours (our listener must still be there). */
	for (int tries = 0;; tries++) {
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		CHECK(fd >= 0);
		if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0)
			break;
		if ((errno != EADDRNOTAVAIL && errno != EAGAIN) || tries == 100) {
			fprintf(stderr, "fuzz_smtp_session: connect: %s\n",
			    strerror(errno));
			abort();
		}
		close(fd);
		usleep(100000);
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
	while (!eof) {
		ssize_t n;

		CHECK(now_ms() < end);   /* a session that never ends */
		/* Past STARTTLS no reply is read any more: send the rest. */
		while (next_sync < script->nsync &&
		    (rep->tls || rep->finals >= script->sync[next_sync].want ||
		    (sent == script->sync[next_sync].off && rep->lines > 0 &&
		    now_ms() - heard > SYNC_QUIET_MS)))
			next_sync++;
		if (rep->lines == 0) {
			/* The greeting first: no early talking. */
		} else if (sent < script->len) {
			size_t limit = next_sync < script->nsync ?
			    script->sync[next_sync].off : script->len;
			size_t want = limit - sent < step ? limit - sent : step;

			n = want == 0 ? 0 : send(fd, script->p + sent, want,
			    MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				sent = script->len;   /* the server closed on us */
		} else if (rep->tls || rep->finals >= script->replies ||
		    now_ms() - heard > SYNC_QUIET_MS) {
			break;   /* everything sent and answered, or silence */
		}
		pump(fz, fd, POLLIN);
		while ((n = recv(fd, in, sizeof(in), 0)) > 0) {
			replies_push(rep, in, (size_t)n);
			heard = now_ms();
		}
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			eof = true;
	}
	/* Go away with a reset, not a FIN: the end that closes first sits in
	 * TIME_WAIT for a minute, and at a thousand sessions a second the
	 * machine's ephemeral ports would run out (connect() then fails, for
	 * every test on the machine).  The server must then drop the session
	 * whatever state it was in. */
	{
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(fd);
	/* The session's memory goes in close callbacks and spool callbacks. */
	while (smtp_server_connections(fz->srv) > 0) {
		CHECK(now_ms() < end);
		pump(fz, -1, 0);
	}
}

struct collect {
	spool_qid qids[256];
	size_t n;
	bool bad;
};

static int
on_item(void *arg, const struct spool_item *it)
{
	struct collect *c = arg;

	if (strcmp(it->tenant, "acme") != 0 && strcmp(it->tenant, "other") != 0)
		c->bad = true;
	if (c->n < sizeof(c->qids) / sizeof(c->qids[0]))
		c->qids[c->n++] = it->qid;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz *fz = fz_get();
	struct buf *script;
	struct replies rep = { 0 };
	struct collect c = { 0 };
	size_t step, start = 1;
	unsigned before = fz->accepted;
	uint64_t queued;

	if (size == 0)
		return 0;
	script = calloc(1, sizeof(*script));
	CHECK(script != NULL);
	step = (size_t)(data[0] & 0x7f) + 1;
	script->lockstep = (data[0] & 0x80) != 0;
	script->p = malloc(SCRIPT_MAX);
	CHECK(script->p != NULL);
	for (size_t i = 1; i <= size; i++) {
		if (i == start && i < size && data[i] == 'Z') {
			/* The rest of the input, raw, once every command so
			 * far is answered (the TLS handshake after STARTTLS). */
			sync_here(script);
			put(script, data + i + 1, size - i - 1);
			break;
		}
		if (i < size && data[i] != '\n')
			continue;
		script_line(script, (const char *)data + start, i - start);
		start = i + 1;
	}
	run_session(fz, script, step, &rep);
	free(script->p);
	free(script);

	queued = spool_total_messages(fz->sp);
	CHECK(!fz->bad_tenant);
	CHECK(fz->accepted - before == queued);
	CHECK(rep.queued <= queued);
	spool_foreach(fz->sp, NULL, on_item, &c);
	CHECK(!c.bad && c.n == queued);
	for (size_t i = 0; i < c.n; i++)
		CHECK(spool_delete(fz->sp, c.qids[i], NULL, NULL) == 0);
	while (spool_total_messages(fz->sp) > 0)
		pump(fz, -1, 0);
	return 0;
}
