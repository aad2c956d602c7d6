/*
 * fuzz_dns_answer.c - libFuzzer target: what relay/dns.c makes of a DNS
 * answer (relay/dns_internal.h), through c-ares' own parsers, and the
 * backup-MX rule applied to the MX list that comes out.
 *
 * The input is a DNS message as a server (or anybody who can spoof one)
 * sends it.  It is copied to a buffer of exactly its length, so ASan sees
 * any read past it, and given to the TTL walk, the MX parser and the A and
 * AAAA parsers.  Checks:
 *   - the TTL is at most 2^31 - 1 (RFC 2181 8);
 *   - an MX list is DNS_OK with n >= 1, sorted by preference, hosts
 *     non-empty, not the root, and free of control characters (c-ares
 *     1.18 writes them as \DDD; blanks do come through, which is why
 *     dns_addrs() validates a host before it is used or printed);
 *     DNS_ENULLMX and the errors come with nothing allocated;
 *   - when c-ares reads A records with their TTLs, our walk never reports
 *     a longer TTL than any of them (the cache must not outlive a record);
 *   - addresses come back in their family with port 0, at most 64;
 *   - dns_select_primaries() with one of the listed hosts as ourselves
 *     returns only hosts strictly more preferred than that host, and none
 *     of our names: the relay never hands mail to itself or a peer backup.
 */
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ares.h>

#include "../../relay/dns_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define ALEN_MAX 65535   /* a DNS message over TCP */

/* The oracle's own name comparison (C locale: ASCII case only), one
 * trailing dot ignored, as dns_select_primaries() promises. */
static bool
name_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	la -= la > 0 && a[la - 1] == '.';
	lb -= lb > 0 && b[lb - 1] == '.';
	return la == lb && strncasecmp(a, b, la) == 0;
}

/* Always 0: a fixed shuffle keeps runs reproducible. */
static unsigned
first_rand(void *arg)
{
	(void)arg;
	return 0;
}

static void
check_selection(const struct dns_mx *mx, size_t n, size_t self_i)
{
	struct dns_mx *out = calloc(n, sizeof(*out));
	const char *self[2] = { mx[self_i].host, "not-listed.invalid" };
	size_t nout = 99;
	unsigned self_pref = 65535;
	int rc;

	if (out == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		if (name_equal(mx[i].host, self[0]) && mx[i].preference < self_pref)
			self_pref = mx[i].preference;
	rc = dns_select_primaries(mx, n, self, 2, out, &nout, first_rand, NULL);
	CHECK(rc == DNS_OK || rc == DNS_ESELF);
	CHECK(nout <= n);
	CHECK(rc == DNS_ESELF ? nout == 0 : nout >= 1);
	for (size_t i = 0; i < nout; i++) {
		CHECK(out[i].preference < self_pref);
		CHECK(!name_equal(out[i].host, self[0]));
		CHECK(i == 0 || out[i - 1].preference <= out[i].preference);
	}
	/* Not listed at all: everybody, in preference order. */
	rc = dns_select_primaries(mx, n, self + 1, 1, out, &nout, NULL, NULL);
	CHECK(rc == DNS_OK && nout == n);
	free(out);
}

static void
check_mx(const unsigned char *abuf, int alen)
{
	struct dns_mx *mx = (struct dns_mx *)1;
	size_t n = 99;
	int rc = dns__parse_mx(abuf, alen, &mx, &n);

	if (rc != DNS_OK) {
		CHECK(mx == NULL && n == 0);
		CHECK(rc == DNS_ENULLMX || rc == DNS_ENODATA || rc == DNS_ETEMP ||
		    rc == DNS_ENOMEM || rc == DNS_ENXDOMAIN || rc == DNS_EBADNAME);
		return;
	}
	CHECK(mx != NULL && n >= 1);
	for (size_t i = 0; i < n; i++) {
		const char *h = mx[i].host;

		CHECK(h != NULL && h[0] != '\0' && strcmp(h, ".") != 0);
		for (const char *p = h; *p; p++)
			CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p != 0x7f);
		CHECK(i == 0 || mx[i - 1].preference <= mx[i].preference);
	}
	check_selection(mx, n, n / 2);
	free(mx);
}

static void
check_addrs(const unsigned char *abuf, int alen, int qtype, uint32_t ttl)
{
	struct sockaddr_storage *v = (struct sockaddr_storage *)1;
	struct ares_addrttl a4[64];
	int na = 64;
	size_t n = 99;
	int rc = dns__parse_addrs(qtype, abuf, alen, &v, &n);

	if (rc != DNS_OK) {
		CHECK(v == NULL && n == 0);
		return;
	}
	CHECK(v != NULL && n >= 1 && n <= 64);
	for (size_t i = 0; i < n; i++) {
		if (qtype == ns_t_a) {
			const struct sockaddr_in *sin = (const struct sockaddr_in *)&v[i];

			CHECK(sin->sin_family == AF_INET && sin->sin_port == 0);
		} else {
			const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&v[i];

			CHECK(s6->sin6_family == AF_INET6 && s6->sin6_port == 0);
		}
	}
	free(v);
	/* c-ares' TTLs of the same records bound ours from above. */
	if (qtype == ns_t_a &&
	    ares_parse_a_reply(abuf, alen, NULL, a4, &na) == ARES_SUCCESS)
		for (int i = 0; i < na; i++)
			if (a4[i].ttl >= 0)
				CHECK(ttl <= (uint32_t)a4[i].ttl);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char *abuf;
	uint32_t ttl;
	int alen;

	if (size > ALEN_MAX)
		return 0;
	abuf = malloc(size ? size : 1);
	if (abuf == NULL)
		return 0;
	memcpy(abuf, data, size);
	alen = (int)size;
	ttl = dns__answer_min_ttl(abuf, alen);
	CHECK(ttl <= INT32_MAX);
	check_mx(abuf, alen);
	check_addrs(abuf, alen, ns_t_a, ttl);
	check_addrs(abuf, alen, ns_t_aaaa, ttl);
	free(abuf);
	return 0;
}
