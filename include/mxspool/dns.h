/*
 * dns.h - MX and address lookups with c-ares on the libuv loop, a TTL cache,
 * and the backup-MX primary selection rule.
 *
 * c-ares 1.18 (Debian 12) has no event thread: its sockets are watched with
 * one uv_poll_t each (ARES_OPT_SOCK_STATE_CB) and retransmits run from a
 * uv_timer_t set from ares_timeout().  Nothing here blocks the loop.
 *
 * Callbacks: every lookup completes through its callback exactly once,
 * always asynchronously (never from inside dns_mx()/dns_addrs(), even on a
 * cache hit), unless it was cancelled with dns_cancel() or dropped by
 * dns_free() - then the callback never runs.  The arrays handed to a
 * callback are valid only during the callback; copy what you keep.
 * A callback may start new lookups, cancel others, or call dns_free().
 *
 * Cache: answers are kept per (type, name) for the smallest TTL of the
 * answer, at most DNS_CACHE_MAX_TTL_S; NXDOMAIN and NODATA for
 * DNS_CACHE_NEG_TTL_S; temporary failures are not cached.
 *
 * Names are compared case-insensitively; a trailing dot is ignored.
 * Nothing here logs: results are status codes (enum dns_status).
 */
#ifndef MXSPOOL_DNS_H
#define MXSPOOL_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define DNS_CACHE_MAX_TTL_S 3600      /* cap on positive answers: 1 hour */
#define DNS_CACHE_NEG_TTL_S 60        /* NXDOMAIN / NODATA: 1 minute */

struct dns;
struct dns_req;

enum dns_status {
	DNS_OK = 0,
	DNS_ENXDOMAIN = -2001,   /* the name does not exist (permanent) */
	DNS_ENODATA = -2002,     /* the name exists, no records of that type */
	DNS_ETEMP = -2003,       /* SERVFAIL, timeout, refused, bad reply: retry */
	DNS_ENULLMX = -2004,     /* RFC 7505 null MX: domain accepts no mail */
	DNS_ESELF = -2005,       /* selection: we are the best MX, none lower */
	DNS_EBADNAME = -2006,    /* not a valid domain name */
	DNS_ENOMEM = -2007,
	DNS_EINVAL = -2008,
	DNS_ECLOSED = -2009,     /* dns_free() was called */
};
const char *dns_strerror(int status);

/* One MX record.  host is the name as received, without a trailing
 * dot; "" is the root (null MX). */
struct dns_mx {
	uint16_t preference;
	const char *host;
};

/*
 * Callback for dns_mx().  STATUS is
 *   DNS_OK        MX has the records (n >= 1), sorted by preference;
 *   DNS_ENODATA   no MX records: MX holds the implicit MX of RFC 5321 5.1,
 *                 one entry {0, domain}, so the caller may go on with it;
 *   DNS_ENULLMX   the domain publishes "MX 0 ." (n == 0);
 *   DNS_ENXDOMAIN, DNS_ETEMP, DNS_ENOMEM (n == 0).
 */
typedef void (*dns_mx_cb)(void *arg, int status, const struct dns_mx *mx,
    size_t n);

/*
 * Callback for dns_addrs().  On DNS_OK, ADDRS holds the AAAA addresses and
 * then the A addresses (n >= 1), as sockaddr_in6 / sockaddr_in with port 0.
 * When one family failed temporarily and the other answered, the result is
 * DNS_OK with what was found.  Otherwise DNS_ENXDOMAIN, DNS_ENODATA (no A
 * and no AAAA), DNS_ETEMP or DNS_ENOMEM with n == 0.
 */
typedef void (*dns_addrs_cb)(void *arg, int status,
    const struct sockaddr_storage *addrs, size_t n);

/*
 * A resolver on LOOP.  SERVERS is NULL (use /etc/resolv.conf) or a c-ares
 * csv list "host[:port],..." with IPv6 as "[addr]:port"; the same port is
 * used for UDP and TCP.  Returns DNS_OK and *out, or DNS_EINVAL (bad
 * server list), DNS_ENOMEM, DNS_ETEMP (c-ares could not initialise).
 */
int dns_new(uv_loop_t *loop, const char *servers, struct dns **out);

/*
 * Start tearing DNS down: pending lookups are dropped (their callbacks never
 * run, and their dns_req pointers become invalid), every libuv handle is
 * closed, and the memory is released from the close callbacks; DONE (may be
 * NULL) runs with ARG when the last handle has closed.  The loop then has
 * nothing of ours left.  NULL is a no-op.
 */
void dns_free(struct dns *dns, void (*done)(void *arg), void *arg);

/*
 * Look up the MX records of DOMAIN (a name; an address literal or an
 * invalid name fails).  Returns DNS_OK, with *reqp (may be NULL) set to a
 * handle valid until the callback starts or dns_cancel(); or DNS_EBADNAME,
 * DNS_ENOMEM, DNS_ECLOSED - then CB will not run.
 */
int dns_mx(struct dns *dns, const char *domain, dns_mx_cb cb, void *arg,
    struct dns_req **reqp);

/*
 * Look up A and AAAA of HOST (both queries in parallel).  An IPv4 or IPv6
 * literal (without brackets) is answered from itself, still asynchronously.
 * Same return convention as dns_mx().
 */
int dns_addrs(struct dns *dns, const char *host, dns_addrs_cb cb, void *arg,
    struct dns_req **reqp);

/*
 * Look up the A records of NAME only (no AAAA): what a DNSBL query
 * (RFC 5782: 2.0.0.127.zone) asks.  The answer is cached like any other;
 * the callback is dns_addrs_cb with the A addresses only.  An address
 * literal answers itself, as in dns_addrs().  Same return convention as
 * dns_mx().
 */
int dns_a(struct dns *dns, const char *name, dns_addrs_cb cb, void *arg,
    struct dns_req **reqp);

/*
 * The callback of REQ will not run.  Call only before it ran; the handle is
 * invalid afterwards.  Safe from inside any dns callback.
 */
void dns_cancel(struct dns_req *req);

/* Drop every cached answer (e.g. after a config reload or for tests). */
void dns_cache_flush(struct dns *dns);

/*
 * Backup-MX primary selection, RFC 5321 section 5.1 (pure, no I/O).
 * MX (n records, any order) is sorted by preference with ties shuffled by
 * RAND_FN(RAND_ARG) (NULL: ties keep their input order).  Our own
 * preference is the lowest preference of a host equal to one of SELF_NAMES
 * (case-insensitive, trailing dots ignored).  OUT (room for n) receives
 * the hosts with a preference strictly lower than ours, best first; when we
 * are not listed at all, every host.  OUT's host pointers point into MX.
 * Returns
 *   DNS_OK        *nout >= 1 hosts to deliver to;
 *   DNS_ESELF     we are (one of) the most preferred: nobody to relay to,
 *                 *nout == 0 (the caller must not deliver to itself);
 *   DNS_ENULLMX   the list contains the null MX "." (RFC 7505);
 *   DNS_ENODATA   n == 0 (the caller should use the implicit MX);
 *   DNS_EINVAL    bad arguments.
 */
int dns_select_primaries(const struct dns_mx *mx, size_t n,
    const char *const *self_names, size_t nself,
    struct dns_mx *out, size_t *nout,
    unsigned (*rand_fn)(void *rand_arg), void *rand_arg);

/*
 * Is ADDR one of our own listen addresses SELF[0..nself)?  Addresses are
 * compared by family and address (an IPv4-mapped IPv6 address equals its
 * IPv4 form); ports are compared only when both are non-zero, so a test
 * primary on 127.0.0.1:2526 is not us on 127.0.0.1:2525.  A wildcard self
 * (0.0.0.0 or ::) matches loopback addresses and, for the rest, whatever
 * dns_local_addrs() adds to SELF.  The caller drops MX hosts for which this
 * is true.
 */
bool dns_addr_is_self(const struct sockaddr_storage *addr,
    const struct sockaddr_storage *self, size_t nself);

/*
 * The addresses of this machine's interfaces (getifaddrs), port 0, for
 * expanding a wildcard listen address before dns_addr_is_self().  Returns
 * DNS_OK with *out (free() it) and *n, or DNS_ENOMEM / DNS_ETEMP.
 */
int dns_local_addrs(struct sockaddr_storage **out, size_t *n);

#endif
