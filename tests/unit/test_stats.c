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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts_per_tenant_and_total),
		cmocka_unit_test(test_null_and_bad_arguments),
		cmocka_unit_test(test_tenant_names_are_bounded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
