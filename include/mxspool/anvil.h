/*
 * anvil.h - per-client rate limits at intake, after Postfix's anvil(8):
 * messages and recipients per minute per client IP address.
 *
 * Pure: no I/O, no clock of its own (NOW_MS is given), no logging, so the
 * unit tests drive it on an injected clock.
 *
 * Each client and kind is a GCRA bucket (the "theoretical arrival time" of
 * RFC 2475-style token buckets in one number): a limit of N per minute
 * lets a client send N at once and then one every 60/N seconds, and never
 * more than N in any 60-second window plus that burst.  A refused event is
 * not counted, so a client that backs off gets through again at the rate.
 *
 * Memory is bounded: a fixed table of ANVIL_CLIENTS entries, in sets of 8
 * by address hash.  An entry whose buckets have refilled carries no state
 * and is reused freely; when all 8 of a set are busy, the one closest to
 * refilled is dropped (that client starts afresh: bounded memory over
 * exactness, as anvil's own table is).
 */
#ifndef MXSPOOL_ANVIL_H
#define MXSPOOL_ANVIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ANVIL_CLIENTS 8192            /* entries, 40 bytes each: 320 KiB */

enum anvil_kind {
	ANVIL_MESSAGE,                /* a MAIL FROM */
	ANVIL_RECIPIENT,              /* a RCPT TO */
	ANVIL_NKINDS,
};

struct anvil;

/* A table of ANVIL_CLIENTS entries, or NULL when out of memory. */
struct anvil *anvil_new(void);
void anvil_free(struct anvil *a);

/*
 * May the client at ADDR (FAMILY AF_INET with 4 octets or AF_INET6 with 16;
 * an IPv4-mapped IPv6 address is its IPv4 address) do one more KIND at
 * NOW_MS, with at most LIMIT per minute?  True: allowed and counted.
 * LIMIT 0 means no limit (always true, nothing stored).
 */
bool anvil_allow(struct anvil *a, int family, const void *addr,
    enum anvil_kind kind, unsigned limit, uint64_t now_ms);

/* Entries holding state at NOW_MS (buckets not yet refilled), for tests. */
size_t anvil_active(const struct anvil *a, uint64_t now_ms);

#endif
