/*
 * dns_internal.h - the answer parsers of relay/dns.c, shared with its fuzz
 * target (tests/fuzz/fuzz_dns_answer.c) and nothing else.
 *
 * Each takes a DNS message as the server sent it (ABUF, ALEN octets, from
 * c-ares' query callback), reads nothing outside it, and neither logs nor
 * keeps a pointer into it.
 */
#ifndef MXSPOOL_DNS_INTERNAL_H
#define MXSPOOL_DNS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "mxspool/dns.h"

/* The smallest TTL of the answer section's records (a TTL with the top bit
 * set counts as 0, RFC 2181 8); 0 when there is none or the message is too
 * short to walk, which the cache takes as "do not keep". */
uint32_t dns__answer_min_ttl(const unsigned char *abuf, int alen);

/* The MX records into *OUT (one block with the host strings, sorted by
 * preference, free() it) and *N.  Returns DNS_OK (N >= 1), DNS_ENULLMX
 * (only "MX 0 ."), DNS_ENODATA, DNS_ETEMP (malformed) or DNS_ENOMEM; *OUT
 * is NULL unless DNS_OK. */
int dns__parse_mx(const unsigned char *abuf, int alen, struct dns_mx **out,
    size_t *n);

/* The A (QTYPE ns_t_a) or AAAA records as sockaddrs with port 0, at most
 * 64, into *OUT (free() it) and *N.  Same statuses, DNS_OK with N >= 1. */
int dns__parse_addrs(int qtype, const unsigned char *abuf, int alen,
    struct sockaddr_storage **out, size_t *n);

#endif
