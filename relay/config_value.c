/*
 * config_value.c - the pure value parsers of the config module.
 *
 * Numbers, sizes, durations, host[:port], CIDRs and DNS names: each parser
 * takes a NUL-terminated string and returns NULL on success or a short
 * reason ("has no :port") that the caller puts into its own message.  They
 * never accept trailing garbage, never allocate, never log, and never look
 * at the locale (LC_NUMERIC must not change how a config reads), so the
 * same text means the same value in the config file, on the control socket
 * ("mxspoolctl set") and in the fuzz target.
 *
 * The reason-returning parsers are shared with config.c through
 * config_internal.h (config__ prefix); the config_parse_* wrappers and
 * config_cidr_match() are the public face in mxspool/config.h.
 */
#include "config.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "mxspool/config.h"
#include "config_internal.h"

/*
 * The run of decimal digits at *SP: stored in *OUT, *SP moved past it.
 * NOTNUM is the reason given when *SP does not start with a digit.
 */
static const char *
digits_reason(const char **sp, const char *notnum, uint64_t *out)
{
	const char *s = *sp;
	uint64_t v = 0;

	if (!ch_digit((unsigned char)*s))
		return notnum;
	for (; ch_digit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return "too large";
		v = v * 10 + d;
	}
	*sp = s;
	*out = v;
	return NULL;
}

/* Decimal digits only, no sign, no overflow. */
const char *
config__u64_reason(const char *s, uint64_t *out)
{
	uint64_t v;
	const char *why = digits_reason(&s, "not a number", &v);

	if (why != NULL)
		return why;
	if (*s != '\0')
		return "not a number";
	*out = v;
	return NULL;
}

/* DIGITS[.DIGITS], computed by hand so that LC_NUMERIC cannot interfere. */
const char *
config__decimal_reason(const char *s, double *out)
{
	double v = 0, scale = 1;

	if (!ch_digit((unsigned char)*s))
		return "not a number";
	for (; ch_digit((unsigned char)*s); s++) {
		v = v * 10 + (*s - '0');
		if (v > 1e15)
			return "too large";
	}
	if (*s == '.') {
		s++;
		if (!ch_digit((unsigned char)*s))
			return "not a number";
		for (; ch_digit((unsigned char)*s); s++) {
			scale /= 10;
			v += (*s - '0') * scale;
		}
	}
	if (*s != '\0')
		return "not a number";
	*out = v;
	return NULL;
}

const char *
config__size_reason(const char *s, uint64_t *out)
{
	uint64_t v, mult = 1;
	const char *why = digits_reason(&s, "not a size", &v);

	if (why != NULL)
		return why;
	while (*s == ' ' || *s == '\t')
		s++;
	switch (ch_lower((unsigned char)*s)) {
	case 'k': mult = KIB; s++; break;
	case 'm': mult = MIB; s++; break;
	case 'g': mult = GIB; s++; break;
	case 't': mult = 1024 * GIB; s++; break;
	default: break;
	}
	/* "10G", "10GB" and "10GiB" all mean 10 * 2^30; a plain "100B" is bytes. */
	if (mult != 1 && ch_lower((unsigned char)*s) == 'i' &&
	    ch_lower((unsigned char)s[1]) == 'b')
		s += 2;
	else if (ch_lower((unsigned char)*s) == 'b')
		s++;
	if (*s != '\0')
		return "not a size";
	if (v > UINT64_MAX / mult)
		return "too large";
	*out = v * mult;
	return NULL;
}

/*
 * A duration is one or more NUMBER UNIT pairs ("90s", "1h30m"); a lone bare
 * number means seconds, as in Postfix.  Units are lower case, again as in
 * Postfix, so that "5M" is not mistaken for months or megabytes.
 */
const char *
config__duration_reason(const char *s, uint64_t *out_ms)
{
	uint64_t total = 0;
	bool bare_ok = true;

	if (*s == '\0')
		return "not a duration";
	while (*s != '\0') {
		uint64_t v, unit;
		const char *why = digits_reason(&s, "not a duration", &v);

		if (why != NULL)
			return why;
		if (s[0] == 'm' && s[1] == 's') {
			unit = 1;
			s += 2;
		} else {
			switch (*s) {
			case 's': unit = SEC_MS; break;
			case 'm': unit = MIN_MS; break;
			case 'h': unit = HOUR_MS; break;
			case 'd': unit = DAY_MS; break;
			case 'w': unit = 7 * DAY_MS; break;
			case '\0':
				if (!bare_ok)
					return "not a duration";
				unit = SEC_MS;
				break;
			default:
				return "not a duration";
			}
			if (*s != '\0')
				s++;
		}
		bare_ok = false;
		if (v > UINT64_MAX / unit || v * unit > UINT64_MAX - total)
			return "too large";
		total += v * unit;
	}
	*out_ms = total;
	return NULL;
}

bool
config__all_digits_and_dots(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!ch_digit((unsigned char)s[i]) && s[i] != '.')
			return false;
	return true;
}

/*
 * A DNS name as mail software sees it: labels of letters, digits and
 * hyphens (IDNs in their xn-- form), 1-63 bytes each, 253 in all, one
 * optional trailing dot.
 */
const char *
config__domain_reason(const char *s, size_t len)
{
	size_t label = 0;

	if (len > 0 && s[len - 1] == '.')
		len--;
	if (len == 0)
		return "is empty";
	if (len > 253)
		return "is longer than 253 characters";
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0)
				return "has an empty label";
			if (s[i - 1] == '-')
				return "has a label ending in -";
			label = 0;
			continue;
		}
		if (!ch_alnum(c) && c != '-')
			return "may only hold letters, digits, - and .";
		if (c == '-' && label == 0)
			return "has a label starting with -";
		if (++label > 63)
			return "has a label longer than 63 characters";
	}
	/* "a.example.." is an empty label after the root dot, not a name. */
	if (label == 0)
		return "has an empty label";
	if (s[len - 1] == '-')
		return "has a label ending in -";
	return NULL;
}

const char *
config__port_reason(const char *s, uint16_t *out)
{
	uint64_t v;

	if (*s == '\0')
		return "has no port after the colon";
	if (config__u64_reason(s, &v) != NULL)
		return "has a port that is not a number";
	if (v == 0 || v > 65535)
		return "has a port out of range (1-65535)";
	*out = (uint16_t)v;
	return NULL;
}

/*
 * host, host:port, [v6] or [v6]:port.  DEFPORT 0 means the port is required.
 * A bare IPv6 address is refused: "::1:25" cannot be read unambiguously.
 */
const char *
config__hostport_reason(const char *s, uint16_t defport,
    struct config_hostport *out)
{
	const char *host, *port = NULL, *colon;
	size_t hlen;
	char tmp[CONFIG_HOST_MAX + 1];
	unsigned char bin[16];

	if (*s == '\0')
		return "is empty";
	if (*s == '[') {
		const char *end = strchr(s, ']');

		if (end == NULL)
			return "has no ] after the IPv6 address";
		host = s + 1;
		hlen = (size_t)(end - host);
		if (hlen == 0 || hlen >= sizeof(tmp))
			return "has no IPv6 address inside [ ]";
		memcpy(tmp, host, hlen);
		tmp[hlen] = '\0';
		if (inet_pton(AF_INET6, tmp, bin) != 1)
			return "has no valid IPv6 address inside [ ]";
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0')
			return "has text after ] that is not :port";
	} else {
		host = s;
		colon = strchr(s, ':');
		if (colon != NULL && strchr(colon + 1, ':') != NULL)
			return "looks like a bare IPv6 address: write it in brackets, e.g. [::1]:25";
		hlen = colon ? (size_t)(colon - s) : strlen(s);
		if (colon != NULL)
			port = colon + 1;
		if (hlen == 0)
			return "has no host before the colon";
		if (hlen > CONFIG_HOST_MAX)
			return "has a host name longer than 255 characters";
		memcpy(tmp, host, hlen);
		tmp[hlen] = '\0';
		if (config__all_digits_and_dots(tmp, hlen)) {
			if (inet_pton(AF_INET, tmp, bin) != 1)
				return "has an invalid IPv4 address";
		} else if (config__domain_reason(tmp, hlen) != NULL) {
			return "has an invalid host name (letters, digits, - and . only)";
		}
	}
	if (port != NULL) {
		const char *why = config__port_reason(port, &out->port);

		if (why != NULL)
			return why;
	} else if (defport == 0) {
		return "has no :port";
	} else {
		out->port = defport;
	}
	memcpy(out->host, tmp, hlen + 1);
	return NULL;
}

/* ADDR, ADDR/PREFIX, [V6ADDR]/PREFIX (Postfix mynetworks style). */
const char *
config__cidr_reason(const char *s, struct config_cidr *out)
{
	char tmp[64];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	unsigned maxbits;
	uint64_t prefix;

	if (alen == 0)
		return "has no address";
	if (s[0] == '[') {
		if (alen < 3 || s[alen - 1] != ']')
			return "has a [ without a matching ]";
		s++;
		alen -= 2;
	}
	if (alen >= sizeof(tmp))
		return "is not an IPv4 or IPv6 address";
	memcpy(tmp, s, alen);
	tmp[alen] = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, tmp, out->addr) == 1) {
		out->family = AF_INET;
		maxbits = 32;
	} else if (inet_pton(AF_INET6, tmp, out->addr) == 1) {
		out->family = AF_INET6;
		maxbits = 128;
	} else {
		return "is not an IPv4 or IPv6 address";
	}
	prefix = maxbits;
	if (slash != NULL) {
		if (config__u64_reason(slash + 1, &prefix) != NULL || prefix > maxbits)
			return out->family == AF_INET ?
			    "has a prefix length that is not 0-32" :
			    "has a prefix length that is not 0-128";
	}
	out->prefix = (unsigned)prefix;
	/* 10.1.2.3/8 is almost always a typo for 10.0.0.0/8 or 10.1.2.3/32. */
	for (unsigned bit = out->prefix; bit < maxbits; bit++)
		if (out->addr[bit / 8] & (0x80 >> (bit % 8)))
			return "has address bits set beyond the prefix length";
	return NULL;
}

int
config_parse_size(const char *s, uint64_t *out)
{
	return s != NULL && config__size_reason(s, out) == NULL ? 0 : -1;
}

int
config_parse_duration(const char *s, uint64_t *out_ms)
{
	return s != NULL && config__duration_reason(s, out_ms) == NULL ? 0 : -1;
}

int
config_parse_hostport(const char *s, uint16_t default_port,
    struct config_hostport *out)
{
	return s != NULL && config__hostport_reason(s, default_port, out) == NULL ? 0 : -1;
}

int
config_parse_cidr(const char *s, struct config_cidr *out)
{
	return s != NULL && config__cidr_reason(s, out) == NULL ? 0 : -1;
}

static bool
prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned whole = bits / 8, rest = bits % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[whole] ^ b[whole]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

bool
config_cidr_match(const struct config_cidr *c, int family, const void *addr)
{
	static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	const uint8_t *a = addr;

	/* A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d. */
	if (family == AF_INET6 && c->family == AF_INET &&
	    memcmp(a, v4mapped, sizeof(v4mapped)) == 0)
		return prefix_equal(c->addr, a + 12, c->prefix);
	if (family != c->family)
		return false;
	return prefix_equal(c->addr, a, c->prefix);
}

void
config__strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}
