/*
 * dnsbl.c - DNS blocklist lookups of one SMTP client (RFC 5782).
 *
 * A check is one client, every zone at once: one dns_a() request per zone,
 * and one timer for the deadline.  Each zone ends in exactly one of the
 * states below; DONE runs after each answer, and at the deadline if one
 * is missing then.  Nothing is left to wait for after the deadline:
 * lookups still in flight are cancelled (c-ares finishes them and
 * they fill the cache, so the next connection of the same client is
 * answered at once).
 *
 * Ownership: the check is freed by dnsbl_check_free() alone, through the
 * timer's close callback, so a DNS callback or the timer never meets freed
 * memory, and DONE may free the check from inside.  The session that owns
 * a check frees it when it closes.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/dnsbl.h"
#include "mxspool/log.h"

enum dnsbl_zone_state {
	DNSBL_PENDING,
	DNSBL_CLEAR,                  /* NXDOMAIN, no A, or no listing code */
	DNSBL_LISTED,
	DNSBL_FAILED,                 /* temporary DNS failure: not listed */
	DNSBL_TIMEOUT,                /* no answer by the deadline: not listed */
};

static const char *const dnsbl_state_names[] = {
	"pending", "clear", "listed", "error", "timeout",
};

struct dnsbl_zone {
	struct dnsbl_check *check;
	char *name;
	enum dnsbl_zone_state state;
	struct dns_req *req;          /* while PENDING */
	char code[DNSBL_CODE_MAX];
};

struct dnsbl_check {
	uv_timer_t timer;             /* the deadline; its close frees us */
	dnsbl_done_cb done;
	void *arg;
	uint64_t session;
	char ip[INET6_ADDRSTRLEN];
	uint64_t started_ms;
	size_t nzones;
	size_t pending;
	bool over;                    /* all answered, deadline, or freed */
	bool freed;
	struct dnsbl_zone zones[DNSBL_MAX_ZONES];
};

/* ---- pure ---------------------------------------------------------------- */

int
dnsbl_query_name(const struct sockaddr *sa, const char *zone, char *out,
    size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const uint8_t *a;
	size_t off = 0;
	int n;

	if (sa == NULL || zone == NULL || out == NULL || len == 0)
		return -1;
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		a = s6->sin6_addr.s6_addr;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			a += 12;
			goto v4;
		}
		/* 32 nibbles, last first: 64 octets with the dots. */
		if (len < 65)
			return -1;
		for (int i = 15; i >= 0; i--) {
			out[off++] = hex[a[i] & 0xf];
			out[off++] = '.';
			out[off++] = hex[a[i] >> 4];
			out[off++] = '.';
		}
		n = snprintf(out + off, len - off, "%s", zone);
		return n < 0 || (size_t)n >= len - off ? -1 : 0;
	}
	if (sa->sa_family != AF_INET)
		return -1;
	a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
v4:
	n = snprintf(out, len, "%u.%u.%u.%u.%s", a[3], a[2], a[1], a[0], zone);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

bool
dnsbl_code_listed(const struct sockaddr_storage *a)
{
	const uint8_t *b;

	if (a->ss_family != AF_INET)
		return false;
	b = (const uint8_t *)&((const struct sockaddr_in *)a)->sin_addr;
	return b[0] == 127 && !(b[1] == 255 && b[2] == 255);
}

void
dnsbl_zone_union(const char **set, size_t *nset, char *const *zones, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t j;

		for (j = 0; j < *nset; j++)
			if (strcmp(set[j], zones[i]) == 0)
				break;
		if (j == *nset && *nset < DNSBL_MAX_ZONES)
			set[(*nset)++] = zones[i];
	}
}

/* ---- the check ----------------------------------------------------------- */

/* Tell the owner; LAST: nothing more will come. */
static void
dnsbl_fire(struct dnsbl_check *c, bool last)
{
	if (c->over)
		return;
	if (last) {
		c->over = true;
		(void)uv_timer_stop(&c->timer);
	}
	/* May free C: the memory stays until the timer's close callback. */
	c->done(c->arg);
}

static void
dnsbl_log_zone(const struct dnsbl_check *c, const struct dnsbl_zone *z,
    const char *error)
{
	uint64_t ms = uv_now(c->timer.loop) - c->started_ms;

	log_event(z->state == DNSBL_CLEAR ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO,
	    "dnsbl", "session=%" PRIu64 " client=%s zone=%s result=%s%s%s%s%s "
	    "ms=%" PRIu64, c->session, c->ip, z->name,
	    dnsbl_state_names[z->state],
	    z->state == DNSBL_LISTED ? " code=" : "",
	    z->state == DNSBL_LISTED ? z->code : "",
	    error ? " error=" : "", error ? error : "", ms);
}

static void
dnsbl_on_answer(void *arg, int status, const struct sockaddr_storage *addrs,
    size_t n)
{
	struct dnsbl_zone *z = arg;
	struct dnsbl_check *c = z->check;

	z->req = NULL;
	if (status == DNS_OK) {
		z->state = DNSBL_CLEAR;
		for (size_t i = 0; i < n; i++) {
			if (!dnsbl_code_listed(&addrs[i]))
				continue;
			inet_ntop(AF_INET,
			    &((const struct sockaddr_in *)&addrs[i])->sin_addr,
			    z->code, sizeof(z->code));
			z->state = DNSBL_LISTED;
			break;
		}
	} else if (status == DNS_ENXDOMAIN || status == DNS_ENODATA) {
		z->state = DNSBL_CLEAR;
	} else {
		z->state = DNSBL_FAILED;
	}
	dnsbl_log_zone(c, z, z->state == DNSBL_FAILED ? dns_strerror(status) : NULL);
	dnsbl_fire(c, --c->pending == 0);
}

static void
dnsbl_on_deadline(uv_timer_t *t)
{
	struct dnsbl_check *c = t->data;

	for (size_t i = 0; i < c->nzones; i++) {
		struct dnsbl_zone *z = &c->zones[i];

		if (z->state != DNSBL_PENDING)
			continue;
		dns_cancel(z->req);
		z->req = NULL;
		z->state = DNSBL_TIMEOUT;
		dnsbl_log_zone(c, z, NULL);
	}
	c->pending = 0;
	dnsbl_fire(c, true);
}

static void
dnsbl_on_closed(uv_handle_t *h)
{
	struct dnsbl_check *c = h->data;

	for (size_t i = 0; i < c->nzones; i++)
		free(c->zones[i].name);
	free(c);
}

/* Send the query of zone Z; false if it could not even start. */
static bool
dnsbl_query(struct dns *dns, const struct sockaddr *sa, struct dnsbl_zone *z)
{
	char name[DNSBL_NAME_MAX + 1];
	int rc;

	if (dnsbl_query_name(sa, z->name, name, sizeof(name)) != 0)
		rc = DNS_EBADNAME;
	else
		rc = dns_a(dns, name, dnsbl_on_answer, z, &z->req);
	if (rc == DNS_OK)
		return true;
	z->state = DNSBL_FAILED;
	dnsbl_log_zone(z->check, z, dns_strerror(rc));
	return false;
}

int
dnsbl_check_start(uv_loop_t *loop, struct dns *dns,
    const struct dnsbl_client *client, const char *const *zones, size_t n,
    uint64_t timeout_ms, dnsbl_done_cb done, void *arg,
    struct dnsbl_check **out)
{
	struct dnsbl_check *c;

	*out = NULL;
	if (loop == NULL || dns == NULL || client == NULL || done == NULL ||
	    (client->sa->sa_family != AF_INET && client->sa->sa_family != AF_INET6))
		return -1;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return -1;
	if (uv_timer_init(loop, &c->timer) != 0) {
		free(c);
		return -1;
	}
	c->timer.data = c;
	c->done = done;
	c->arg = arg;
	c->session = client->session;
	snprintf(c->ip, sizeof(c->ip), "%s", client->ip ? client->ip : "-");
	c->started_ms = uv_now(loop);
	for (size_t i = 0; i < n && c->nzones < DNSBL_MAX_ZONES; i++) {
		struct dnsbl_zone *z = &c->zones[c->nzones];

		if ((z->name = strdup(zones[i])) == NULL)
			break;
		z->check = c;
		z->state = DNSBL_PENDING;
		c->nzones++;
		c->pending++;
	}
	/* All queries are sent before any can answer (answers are never
	 * synchronous), so PENDING counts down only from here on. */
	for (size_t i = 0; i < c->nzones; i++)
		if (!dnsbl_query(dns, client->sa, &c->zones[i]))
			c->pending--;
	/* Nothing to wait for: DONE still runs from the loop, at once. */
	(void)uv_timer_start(&c->timer, dnsbl_on_deadline,
	    c->pending > 0 ? timeout_ms : 0, 0);
	*out = c;
	return 0;
}

bool
dnsbl_check_done(const struct dnsbl_check *c)
{
	return c == NULL || c->over;
}

bool
dnsbl_check_pending(const struct dnsbl_check *c, char *const *zones, size_t n)
{
	if (c == NULL || c->over)
		return false;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < c->nzones; j++)
			if (c->zones[j].state == DNSBL_PENDING &&
			    strcmp(c->zones[j].name, zones[i]) == 0)
				return true;
	return false;
}

const char *
dnsbl_check_listed(const struct dnsbl_check *c, char *const *zones, size_t n,
    char code[DNSBL_CODE_MAX])
{
	if (c == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < c->nzones; j++) {
			const struct dnsbl_zone *z = &c->zones[j];

			if (z->state == DNSBL_LISTED && strcmp(z->name, zones[i]) == 0) {
				memcpy(code, z->code, DNSBL_CODE_MAX);
				return z->name;
			}
		}
	}
	return NULL;
}

void
dnsbl_check_free(struct dnsbl_check *c)
{
	if (c == NULL || c->freed)
		return;
	c->freed = true;
	c->over = true;
	for (size_t i = 0; i < c->nzones; i++)
		if (c->zones[i].state == DNSBL_PENDING)
			dns_cancel(c->zones[i].req);
	uv_close((uv_handle_t *)&c->timer, dnsbl_on_closed);
}
