/*
 * test_drain_policy.c - the drain's timing rules on a fake clock.
 *
 * Time is a plain int64 counter of milliseconds; nothing here sleeps.  The
 * random parts (takes, rate changes, jitter) use a fixed-seed xorshift so a
 * failure replays exactly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/drain_policy.h"

static uint64_t rng_state;

static uint64_t
rng(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

/* Uniform in [0, 1). */
static double
rng_unit(void)
{
	return (double)(rng() >> 11) / 9007199254740992.0;
}

static struct drain_policy_params
params(double rate, double initial, double burst, uint64_t bw, uint64_t ramp)
{
	struct drain_policy_params p = {
		.rate = rate, .initial_rate = initial, .burst = burst,
		.bandwidth = bw, .ramp_ms = ramp,
	};
	return p;
}

/* ---- token bucket ------------------------------------------------------ */

/* A full bucket of depth 5 at rate 10/s gives 5 at once, then one per 100 ms. */
static void
test_bucket_basic(void **state)
{
	struct drain_bucket b;
	int64_t t = 1000;

	(void)state;
	drain_bucket_init(&b, 10, 5, t);
	for (int i = 0; i < 5; i++)
		assert_true(drain_bucket_take(&b, 1, t));
	assert_false(drain_bucket_take(&b, 1, t));
	assert_int_equal(drain_bucket_wait_ms(&b, 1, t), 100);
	assert_false(drain_bucket_take(&b, 1, t + 99));
	assert_int_equal(drain_bucket_wait_ms(&b, 1, t + 99), 1);
	assert_true(drain_bucket_take(&b, 1, t + 100));
	/* A long idle gap refills to the depth, not beyond. */
	assert_true(fabs(drain_bucket_tokens(&b, t + 3600000) - 5.0) < 1e-9);
}

/* Lowering the rate clips the tokens at once; raising does not add any. */
static void
test_bucket_set(void **state)
{
	struct drain_bucket b;

	(void)state;
	drain_bucket_init(&b, 50, 50, 0);
	drain_bucket_set(&b, 2, 2, 10);
	assert_true(fabs(drain_bucket_tokens(&b, 10) - 2.0) < 1e-9);
	assert_true(drain_bucket_take(&b, 1, 10));
	assert_true(drain_bucket_take(&b, 1, 10));
	assert_false(drain_bucket_take(&b, 1, 10));
	drain_bucket_set(&b, 100, 100, 10);
	assert_false(drain_bucket_take(&b, 1, 10));
	assert_true(drain_bucket_take(&b, 1, 20));    /* 100/s: 1 per 10 ms */
}

/* The byte bucket: 1000 B/s, 300-byte messages, and a message bigger than
 * the whole bucket waits for a full bucket and then leaves it in debt. */
static void
test_byte_bucket(void **state)
{
	struct drain_bucket b;
	int n = 0;

	(void)state;
	drain_bucket_init(&b, 1000, 1000, 0);
	while (drain_bucket_take(&b, 300, 0))
		n++;
	assert_int_equal(n, 3);                       /* 1000 -> 100 left */
	/* 200 more bytes of credit are needed: 200 ms. */
	assert_int_equal(drain_bucket_wait_ms(&b, 300, 0), 200);
	assert_false(drain_bucket_take(&b, 300, 199));
	assert_true(drain_bucket_take(&b, 300, 200));

	drain_bucket_init(&b, 1000, 1000, 0);
	assert_true(drain_bucket_take(&b, 5000, 0));  /* full: allowed */
	assert_false(drain_bucket_take(&b, 1, 0));
	/* -4000 must be paid back before even 1 byte goes: 4001 ms. */
	assert_int_equal(drain_bucket_wait_ms(&b, 1, 0), 4001);
	/* Over 10 s, 5000 + 1000 * 10 bytes at most got through. */
	assert_true(drain_bucket_take(&b, 5000, 9000));
	assert_false(drain_bucket_take(&b, 1, 9000));

	/* Rate 0 is unlimited. */
	drain_bucket_init(&b, 0, 0, 0);
	for (int i = 0; i < 1000; i++)
		assert_true(drain_bucket_take(&b, 1e9, 0));
	assert_int_equal(drain_bucket_wait_ms(&b, 1e9, 0), 0);
}

/* A policy with drain_bandwidth lets no more bytes through than the bucket
 * allows, and wait_ms names the moment a message may go. */
static void
test_policy_bandwidth(void **state)
{
	struct drain_policy p;
	struct drain_policy_params pp = params(1000, 1000, 0, 10000, 0);
	uint64_t bytes = 0;
	int64_t t;

	(void)state;
	drain_policy_init(&p, &pp, 0);
	for (t = 0; t <= 10000; t++) {
		if (drain_policy_wait_ms(&p, 2500, t) == 0) {
			assert_true(drain_policy_take(&p, 2500, t));
			bytes += 2500;
		} else {
			assert_false(drain_policy_take(&p, 2500, t));
		}
	}
	/* depth 10000 + 10 s * 10000 B/s. */
	assert_true(bytes <= 110000);
	assert_true(bytes >= 100000);
}

/*
 * The integration test's invariant: in no 1-second window are more than
 * drain_rate + depth messages released, over 10 minutes at 1 ms steps with
 * random demand, random rate/burst changes, ramp restarts and AIMD events.
 */
#define SIM_MS (10 * 60 * 1000)

struct change {
	int64_t at;
	double bound;                 /* drain_rate + depth from AT on */
};

static double
bound_for(const struct drain_policy_params *pp)
{
	double depth = pp->burst > 0 ? pp->burst : pp->rate;

	if (depth < 1)
		depth = 1;
	return pp->rate + depth;
}

static void
test_bucket_window_property(void **state)
{
	static int64_t rel[SIM_MS * 2];
	static struct change ch[4096];
	struct drain_policy p;
	struct drain_policy_params pp = params(20, 2, 0, 0, 30000);
	size_t nrel = 0, nch = 0, lo = 0, c = 0;
	int64_t t;
	double demand = 0.05;         /* attempts per ms */
	int64_t worst_slack = INT64_MAX;

	(void)state;
	rng_state = 0x9E3779B97F4A7C15ull;
	drain_policy_init(&p, &pp, 0);
	ch[nch++] = (struct change){ 0, bound_for(&pp) };
	for (t = 0; t < SIM_MS; t++) {
		uint64_t r = rng() % 100000;

		if (r < 8) {
			/* About every 12 s: new drain_rate / burst / ramp. */
			static const double rates[] = { 0.3, 1, 5, 20, 50, 120 };
			static const double bursts[] = { 0, 0, 0, 3, 40 };

			pp.rate = rates[rng() % 6];
			pp.burst = bursts[rng() % 5];
			pp.initial_rate = pp.rate * rng_unit();
			pp.ramp_ms = rng() % 60000;
			drain_policy_configure(&p, &pp, t);
			assert_true(nch < sizeof(ch) / sizeof(ch[0]));
			ch[nch++] = (struct change){ t, bound_for(&pp) };
		} else if (r < 12) {
			drain_policy_restart(&p, t);
		} else if (r < 15) {
			(void)drain_policy_tempfail(&p, t);
		} else if (r < 17) {
			(void)drain_policy_timeout(&p, t);
		} else if (r < 400) {
			(void)drain_policy_ok(&p, (double)(rng() % 400), t);
		} else if (r < 420) {
			demand = rng_unit() * 0.3;
		}
		/* Up to a few attempts in this millisecond. */
		for (int k = 0; k < 3; k++) {
			if (rng_unit() >= demand)
				continue;
			if (drain_policy_take(&p, 100, t)) {
				assert_true(nrel < sizeof(rel) / sizeof(rel[0]));
				rel[nrel++] = t;
			}
			assert_true(drain_policy_limit(&p, t) <= pp.rate + 1e-9);
		}
	}
	/* The bucket did work: a saturated 10-minute run released a lot. */
	print_message("# %zu releases, %zu config changes\n", nrel, nch);
	assert_true(nrel > 5000);

	/* Sliding window [t - 999, t] ending at every release. */
	for (size_t i = 0; i < nrel; i++) {
		double bound;
		int64_t count;

		while (rel[lo] < rel[i] - 999)
			lo++;
		count = (int64_t)(i - lo + 1);
		/* The largest bound in force anywhere in the window. */
		while (c + 1 < nch && ch[c + 1].at <= rel[lo])
			c++;
		bound = ch[c].bound;
		for (size_t j = c + 1; j < nch && ch[j].at <= rel[i]; j++)
			if (ch[j].bound > bound)
				bound = ch[j].bound;
		if (count > (int64_t)floor(bound + 1e-9))
			fail_msg("%lld releases in the second ending at %lld ms, "
			    "bound %.1f", (long long)count, (long long)rel[i], bound);
		if ((int64_t)floor(bound + 1e-9) - count < worst_slack)
			worst_slack = (int64_t)floor(bound + 1e-9) - count;
	}
	/* The bound is tight somewhere: the test would notice one extra. */
	print_message("# tightest window: %lld below the bound\n",
	    (long long)worst_slack);
	assert_true(worst_slack <= 1);
}

/* A restart (primary flapping down and up) hands out no tokens that were
 * not earned: an emptied bucket stays empty. */
static void
test_restart_no_extra_burst(void **state)
{
	struct drain_policy p;
	struct drain_policy_params pp = params(10, 10, 0, 0, 0);
	int n = 0;

	(void)state;
	drain_policy_init(&p, &pp, 0);
	while (drain_policy_take(&p, 1, 0))
		n++;
	assert_int_equal(n, 10);
	drain_policy_restart(&p, 0);
	assert_false(drain_policy_take(&p, 1, 0));
	drain_policy_restart(&p, 50);
	assert_false(drain_policy_take(&p, 1, 50));
	assert_int_equal(drain_policy_wait_ms(&p, 1, 50), 50);
	assert_true(drain_policy_take(&p, 1, 100));
}

/* ---- ramp -------------------------------------------------------------- */

/* A 5-minute ramp from 2 to 50 is 2 at the start, 26 half way, 50 at the end. */
static void
test_ramp(void **state)
{
	struct drain_policy p;
	struct drain_policy_params pp = params(50, 2, 0, 0, 300000);

	(void)state;
	assert_true(fabs(drain_ramp_limit(2, 50, 300000, 0) - 2) < 1e-9);
	assert_true(fabs(drain_ramp_limit(2, 50, 300000, 150000) - 26) < 1e-9);
	assert_true(fabs(drain_ramp_limit(2, 50, 300000, 300000) - 50) < 1e-9);
	assert_true(fabs(drain_ramp_limit(2, 50, 300000, 900000) - 50) < 1e-9);
	assert_true(fabs(drain_ramp_limit(2, 50, 300000, -5) - 2) < 1e-9);
	assert_true(fabs(drain_ramp_limit(2, 50, 0, 0) - 50) < 1e-9);
	assert_true(fabs(drain_ramp_limit(80, 50, 300000, 0) - 50) < 1e-9);

	drain_policy_init(&p, &pp, 1000);
	assert_true(fabs(drain_policy_limit(&p, 1000) - 2) < 1e-9);
	assert_true(fabs(drain_policy_limit(&p, 151000) - 26) < 1e-9);
	assert_true(fabs(drain_policy_limit(&p, 301000) - 50) < 1e-9);
	/* A new down -> up starts over. */
	drain_policy_restart(&p, 400000);
	assert_true(fabs(drain_policy_limit(&p, 400000) - 2) < 1e-9);
	assert_true(fabs(drain_policy_limit(&p, 550000) - 26) < 1e-9);
	/* Lowering drain_rate at runtime applies at once, mid-ramp too. */
	pp.rate = 10;
	drain_policy_configure(&p, &pp, 550000);
	assert_true(drain_policy_limit(&p, 550000) <= 10 + 1e-9);
	assert_true(fabs(drain_policy_limit(&p, 700000) - 10) < 1e-9);
	/* Raising it after the ramp applies at once as well. */
	pp.rate = 80;
	drain_policy_configure(&p, &pp, 700000);
	assert_true(fabs(drain_policy_limit(&p, 700000) - 80) < 1e-9);
}

/* ---- AIMD -------------------------------------------------------------- */

/* A burst of 4xx from one pipelined batch is one cut; the next cut needs
 * the cooldown to pass; the floor holds. */
static void
test_aimd_cut_once_per_cooldown(void **state)
{
	struct drain_policy p;
	struct drain_policy_params pp = params(40, 2, 0, 0, 0);
	double l;

	(void)state;
	drain_policy_init(&p, &pp, 0);
	assert_true(fabs(drain_policy_limit(&p, 0) - 40) < 1e-9);
	assert_true(drain_policy_tempfail(&p, 10000));
	assert_true(fabs(drain_policy_limit(&p, 10000) - 20) < 1e-9);
	for (int i = 1; i < 8; i++)
		assert_false(drain_policy_tempfail(&p, 10000 + i * 10));
	assert_false(drain_policy_timeout(&p, 10000 + DRAIN_AIMD_COOLDOWN_MS - 1));
	assert_true(fabs(drain_policy_limit(&p, 11000) - 20) < 1e-9);
	assert_true(drain_policy_timeout(&p, 10000 + DRAIN_AIMD_COOLDOWN_MS));
	assert_true(fabs(drain_policy_limit(&p, 12000) - 10) < 1e-9);
	/* Keep cutting: never below the floor. */
	for (int64_t t = 14000; t < 60000; t += DRAIN_AIMD_COOLDOWN_MS)
		(void)drain_policy_tempfail(&p, t);
	l = drain_policy_limit(&p, 60000);
	assert_true(fabs(l - DRAIN_AIMD_FLOOR) < 1e-9);
	assert_false(drain_policy_tempfail(&p, 70000));   /* at the floor */
}

/* A cut during the ramp halves the ramp's value, not drain_rate. */
static void
test_aimd_cut_during_ramp(void **state)
{
	struct drain_policy p;
	struct drain_policy_params pp = params(50, 2, 0, 0, 300000);

	(void)state;
	drain_policy_init(&p, &pp, 0);
	assert_true(drain_policy_tempfail(&p, 150000));   /* ramp at 26 */
	assert_true(fabs(drain_policy_limit(&p, 150000) - 13) < 1e-9);
}

/* Steady success raises the limit by drain_rate/20 per second up to
 * drain_rate; a 4xx stops the credit. */
static void
test_aimd_additive_increase(void **state)
{
	struct drain_policy p;
	struct drain_policy_params pp = params(50, 2, 0, 0, 0);
	int64_t t;

	(void)state;
	drain_policy_init(&p, &pp, 0);
	assert_true(drain_policy_tempfail(&p, 1000));     /* 50 -> 25 */
	/* Success during the cooldown earns nothing. */
	for (t = 1100; t <= 3000; t += 100)
		assert_false(drain_policy_ok(&p, 5, t));
	assert_true(fabs(drain_policy_limit(&p, 3000) - 25) < 1e-9);
	/* Then +2.5/s: 4 s of success -> 35. */
	for (t = 3100; t <= 7000; t += 100)
		assert_false(drain_policy_ok(&p, 5, t));
	assert_true(fabs(drain_policy_limit(&p, 7000) - 35) < 1e-6);
	/* One 4xx among 60 successes cuts by its share, but at least 10 %. */
	assert_true(drain_policy_tempfail(&p, 7000));
	assert_true(fabs(drain_policy_limit(&p, 7000) - 31.5) < 1e-6);
	/* Long success: back to drain_rate, not beyond. */
	for (t = 7100; t <= 60000; t += 100)
		(void)drain_policy_ok(&p, 5, t);
	assert_true(fabs(drain_policy_limit(&p, 60000) - 50) < 1e-9);

	/* The increase is at least 0.5/s even for a small drain_rate. */
	pp = params(4, 1, 0, 0, 0);
	drain_policy_init(&p, &pp, 0);
	assert_true(drain_policy_tempfail(&p, 0));        /* 4 -> 2 */
	(void)drain_policy_ok(&p, 5, DRAIN_AIMD_COOLDOWN_MS);
	(void)drain_policy_ok(&p, 5, DRAIN_AIMD_COOLDOWN_MS + 2000);
	assert_true(fabs(drain_policy_limit(&p, 5000) - 3) < 1e-9);
}

/* Latency rising well above the baseline cuts; a small absolute change on
 * loopback (1 ms -> 3..4 ms) does not. */
static void
test_aimd_latency(void **state)
{
	struct drain_aimd a;
	int64_t t = 0;
	bool cut = false;
	int n;

	(void)state;
	drain_aimd_init(&a, 50, 0);
	for (n = 0; n < 30; n++)
		assert_false(drain_aimd_ok(&a, 100, 50, t += 50));
	for (n = 0; n < 5 && !cut; n++)
		cut = drain_aimd_ok(&a, 500, 50, t += 50);
	assert_true(cut);
	assert_true(n >= 2);                              /* not on one outlier */
	assert_true(fabs(drain_aimd_value(&a) - 25) < 1e-9);
	assert_int_equal(a.cuts, 1);

	/* One slow reply among fast ones does not cut. */
	drain_aimd_init(&a, 50, 0);
	t = 0;
	for (n = 0; n < 30; n++)
		(void)drain_aimd_ok(&a, 100, 50, t += 50);
	assert_false(drain_aimd_ok(&a, 600, 50, t += 50));
	assert_false(drain_aimd_ok(&a, 100, 50, t += 50));

	/* Loopback: 1 ms baseline, then 4 ms is 4x but only 3 ms more. */
	drain_aimd_init(&a, 50, 0);
	t = 0;
	for (n = 0; n < 30; n++)
		(void)drain_aimd_ok(&a, 1, 50, t += 20);
	for (n = 0; n < 200; n++)
		assert_false(drain_aimd_ok(&a, 4, 50, t += 20));
	assert_int_equal(a.cuts, 0);
	assert_true(fabs(drain_aimd_value(&a) - 50) < 1e-9);

	/* No latency cut before the baseline is seeded. */
	drain_aimd_init(&a, 50, 0);
	assert_false(drain_aimd_ok(&a, 1, 50, 10));
	for (n = 0; n < DRAIN_AIMD_SEED_SAMPLES - 1; n++)
		assert_false(drain_aimd_ok(&a, 900, 50, 20 + n));
	assert_int_equal(a.cuts, 0);
}

/* The depth of a 4xx cut follows the share of 4xx since the last cut:
 * x * (1 - share), between a halving and a 10 % cut. */
static void
test_aimd_cut_by_share(void **state)
{
	static const struct { int ok, temp; double want; } c[] = {
		{ 0, 1, 20 },             /* nothing but trouble: halve */
		{ 70, 30, 28 },           /* 30 % refused: 40 -> 28 */
		{ 50, 50, 20 },
		{ 10, 90, 20 },           /* never below a halving */
		{ 199, 1, 36 },           /* 0.5 %: still a 10 % cut */
	};
	struct drain_aimd a;

	(void)state;
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		int64_t t = 0;

		drain_aimd_init(&a, 40, 0);
		/* Successes a millisecond apart raise nothing measurable... */
		for (int k = 0; k < c[i].ok; k++)
			(void)drain_aimd_ok(&a, 5, 40, t++);
		/* ...and the 4xx before the last one fall in its cooldown. */
		for (int k = 0; k < c[i].temp - 1; k++)
			a.temp_n++;
		assert_true(drain_aimd_tempfail(&a, 40, t));
		if (fabs(drain_aimd_value(&a) - c[i].want) > 0.01)
			fail_msg("ok %d temp %d: %.3f, want %.3f", c[i].ok, c[i].temp,
			    drain_aimd_value(&a), c[i].want);
	}
}

/* A limit that held for DRAIN_AIMD_GOOD_MS without a 4xx is a floor for
 * the next cut, once; and the rise is gentle near the rate that failed. */
static void
test_aimd_good_floor_and_gentle_rise(void **state)
{
	struct drain_aimd a;
	int64_t t;
	double v;

	(void)state;
	drain_aimd_init(&a, 20, 0);
	assert_true(drain_aimd_tempfail(&a, 20, 0));        /* 20 -> 10 */
	/* 10 s of success: the rate rises quickly (1/s) below 0.85 * 20 = 17,
	 * and 8 times slower above. */
	for (t = 100; t <= 2000 + 7000; t += 100)
		(void)drain_aimd_ok(&a, 5, 20, t);
	v = drain_aimd_value(&a);                           /* 10 + 7 = 17 */
	assert_true(fabs(v - 17) < 0.11);
	for (; t <= 2000 + 7000 + 8000; t += 100)
		(void)drain_aimd_ok(&a, 5, 20, t);
	if (fabs(drain_aimd_value(&a) - (v + 1)) > 0.1)
		fail_msg("%.4f after %.4f", drain_aimd_value(&a), v);
	/* The stretches since the cut make a good rate of at least 17: a
	 * 4xx among many successes (a 10 % cut, to 16.2) stops there. */
	assert_true(a.good >= 17 - 1e-6);
	t += 100;
	assert_true(drain_aimd_tempfail(&a, 20, t));
	v = drain_aimd_value(&a);
	assert_true(v >= 17 - 1e-6 && v < 18);
	/* The floor is used up: the next cut (after the cooldown, nothing but
	 * trouble) goes below it. */
	t += DRAIN_AIMD_COOLDOWN_MS;
	assert_true(drain_aimd_tempfail(&a, 20, t));
	assert_true(fabs(drain_aimd_value(&a) - v / 2) < 1e-6);
}

/*
 * The property issue 9 asks for: against a primary that answers 451 above
 * R msg/s (a token bucket of R per second, R deep), the drain settles near
 * R, not near R / 2.  The drain takes tokens every millisecond it may
 * (always a backlog), each message is answered LAT ms later, 2xx while the
 * primary's bucket (R per second, one deep: a strict limit that stores no
 * credit, so every dip below R is lost for good) has a token and 451
 * otherwise, and the feedback goes to drain_policy_ok / _tempfail.  Over
 * 5 minutes the primary accepts at least 0.9 R on average (0.8 R in the
 * first 30 s, the search included), and never more than drain_rate +
 * depth leave in any second.  The halving AIMD before issue 9 got 0.64 to
 * 0.67 R here; this one 0.92 to 0.95 R.
 */
static void
test_aimd_converges_on_rate_limit(void **state)
{
	static const double rates[] = { 4, 10, 25 };
	enum { SIM = 300000, LAT = 40, QMAX = 4096 };

	(void)state;
	for (size_t r = 0; r < sizeof(rates) / sizeof(rates[0]); r++) {
		double R = rates[r], drain_rate = R * 2.5;
		struct drain_policy p;
		struct drain_policy_params pp = params(drain_rate, drain_rate, 0, 0, 0);
		struct drain_bucket prim;
		int64_t due[QMAX];
		bool okq[QMAX];
		size_t qh = 0, qt = 0;
		uint64_t accepted = 0, early = 0, refused = 0;
		int64_t sec = 0, in_sec = 0, worst = 0;

		drain_policy_init(&p, &pp, 0);
		drain_bucket_init(&prim, R, 1, 0);
		for (int64_t t = 0; t < SIM; t++) {
			while (qh != qt && due[qh % QMAX] <= t) {
				if (okq[qh % QMAX])
					(void)drain_policy_ok(&p, 5, t);
				else
					(void)drain_policy_tempfail(&p, t);
				qh++;
			}
			while (qt - qh < QMAX && drain_policy_take(&p, 0, t)) {
				bool ok = drain_bucket_take(&prim, 1, t);

				if (t / 1000 != sec) {
					sec = t / 1000;
					in_sec = 0;
				}
				if (++in_sec > worst)
					worst = in_sec;
				due[qt % QMAX] = t + LAT;
				okq[qt % QMAX] = ok;
				qt++;
				if (ok) {
					accepted++;
					if (t < 30000)
						early++;
				} else {
					refused++;
				}
			}
		}
		print_message("# R %.0f: %.2f R over 5 min, %.2f R in the first "
		    "30 s, %.1f %% refused, at most %lld in one second\n", R,
		    (double)accepted / (SIM / 1000) / R, (double)early / 30 / R,
		    100.0 * (double)refused / (double)(accepted + refused),
		    (long long)worst);
		assert_true((double)accepted / (SIM / 1000) >= 0.9 * R);
		assert_true((double)early / 30 >= 0.8 * R);
		assert_true((double)worst <= 2 * drain_rate);
	}
}

/* Raising drain_rate lifts an uncut AIMD with it; a cut one stays. */
static void
test_aimd_set_rate(void **state)
{
	struct drain_aimd a;

	(void)state;
	drain_aimd_init(&a, 50, 0);
	drain_aimd_set_rate(&a, 100);
	assert_true(fabs(drain_aimd_value(&a) - 100) < 1e-9);
	assert_true(drain_aimd_tempfail(&a, 100, 0));
	drain_aimd_set_rate(&a, 200);
	assert_true(fabs(drain_aimd_value(&a) - 50) < 1e-9);
	drain_aimd_set_rate(&a, 20);
	assert_true(fabs(drain_aimd_value(&a) - 20) < 1e-9);
}

/* ---- back-off, lifetime, delay warning ---------------------------------- */

/* Without jitter: 60, 120, 240, ..., 3600, 3600 s. */
static void
test_backoff_sequence(void **state)
{
	static const int64_t want[] = { 60, 120, 240, 480, 960, 1920, 3600, 3600,
	    3600 };

	(void)state;
	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		assert_int_equal(drain_backoff_next(i + 1, 5000, 0), 5000 + want[i] * 1000);
	assert_int_equal(drain_backoff_next(0, 0, 0), 60000);
	assert_int_equal(drain_backoff_next(4000000000u, 0, 0), 3600000);
}

/* Jitter stays within +-10 % and actually spreads the retries. */
static void
test_backoff_jitter(void **state)
{
	int64_t lo = INT64_MAX, hi = INT64_MIN;

	(void)state;
	rng_state = 12345;
	for (int i = 0; i < 10000; i++) {
		double j = rng_unit() * 2 - 1;
		int64_t d = drain_backoff_next(3, 0, j);

		assert_true(d >= 216000 && d <= 264000);      /* 240 s +- 10 % */
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	assert_true(lo < 220000 && hi > 260000);
	assert_int_equal(drain_backoff_next(7, 0, 1), 3960000);
	assert_int_equal(drain_backoff_next(7, 0, -1), 3240000);
	/* Out of range values are clamped. */
	assert_int_equal(drain_backoff_next(1, 0, 7), 66000);
	assert_int_equal(drain_backoff_next(1, 0, NAN), 60000);
}

/* While the primary is up, the first DRAIN_RETRY_FAST deferrals in a row
 * retry at once; then the back-off starts at 1 min.  While it is not up,
 * the back-off applies from the first. */
static void
test_retry_next(void **state)
{
	(void)state;
	assert_int_equal(DRAIN_RETRY_FAST, 2);
	assert_int_equal(drain_retry_next(1, true, 5000, 0), 5000);
	assert_int_equal(drain_retry_next(2, true, 5000, 1), 5000);
	assert_int_equal(drain_retry_next(3, true, 5000, 0), 5000 + 60000);
	assert_int_equal(drain_retry_next(4, true, 5000, 0), 5000 + 120000);
	assert_int_equal(drain_retry_next(0, true, 5000, 0), 5000);
	assert_int_equal(drain_retry_next(1, false, 5000, 0), 5000 + 60000);
	assert_int_equal(drain_retry_next(3, false, 5000, 0), 5000 + 240000);
	assert_int_equal(drain_retry_next(3, true, 0, 1), 66000);
}

/* ---- connections ------------------------------------------------------- */

/* A refusal while others work cuts to max(1, working, limit / 2); the
 * sessions opened before that cut do not cut again; never below 1. */
static void
test_conc_cut(void **state)
{
	struct drain_conc c;

	(void)state;
	drain_conc_init(&c, 4, 0);
	assert_int_equal(drain_conc_limit(&c), 4);
	/* Four opened at 0; two refused (Postfix's count limit of 2) while
	 * two were greeted: 4 -> 2, and the second refusal changes nothing. */
	assert_int_equal(drain_conc_refused(&c, 2, 0, 10), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 2);
	assert_int_equal(drain_conc_refused(&c, 2, 0, 11), DRAIN_CONC_SAME);
	assert_int_equal(drain_conc_limit(&c), 2);
	/* A session opened after the cut and refused: 2 -> 1. */
	assert_int_equal(drain_conc_refused(&c, 1, 20, 30), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 1);
	assert_int_equal(drain_conc_refused(&c, 0, 40, 50), DRAIN_CONC_SAME);
	assert_int_equal(drain_conc_limit(&c), 1);
	assert_int_equal(c.cuts, 2);

	/* Working sessions are kept: 8 with 6 working -> 6, not 4. */
	drain_conc_init(&c, 8, 0);
	assert_int_equal(drain_conc_refused(&c, 6, 0, 5), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 6);
	/* Nothing greeted yet: a halving. */
	drain_conc_init(&c, 8, 0);
	assert_int_equal(drain_conc_refused(&c, 0, 0, 5), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 4);
	/* A cut always lowers the limit, even with all others working. */
	drain_conc_init(&c, 3, 0);
	assert_int_equal(drain_conc_refused(&c, 3, 0, 5), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 2);
}

/* Additive increase: +1 after DRAIN_CONC_RAISE_MS of success at the limit
 * with no refusal, up to drain_concurrency; not while below the limit. */
static void
test_conc_raise(void **state)
{
	struct drain_conc c;
	int64_t t;

	(void)state;
	drain_conc_init(&c, 4, 0);
	assert_int_equal(drain_conc_refused(&c, 1, 0, 1000), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 2);
	assert_int_equal(drain_conc_ok(&c, 2, 1000 + DRAIN_CONC_RAISE_MS - 1),
	    DRAIN_CONC_SAME);
	/* Below the limit: it is not what holds the drain back. */
	assert_int_equal(drain_conc_ok(&c, 1, 1000 + DRAIN_CONC_RAISE_MS),
	    DRAIN_CONC_SAME);
	assert_int_equal(drain_conc_ok(&c, 2, 1000 + DRAIN_CONC_RAISE_MS),
	    DRAIN_CONC_RAISED);
	assert_int_equal(drain_conc_limit(&c), 3);
	/* A refusal (of a session opened after the cut) restarts the wait. */
	t = 1000 + DRAIN_CONC_RAISE_MS + 100;
	assert_int_equal(drain_conc_refused(&c, 2, t - 50, t), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 2);
	assert_int_equal(drain_conc_ok(&c, 2, t + DRAIN_CONC_RAISE_MS - 1),
	    DRAIN_CONC_SAME);
	for (int64_t u = t + DRAIN_CONC_RAISE_MS; u < t + 10 * DRAIN_CONC_RAISE_MS;
	    u += 100)
		(void)drain_conc_ok(&c, drain_conc_limit(&c), u);
	assert_int_equal(drain_conc_limit(&c), 4);        /* not beyond */

	/* drain_concurrency changes: an uncut limit follows, a cut one is
	 * clipped. */
	t += 20 * DRAIN_CONC_RAISE_MS;
	drain_conc_set_max(&c, 6, t);
	assert_int_equal(drain_conc_limit(&c), 6);
	assert_int_equal(drain_conc_refused(&c, 2, t + 1, t + 2), DRAIN_CONC_CUT);
	assert_int_equal(drain_conc_limit(&c), 3);
	drain_conc_set_max(&c, 8, t + 3);
	assert_int_equal(drain_conc_limit(&c), 3);
	drain_conc_set_max(&c, 2, t + 4);
	assert_int_equal(drain_conc_limit(&c), 2);
	drain_conc_set_max(&c, 0, t + 5);
	assert_int_equal(drain_conc_limit(&c), 1);
}

/* Expiry at exactly queue_lifetime; delay warning once, and never when off. */
static void
test_lifetime_and_delay_warning(void **state)
{
	const uint64_t day = 86400000;

	(void)state;
	assert_false(drain_expired(1000, 1000 + 5 * day - 1, 5 * day));
	assert_true(drain_expired(1000, 1000 + 5 * day, 5 * day));
	assert_false(drain_expired(1000, 500, 5 * day));
	assert_true(drain_expired(1000, 1000, 0));

	assert_false(drain_delay_warning_due(0, 4 * 3600000 - 1, 4 * 3600000, false));
	assert_true(drain_delay_warning_due(0, 4 * 3600000, 4 * 3600000, false));
	assert_false(drain_delay_warning_due(0, 4 * 3600000, 4 * 3600000, true));
	assert_false(drain_delay_warning_due(0, 100 * day, 0, false));
}

/* ---- the primary ------------------------------------------------------- */

/* up_after = 3 with a failure in the middle needs three good probes after
 * the failure; a delivery failure takes it down at once. */
static void
test_primary_transitions(void **state)
{
	struct drain_primary pr;

	(void)state;
	drain_primary_init(&pr, 3, 30000, 0);
	assert_int_equal(drain_primary_get(&pr), DRAIN_PRIMARY_UNKNOWN);
	assert_string_equal(drain_primary_state_name(drain_primary_get(&pr)), "unknown");
	assert_true(drain_primary_probe_due(&pr, 0));

	assert_true(drain_primary_event(&pr, DRAIN_EV_PROBE_FAIL, 0));
	assert_int_equal(drain_primary_get(&pr), DRAIN_PRIMARY_DOWN);
	assert_int_equal(drain_primary_next_probe(&pr), 30000);
	assert_false(drain_primary_probe_due(&pr, 29999));
	assert_true(drain_primary_probe_due(&pr, 30000));

	assert_false(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 30000));
	assert_false(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 60000));
	assert_false(drain_primary_event(&pr, DRAIN_EV_PROBE_FAIL, 90000));
	assert_false(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 120000));
	assert_false(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 150000));
	assert_int_equal(drain_primary_get(&pr), DRAIN_PRIMARY_DOWN);
	assert_true(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 180000));
	assert_int_equal(drain_primary_get(&pr), DRAIN_PRIMARY_UP);
	assert_string_equal(drain_primary_state_name(DRAIN_PRIMARY_UP), "up");
	assert_false(drain_primary_probe_due(&pr, 10 * 180000));
	assert_int_equal(drain_primary_next_probe(&pr), INT64_MAX);
	assert_false(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 190000));

	assert_true(drain_primary_event(&pr, DRAIN_EV_DELIVERY_FAIL, 200000));
	assert_int_equal(drain_primary_get(&pr), DRAIN_PRIMARY_DOWN);
	assert_string_equal(drain_primary_state_name(DRAIN_PRIMARY_DOWN), "down");
	assert_int_equal(drain_primary_next_probe(&pr), 230000);
	assert_false(drain_primary_event(&pr, DRAIN_EV_DELIVERY_FAIL, 200001));

	/* ETRN / flush: probe now. */
	drain_primary_probe_now(&pr, 210000);
	assert_true(drain_primary_probe_due(&pr, 210000));

	/* up_after = 1 (and 0 counts as 1): unknown -> up on the first probe. */
	drain_primary_init(&pr, 0, 30000, 0);
	assert_true(drain_primary_event(&pr, DRAIN_EV_PROBE_OK, 5));
	assert_int_equal(drain_primary_get(&pr), DRAIN_PRIMARY_UP);
	drain_primary_probe_now(&pr, 10);
	assert_false(drain_primary_probe_due(&pr, 10));

	/* A shorter interval on reload brings the pending probe closer. */
	drain_primary_init(&pr, 2, 600000, 0);
	(void)drain_primary_event(&pr, DRAIN_EV_PROBE_FAIL, 0);
	drain_primary_configure(&pr, 2, 10000, 1000);
	assert_int_equal(drain_primary_next_probe(&pr), 11000);
}

/* ---- meter and ETA ------------------------------------------------------ */

/* 10 msg/s for 30 s measures 10; after it stops the rate decays to 0 within
 * 10 s; a young meter is not diluted by seconds before it existed. */
static void
test_meter(void **state)
{
	struct drain_meter m;
	int64_t t;

	(void)state;
	drain_meter_init(&m, 0);
	assert_true(drain_meter_rate(&m, 0) == 0);
	for (t = 0; t < 30000; t += 100)
		drain_meter_add(&m, 1, t);
	assert_true(fabs(drain_meter_rate(&m, 30000) - 10) < 1.01);
	assert_true(fabs(drain_meter_rate(&m, 29999) - 10) < 0.2);
	assert_true(drain_meter_rate(&m, 35000) < 6);
	assert_true(drain_meter_rate(&m, 40000) == 0);

	/* Young meter: 20 messages in the first 2 s is 10/s, not 2/s. */
	drain_meter_init(&m, 500000);
	for (t = 500000; t < 502000; t += 100)
		drain_meter_add(&m, 1, t);
	assert_true(fabs(drain_meter_rate(&m, 502000) - 10) < 0.5);
	/* Less than a second old: divided by 1 s, no spike. */
	drain_meter_init(&m, 700000);
	drain_meter_add(&m, 3, 700010);
	assert_true(fabs(drain_meter_rate(&m, 700020) - 3) < 1e-9);
}

/* ETA is queued / measured rate, falls back to the limit when nothing was
 * measured yet, and is null when nothing is draining. */
static void
test_eta(void **state)
{
	int64_t eta = -1;

	(void)state;
	assert_true(drain_eta(1000, 10, 50, true, &eta));
	assert_int_equal(eta, 100);
	assert_true(drain_eta(1001, 10, 50, true, &eta));
	assert_int_equal(eta, 101);
	assert_true(drain_eta(1000, 0, 2, true, &eta));
	assert_int_equal(eta, 500);
	assert_true(drain_eta(0, 0, 2, true, &eta));
	assert_int_equal(eta, 0);
	eta = -1;
	assert_false(drain_eta(1000, 10, 50, false, &eta));
	assert_int_equal(eta, -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket_basic),
		cmocka_unit_test(test_bucket_set),
		cmocka_unit_test(test_byte_bucket),
		cmocka_unit_test(test_policy_bandwidth),
		cmocka_unit_test(test_bucket_window_property),
		cmocka_unit_test(test_restart_no_extra_burst),
		cmocka_unit_test(test_ramp),
		cmocka_unit_test(test_aimd_cut_once_per_cooldown),
		cmocka_unit_test(test_aimd_cut_during_ramp),
		cmocka_unit_test(test_aimd_additive_increase),
		cmocka_unit_test(test_aimd_latency),
		cmocka_unit_test(test_aimd_set_rate),
		cmocka_unit_test(test_aimd_cut_by_share),
		cmocka_unit_test(test_aimd_good_floor_and_gentle_rise),
		cmocka_unit_test(test_aimd_converges_on_rate_limit),
		cmocka_unit_test(test_retry_next),
		cmocka_unit_test(test_conc_cut),
		cmocka_unit_test(test_conc_raise),
		cmocka_unit_test(test_backoff_sequence),
		cmocka_unit_test(test_backoff_jitter),
		cmocka_unit_test(test_lifetime_and_delay_warning),
		cmocka_unit_test(test_primary_transitions),
		cmocka_unit_test(test_meter),
		cmocka_unit_test(test_eta),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
