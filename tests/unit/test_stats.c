/*
 * test_stats.c - the relay's message counters: totals, per-tenant figures,
 * the bound on tenant names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>

#include "mxspool/stats.h"

/* Each add counts for its tenant and for the total; other tenants stay 0. */
static void
test_counts_per_tenant_and_total(void **state)
{
	struct stats *st = stats_new();

	(void)state;
	assert_non_null(st);
	stats_add(st, "a", STAT_ACCEPTED, 1);
	stats_add(st, "a", STAT_ACCEPTED, 2);
	stats_add(st, "b", STAT_ACCEPTED, 1);
	stats_add(st, "b", STAT_DELIVERED, 5);
	stats_add(st, "a", STAT_BOUNCED, 1);
	assert_int_equal(stats_total(st, STAT_ACCEPTED), 4);
	assert_int_equal(stats_total(st, STAT_DELIVERED), 5);
	assert_int_equal(stats_total(st, STAT_BOUNCED), 1);
	assert_int_equal(stats_tenant(st, "a", STAT_ACCEPTED), 3);
	assert_int_equal(stats_tenant(st, "b", STAT_ACCEPTED), 1);
	assert_int_equal(stats_tenant(st, "a", STAT_DELIVERED), 0);
	assert_int_equal(stats_tenant(st, "b", STAT_DELIVERED), 5);
	assert_int_equal(stats_tenant(st, "never", STAT_ACCEPTED), 0);
	stats_free(st);
}

/* A NULL tenant counts only toward the total; bad kinds and NULL stats are
 * ignored rather than written out of bounds. */
static void
test_null_and_bad_arguments(void **state)
{
	struct stats *st = stats_new();

	(void)state;
	stats_add(st, NULL, STAT_DELIVERED, 7);
	stats_add(st, "a", STAT__COUNT, 1);
	stats_add(NULL, "a", STAT_ACCEPTED, 1);
	assert_int_equal(stats_total(st, STAT_DELIVERED), 7);
	assert_int_equal(stats_total(st, STAT__COUNT), 0);
	assert_int_equal(stats_tenant(st, "a", STAT_ACCEPTED), 0);
	assert_int_equal(stats_tenant(st, NULL, STAT_ACCEPTED), 0);
	assert_int_equal(stats_total(NULL, STAT_ACCEPTED), 0);
	stats_free(st);
	stats_free(NULL);
}

/* Past STATS_TENANTS_MAX names only the total grows: a flood of names
 * (a bug elsewhere, say) cannot make the table grow without bound. */
static void
test_tenant_names_are_bounded(void **state)
{
	struct stats *st = stats_new();
	char name[32];

	(void)state;
	for (unsigned i = 0; i < STATS_TENANTS_MAX + 10; i++) {
		snprintf(name, sizeof(name), "t%u", i);
		stats_add(st, name, STAT_ACCEPTED, 1);
	}
	assert_int_equal(stats_total(st, STAT_ACCEPTED), STATS_TENANTS_MAX + 10);
	assert_int_equal(stats_tenant(st, "t0", STAT_ACCEPTED), 1);
	snprintf(name, sizeof(name), "t%u", STATS_TENANTS_MAX - 1);
	assert_int_equal(stats_tenant(st, name, STAT_ACCEPTED), 1);
	snprintf(name, sizeof(name), "t%u", STATS_TENANTS_MAX + 5);
	assert_int_equal(stats_tenant(st, name, STAT_ACCEPTED), 0);
	stats_free(st);
}

/* An observation lands in the first bucket whose bound it does not exceed
 * (le is inclusive, as Prometheus defines it); above every bound it counts
 * only in count and sum (+Inf).  Tenant and total histograms agree. */
static void
test_histogram_buckets(void **state)
{
	struct stats *st = stats_new();
	const struct stats_hist *h, *tot;
	const double *le;
	size_t n;

	(void)state;
	le = stats_hist_bounds(STAT_HIST_ACCEPT, &n);
	assert_true(n > 4 && n <= STATS_HIST_BUCKETS_MAX);
	for (size_t i = 1; i < n; i++)
		assert_true(le[i] > le[i - 1]);
	assert_null(stats_hist_tenant(st, "a", STAT_HIST_ACCEPT));
	stats_observe(st, "a", STAT_HIST_ACCEPT, le[0]);          /* on the bound */
	stats_observe(st, "a", STAT_HIST_ACCEPT, le[0] * 1.5);    /* between 0 and 1 */
	stats_observe(st, "a", STAT_HIST_ACCEPT, le[n - 1] * 2);  /* +Inf only */
	stats_observe(st, "b", STAT_HIST_ACCEPT, -1);             /* clamped to 0 */
	h = stats_hist_tenant(st, "a", STAT_HIST_ACCEPT);
	assert_non_null(h);
	assert_int_equal(h->bucket[0], 1);
	assert_int_equal(h->bucket[1], 1);
	for (size_t i = 2; i < n; i++)
		assert_int_equal(h->bucket[i], 0);
	assert_int_equal(h->count, 3);
	assert_true(h->sum > le[n - 1] * 2 && h->sum < le[n - 1] * 2 + 1);
	tot = stats_hist_total(st, STAT_HIST_ACCEPT);
	assert_int_equal(tot->count, 4);
	assert_int_equal(tot->bucket[0], 2);    /* a's and b's clamped 0 */
	/* Other histograms are untouched. */
	assert_int_equal(stats_hist_total(st, STAT_HIST_DELIVERY)->count, 0);
	assert_int_equal(stats_hist_tenant(st, "a", STAT_HIST_DELIVERY)->count, 0);
	/* The queue delay reaches days. */
	le = stats_hist_bounds(STAT_HIST_QUEUE_DELAY, &n);
	assert_true(le[n - 1] >= 86400);
	stats_observe(st, "a", STAT_HIST_QUEUE_DELAY, 2 * 3600);
	h = stats_hist_tenant(st, "a", STAT_HIST_QUEUE_DELAY);
	assert_int_equal(h->count, 1);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(h->bucket[i], le[i] >= 2 * 3600 &&
		    (i == 0 || le[i - 1] < 2 * 3600));
	/* Bad arguments are ignored. */
	stats_observe(NULL, "a", STAT_HIST_ACCEPT, 1);
	stats_observe(st, "a", STAT_HIST__COUNT, 1);
	assert_null(stats_hist_total(st, STAT_HIST__COUNT));
	assert_null(stats_hist_tenant(st, NULL, STAT_HIST_ACCEPT));
	stats_free(st);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts_per_tenant_and_total),
		cmocka_unit_test(test_null_and_bad_arguments),
		cmocka_unit_test(test_tenant_names_are_bounded),
		cmocka_unit_test(test_histogram_buckets),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
