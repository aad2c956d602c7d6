/*
 * dns_query - drive relay/dns.c from the command line, for the integration
 * tests (tests/integration/test_dns_resolver.py).
 *
 *   dns_query [-w] [-s SELF]... SERVER[:PORT] TYPE NAME [TYPE NAME]...
 *
 * SERVER is a c-ares server list ("127.0.0.1:5353", "[::1]:5353") or "-"
 * for /etc/resolv.conf.  TYPE is
 *   mx         print "PREFERENCE HOST" per MX record (for NODATA, the
 *              implicit MX "0 NAME");
 *   addr       print one address per line, AAAA first, then A;
 *   primaries  the MX hosts to relay to when our names are the -s SELF
 *              arguments (dns_select_primaries, ties in DNS order).
 * All queries run on one resolver, so later ones may come from its cache.
 * With several queries a line "--" follows each result; with -w the program
 * waits for a line on stdin before each query after the first (so a test
 * can stop the DNS server in between).  Status text goes to stderr.
 *
 * Exit status (of the last query): 0 ok, 1 NODATA, 2 NXDOMAIN, 3 null MX,
 * 4 temporary failure, 5 other error, 6 we are the best MX (primaries),
 * 64 usage.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "mxspool/dns.h"

#define MAX_SELF 8

struct query {
	const char *type;
	const char *name;
	const char *self[MAX_SELF];
	size_t nself;
	bool done;
	int status;
};

static int
exit_code(int status)
{
	switch (status) {
	case DNS_OK: return 0;
	case DNS_ENODATA: return 1;
	case DNS_ENXDOMAIN: return 2;
	case DNS_ENULLMX: return 3;
	case DNS_ETEMP: return 4;
	case DNS_ESELF: return 6;
	default: return 5;
	}
}

static void
print_mx(const struct dns_mx *mx, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%u %s\n", (unsigned)mx[i].preference, mx[i].host);
}

static void
on_mx(void *arg, int status, const struct dns_mx *mx, size_t n)
{
	struct query *q = arg;

	q->done = true;
	q->status = status;
	if (strcmp(q->type, "primaries") == 0 &&
	    (status == DNS_OK || status == DNS_ENODATA)) {
		struct dns_mx *out = calloc(n ? n : 1, sizeof(*out));
		size_t nout = 0;

		if (out == NULL) {
			q->status = DNS_ENOMEM;
			return;
		}
		q->status = dns_select_primaries(mx, n, q->self, q->nself, out,
		    &nout, NULL, NULL);
		print_mx(out, nout);
		free(out);
		return;
	}
	print_mx(mx, n);
}

static void
on_addrs(void *arg, int status, const struct sockaddr_storage *addrs, size_t n)
{
	struct query *q = arg;
	char buf[INET6_ADDRSTRLEN];

	q->done = true;
	q->status = status;
	for (size_t i = 0; i < n; i++) {
		const void *a = addrs[i].ss_family == AF_INET6 ?
		    (const void *)&((const struct sockaddr_in6 *)&addrs[i])->sin6_addr :
		    (const void *)&((const struct sockaddr_in *)&addrs[i])->sin_addr;

		if (inet_ntop(addrs[i].ss_family, a, buf, sizeof(buf)) != NULL)
			printf("%s\n", buf);
	}
}

static int
usage(void)
{
	fprintf(stderr, "usage: dns_query [-w] [-s SELF]... SERVER[:PORT] "
	    "mx|addr|primaries NAME [TYPE NAME]...\n");
	return 64;
}

int
main(int argc, char **argv)
{
	uv_loop_t loop;
	struct dns *dns = NULL;
	struct query q;
	const char *servers;
	bool wait_stdin = false, several;
	int i = 1, rc, last = 0;
	char line[256];

	memset(&q, 0, sizeof(q));
	for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
		if (strcmp(argv[i], "-w") == 0) {
			wait_stdin = true;
		} else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc &&
		    q.nself < MAX_SELF) {
			q.self[q.nself++] = argv[++i];
		} else {
			return usage();
		}
	}
	if (argc - i < 3 || (argc - i - 1) % 2 != 0)
		return usage();
	servers = strcmp(argv[i], "-") == 0 ? NULL : argv[i];
	i++;
	several = argc - i > 2;

	if ((rc = uv_loop_init(&loop)) != 0) {
		fprintf(stderr, "uv_loop_init: %s\n", uv_strerror(rc));
		return 5;
	}
	if ((rc = dns_new(&loop, servers, &dns)) != DNS_OK) {
		fprintf(stderr, "dns_new: %s\n", dns_strerror(rc));
		(void)uv_run(&loop, UV_RUN_DEFAULT);
		(void)uv_loop_close(&loop);
		return rc == DNS_EINVAL ? 64 : 5;
	}
	for (bool first = true; i + 1 < argc; i += 2, first = false) {
		if (!first && wait_stdin && fgets(line, sizeof(line), stdin) == NULL)
			break;
		q.type = argv[i];
		q.name = argv[i + 1];
		q.done = false;
		if (strcmp(q.type, "mx") == 0 || strcmp(q.type, "primaries") == 0)
			rc = dns_mx(dns, q.name, on_mx, &q, NULL);
		else if (strcmp(q.type, "addr") == 0)
			rc = dns_addrs(dns, q.name, on_addrs, &q, NULL);
		else
			rc = DNS_EINVAL;
		if (rc != DNS_OK) {
			q.status = rc;
		} else {
			while (!q.done)
				(void)uv_run(&loop, UV_RUN_ONCE);
		}
		fprintf(stderr, "%s %s: %s\n", q.type, q.name, dns_strerror(q.status));
		if (several)
			printf("--\n");
		fflush(stdout);
		last = exit_code(q.status);
	}
	dns_free(dns, NULL, NULL);
	if ((rc = uv_run(&loop, UV_RUN_DEFAULT)) != 0 ||
	    (rc = uv_loop_close(&loop)) != 0) {
		fprintf(stderr, "loop did not close clean: %d\n", rc);
		return 5;
	}
	return last;
}
