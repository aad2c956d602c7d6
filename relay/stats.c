/*
 * stats.c - per-tenant and total message counters.
 *
 * A linear list: there are as many entries as tenants in the config (a
 * handful, bounded by STATS_TENANTS_MAX), and a lookup per accepted or
 * delivered message costs less than the fdatasync it follows.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "mxspool/stats.h"

struct stats_tenant {
	char *name;
	uint64_t v[STAT__COUNT];
	struct stats_hist h[STAT_HIST__COUNT];
};

struct stats {
	uint64_t total[STAT__COUNT];
	struct stats_hist htotal[STAT_HIST__COUNT];
	struct stats_tenant *t;
	size_t n, cap;
};

struct stats *
stats_new(void)
{
	return calloc(1, sizeof(struct stats));
}

void
stats_free(struct stats *st)
{
	if (st == NULL)
		return;
	for (size_t i = 0; i < st->n; i++)
		free(st->t[i].name);
	free(st->t);
	free(st);
}

static struct stats_tenant *
stats_find(const struct stats *st, const char *tenant)
{
	for (size_t i = 0; i < st->n; i++)
		if (strcmp(st->t[i].name, tenant) == 0)
			return &st->t[i];
	return NULL;
}

static struct stats_tenant *
stats_get(struct stats *st, const char *tenant)
{
	struct stats_tenant *t = stats_find(st, tenant);

	if (t != NULL || st->n >= STATS_TENANTS_MAX)
		return t;
	if (st->n == st->cap) {
		size_t cap = st->cap ? st->cap * 2 : 8;
		struct stats_tenant *nt = realloc(st->t, cap * sizeof(*nt));

		if (nt == NULL)
			return NULL;
		st->t = nt;
		st->cap = cap;
	}
	t = &st->t[st->n];
	memset(t, 0, sizeof(*t));
	if ((t->name = strdup(tenant)) == NULL)
		return NULL;
	st->n++;
	return t;
}

void
stats_add(struct stats *st, const char *tenant, enum stat_kind kind,
    uint64_t n)
{
	struct stats_tenant *t;

	if (st == NULL || (unsigned)kind >= STAT__COUNT)
		return;
	st->total[kind] += n;
	if (tenant != NULL && (t = stats_get(st, tenant)) != NULL)
		t->v[kind] += n;
}

uint64_t
stats_total(const struct stats *st, enum stat_kind kind)
{
	return st && (unsigned)kind < STAT__COUNT ? st->total[kind] : 0;
}

uint64_t
stats_tenant(const struct stats *st, const char *tenant, enum stat_kind kind)
{
	const struct stats_tenant *t;

	if (st == NULL || tenant == NULL || (unsigned)kind >= STAT__COUNT)
		return 0;
	t = stats_find(st, tenant);
	return t ? t->v[kind] : 0;
}

/* ---- histograms --------------------------------------------------------- */

/* Accept: a fdatasync is 0.2-5 ms on disks and SSDs, tens of ms on a busy
 * RAID; above a second the client's timeout is near.  Delivery: a
 * transaction at the primary, round trips to a slow server included. */
static const double stats_bounds_fast[] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60,
};
/* Queue delay: seconds while the primary is up, days through an outage. */
static const double stats_bounds_queue[] = {
	1, 10, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600,
	86400, 2 * 86400, 3 * 86400, 5 * 86400,
};

#define NB(a) (sizeof(a) / sizeof((a)[0]))
_Static_assert(NB(stats_bounds_fast) <= STATS_HIST_BUCKETS_MAX, "buckets");
_Static_assert(NB(stats_bounds_queue) <= STATS_HIST_BUCKETS_MAX, "buckets");

const double *
stats_hist_bounds(enum stat_hist h, size_t *n)
{
	if (h == STAT_HIST_QUEUE_DELAY) {
		*n = NB(stats_bounds_queue);
		return stats_bounds_queue;
	}
	*n = NB(stats_bounds_fast);
	return stats_bounds_fast;
}

static void
stats_hist_add(struct stats_hist *sh, const double *le, size_t n, double v)
{
	for (size_t i = 0; i < n; i++)
		if (v <= le[i]) {
			sh->bucket[i]++;
			break;
		}
	sh->count++;
	sh->sum += v;
}

void
stats_observe(struct stats *st, const char *tenant, enum stat_hist h,
    double seconds)
{
	struct stats_tenant *t;
	const double *le;
	size_t n;

	if (st == NULL || (unsigned)h >= STAT_HIST__COUNT)
		return;
	if (!(seconds > 0))    /* negative, or NaN from a clock gone odd */
		seconds = 0;
	le = stats_hist_bounds(h, &n);
	stats_hist_add(&st->htotal[h], le, n, seconds);
	if (tenant != NULL && (t = stats_get(st, tenant)) != NULL)
		stats_hist_add(&t->h[h], le, n, seconds);
}

const struct stats_hist *
stats_hist_tenant(const struct stats *st, const char *tenant, enum stat_hist h)
{
	const struct stats_tenant *t;

	if (st == NULL || tenant == NULL || (unsigned)h >= STAT_HIST__COUNT)
		return NULL;
	t = stats_find(st, tenant);
	return t ? &t->h[h] : NULL;
}

const struct stats_hist *
stats_hist_total(const struct stats *st, enum stat_hist h)
{
	return st && (unsigned)h < STAT_HIST__COUNT ? &st->htotal[h] : NULL;
}
