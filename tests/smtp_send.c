/*
 * smtp_send - deliver one file through relay/smtp_client.c, without a spool.
 *
 *   smtp_send HOST PORT FROM TO[,TO...] FILE [options]
 *     --starttls none|opportunistic|required|verify   (default none)
 *     --ca FILE          CA bundle for --starttls verify
 *     --sni NAME         the server's name for SNI / verification (HOST)
 *     --helo NAME        our EHLO name (smtp-send.test)
 *     --count N          send the file N times on one connection (1)
 *     --8bitmime --smtputf8 --ret full|hdrs --envid XTEXT --notify LIST
 *     --orcpt TYPE;XTEXT --timeout MS --probe
 *
 * The file is read in small chunks through the client's read callback, so
 * this also exercises chunked dot-stuffing.  Output, one line each:
 *   rcpt ADDR OUTCOME CODE ENH TEXT        (per recipient, per message)
 *   message N LATENCY_MS PIPELINED
 *   end STATUS CODE ready=0|1 tls=0|1 ext=0xNN messages=N TEXT
 * Exit code: 0 every recipient delivered (or the probe succeeded),
 * 1 a temporary failure, 2 a permanent failure, 3 the session failed
 * before any message, 64 usage.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "mxspool/smtp_client.h"
#include "mxspool/tls.h"

/* Small on purpose: a message crosses many chunk boundaries. */
#define SEND_CHUNK 7

struct send_state {
	FILE *f;
	struct smtp_client_msg msg;
	unsigned count, done;
	int worst;                    /* 0 ok, 1 temp, 2 perm */
	int end_status;
	bool ready;
	bool probe;
};

static int
send_read(void *arg, uint64_t off, size_t max, smtp_client_chunk_cb cb,
    void *cbarg)
{
	struct send_state *s = arg;
	char buf[SEND_CHUNK];
	size_t n;

	if (max > sizeof(buf))
		max = sizeof(buf);
	if (fseeko(s->f, (off_t)off, SEEK_SET) != 0)
		return -errno;
	n = fread(buf, 1, max, s->f);
	if (n == 0 && ferror(s->f))
		return -EIO;
	cb(cbarg, 0, buf, n);
	return 0;
}

static const char *
outcome_name(enum smtp_client_outcome o)
{
	return o == SMTP_CLIENT_DELIVERED ? "delivered" :
	    o == SMTP_CLIENT_PERMFAIL ? "permfail" : "tempfail";
}

static void
on_ready(void *arg, struct smtp_client *c)
{
	struct send_state *s = arg;

	s->ready = true;
	if (smtp_client_send(c, &s->msg) != 0)
		smtp_client_abort(c);
}

static void
on_sent(void *arg, struct smtp_client *c, const struct smtp_client_result *res)
{
	struct send_state *s = arg;

	for (size_t i = 0; i < res->msg->nrcpt; i++) {
		const struct smtp_client_reply *r = &res->rcpt[i];
		int w = r->outcome == SMTP_CLIENT_DELIVERED ? 0 :
		    r->outcome == SMTP_CLIENT_TEMPFAIL ? 1 : 2;

		for (char *p = (char *)r->text; *p; p++)
			if (*p == '\n')
				*p = '|';
		printf("rcpt %s %s %d %s %s\n", res->msg->rcpt[i].addr,
		    outcome_name(r->outcome), r->code, r->enh[0] ? r->enh : "-",
		    r->text);
		if (w > s->worst)
			s->worst = w;
	}
	s->done++;
	printf("message %u %lld %d\n", s->done, (long long)res->dot_latency_ms,
	    res->pipelined ? 1 : 0);
	if (res->status != 0)
		return;
	if (s->done < s->count) {
		if (smtp_client_send(c, &s->msg) != 0)
			smtp_client_abort(c);
	} else {
		smtp_client_quit(c);
	}
}

static void
on_closed(void *arg, const struct smtp_client_end *end)
{
	struct send_state *s = arg;

	s->end_status = end->status;
	s->ready = end->ready;
	printf("end %d %d ready=%d tls=%d ext=0x%x messages=%u %s%s%s\n",
	    end->status, end->code, end->ready ? 1 : 0, end->tls ? 1 : 0, end->ext,
	    end->messages, end->text, end->tls ? " using " : "", end->tls_info);
}

static int
usage(void)
{
	fprintf(stderr, "usage: smtp_send HOST PORT FROM TO[,TO...] FILE "
	    "[--starttls MODE] [--ca FILE] [--sni NAME] [--helo NAME] [--count N]\n"
	    "       [--8bitmime] [--smtputf8] [--ret full|hdrs] [--envid X] "
	    "[--notify LIST] [--orcpt X] [--timeout MS] [--probe]\n");
	return 64;
}

static unsigned
parse_notify(const char *s)
{
	unsigned v = 0;

	if (strstr(s, "NEVER"))
		v |= ENV_NOTIFY_NEVER;
	if (strstr(s, "SUCCESS"))
		v |= ENV_NOTIFY_SUCCESS;
	if (strstr(s, "FAILURE"))
		v |= ENV_NOTIFY_FAILURE;
	if (strstr(s, "DELAY"))
		v |= ENV_NOTIFY_DELAY;
	return v;
}

int
main(int argc, char **argv)
{
	static const struct smtp_client_callbacks cbs = { on_ready, on_sent, on_closed };
	struct send_state s;
	struct smtp_client_options o;
	struct smtp_client *c;
	struct sockaddr_storage ss;
	struct smtp_client_rcpt rcpt[64];
	const char *mode = "none", *ca = NULL, *sni = NULL, *notify = NULL;
	const char *orcpt = NULL;
	struct tls_ctx *ctx = NULL;
	char err[256], *tos, *tok, *save = NULL;
	uv_loop_t loop;
	size_t n = 0;
	int rc;

	if (argc < 6)
		return usage();
	memset(&s, 0, sizeof(s));
	memset(&o, 0, sizeof(o));
	memset(&ss, 0, sizeof(ss));
	s.count = 1;
	o.helo_name = "smtp-send.test";
	o.timeout_ms = 30000;
	for (int i = 6; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--8bitmime") == 0) {
			s.msg.body = ENV_BODY_8BITMIME;
		} else if (strcmp(a, "--smtputf8") == 0) {
			s.msg.smtputf8 = true;
		} else if (strcmp(a, "--probe") == 0) {
			o.probe = true;
		} else if (v == NULL) {
			return usage();
		} else {
			i++;
			if (strcmp(a, "--starttls") == 0)
				mode = v;
			else if (strcmp(a, "--ca") == 0)
				ca = v;
			else if (strcmp(a, "--sni") == 0)
				sni = v;
			else if (strcmp(a, "--helo") == 0)
				o.helo_name = v;
			else if (strcmp(a, "--count") == 0)
				s.count = (unsigned)strtoul(v, NULL, 10);
			else if (strcmp(a, "--ret") == 0)
				s.msg.ret = strcmp(v, "full") == 0 ? ENV_RET_FULL : ENV_RET_HDRS;
			else if (strcmp(a, "--envid") == 0)
				s.msg.envid = v;
			else if (strcmp(a, "--notify") == 0)
				notify = v;
			else if (strcmp(a, "--orcpt") == 0)
				orcpt = v;
			else if (strcmp(a, "--timeout") == 0)
				o.timeout_ms = strtoull(v, NULL, 10);
			else
				return usage();
		}
	}
	if (inet_pton(AF_INET, argv[1], &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)atoi(argv[2]));
	} else if (inet_pton(AF_INET6, argv[1],
	    &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)atoi(argv[2]));
	} else {
		fprintf(stderr, "smtp_send: HOST must be an IP address\n");
		return 64;
	}
	tos = argv[4];
	for (tok = strtok_r(tos, ",", &save); tok && n < 64;
	    tok = strtok_r(NULL, ",", &save)) {
		rcpt[n].addr = tok;
		rcpt[n].orcpt = orcpt;
		rcpt[n].notify = notify ? parse_notify(notify) : 0;
		n++;
	}
	s.f = fopen(argv[5], "rb");
	if (s.f == NULL) {
		perror(argv[5]);
		return 64;
	}
	if (fseeko(s.f, 0, SEEK_END) == 0)
		s.msg.size = (uint64_t)ftello(s.f);
	s.msg.sender = argv[3];
	s.msg.rcpt = rcpt;
	s.msg.nrcpt = n;
	s.msg.read = send_read;
	s.msg.read_arg = &s;

	if (strcmp(mode, "none") == 0) {
		o.tls_mode = SMTP_CLIENT_TLS_NONE;
	} else {
		enum tls_client_mode m = TLS_CLIENT_OPPORTUNISTIC;

		if (strcmp(mode, "opportunistic") == 0) {
			o.tls_mode = SMTP_CLIENT_TLS_OPPORTUNISTIC;
		} else if (strcmp(mode, "required") == 0) {
			o.tls_mode = SMTP_CLIENT_TLS_REQUIRED;
			m = TLS_CLIENT_REQUIRED;
		} else if (strcmp(mode, "verify") == 0) {
			o.tls_mode = SMTP_CLIENT_TLS_VERIFY;
			m = TLS_CLIENT_VERIFY;
		} else {
			return usage();
		}
		if (tls_client_ctx_new(m, ca, &ctx, err, sizeof(err)) != TLS_OK) {
			fprintf(stderr, "smtp_send: %s\n", err);
			return 64;
		}
	}
	o.tls_ctx = ctx;
	o.host = sni ? sni : argv[1];
	o.addr = (const struct sockaddr *)&ss;

	if (uv_loop_init(&loop) != 0)
		return 70;
	o.loop = &loop;
	s.probe = o.probe;
	rc = smtp_client_new(&o, &cbs, &s, &c);
	if (rc != 0) {
		fprintf(stderr, "smtp_send: %s\n", smtp_client_strerror(rc));
		return 70;
	}
	(void)uv_run(&loop, UV_RUN_DEFAULT);
	rc = uv_loop_close(&loop);
	tls_ctx_free(ctx);
	fclose(s.f);
	if (rc != 0) {
		fprintf(stderr, "smtp_send: handles left open at exit\n");
		return 70;
	}
	fflush(stdout);
	if (s.probe)
		return s.end_status == 0 && s.ready ? 0 : 3;
	if (s.done == 0)
		return 3;
	return s.worst;
}
