/*
 * smtp-load.c - an SMTP load generator that times every message: N sessions
 * over loopback send M messages of SIZE bytes in all, and each message's
 * end of data -> final reply latency is recorded.  A benchmark tool, not a
 * test: it prints figures and never judges them.
 *
 *   smtp-load HOST PORT SESSIONS MESSAGES SIZE [FROM [TO [RATE]]]
 *
 * Each session: 220, EHLO, then per message MAIL, RCPT and DATA in one
 * write (PIPELINING: both mxspool and Postfix offer it), the body after the
 * 354 and the end-of-data dot, and the wait for the reply, which is what a
 * durable relay answers only after its fdatasync.  Every session keeps its
 * connection for all of its messages, as smtp-source does.  Output (one
 * line, key=value, for the scripts that compare runs):
 *   messages=N errors=E seconds=T rate=R p50_ms=A p99_ms=B max_ms=C
 * A reply other than 250 at any step counts as an error; the session then
 * sends RSET and goes on, so a refusing server cannot hang the run.
 * RATE (messages/s, 0 = as fast as the server answers) paces the offered
 * load: message k of the run may start no earlier than k / RATE seconds in,
 * which is how latency "at half the peak load" is measured.
 */
#include "config.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

enum load_step { ST_GREETING, ST_EHLO, ST_MAIL, ST_RCPT, ST_DATA, ST_DOT, ST_RSET };

struct load_session {
	uv_tcp_t tcp;
	uv_timer_t pace;
	uv_connect_t conn;
	enum load_step step;
	char in[8192];
	size_t inlen;
	uint64_t dot_ns;
	unsigned left;               /* messages this session still sends */
	bool failed;
};

struct load_run {
	uv_loop_t *loop;
	const char *from, *to;
	char *body;                  /* SIZE bytes of text, CRLF lines, dot-safe */
	size_t bodylen;
	double *lat_ms;
	uint64_t done, errors, total;
	unsigned open;
	double rate;                 /* 0 = unpaced */
	uint64_t started, t0_ns;     /* messages begun; the run's start */
};

static struct load_run run;

static void
die(const char *what, int rc)
{
	fprintf(stderr, "smtp-load: %s: %s\n", what, rc ? uv_strerror(rc) : "failed");
	exit(1);
}

static void
on_written(uv_write_t *w, int status)
{
	if (status < 0)
		fprintf(stderr, "smtp-load: write: %s\n", uv_strerror(status));
	free(w->data);
	free(w);
}

static void
send_text(struct load_session *s, const char *text, size_t len)
{
	uv_write_t *w = malloc(sizeof(*w));
	char *copy = malloc(len);
	uv_buf_t b;
	int rc;

	if (w == NULL || copy == NULL)
		die("out of memory", 0);
	memcpy(copy, text, len);
	w->data = copy;
	b = uv_buf_init(copy, (unsigned)len);
	if ((rc = uv_write(w, (uv_stream_t *)&s->tcp, &b, 1, on_written)) < 0)
		die("uv_write", rc);
}

static void
on_closed(uv_handle_t *h)
{
	(void)h;
	run.open--;
}

static void
session_close(struct load_session *s)
{
	uv_close((uv_handle_t *)&s->pace, NULL);
	uv_close((uv_handle_t *)&s->tcp, on_closed);
}

static void
session_end(struct load_session *s)
{
	uv_read_stop((uv_stream_t *)&s->tcp);
	send_text(s, "QUIT\r\n", 6);
	session_close(s);
}

static void
send_transaction(struct load_session *s)
{
	char cmd[1200];
	int n = snprintf(cmd, sizeof(cmd), "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n",
	    run.from, run.to);

	s->step = ST_MAIL;
	send_text(s, cmd, (size_t)n);
}

static void
on_pace(uv_timer_t *t)
{
	send_transaction(t->data);
}

static void
next_message(struct load_session *s)
{
	uint64_t due_ns, now;

	if (s->left == 0) {
		session_end(s);
		return;
	}
	s->left--;
	due_ns = run.rate > 0 ? run.t0_ns + (uint64_t)((double)run.started * 1e9 / run.rate) : 0;
	run.started++;
	now = uv_hrtime();
	if (due_ns > now + 500000) {
		uv_timer_start(&s->pace, on_pace, (due_ns - now) / 1000000, 0);
		return;
	}
	send_transaction(s);
}

/* One complete reply (the last line of a multi-line one) with CODE. */
static void
on_reply(struct load_session *s, int code)
{
	bool ok;

	switch (s->step) {
	case ST_GREETING:
		if (code != 220) {
			run.errors += s->left;
			s->left = 0;
			session_end(s);
			return;
		}
		s->step = ST_EHLO;
		send_text(s, "EHLO smtp-load.test\r\n", 21);
		return;
	case ST_EHLO:
		if (code != 250) {
			run.errors += s->left;
			s->left = 0;
			session_end(s);
			return;
		}
		next_message(s);
		return;
	case ST_MAIL:
		s->failed = code != 250;
		s->step = ST_RCPT;
		return;
	case ST_RCPT:
		s->failed |= code != 250;
		s->step = ST_DATA;
		return;
	case ST_DATA:
		if (code != 354 || s->failed) {
			/* DATA refused (or pipelined after a refusal): start over. */
			run.errors++;
			s->step = ST_RSET;
			if (code == 354)
				send_text(s, ".\r\n", 3);
			else
				send_text(s, "RSET\r\n", 6);
			return;
		}
		s->step = ST_DOT;
		send_text(s, run.body, run.bodylen);
		s->dot_ns = uv_hrtime();
		return;
	case ST_DOT:
		ok = code == 250;
		if (ok) {
			if (run.done < run.total)
				run.lat_ms[run.done] = (double)(uv_hrtime() - s->dot_ns) / 1e6;
			run.done++;
		} else {
			run.errors++;
		}
		next_message(s);
		return;
	case ST_RSET:
		next_message(s);
		return;
	}
}

static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	struct load_session *s = h->data;

	(void)hint;
	b->base = s->in + s->inlen;
	b->len = sizeof(s->in) - s->inlen;
}

static void
on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
	struct load_session *s = st->data;
	size_t start = 0;

	(void)b;
	if (n < 0) {
		fprintf(stderr, "smtp-load: read: %s\n", uv_strerror((int)n));
		run.errors += s->left + (s->step == ST_DOT);
		s->left = 0;
		session_close(s);
		return;
	}
	s->inlen += (size_t)n;
	for (size_t i = 0; i < s->inlen; i++) {
		if (s->in[i] != '\n')
			continue;
		/* "250-..." continues, "250 ..." ends a reply. */
		if (i - start >= 3 && (i - start == 3 || s->in[start + 3] != '-'))
			on_reply(s, atoi(s->in + start));
		start = i + 1;
		if (uv_is_closing((uv_handle_t *)&s->tcp))
			return;
	}
	memmove(s->in, s->in + start, s->inlen - start);
	s->inlen -= start;
	if (s->inlen == sizeof(s->in))
		s->inlen = 0;   /* a line longer than the buffer: drop it */
}

static void
on_connect(uv_connect_t *c, int status)
{
	struct load_session *s = c->data;

	if (status < 0) {
		fprintf(stderr, "smtp-load: connect: %s\n", uv_strerror(status));
		run.errors += s->left;
		s->left = 0;
		session_close(s);
		return;
	}
	s->step = ST_GREETING;
	uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static char *
make_body(size_t size, size_t *len)
{
	static const char head[] = "Subject: smtp-load\r\nFrom: <load@client.test>\r\n\r\n";
	char *b = malloc(size + sizeof(head) + 8);
	size_t n = strlen(head);

	if (b == NULL)
		die("out of memory", 0);
	memcpy(b, head, n);
	while (n + 2 < size) {
		size_t line = size - n - 2 < 76 ? size - n - 2 : 76;

		memset(b + n, 'x', line);
		n += line;
		b[n++] = '\r';
		b[n++] = '\n';
	}
	memcpy(b + n, ".\r\n", 3);
	*len = n + 3;
	return b;
}

int
main(int argc, char **argv)
{
	struct sockaddr_in addr;
	struct load_session *ss;
	unsigned nsess;
	uint64_t t0;
	double secs;
	int rc;

	if (argc < 6) {
		fprintf(stderr, "usage: smtp-load HOST PORT SESSIONS MESSAGES SIZE "
		    "[FROM [TO [RATE]]]\n");
		return 64;
	}
	nsess = (unsigned)strtoul(argv[3], NULL, 10);
	run.total = strtoull(argv[4], NULL, 10);
	run.from = argc > 6 ? argv[6] : "load@client.test";
	run.to = argc > 7 ? argv[7] : "user@example.test";
	run.rate = argc > 8 ? strtod(argv[8], NULL) : 0;
	if (nsess == 0 || run.total == 0 || nsess > run.total) {
		fprintf(stderr, "smtp-load: need 0 < SESSIONS <= MESSAGES\n");
		return 64;
	}
	if ((rc = uv_ip4_addr(argv[1], atoi(argv[2]), &addr)) < 0)
		die("address", rc);
	run.body = make_body(strtoul(argv[5], NULL, 10), &run.bodylen);
	run.lat_ms = calloc(run.total, sizeof(double));
	ss = calloc(nsess, sizeof(*ss));
	if (run.lat_ms == NULL || ss == NULL)
		die("out of memory", 0);
	run.loop = uv_default_loop();
	t0 = run.t0_ns = uv_hrtime();
	for (unsigned i = 0; i < nsess; i++) {
		struct load_session *s = &ss[i];

		s->left = (unsigned)(run.total / nsess + (i < run.total % nsess));
		uv_tcp_init(run.loop, &s->tcp);
		uv_timer_init(run.loop, &s->pace);
		s->pace.data = s;
		uv_tcp_nodelay(&s->tcp, 1);
		s->tcp.data = s;
		s->conn.data = s;
		if ((rc = uv_tcp_connect(&s->conn, &s->tcp, (const struct sockaddr *)&addr,
		    on_connect)) < 0)
			die("connect", rc);
		run.open++;
	}
	uv_run(run.loop, UV_RUN_DEFAULT);
	secs = (double)(uv_hrtime() - t0) / 1e9;
	qsort(run.lat_ms, run.done < run.total ? run.done : run.total, sizeof(double),
	    cmp_double);
	printf("messages=%" PRIu64 " errors=%" PRIu64 " seconds=%.3f rate=%.1f "
	    "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n", run.done, run.errors, secs,
	    (double)run.done / secs,
	    run.done ? run.lat_ms[run.done / 2] : 0.0,
	    run.done ? run.lat_ms[(size_t)((double)run.done * 0.99)] : 0.0,
	    run.done ? run.lat_ms[run.done - 1] : 0.0);
	free(ss);
	free(run.lat_ms);
	free(run.body);
	return run.errors ? 1 : 0;
}
