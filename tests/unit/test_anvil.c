/*
 * test_anvil.c - per-client rate limits on an injected clock: the burst,
 * the steady rate, independent clients and kinds, v4-mapped addresses,
 * "0 = off", and the bounded table under a flood of distinct clients.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#include "mxspool/anvil.h"

static struct in_addr
v4(const char *s)
{
	struct in_addr a;

	assert_int_equal(inet_pton(AF_INET, s, &a), 1);
	return a;
}

/* How many of TRIES events at NOW_MS the client at A is allowed. */
static unsigned
allowed(struct anvil *an, struct in_addr a, enum anvil_kind kind,
    unsigned limit, uint64_t now_ms, unsigned tries)
{
	unsigned n = 0;

	for (unsigned i = 0; i < tries; i++)
		n += anvil_allow(an, AF_INET, &a, kind, limit, now_ms);
	return n;
}

static void
test_burst_then_rate(void **state)
{
	/* 6 a minute: 6 at once, then one every 10 s, never 7 in a minute
	 * after the burst. */
	struct anvil *an = anvil_new();
	struct in_addr a = v4("192.0.2.1");
	uint64_t t0 = 1000000;

	(void)state;
	assert_non_null(an);
	assert_int_equal(allowed(an, a, ANVIL_MESSAGE, 6, t0, 10), 6);
	assert_false(anvil_allow(an, AF_INET, &a, ANVIL_MESSAGE, 6, t0 + 9999));
	assert_true(anvil_allow(an, AF_INET, &a, ANVIL_MESSAGE, 6, t0 + 10000));
	assert_false(anvil_allow(an, AF_INET, &a, ANVIL_MESSAGE, 6, t0 + 10001));
	/* Over the next minute of steady trying: 6 more, one per 10 s. */
	unsigned n = 0;

	for (uint64_t t = t0 + 10001; t <= t0 + 70001; t += 500)
		n += anvil_allow(an, AF_INET, &a, ANVIL_MESSAGE, 6, t);
	assert_int_equal(n, 6);
	/* Idle for a minute: the full burst again. */
	assert_int_equal(allowed(an, a, ANVIL_MESSAGE, 6, t0 + 200000, 10), 6);
	anvil_free(an);
}

static void
test_refused_not_counted(void **state)
{
	/* Hammering while refused does not push the next slot further out. */
	struct anvil *an = anvil_new();
	struct in_addr a = v4("192.0.2.1");

	(void)state;
	assert_int_equal(allowed(an, a, ANVIL_MESSAGE, 2, 0, 2), 2);
	assert_int_equal(allowed(an, a, ANVIL_MESSAGE, 2, 1000, 1000), 0);
	assert_true(anvil_allow(an, AF_INET, &a, ANVIL_MESSAGE, 2, 30000));
	anvil_free(an);
}

static void
test_clients_and_kinds_independent(void **state)
{
	struct anvil *an = anvil_new();
	struct in_addr a = v4("192.0.2.1"), b = v4("192.0.2.2");
	struct in6_addr m;

	(void)state;
	assert_int_equal(allowed(an, a, ANVIL_RECIPIENT, 3, 0, 5), 3);
	assert_int_equal(allowed(an, b, ANVIL_RECIPIENT, 3, 0, 5), 3);
	assert_int_equal(allowed(an, a, ANVIL_MESSAGE, 3, 0, 5), 3);
	/* ::ffff:192.0.2.1 is the same client as 192.0.2.1. */
	assert_int_equal(inet_pton(AF_INET6, "::ffff:192.0.2.1", &m), 1);
	assert_false(anvil_allow(an, AF_INET6, &m, ANVIL_RECIPIENT, 3, 0));
	/* A real IPv6 client is another one. */
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &m), 1);
	assert_true(anvil_allow(an, AF_INET6, &m, ANVIL_RECIPIENT, 3, 0));
	anvil_free(an);
}

static void
test_zero_is_off(void **state)
{
	struct anvil *an = anvil_new();
	struct in_addr a = v4("192.0.2.1");

	(void)state;
	assert_int_equal(allowed(an, a, ANVIL_MESSAGE, 0, 0, 100000), 100000);
	assert_int_equal(anvil_active(an, 0), 0);
	/* No table (out of memory at start): nobody is limited. */
	assert_true(anvil_allow(NULL, AF_INET, &a, ANVIL_MESSAGE, 1, 0));
	assert_true(anvil_allow(an, AF_UNIX, &a, ANVIL_MESSAGE, 1, 0));
	anvil_free(an);
}

static void
test_bounded_under_flood(void **state)
{
	/* 100 000 distinct clients in one second never hold more than the
	 * table; a busy client in the flood keeps its count unless its set
	 * is full of clients busier than it; idle entries are free again
	 * a minute later. */
	struct anvil *an = anvil_new();
	struct in_addr heavy = v4("198.51.100.7");
	unsigned refused = 0;

	(void)state;
	assert_int_equal(allowed(an, heavy, ANVIL_MESSAGE, 1, 0, 1), 1);
	for (uint32_t i = 0; i < 100000; i++) {
		struct in_addr a;

		a.s_addr = htonl(0x0a000000u + i);
		assert_true(anvil_allow(an, AF_INET, &a, ANVIL_MESSAGE, 100, 500));
	}
	assert_true(anvil_active(an, 500) <= ANVIL_CLIENTS);
	assert_true(anvil_active(an, 500) > ANVIL_CLIENTS / 2);
	/* Each flood client spent 0.6 s of its bucket, the heavy one 60 s:
	 * it is the last to be evicted from its set, so it stays refused. */
	refused += !anvil_allow(an, AF_INET, &heavy, ANVIL_MESSAGE, 1, 1000);
	assert_int_equal(refused, 1);
	assert_int_equal(anvil_active(an, 70000), 0);
	anvil_free(an);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_rate),
		cmocka_unit_test(test_refused_not_counted),
		cmocka_unit_test(test_clients_and_kinds_independent),
		cmocka_unit_test(test_zero_is_off),
		cmocka_unit_test(test_bounded_under_flood),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
