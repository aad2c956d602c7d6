/*
 * test_fleet_policy.c - the fleet's pure arithmetic on a fake clock: batch
 * sizes, the degraded fallback (three nodes together never above
 * drain_rate), cut detection, held tokens, and the published figures'
 * codec (round trip and refusals of malformed payloads).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "mxspool/fleet_policy.h"

static void
test_batch(void **state)
{
	(void)state;
	assert_int_equal(fleet_batch(0), 1);
	assert_int_equal(fleet_batch(0.5), 1);
	assert_int_equal(fleet_batch(9), 1);
	assert_int_equal(fleet_batch(20), 2);
	assert_int_equal(fleet_batch(21), 3);
	assert_int_equal(fleet_batch(50), 5);
	assert_int_equal(fleet_batch(100000), FLEET_BATCH_MAX);
	assert_int_equal(fleet_batch_bytes(0), 0);
	assert_int_equal(fleet_batch_bytes(5), 1);
	assert_int_equal(fleet_batch_bytes(1000000), 100000);
}

static void
test_fallback_arithmetic(void **state)
{
	(void)state;
	assert_true(fleet_fallback_rate(30, 30, 3) == 10);
	assert_true(fleet_fallback_rate(30, 4, 3) == 4);     /* ramp lower */
	assert_true(fleet_fallback_rate(30, 30, 0) == 30);   /* 0 counts as 1 */
	assert_true(fleet_fallback_bandwidth(0, 3) == 0);
	assert_true(fleet_fallback_bandwidth(3000, 3) == 1000);
	assert_int_equal(fleet_fallback_concurrency(4, 3), 1);
	assert_int_equal(fleet_fallback_concurrency(9, 3), 3);
	assert_int_equal(fleet_fallback_concurrency(1, 5), 1);
	assert_int_equal(fleet_fallback_concurrency(6, 0), 6);
}

/* Three degraded nodes, each taking as fast as its fallback lets it, for
 * 60 simulated seconds: the sum stays at drain_rate (plus the one token
 * each bucket starts with), and no second ever sees more than
 * drain_rate / 3 + 1 from one node. */
static void
test_fallback_three_nodes(void **state)
{
	struct fleet_fallback fb[3];
	const double rate = 20;
	unsigned total = 0, per_sec[3][60];

	(void)state;
	memset(fb, 0, sizeof(fb));
	memset(per_sec, 0, sizeof(per_sec));
	for (int64_t now = 0; now < 60000; now++) {
		for (int n = 0; n < 3; n++) {
			while (fleet_fallback_take(&fb[n], fleet_fallback_rate(rate, rate, 3),
			    0, 1000, now) == 0) {
				total++;
				per_sec[n][now / 1000]++;
			}
		}
	}
	assert_true(total <= (unsigned)(rate * 60) + 3);
	assert_true(total >= (unsigned)(rate * 60) - 3);
	for (int n = 0; n < 3; n++)
		for (int s = 0; s < 60; s++)
			assert_true(per_sec[n][s] <= (unsigned)(rate / 3) + 1);
}

/* The wait the fallback returns is exact: taking at that time succeeds,
 * a millisecond earlier it does not; a bandwidth limit paces bytes. */
static void
test_fallback_wait_and_bytes(void **state)
{
	struct fleet_fallback fb;
	int64_t w;

	(void)state;
	memset(&fb, 0, sizeof(fb));
	assert_int_equal(fleet_fallback_take(&fb, 2, 0, 0, 0), 0);
	w = fleet_fallback_take(&fb, 2, 0, 0, 0);
	assert_int_equal(w, 500);
	assert_true(fleet_fallback_take(&fb, 2, 0, 0, 499) > 0);
	assert_int_equal(fleet_fallback_take(&fb, 2, 0, 0, 500), 0);
	/* Bytes: 1000 B/s, 600-byte messages: the second waits for bytes. */
	fleet_fallback_reset(&fb);
	assert_int_equal(fleet_fallback_take(&fb, 1000, 1000, 600, 10000), 0);
	w = fleet_fallback_take(&fb, 1000, 1000, 600, 10001);
	assert_true(w > 100 && w <= 200);
	/* After a reset (Redis came back and went again) one token only. */
	fleet_fallback_reset(&fb);
	assert_int_equal(fleet_fallback_take(&fb, 5, 0, 0, 20000), 0);
	assert_true(fleet_fallback_take(&fb, 5, 0, 0, 20000) > 0);
}

/* Reconnects: 100 ms doubling to 5 s; a run of failures on a fake clock
 * reaches the cap at the seventh try, 11.3 s after the first, and stays. */
static void
test_backoff(void **state)
{
	static const uint64_t want[] = { 100, 200, 400, 800, 1600, 3200, 5000, 5000 };
	uint64_t d = 0, t = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		d = fleet_backoff_next(d);
		assert_int_equal(d, want[i]);
		t += d;
	}
	assert_int_equal(t, 16300);
	assert_int_equal(fleet_backoff_next(4999), 5000);
	assert_int_equal(fleet_backoff_next(1), 100);
}

static void
test_cut_detection(void **state)
{
	(void)state;
	assert_false(fleet_limit_cut(0, 0, 20, 2));        /* first ask */
	assert_true(fleet_limit_cut(20, 20, 20, 10));      /* AIMD halves */
	assert_true(fleet_limit_cut(20, 20, 20, 2));       /* ramp restart */
	assert_false(fleet_limit_cut(20, 20, 20, 16));     /* noise */
	assert_false(fleet_limit_cut(20, 10, 20, 11));     /* recovering */
	assert_false(fleet_limit_cut(20, 20, 5, 5));       /* set drain_rate=5 */
}

static void
test_reservoir(void **state)
{
	struct fleet_reservoir r = { 0, 0 };
	unsigned m;
	uint64_t b;

	(void)state;
	assert_false(fleet_reservoir_take(&r, 100, false));
	fleet_reservoir_want(&r, 100, 2, 0, false, &m, &b);
	assert_int_equal(m, 2);
	assert_int_equal(b, 0);
	r.msgs = 2;
	assert_true(fleet_reservoir_take(&r, 100, false));
	assert_int_equal(r.msgs, 1);
	/* Bytes limited: a message needs its size in byte tokens. */
	assert_false(fleet_reservoir_take(&r, 100, true));
	assert_int_equal(r.msgs, 1);      /* nothing taken */
	fleet_reservoir_want(&r, 100, 2, 40, true, &m, &b);
	assert_int_equal(m, 0);
	assert_int_equal(b, 100);         /* bigger than a batch: asked whole */
	r.bytes = 70;
	fleet_reservoir_want(&r, 100, 2, 40, true, &m, &b);
	assert_int_equal(b, 40);          /* the batch covers the rest */
	r.bytes = 130;
	assert_true(fleet_reservoir_take(&r, 100, true));
	assert_int_equal(r.msgs, 0);
	assert_int_equal(r.bytes, 30);
}

static void
test_payload_round_trip(void **state)
{
	struct fleet_figures in[2], out[4];
	char buf[FLEET_PAYLOAD_MAX];
	int len, n;

	(void)state;
	memset(in, 0, sizeof(in));
	snprintf(in[0].tenant, sizeof(in[0].tenant), "demo");
	snprintf(in[0].primary_state, sizeof(in[0].primary_state), "up");
	in[0].queued_messages = 300;
	in[0].queued_bytes = 123456789012ULL;
	in[0].oldest_age_s = 42;
	in[0].drain_rate = 6.5;
	in[0].drain_rate_limit = 20;
	in[0].connections = 2;
	snprintf(in[1].tenant, sizeof(in[1].tenant), "isp-b_2");
	snprintf(in[1].primary_state, sizeof(in[1].primary_state), "down");
	in[1].held = true;
	len = fleet_payload_encode(in, 2, buf, sizeof(buf));
	assert_true(len > 0);
	n = fleet_payload_decode(buf, (size_t)len, out, 4);
	assert_int_equal(n, 2);
	assert_string_equal(out[0].tenant, "demo");
	assert_string_equal(out[0].primary_state, "up");
	assert_int_equal(out[0].queued_messages, 300);
	assert_true(out[0].queued_bytes == 123456789012ULL);
	assert_int_equal(out[0].oldest_age_s, 42);
	assert_true(out[0].drain_rate == 6.5);
	assert_int_equal(out[0].connections, 2);
	assert_string_equal(out[1].tenant, "isp-b_2");
	assert_true(out[1].held);
	/* Only MAX are kept, the rest skipped but checked. */
	assert_int_equal(fleet_payload_decode(buf, (size_t)len, out, 1), 1);
	/* The most a node publishes fits: 64 tenants, 64-byte names, every
	 * number at its widest. */
	{
		static struct fleet_figures big[FLEET_FIGURES_MAX];
		static char pl[FLEET_PAYLOAD_MAX];

		for (int i = 0; i < FLEET_FIGURES_MAX; i++) {
			memset(big[i].tenant, 'a', FLEET_TENANT_MAX - 1);
			big[i].tenant[FLEET_TENANT_MAX - 1] = '\0';
			snprintf(big[i].primary_state, sizeof(big[i].primary_state),
			    "unknown");
			big[i].queued_messages = big[i].queued_bytes = UINT64_MAX;
			big[i].oldest_age_s = INT64_MAX;
			big[i].drain_rate = big[i].drain_rate_limit = 1e6;
			big[i].connections = UINT32_MAX;
		}
		len = fleet_payload_encode(big, FLEET_FIGURES_MAX, pl, sizeof(pl));
		assert_true(len > 0);
		assert_int_equal(fleet_payload_decode(pl, (size_t)len, out, 4), 4);
	}
	/* Too small a buffer is refused, not cut. */
	assert_int_equal(fleet_payload_encode(in, 2, buf, 30), -1);
}

static void
test_payload_refused(void **state)
{
	static const char *const bad[] = {
		"",
		"mxspool-fleet 2\n",
		"mxspool-fleet 1\nt demo up 0 1 2 3 1.0 2.0 1",        /* no \n */
		"mxspool-fleet 1\nt Demo up 0 1 2 3 1.0 2.0 1\n",      /* name */
		"mxspool-fleet 1\nt demo sideways 0 1 2 3 1.0 2.0 1\n",
		"mxspool-fleet 1\nt demo up 2 1 2 3 1.0 2.0 1\n",      /* held */
		"mxspool-fleet 1\nt demo up 0 1 2 -3 1.0 2.0 1\n",     /* age */
		"mxspool-fleet 1\nt demo up 0 1 2 3 nan 2.0 1\n",
		"mxspool-fleet 1\nt demo up 0 1 2 3 1.0 2.0 1 extra\n",
		"mxspool-fleet 1\nx\n",
	};
	struct fleet_figures out[4];
	char big[FLEET_PAYLOAD_MAX + 64];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(fleet_payload_decode(bad[i], strlen(bad[i]), out, 4), -1);
	memset(big, 'a', sizeof(big));
	memcpy(big, "mxspool-fleet 1\n", 16);
	assert_int_equal(fleet_payload_decode(big, sizeof(big), out, 4), -1);
	/* An empty node (no tenant) is fine. */
	assert_int_equal(fleet_payload_decode("mxspool-fleet 1\n", 16, out, 4), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_batch),
		cmocka_unit_test(test_fallback_arithmetic),
		cmocka_unit_test(test_fallback_three_nodes),
		cmocka_unit_test(test_fallback_wait_and_bytes),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_cut_detection),
		cmocka_unit_test(test_reservoir),
		cmocka_unit_test(test_payload_round_trip),
		cmocka_unit_test(test_payload_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
