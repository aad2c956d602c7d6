/*
 * anvil.c - per-client message and recipient rate limits (see anvil.h).
 *
 * GCRA: for a limit of N per minute the emission interval is
 * T = 60 s / N and the tolerance TAU = 60 s - T.  Each bucket keeps TAT,
 * the time at which it would be full again.  An event at NOW is allowed
 * when TAT - TAU <= NOW; then TAT = max(TAT, NOW) + T.  From empty that
 * admits exactly N events at one instant, then one per T.  Times are in
 * microseconds so that T is exact enough for any N up to a million.
 *
 * The table is set-associative: hash(address) picks a set of ANVIL_WAYS
 * entries; lookups scan the set, inserts take a free, refilled or the
 * least-loaded entry of it.  No allocation after anvil_new().
 */
#include "config.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "mxspool/anvil.h"

#define ANVIL_WAYS 8
#define ANVIL_SETS (ANVIL_CLIENTS / ANVIL_WAYS)
#define ANVIL_MINUTE_US 60000000ull

struct anvil_entry {
	uint8_t addr[16];             /* IPv6, or IPv4-mapped */
	bool used;
	uint64_t tat[ANVIL_NKINDS];   /* microseconds; <= now: refilled */
};

struct anvil {
	struct anvil_entry e[ANVIL_CLIENTS];
};

struct anvil *
anvil_new(void)
{
	return calloc(1, sizeof(struct anvil));
}

void
anvil_free(struct anvil *a)
{
	free(a);
}

/* FAMILY/ADDR as 16 octets (IPv4 mapped); false for other families. */
static bool
anvil_key(int family, const void *addr, uint8_t key[16])
{
	if (family == AF_INET) {
		memset(key, 0, 10);
		key[10] = key[11] = 0xff;
		memcpy(key + 12, addr, 4);
		return true;
	}
	if (family == AF_INET6) {
		memcpy(key, addr, 16);
		return true;
	}
	return false;
}

static size_t
anvil_set(const uint8_t key[16])
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return (h % ANVIL_SETS) * ANVIL_WAYS;
}

/* The latest TAT of E: the entry carries state until then. */
static uint64_t
anvil_busy_until(const struct anvil_entry *e)
{
	uint64_t t = 0;

	for (size_t k = 0; k < ANVIL_NKINDS; k++)
		if (e->tat[k] > t)
			t = e->tat[k];
	return e->used ? t : 0;
}

/* KEY's entry, or a fresh one in its set (evicting as anvil.h says). */
static struct anvil_entry *
anvil_entry(struct anvil *a, const uint8_t key[16], uint64_t now_us)
{
	struct anvil_entry *set = &a->e[anvil_set(key)], *victim = NULL;
	uint64_t best = UINT64_MAX;

	for (size_t i = 0; i < ANVIL_WAYS; i++)
		if (set[i].used && memcmp(set[i].addr, key, 16) == 0)
			return &set[i];
	for (size_t i = 0; i < ANVIL_WAYS; i++) {
		uint64_t busy = anvil_busy_until(&set[i]);

		if (busy <= now_us) {
			victim = &set[i];
			break;
		}
		if (busy < best) {
			best = busy;
			victim = &set[i];
		}
	}
	memset(victim, 0, sizeof(*victim));
	memcpy(victim->addr, key, 16);
	victim->used = true;
	return victim;
}

bool
anvil_allow(struct anvil *a, int family, const void *addr,
    enum anvil_kind kind, unsigned limit, uint64_t now_ms)
{
	uint8_t key[16];
	uint64_t now_us = now_ms * 1000, t, tau, tat;
	struct anvil_entry *e;

	if (limit == 0 || a == NULL || kind >= ANVIL_NKINDS ||
	    !anvil_key(family, addr, key))
		return true;
	t = ANVIL_MINUTE_US / limit;
	if (t == 0)
		t = 1;
	tau = ANVIL_MINUTE_US - t;
	e = anvil_entry(a, key, now_us);
	tat = e->tat[kind] > now_us ? e->tat[kind] : now_us;
	if (tat - now_us > tau)
		return false;
	e->tat[kind] = tat + t;
	return true;
}

size_t
anvil_active(const struct anvil *a, uint64_t now_ms)
{
	size_t n = 0;

	for (size_t i = 0; i < ANVIL_CLIENTS; i++)
		if (anvil_busy_until(&a->e[i]) > now_ms * 1000)
			n++;
	return n;
}
