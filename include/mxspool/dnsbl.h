/*
 * dnsbl.h - DNS blocklist lookups of one SMTP client (RFC 5782).
 *
 * The client's address is looked up under every zone at once when it
 * connects (dnsbl_check_start), so that its first RCPT rarely has to wait;
 * RCPT then asks which of its tenant's zones list the client.  Lookups go
 * through the relay's one resolver (dns_a: A records, cached by TTL), and
 * each check ends at a deadline of its own: a zone that has not answered by
 * then counts as not listing the client, and so does a zone whose lookup
 * failed.  A DNS failure never blocks mail; a listing only defers it.
 *
 * A zone lists the client when it answers with an address in 127.0.0.0/8
 * (RFC 5782 2.1) other than 127.255.255.0/24, which Spamhaus and others use
 * for "query refused" and "rate limited": treating those as listings would
 * defer every client the day a zone stops serving us.  Addresses outside
 * 127/8 (a resolver that rewrites NXDOMAIN to an ad server) are ignored.
 *
 * The pure helpers are unit-tested; dnsbl_check_* runs on a libuv loop.
 * One log line per zone that lists the client, failed or timed out (clean
 * answers at debug level).
 */
#ifndef MXSPOOL_DNSBL_H
#define MXSPOOL_DNSBL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "mxspool/dns.h"

/* Distinct zones looked up per client ([server] and every tenant
 * together); zones beyond are not looked up (mxspool.ini(5) says so). */
#define DNSBL_MAX_ZONES 32
/* Longest query name: 32 nibbles of an IPv6 address, 2 * 32 octets, plus
 * the zone; DNS names are at most 253 octets anyway. */
#define DNSBL_NAME_MAX 253
#define DNSBL_CODE_MAX 16             /* "127.0.0.2" and its NUL */

/*
 * The query name of the client at SA under ZONE into OUT: the IPv4 octets
 * reversed ("2.0.0.127.ZONE") or the 32 nibbles of an IPv6 address
 * reversed (RFC 5782 2.4).  An IPv4-mapped IPv6 address is looked up as
 * IPv4.  Returns 0, or -1 (not AF_INET/AF_INET6, or OUT too small).
 */
int dnsbl_query_name(const struct sockaddr *sa, const char *zone, char *out,
    size_t len);

/* Does the answer address A mean "listed" (see above)? */
bool dnsbl_code_listed(const struct sockaddr_storage *a);

/* Add ZONES[0..n) to SET (*nset entries, room for DNSBL_MAX_ZONES)
 * without duplicates (zones are lower case from the config); zones
 * beyond the room are dropped.  Pointers are not copied. */
void dnsbl_zone_union(const char **set, size_t *nset, char *const *zones,
    size_t n);

struct dnsbl_check;
typedef void (*dnsbl_done_cb)(void *arg);

/* What a check is for, for its log lines. */
struct dnsbl_client {
	uint64_t session;
	const char *ip;               /* copied */
	const struct sockaddr *sa;
};

/*
 * Look the client up under ZONES[0..n) (copied; n <= DNSBL_MAX_ZONES is
 * used) through DNS, all in parallel, for at most TIMEOUT_MS.  DONE(ARG)
 * runs, never from inside this call, each time the answer of some zone is
 * in and once more at the deadline if any was missing then; never after
 * the deadline or the last answer.  Returns 0 and *out, or -1 (no memory,
 * bad address): then there is nothing to wait for and nothing to free.
 */
int dnsbl_check_start(uv_loop_t *loop, struct dns *dns,
    const struct dnsbl_client *client, const char *const *zones, size_t n,
    uint64_t timeout_ms, dnsbl_done_cb done, void *arg,
    struct dnsbl_check **out);

/* Is the check over: every zone answered, or the deadline passed? */
bool dnsbl_check_done(const struct dnsbl_check *c);
/* Is one of ZONES[0..n) still waiting for its answer (before the
 * deadline)?  Zones the check does not look up are not waited for. */
bool dnsbl_check_pending(const struct dnsbl_check *c, char *const *zones,
    size_t n);

/*
 * The first of ZONES[0..n) (a tenant's list) under which the check found
 * the client listed, with the answer ("127.0.0.2") in CODE; NULL if none
 * of them lists it so far.  Zones the check did not look up (a reload
 * added them) do not list anybody.
 */
const char *dnsbl_check_listed(const struct dnsbl_check *c,
    char *const *zones, size_t n, char code[DNSBL_CODE_MAX]);

/* Stop: DONE will not run; lookups in flight are cancelled (their answers
 * still fill the DNS cache).  The memory goes with the timer's close
 * callback.  NULL is a no-op.  Safe from inside DONE. */
void dnsbl_check_free(struct dnsbl_check *c);

#endif
