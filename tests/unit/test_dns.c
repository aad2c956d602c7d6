/*
 * test_dns.c - backup-MX primary selection (pure), self-address checks, and
 * the resolver's loop behaviour that needs no DNS server: asynchronous
 * literal answers, cancellation, unreachable servers, clean shutdown.
 * Real lookups are tested against a DNS server in
 * tests/integration/test_dns_resolver.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/dns.h"

/* ---- selection -------------------------------------------------------- */

/* An injected RNG that replays a fixed list of values. */
struct fake_rng {
	const unsigned *v;
	size_t n, i;
};

static unsigned
fake_rand(void *arg)
{
	struct fake_rng *r = arg;

	return r->v[r->i++ % r->n];
}

static const char *const self1[] = { "backup.example.net" };

static void
test_sort_and_ties_use_rng(void **state)
{
	/* Hosts come out sorted by preference, and the order within a tie is
	 * decided by the injected RNG (input order when there is none). */
	const struct dns_mx mx[] = {
		{ 20, "b.example.com" }, { 10, "a1.example.com" },
		{ 10, "a2.example.com" }, { 10, "a3.example.com" },
		{ 30, "backup.example.net" },
	};
	struct dns_mx out[5];
	size_t n;
	/* Fisher-Yates over the three 10s: j=2 picks k=0+v%3, j=1 picks
	 * k=0+v%2; the run of one 20 draws nothing. */
	const unsigned zeros[] = { 0 };
	const unsigned ones[] = { 1 };
	struct fake_rng r0 = { zeros, 1, 0 }, r1 = { ones, 1, 0 };

	(void)state;
	assert_int_equal(dns_select_primaries(mx, 5, self1, 1, out, &n, NULL,
	    NULL), DNS_OK);
	assert_int_equal(n, 4);
	assert_string_equal(out[0].host, "a1.example.com");
	assert_string_equal(out[1].host, "a2.example.com");
	assert_string_equal(out[2].host, "a3.example.com");
	assert_string_equal(out[3].host, "b.example.com");
	assert_int_equal(out[3].preference, 20);

	/* Always 0: [a1 a2 a3] -> swap 2,0 -> [a3 a2 a1] -> swap 1,0 ->
	 * [a2 a3 a1]. */
	assert_int_equal(dns_select_primaries(mx, 5, self1, 1, out, &n,
	    fake_rand, &r0), DNS_OK);
	assert_string_equal(out[0].host, "a2.example.com");
	assert_string_equal(out[1].host, "a3.example.com");
	assert_string_equal(out[2].host, "a1.example.com");
	assert_string_equal(out[3].host, "b.example.com");
	assert_int_equal(r0.i, 2);

	/* Always 1: swap 2,1 -> [a1 a3 a2] -> swap 1,1 -> unchanged. */
	assert_int_equal(dns_select_primaries(mx, 5, self1, 1, out, &n,
	    fake_rand, &r1), DNS_OK);
	assert_string_equal(out[0].host, "a1.example.com");
	assert_string_equal(out[1].host, "a3.example.com");
	assert_string_equal(out[2].host, "a2.example.com");
	assert_string_equal(out[3].host, "b.example.com");
}

static void
test_ties_reach_every_order(void **state)
{
	/* Over all RNG draws, every permutation of a tie of three shows up,
	 * so no host of equal preference is starved. */
	const struct dns_mx mx[] = {
		{ 5, "x" }, { 5, "y" }, { 5, "z" },
	};
	struct dns_mx out[3];
	char seen[6][4];
	size_t nseen = 0, n;

	(void)state;
	for (unsigned a = 0; a < 3; a++) {
		for (unsigned b = 0; b < 2; b++) {
			const unsigned v[] = { a, b };
			struct fake_rng r = { v, 2, 0 };
			char key[4];
			bool dup = false;

			assert_int_equal(dns_select_primaries(mx, 3, NULL, 0, out,
			    &n, fake_rand, &r), DNS_OK);
			assert_int_equal(n, 3);
			key[0] = out[0].host[0];
			key[1] = out[1].host[0];
			key[2] = out[2].host[0];
			key[3] = '\0';
			for (size_t i = 0; i < nseen; i++)
				dup = dup || strcmp(seen[i], key) == 0;
			assert_false(dup);
			memcpy(seen[nseen++], key, 4);
		}
	}
	assert_int_equal(nseen, 6);
}

static void
test_only_strictly_lower_than_self(void **state)
{
	/* Only hosts with a preference strictly lower than ours are kept:
	 * not us, not a peer backup at our preference, nothing above. */
	const struct dns_mx mx[] = {
		{ 30, "other.example.org" }, { 20, "peer.example.net" },
		{ 20, "backup.example.net" }, { 10, "mx.example.com" },
		{ 5, "mx0.example.com" },
	};
	struct dns_mx out[5];
	size_t n = 99;

	(void)state;
	assert_int_equal(dns_select_primaries(mx, 5, self1, 1, out, &n, NULL,
	    NULL), DNS_OK);
	assert_int_equal(n, 2);
	assert_string_equal(out[0].host, "mx0.example.com");
	assert_int_equal(out[0].preference, 5);
	assert_string_equal(out[1].host, "mx.example.com");
	for (size_t i = 0; i < n; i++)
		assert_true(out[i].preference < 20);
}

static void
test_self_is_best(void **state)
{
	/* When we hold the lowest preference (alone or tied) there is no
	 * primary: a distinct status and an empty list. */
	const struct dns_mx alone[] = {
		{ 10, "backup.example.net" }, { 20, "mx.example.com" },
	};
	const struct dns_mx tied[] = {
		{ 10, "mx.example.com" }, { 10, "backup.example.net" },
	};
	struct dns_mx out[2];
	size_t n = 99;

	(void)state;
	assert_int_equal(dns_select_primaries(alone, 2, self1, 1, out, &n, NULL,
	    NULL), DNS_ESELF);
	assert_int_equal(n, 0);
	n = 99;
	assert_int_equal(dns_select_primaries(tied, 2, self1, 1, out, &n, NULL,
	    NULL), DNS_ESELF);
	assert_int_equal(n, 0);
}

static void
test_not_listed_keeps_all(void **state)
{
	/* When none of our names is an MX, every listed host is kept, sorted
	 * (the safe side: deliver rather than hold mail forever). */
	const struct dns_mx mx[] = {
		{ 20, "mx2.example.com" }, { 10, "mx1.example.com" },
	};
	struct dns_mx out[2];
	size_t n;

	(void)state;
	assert_int_equal(dns_select_primaries(mx, 2, self1, 1, out, &n, NULL,
	    NULL), DNS_OK);
	assert_int_equal(n, 2);
	assert_string_equal(out[0].host, "mx1.example.com");
	assert_string_equal(out[1].host, "mx2.example.com");
	/* No self names at all behaves the same. */
	assert_int_equal(dns_select_primaries(mx, 2, NULL, 0, out, &n, NULL,
	    NULL), DNS_OK);
	assert_int_equal(n, 2);
}

static void
test_names_case_and_trailing_dot(void **state)
{
	/* Our names match MX hosts case-insensitively with trailing dots on
	 * either side ignored, and the best of several names counts. */
	const char *const names[] = { "nothing.example", "BACKUP.Example.NET.",
	    "backup2.example.net" };
	const struct dns_mx mx[] = {
		{ 10, "mx.example.com." }, { 20, "backup.example.net" },
		{ 30, "Backup2.Example.Net." }, { 15, "mx15.example.com" },
	};
	const struct dns_mx prefix_trap[] = {
		{ 10, "backup.example.net.evil" }, { 20, "backup.example.ne" },
	};
	struct dns_mx out[4];
	size_t n;

	(void)state;
	assert_int_equal(dns_select_primaries(mx, 4, names, 3, out, &n, NULL,
	    NULL), DNS_OK);
	assert_int_equal(n, 2);
	assert_string_equal(out[0].host, "mx.example.com.");
	assert_string_equal(out[1].host, "mx15.example.com");
	/* Near misses are not us. */
	assert_int_equal(dns_select_primaries(prefix_trap, 2, names, 3, out, &n,
	    NULL, NULL), DNS_OK);
	assert_int_equal(n, 2);
}

static void
test_null_mx_and_bad_input(void **state)
{
	/* A null MX ("." or the empty root name) means the domain takes no
	 * mail; an empty list and bad arguments get their own statuses. */
	const struct dns_mx nullmx[] = { { 0, "." } };
	const struct dns_mx rootmx[] = { { 0, "" } };
	const struct dns_mx mixed[] = { { 10, "mx.example.com" }, { 0, "." } };
	const struct dns_mx nohost[] = { { 10, NULL } };
	struct dns_mx out[2];
	size_t n = 99;

	(void)state;
	assert_int_equal(dns_select_primaries(nullmx, 1, self1, 1, out, &n, NULL,
	    NULL), DNS_ENULLMX);
	assert_int_equal(n, 0);
	assert_int_equal(dns_select_primaries(rootmx, 1, self1, 1, out, &n, NULL,
	    NULL), DNS_ENULLMX);
	assert_int_equal(dns_select_primaries(mixed, 2, self1, 1, out, &n, NULL,
	    NULL), DNS_ENULLMX);
	assert_int_equal(dns_select_primaries(nullmx, 0, self1, 1, out, &n, NULL,
	    NULL), DNS_ENODATA);
	assert_int_equal(dns_select_primaries(nohost, 1, self1, 1, out, &n, NULL,
	    NULL), DNS_EINVAL);
	assert_int_equal(dns_select_primaries(nullmx, 1, self1, 1, NULL, &n, NULL,
	    NULL), DNS_EINVAL);
	assert_int_equal(dns_select_primaries(nullmx, 1, self1, 1, out, NULL,
	    NULL, NULL), DNS_EINVAL);
	assert_string_equal(dns_strerror(DNS_ENULLMX),
	    "domain accepts no mail (null MX)");
}

/* ---- self addresses --------------------------------------------------- */

static struct sockaddr_storage
sa(const char *ip, uint16_t port)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
	}
	return ss;
}

static void
test_addr_is_self(void **state)
{
	/* An MX address is ours when it equals a listen address (ports only
	 * compared when both are set, v4-mapped equal to v4), and a wildcard
	 * listener owns the loopback addresses. */
	struct sockaddr_storage self[2], a;

	(void)state;
	self[0] = sa("192.0.2.25", 25);
	self[1] = sa("2001:db8::25", 0);
	a = sa("192.0.2.25", 0);
	assert_true(dns_addr_is_self(&a, self, 2));
	a = sa("192.0.2.25", 25);
	assert_true(dns_addr_is_self(&a, self, 2));
	a = sa("192.0.2.25", 2526);
	assert_false(dns_addr_is_self(&a, self, 2));
	a = sa("::ffff:192.0.2.25", 25);
	assert_true(dns_addr_is_self(&a, self, 2));
	a = sa("2001:db8::25", 25);
	assert_true(dns_addr_is_self(&a, self, 2));
	a = sa("2001:db8::26", 0);
	assert_false(dns_addr_is_self(&a, self, 2));
	a = sa("192.0.2.26", 0);
	assert_false(dns_addr_is_self(&a, self, 2));
	a = sa("127.0.0.1", 25);
	assert_false(dns_addr_is_self(&a, self, 2));

	/* The test layout: we listen on 127.0.0.1:2525, the primary is on
	 * 127.0.0.1:2526 - not us. */
	self[0] = sa("127.0.0.1", 2525);
	a = sa("127.0.0.1", 2526);
	assert_false(dns_addr_is_self(&a, self, 1));
	a = sa("127.0.0.1", 2525);
	assert_true(dns_addr_is_self(&a, self, 1));

	self[0] = sa("0.0.0.0", 25);
	a = sa("127.0.0.2", 25);
	assert_true(dns_addr_is_self(&a, self, 1));
	a = sa("::1", 25);
	assert_false(dns_addr_is_self(&a, self, 1));
	self[0] = sa("::", 25);
	assert_true(dns_addr_is_self(&a, self, 1));
	a = sa("127.0.0.1", 25);
	assert_true(dns_addr_is_self(&a, self, 1));
	a = sa("192.0.2.1", 25);
	assert_false(dns_addr_is_self(&a, self, 1));
	assert_false(dns_addr_is_self(&a, NULL, 0));
}

static void
test_local_addrs(void **state)
{
	/* The interface list contains loopback and every entry has port 0. */
	struct sockaddr_storage *v = NULL, lo = sa("127.0.0.1", 0);
	size_t n = 0;

	(void)state;
	assert_int_equal(dns_local_addrs(&v, &n), DNS_OK);
	assert_true(n >= 1);
	assert_true(dns_addr_is_self(&lo, v, n));
	for (size_t i = 0; i < n; i++) {
		if (v[i].ss_family == AF_INET)
			assert_int_equal(((struct sockaddr_in *)&v[i])->sin_port, 0);
	}
	free(v);
}

/* ---- the resolver on a loop, without a DNS server --------------------- */

struct result {
	int calls;
	int status;
	size_t n;
	struct sockaddr_storage first;
	struct dns *free_me;          /* call dns_free() from the callback */
	int done_calls;
};

static void
on_addrs(void *arg, int status, const struct sockaddr_storage *addrs, size_t n)
{
	struct result *r = arg;

	r->calls++;
	r->status = status;
	r->n = n;
	if (n > 0)
		r->first = addrs[0];
	if (r->free_me != NULL) {
		struct dns *d = r->free_me;

		r->free_me = NULL;
		dns_free(d, NULL, NULL);
	}
}

static void
on_mx(void *arg, int status, const struct dns_mx *mx, size_t n)
{
	struct result *r = arg;

	(void)mx;
	r->calls++;
	r->status = status;
	r->n = n;
}

static void
on_done(void *arg)
{
	((struct result *)arg)->done_calls++;
}

/* Run the loop until it has nothing left and check it closes clean. */
static void
finish_loop(uv_loop_t *loop)
{
	assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(loop), 0);
}

static void
test_literals_are_async(void **state)
{
	/* Address literals are answered from themselves, never from inside
	 * dns_addrs(), with port 0; the loop closes clean afterwards. */
	uv_loop_t loop;
	struct dns *dns = NULL;
	struct result r4 = { 0 }, r6 = { 0 }, fin = { 0 };
	struct dns_req *req = NULL;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(dns_new(&loop, "127.0.0.1:9", &dns), DNS_OK);
	assert_int_equal(dns_addrs(dns, "192.0.2.7", on_addrs, &r4, &req),
	    DNS_OK);
	assert_non_null(req);
	assert_int_equal(dns_addrs(dns, "2001:db8::7", on_addrs, &r6, NULL),
	    DNS_OK);
	assert_int_equal(r4.calls, 0);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(r4.calls, 1);
	assert_int_equal(r4.status, DNS_OK);
	assert_int_equal(r4.n, 1);
	assert_int_equal(r4.first.ss_family, AF_INET);
	assert_int_equal(((struct sockaddr_in *)&r4.first)->sin_port, 0);
	assert_int_equal(r6.calls, 1);
	assert_int_equal(r6.first.ss_family, AF_INET6);
	dns_free(dns, on_done, &fin);
	assert_int_equal(fin.done_calls, 0);
	finish_loop(&loop);
	assert_int_equal(fin.done_calls, 1);
}

static void
test_bad_names_refused(void **state)
{
	/* Invalid names fail synchronously and no callback ever runs. */
	uv_loop_t loop;
	struct dns *dns = NULL;
	struct result r = { 0 };
	char longlabel[80];

	(void)state;
	memset(longlabel, 'a', 64);
	memcpy(longlabel + 64, ".com", 5);
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(dns_new(&loop, "127.0.0.1:9", &dns), DNS_OK);
	assert_int_equal(dns_mx(dns, "", on_mx, &r, NULL), DNS_EBADNAME);
	assert_int_equal(dns_mx(dns, "a..b", on_mx, &r, NULL), DNS_EBADNAME);
	assert_int_equal(dns_mx(dns, "192.0.2.1", on_mx, &r, NULL), DNS_EBADNAME);
	assert_int_equal(dns_mx(dns, "[192.0.2.1]", on_mx, &r, NULL),
	    DNS_EBADNAME);
	assert_int_equal(dns_mx(dns, "a b.com", on_mx, &r, NULL), DNS_EBADNAME);
	assert_int_equal(dns_mx(dns, longlabel, on_mx, &r, NULL), DNS_EBADNAME);
	assert_int_equal(dns_addrs(dns, ".", on_addrs, &r, NULL), DNS_EBADNAME);
	assert_int_equal(dns_mx(dns, "example.com", NULL, &r, NULL), DNS_EINVAL);
	dns_free(dns, NULL, NULL);
	finish_loop(&loop);
	assert_int_equal(r.calls, 0);
}

static void
test_cancel_and_free_in_callback(void **state)
{
	/* A cancelled request never calls back; dns_free() from inside a
	 * callback is safe and drops the requests queued behind it. */
	uv_loop_t loop;
	struct dns *dns = NULL;
	struct result cancelled = { 0 }, first = { 0 }, behind = { 0 };
	struct dns_req *req = NULL;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(dns_new(&loop, "127.0.0.1:9", &dns), DNS_OK);
	assert_int_equal(dns_addrs(dns, "192.0.2.1", on_addrs, &cancelled, &req),
	    DNS_OK);
	dns_cancel(req);
	first.free_me = dns;
	assert_int_equal(dns_addrs(dns, "192.0.2.2", on_addrs, &first, NULL),
	    DNS_OK);
	assert_int_equal(dns_addrs(dns, "192.0.2.3", on_addrs, &behind, NULL),
	    DNS_OK);
	finish_loop(&loop);
	assert_int_equal(cancelled.calls, 0);
	assert_int_equal(first.calls, 1);
	assert_int_equal(behind.calls, 0);
}

static void
test_unreachable_server_is_temporary(void **state)
{
	/* A server that refuses (nothing on the port) gives DNS_ETEMP for MX
	 * and addresses, never a permanent answer, and is not cached. */
	uv_loop_t loop;
	struct dns *dns = NULL;
	struct result mx = { 0 }, ad = { 0 }, pending = { 0 };

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(dns_new(&loop, "127.0.0.1:9", &dns), DNS_OK);
	assert_int_equal(dns_mx(dns, "example.test", on_mx, &mx, NULL), DNS_OK);
	assert_int_equal(dns_addrs(dns, "mx.example.test", on_addrs, &ad, NULL),
	    DNS_OK);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(mx.calls, 1);
	assert_int_equal(mx.status, DNS_ETEMP);
	assert_int_equal(mx.n, 0);
	assert_int_equal(ad.calls, 1);
	assert_int_equal(ad.status, DNS_ETEMP);
	/* A lookup still in flight when dns_free() runs is dropped. */
	assert_int_equal(dns_mx(dns, "example.test", on_mx, &pending, NULL),
	    DNS_OK);
	dns_free(dns, NULL, NULL);
	finish_loop(&loop);
	assert_int_equal(pending.calls, 0);
}

static void
test_bad_server_list(void **state)
{
	/* A server list c-ares cannot parse is refused at creation. */
	uv_loop_t loop;
	struct dns *dns = NULL;

	(void)state;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(dns_new(&loop, "not an address", &dns), DNS_EINVAL);
	assert_null(dns);
	assert_int_equal(dns_new(NULL, NULL, &dns), DNS_EINVAL);
	finish_loop(&loop);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sort_and_ties_use_rng),
		cmocka_unit_test(test_ties_reach_every_order),
		cmocka_unit_test(test_only_strictly_lower_than_self),
		cmocka_unit_test(test_self_is_best),
		cmocka_unit_test(test_not_listed_keeps_all),
		cmocka_unit_test(test_names_case_and_trailing_dot),
		cmocka_unit_test(test_null_mx_and_bad_input),
		cmocka_unit_test(test_addr_is_self),
		cmocka_unit_test(test_local_addrs),
		cmocka_unit_test(test_literals_are_async),
		cmocka_unit_test(test_bad_names_refused),
		cmocka_unit_test(test_cancel_and_free_in_callback),
		cmocka_unit_test(test_unreachable_server_is_temporary),
		cmocka_unit_test(test_bad_server_list),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
