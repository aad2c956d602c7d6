/*
 * config_internal.h - shared between the files of the config module only
 * (config.c: the key tables and the inih loader; config_value.c: the pure
 * value parsers; config_recipients.c: recipients entries and lookups).
 * Nothing outside relay/config*.c may include it; the
 * public interface is mxspool/config.h.
 *
 * The parsers return NULL when S is valid (and store the value), or a short
 * reason phrase ("is not a number", "has no :port") that callers quote in
 * their own messages.  None of them allocates, logs or reads the locale.
 */
#ifndef MXSPOOL_CONFIG_INTERNAL_H
#define MXSPOOL_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/config.h"

/* Units; the config speaks powers of 1024 and milliseconds. */
#define KIB 1024ULL
#define MIB (1024ULL * KIB)
#define GIB (1024ULL * MIB)
#define SEC_MS 1000ULL
#define MIN_MS (60 * SEC_MS)
#define HOUR_MS (60 * MIN_MS)
#define DAY_MS (24 * HOUR_MS)

/* ASCII helpers: the locale must not change how a config parses. */
static inline bool
ch_space(int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
	    c == '\f';
}

static inline bool
ch_digit(int c)
{
	return c >= '0' && c <= '9';
}

static inline bool
ch_alnum(int c)
{
	return ch_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline int
ch_lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Decimal digits only: no sign, no blanks, no overflow. */
const char *config__u64_reason(const char *s, uint64_t *out);
/* DIGITS[.DIGITS], at most 1e15. */
const char *config__decimal_reason(const char *s, double *out);
/* NUMBER[K|M|G|T][B|iB] in bytes. */
const char *config__size_reason(const char *s, uint64_t *out);
/* One or more NUMBER UNIT pairs (ms s m h d w), or a bare number of
 * seconds; stored in milliseconds. */
const char *config__duration_reason(const char *s, uint64_t *out_ms);
/* Are the LEN bytes of S all digits and dots (an IPv4 look-alike)? */
bool config__all_digits_and_dots(const char *s, size_t len);
/* LEN bytes of S as a DNS name (letters, digits, hyphens, labels of 1-63,
 * 253 in all, one optional trailing dot). */
const char *config__domain_reason(const char *s, size_t len);
/* 1..65535. */
const char *config__port_reason(const char *s, uint16_t *out);
/* host, host:port, [v6] or [v6]:port; DEFPORT 0 makes the port required. */
const char *config__hostport_reason(const char *s, uint16_t defport,
    struct config_hostport *out);
/* ADDR, ADDR/PREFIX or [V6]/PREFIX with no bits set past the prefix. */
const char *config__cidr_reason(const char *s, struct config_cidr *out);
/* cfg->domain_index: every tenant domain, sorted, for the per-RCPT lookup. */
struct config_domain_ref {
	const char *domain;
	const struct config_tenant *tenant;
};

#define ADDR_MAX 1024                 /* longest address config_tenant_accepts() looks up */

/* qsort/bsearch order of an array of strings (config_recipients.c). */
int config__cmp_str(const void *a, const void *b);
/* A recipients entry S whose last '@' is AT, with a quoted local part that
 * is a plain dot-string unquoted in place; returns AT's new place. */
char *config__recipients_unquote(char *s, char *at);
/* Free the N strings of V and V itself (lists of names). */
void config__strv_free(char **v, size_t n);

#endif
