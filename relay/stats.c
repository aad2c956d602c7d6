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
};

struct stats {
	uint64_t total[STAT__COUNT];
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
