/*
 * dns.c - c-ares 1.18 on the libuv loop, a TTL cache, and primary selection.
 *
 * Driving c-ares (1.18 has no event thread and no ares_process_fds):
 *   - ARES_OPT_SOCK_STATE_CB tells us when c-ares opens, re-arms or closes a
 *     socket; we keep one uv_poll_t per socket (struct dns_sock) and call
 *     ares_process_fd() when it becomes readable or writable.
 *   - One uv_timer_t is re-armed from ares_timeout() after everything we do
 *     with the channel, and calls ares_process_fd(BAD, BAD) for retransmits
 *     and timeouts.
 *   - A poll handle is closed (uv_close) inside the sock-state callback that
 *     announces the socket's end.  c-ares calls it before close(2), and
 *     uv_close stops the watcher at once, so a new socket that reuses the
 *     descriptor number never meets a stale watcher.
 *
 * Requests and callbacks.  Every lookup is a struct dns_req on dns->reqs,
 * which owns it until it is freed in exactly one place, dns_flush_done().
 * c-ares callbacks never call user code: they store results in the request
 * and queue it on the done list.  The done list is emptied - user callbacks
 * run - only from our own libuv callbacks, after c-ares has returned, so a
 * user callback may start lookups, cancel, or even call dns_free() without
 * re-entering c-ares.  Cache hits and address literals complete through the
 * same list, kicked by a zero-delay timer, so callbacks are never
 * synchronous.  A cancelled request stays on the list until its queries
 * have come back from c-ares (c-ares 1.18 cannot cancel one query), and is
 * then freed without a call.
 *
 * Teardown.  dns_free() sets `closing`; the real work (ares_destroy, which
 * calls our query callbacks with ARES_EDESTRUCTION and closes its sockets;
 * freeing requests and the cache; closing our timers) happens at once, or
 * right after the user callback that asked for it returns.  The struct is
 * freed in the close callback of the last handle.
 *
 * Cache.  Keyed by (query type, lower-case name without the root dot).
 * Positive answers live for the smallest TTL in the answer section, capped
 * at DNS_CACHE_MAX_TTL_S; NXDOMAIN and NODATA for DNS_CACHE_NEG_TTL_S;
 * temporary failures are not kept.  c-ares 1.18's ares_parse_mx_reply()
 * does not return TTLs, so dns__answer_min_ttl() walks the answer section
 * with ares_expand_name() just far enough to read them.
 *
 * Nothing here logs; errors are enum dns_status values.
 */
#include "mxspool/dns.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ifaddrs.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>

#include "dns_internal.h"

#define DNS_TIMEOUT_MS 1500           /* first try; c-ares doubles it */
#define DNS_TRIES 3                   /* per server: 1.5 + 3 + 6 s worst */
#define DNS_MAX_ADDRS 64              /* per family and answer */
#define DNS_NAME_MAX 253
#define DNS_CACHE_BUCKETS 256
#define DNS_CACHE_MAX_ENTRIES 4096

enum dns_kind { DNS_KIND_MX, DNS_KIND_ADDRS };

struct dns_sock {
	uv_poll_t poll;
	struct dns *dns;
	ares_socket_t fd;
	struct dns_sock *next;
};

struct dns_cache_entry {
	struct dns_cache_entry *next;
	int qtype;
	char *name;
	uint64_t expires;             /* dns_now_ms() */
	int status;                   /* DNS_OK, ENXDOMAIN, ENODATA, ENULLMX */
	size_t n;
	struct dns_mx *mx;            /* MX: one block with the host strings */
	struct sockaddr_storage *addrs;   /* A / AAAA */
};

/* One c-ares query of a request; the query callback's argument. */
struct dns_q {
	struct dns_req *req;
	int qtype;
};

struct dns_req {
	struct dns *dns;
	struct dns_req *prev, *next;  /* dns->reqs: every live request */
	struct dns_req *done_next;    /* dns->done queue */
	enum dns_kind kind;
	char name[DNS_NAME_MAX + 1];
	dns_mx_cb mx_cb;
	dns_addrs_cb addrs_cb;
	void *arg;
	bool cancelled;
	bool delivering;
	unsigned outstanding;         /* c-ares queries not yet answered */
	struct dns_q q[2];
	/* MX result */
	int status;
	struct dns_mx *mx;
	size_t nmx;
	/* A / AAAA results: [0] = AAAA, [1] = A */
	int st[2];
	struct sockaddr_storage *addrs[2];
	size_t naddrs[2];
};

struct dns {
	uv_loop_t *loop;
	ares_channel channel;
	bool channel_ok;
	uv_timer_t timer;             /* c-ares timeouts */
	uv_timer_t defer;             /* completes cache hits asynchronously */
	unsigned nhandles;            /* open libuv handles, including polls */
	struct dns_sock *socks;
	struct dns_req *reqs;
	struct dns_req *done_head, **done_tail;
	unsigned in_flush;
	bool closing;
	bool torn_down;
	void (*done_cb)(void *);
	void *done_arg;
	struct dns_cache_entry *cache[DNS_CACHE_BUCKETS];
	size_t ncache;
};

const char *
dns_strerror(int status)
{
	switch (status) {
	case DNS_OK: return "ok";
	case DNS_ENXDOMAIN: return "domain does not exist";
	case DNS_ENODATA: return "no records of the requested type";
	case DNS_ETEMP: return "temporary DNS failure";
	case DNS_ENULLMX: return "domain accepts no mail (null MX)";
	case DNS_ESELF: return "we are the best MX for the domain";
	case DNS_EBADNAME: return "invalid domain name";
	case DNS_ENOMEM: return "out of memory";
	case DNS_EINVAL: return "invalid argument";
	case DNS_ECLOSED: return "resolver is shutting down";
	}
	return "unknown DNS status";
}

/* ---- names ------------------------------------------------------------ */

/*
 * Copy NAME into OUT (DNS_NAME_MAX + 1) lower-cased without the root dot,
 * checking it looks like a host name: labels of 1..63 letters, digits,
 * hyphens or underscores, and a last label that is not all digits (so
 * "192.0.2.1" is not taken for a name).  Returns 0 or DNS_EBADNAME.
 */
static int
dns_canon_name(const char *name, char *out)
{
	size_t len, i, label = 0;
	bool digits_only = true;

	if (name == NULL)
		return DNS_EBADNAME;
	len = strlen(name);
	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return DNS_EBADNAME;
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)name[i];

		if (ch == '.') {
			if (label == 0)
				return DNS_EBADNAME;
			label = 0;
			digits_only = true;
			out[i] = '.';
			continue;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
			return DNS_EBADNAME;
		if (!(ch >= '0' && ch <= '9'))
			digits_only = false;
		if (++label > 63)
			return DNS_EBADNAME;
		out[i] = (char)((ch >= 'A' && ch <= 'Z') ? ch + 32 : ch);
	}
	if (label == 0 || digits_only)
		return DNS_EBADNAME;
	out[len] = '\0';
	return 0;
}

/* Host names equal, ASCII case-insensitive, one trailing dot ignored. */
static bool
dns_name_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	if (la > 0 && a[la - 1] == '.')
		la--;
	if (lb > 0 && b[lb - 1] == '.')
		lb--;
	if (la != lb)
		return false;
	for (size_t i = 0; i < la; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];

		if (x >= 'A' && x <= 'Z')
			x += 32;
		if (y >= 'A' && y <= 'Z')
			y += 32;
		if (x != y)
			return false;
	}
	return true;
}

static bool
dns_is_root(const char *host)
{
	return host[0] == '\0' || (host[0] == '.' && host[1] == '\0');
}

/* ---- MX arrays: one block holding the entries and their strings ------- */

static struct dns_mx *
dns_mx_copy(const struct dns_mx *src, size_t n)
{
	size_t bytes = n * sizeof(*src), off;
	struct dns_mx *dst;
	char *p;

	for (size_t i = 0; i < n; i++)
		bytes += strlen(src[i].host) + 1;
	if ((dst = malloc(bytes ? bytes : 1)) == NULL)
		return NULL;
	p = (char *)(dst + n);
	for (size_t i = 0; i < n; i++) {
		off = strlen(src[i].host) + 1;
		memcpy(p, src[i].host, off);
		dst[i].preference = src[i].preference;
		dst[i].host = p;
		p += off;
	}
	return dst;
}

/* Stable insertion sort by preference: MX lists are short. */
static void
dns_mx_sort(struct dns_mx *mx, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		struct dns_mx t = mx[i];
		size_t j = i;

		while (j > 0 && mx[j - 1].preference > t.preference) {
			mx[j] = mx[j - 1];
			j--;
		}
		mx[j] = t;
	}
}

/* ---- cache ------------------------------------------------------------ */

/*
 * Monotonic milliseconds for cache expiry.  Not uv_now(): the loop's cached
 * time is only refreshed once per iteration, so a lookup made after a long
 * callback (or between two uv_run() calls) would see a stale clock and
 * serve expired answers.
 */
static uint64_t
dns_now_ms(void)
{
	return uv_hrtime() / 1000000;
}

static unsigned
dns_cache_hash(int qtype, const char *name)
{
	uint32_t h = 2166136261u ^ (uint32_t)qtype;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % DNS_CACHE_BUCKETS;
}

static void
dns_cache_entry_free(struct dns_cache_entry *e)
{
	free(e->name);
	free(e->mx);
	free(e->addrs);
	free(e);
}

void
dns_cache_flush(struct dns *dns)
{
	if (dns == NULL)
		return;
	for (size_t b = 0; b < DNS_CACHE_BUCKETS; b++) {
		struct dns_cache_entry *e = dns->cache[b], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			dns_cache_entry_free(e);
		}
		dns->cache[b] = NULL;
	}
	dns->ncache = 0;
}

/* Drop the expired entries, and with NEGATIVE every NXDOMAIN/NODATA. */
static void
dns_cache_drop(struct dns *dns, uint64_t now, bool negative)
{
	for (size_t b = 0; b < DNS_CACHE_BUCKETS; b++) {
		struct dns_cache_entry **pp = &dns->cache[b];

		while (*pp != NULL) {
			struct dns_cache_entry *e = *pp;
			bool drop = e->expires <= now || (negative &&
			    (e->status == DNS_ENXDOMAIN || e->status == DNS_ENODATA));

			if (drop) {
				*pp = e->next;
				dns_cache_entry_free(e);
				dns->ncache--;
			} else {
				pp = &e->next;
			}
		}
	}
}

/*
 * Drop expired entries; when that is not enough, the negative answers
 * (a DNSBL's "not listed" for each client of a busy minute must not push
 * the drain's MX and address answers out); then everything.
 */
static void
dns_cache_make_room(struct dns *dns, uint64_t now)
{
	dns_cache_drop(dns, now, false);
	if (dns->ncache >= DNS_CACHE_MAX_ENTRIES)
		dns_cache_drop(dns, now, true);
	/* Rare (4096 live answers) and harmless: the next lookups refill it. */
	if (dns->ncache >= DNS_CACHE_MAX_ENTRIES)
		dns_cache_flush(dns);
}

static struct dns_cache_entry *
dns_cache_get(struct dns *dns, int qtype, const char *name)
{
	unsigned b = dns_cache_hash(qtype, name);
	uint64_t now = dns_now_ms();

	for (struct dns_cache_entry **pp = &dns->cache[b]; *pp != NULL;) {
		struct dns_cache_entry *e = *pp;

		if (e->qtype == qtype && strcmp(e->name, name) == 0) {
			if (e->expires > now)
				return e;
			*pp = e->next;
			dns_cache_entry_free(e);
			dns->ncache--;
			return NULL;
		}
		pp = &e->next;
	}
	return NULL;
}

/*
 * Store a result for TTL_S seconds (0: not at all).  The cache is an
 * optimisation, so running out of memory here is not an error.
 */
static void
dns_cache_put(struct dns *dns, int qtype, const char *name, int status,
    uint32_t ttl_s, const struct dns_mx *mx, const struct sockaddr_storage *addrs,
    size_t n)
{
	struct dns_cache_entry *e;
	uint64_t now = dns_now_ms();
	unsigned b;

	if (ttl_s == 0)
		return;
	if (ttl_s > DNS_CACHE_MAX_TTL_S)
		ttl_s = DNS_CACHE_MAX_TTL_S;
	/* A parallel query for the same name may have stored it already;
	 * an expired twin is dropped by the lookup. */
	if (dns_cache_get(dns, qtype, name) != NULL)
		return;
	if (dns->ncache >= DNS_CACHE_MAX_ENTRIES)
		dns_cache_make_room(dns, now);
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return;
	e->qtype = qtype;
	e->status = status;
	e->expires = now + (uint64_t)ttl_s * 1000;
	e->n = n;
	if ((e->name = strdup(name)) == NULL)
		goto fail;
	if (mx != NULL && n > 0 && (e->mx = dns_mx_copy(mx, n)) == NULL)
		goto fail;
	if (addrs != NULL && n > 0) {
		if ((e->addrs = malloc(n * sizeof(*addrs))) == NULL)
			goto fail;
		memcpy(e->addrs, addrs, n * sizeof(*addrs));
	}
	b = dns_cache_hash(qtype, name);
	e->next = dns->cache[b];
	dns->cache[b] = e;
	dns->ncache++;
	return;
fail:
	dns_cache_entry_free(e);
}

/* ---- answers ---------------------------------------------------------- */

static int
dns_map_ares(int status)
{
	switch (status) {
	case ARES_SUCCESS: return DNS_OK;
	case ARES_ENODATA: return DNS_ENODATA;
	case ARES_ENOTFOUND: return DNS_ENXDOMAIN;
	case ARES_ENOMEM: return DNS_ENOMEM;
	case ARES_EBADNAME: return DNS_EBADNAME;
	default:
		/* SERVFAIL, REFUSED, FORMERR, timeouts, refused connections,
		 * malformed replies: none of them says anything final about
		 * the name, so the caller should try again later. */
		return DNS_ETEMP;
	}
}

/*
 * Smallest TTL among the answer records of ABUF (0 when there are none or
 * the packet is too short to walk).  Only names, fixed fields and RDLENGTH
 * are read; record data is skipped.
 */
uint32_t
dns__answer_min_ttl(const unsigned char *abuf, int alen)
{
	const unsigned char *p, *end = abuf + alen;
	unsigned qd, an;
	uint32_t min = UINT32_MAX;
	char *name;
	long enclen;

	if (alen < HFIXEDSZ)
		return 0;
	qd = (unsigned)(abuf[4] << 8 | abuf[5]);
	an = (unsigned)(abuf[6] << 8 | abuf[7]);
	p = abuf + HFIXEDSZ;
	for (unsigned i = 0; i < qd; i++) {
		if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
			return 0;
		ares_free_string(name);
		if (end - p < enclen + QFIXEDSZ)
			return 0;
		p += enclen + QFIXEDSZ;
	}
	for (unsigned i = 0; i < an; i++) {
		uint32_t ttl;
		unsigned rdlen;

		if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
			return 0;
		ares_free_string(name);
		if (end - p < enclen + RRFIXEDSZ)
			return 0;
		p += enclen;
		ttl = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 |
		    (uint32_t)p[6] << 8 | p[7];
		rdlen = (unsigned)(p[8] << 8 | p[9]);
		p += RRFIXEDSZ;
		if ((size_t)(end - p) < rdlen)
			return 0;
		p += rdlen;
		/* RFC 2181 8: a TTL with the top bit set is treated as 0. */
		if (ttl > INT32_MAX)
			ttl = 0;
		if (ttl < min)
			min = ttl;
	}
	return min == UINT32_MAX ? 0 : min;
}

/*
 * Parse an MX answer into *out (one block, sorted) and *n; returns DNS_OK,
 * DNS_ENULLMX, DNS_ENODATA, DNS_ETEMP or DNS_ENOMEM.
 */
int
dns__parse_mx(const unsigned char *abuf, int alen, struct dns_mx **out,
    size_t *n)
{
	struct ares_mx_reply *head = NULL, *r;
	struct dns_mx *tmp = NULL;
	size_t count = 0, k = 0, nnull = 0;
	int rc;

	*out = NULL;
	*n = 0;
	rc = dns_map_ares(ares_parse_mx_reply(abuf, alen, &head));
	if (rc != DNS_OK)
		goto done;
	for (r = head; r != NULL; r = r->next)
		count++;
	if ((tmp = calloc(count ? count : 1, sizeof(*tmp))) == NULL) {
		rc = DNS_ENOMEM;
		goto done;
	}
	for (r = head; r != NULL; r = r->next) {
		if (dns_is_root(r->host)) {
			nnull++;
			continue;
		}
		tmp[k].preference = r->priority;
		tmp[k].host = r->host;
		k++;
	}
	/*
	 * RFC 7505: the null MX must be the only record.  A null MX next to
	 * real hosts is a broken zone; the real hosts are used then.
	 */
	if (k == 0) {
		rc = nnull > 0 ? DNS_ENULLMX : DNS_ENODATA;
		goto done;
	}
	dns_mx_sort(tmp, k);
	if ((*out = dns_mx_copy(tmp, k)) == NULL) {
		rc = DNS_ENOMEM;
		goto done;
	}
	*n = k;
done:
	free(tmp);
	if (head != NULL)
		ares_free_data(head);
	return rc;
}

/* Parse an A (qtype ns_t_a) or AAAA answer into sockaddrs with port 0. */
int
dns__parse_addrs(int qtype, const unsigned char *abuf, int alen,
    struct sockaddr_storage **out, size_t *n)
{
	struct ares_addrttl a4[DNS_MAX_ADDRS];
	struct ares_addr6ttl a6[DNS_MAX_ADDRS];
	int na = DNS_MAX_ADDRS, rc;
	struct sockaddr_storage *v;

	*out = NULL;
	*n = 0;
	if (qtype == ns_t_a)
		rc = dns_map_ares(ares_parse_a_reply(abuf, alen, NULL, a4, &na));
	else
		rc = dns_map_ares(ares_parse_aaaa_reply(abuf, alen, NULL, a6, &na));
	if (rc != DNS_OK)
		return rc;
	if (na <= 0)
		return DNS_ENODATA;
	if ((v = calloc((size_t)na, sizeof(*v))) == NULL)
		return DNS_ENOMEM;
	for (int i = 0; i < na; i++) {
		if (qtype == ns_t_a) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&v[i];

			sin->sin_family = AF_INET;
			sin->sin_addr = a4[i].ipaddr;
		} else {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&v[i];

			sin6->sin6_family = AF_INET6;
			memcpy(&sin6->sin6_addr, &a6[i].ip6addr, sizeof(sin6->sin6_addr));
		}
	}
	*out = v;
	*n = (size_t)na;
	return DNS_OK;
}

/* ---- the request lifecycle -------------------------------------------- */

static void dns_flush_done(struct dns *dns);
static void dns_teardown(struct dns *dns);
static void dns_on_timer(uv_timer_t *t);

static void
dns_req_free(struct dns_req *req)
{
	struct dns *dns = req->dns;

	if (req->prev != NULL)
		req->prev->next = req->next;
	else
		dns->reqs = req->next;
	if (req->next != NULL)
		req->next->prev = req->prev;
	free(req->mx);
	free(req->addrs[0]);
	free(req->addrs[1]);
	free(req);
}

static void
dns_on_defer(uv_timer_t *t)
{
	dns_flush_done(t->data);
}

/* Put REQ on the done queue; callbacks run from dns_flush_done(). */
static void
dns_req_complete(struct dns_req *req)
{
	struct dns *dns = req->dns;

	req->done_next = NULL;
	*dns->done_tail = req;
	dns->done_tail = &req->done_next;
	/* Inside a flush the loop there picks it up; from a c-ares callback
	 * our caller flushes; from dns_mx()/dns_addrs() the timer does. */
	if (dns->in_flush == 0 && !dns->closing)
		(void)uv_timer_start(&dns->defer, dns_on_defer, 0, 0);
}

static void
dns_deliver(struct dns_req *req)
{
	if (req->kind == DNS_KIND_MX) {
		struct dns_mx implicit;

		if (req->status == DNS_ENODATA) {
			/* RFC 5321 5.1: no MX records, the domain itself is
			 * the implicit MX with preference 0. */
			implicit.preference = 0;
			implicit.host = req->name;
			req->mx_cb(req->arg, DNS_ENODATA, &implicit, 1);
		} else if (req->status == DNS_OK) {
			req->mx_cb(req->arg, DNS_OK, req->mx, req->nmx);
		} else {
			req->mx_cb(req->arg, req->status, NULL, 0);
		}
		return;
	}

	size_t n = req->naddrs[0] + req->naddrs[1];
	struct sockaddr_storage *all = NULL;
	int st = DNS_OK;

	if (n == 0) {
		/* No address at all: report the most useful failure.
		 * Temporary beats NXDOMAIN so that one lost query does not
		 * become a bounce. */
		if (req->st[0] == DNS_ENOMEM || req->st[1] == DNS_ENOMEM)
			st = DNS_ENOMEM;
		else if (req->st[0] == DNS_ETEMP || req->st[1] == DNS_ETEMP)
			st = DNS_ETEMP;
		else if (req->st[0] == DNS_ENXDOMAIN || req->st[1] == DNS_ENXDOMAIN)
			st = DNS_ENXDOMAIN;
		else
			st = DNS_ENODATA;
		req->addrs_cb(req->arg, st, NULL, 0);
		return;
	}
	if ((all = malloc(n * sizeof(*all))) == NULL) {
		req->addrs_cb(req->arg, DNS_ENOMEM, NULL, 0);
		return;
	}
	/* AAAA first, then A (dns.h). */
	if (req->naddrs[0] > 0)
		memcpy(all, req->addrs[0], req->naddrs[0] * sizeof(*all));
	if (req->naddrs[1] > 0)
		memcpy(all + req->naddrs[0], req->addrs[1],
		    req->naddrs[1] * sizeof(*all));
	req->addrs_cb(req->arg, DNS_OK, all, n);
	free(all);
}

/*
 * Run the callbacks of completed requests and free them.  User callbacks
 * may add to the queue (a cache hit) or call dns_free(); the teardown that
 * the latter asks for waits until the outermost flush is done.
 */
static void
dns_flush_done(struct dns *dns)
{
	struct dns_req *req;

	dns->in_flush++;
	while ((req = dns->done_head) != NULL) {
		dns->done_head = req->done_next;
		if (dns->done_head == NULL)
			dns->done_tail = &dns->done_head;
		if (!req->cancelled && !dns->closing) {
			req->delivering = true;
			dns_deliver(req);
		}
		dns_req_free(req);
	}
	dns->in_flush--;
	if (dns->closing && dns->in_flush == 0 && !dns->torn_down)
		dns_teardown(dns);
}

static void
dns_update_timer(struct dns *dns)
{
	struct timeval tv, *tvp;
	uint64_t ms;

	if (dns->closing)
		return;
	tvp = ares_timeout(dns->channel, NULL, &tv);
	if (tvp == NULL) {
		(void)uv_timer_stop(&dns->timer);
		return;
	}
	ms = (uint64_t)tvp->tv_sec * 1000 + ((uint64_t)tvp->tv_usec + 999) / 1000;
	(void)uv_timer_start(&dns->timer, dns_on_timer, ms, 0);
}

static void
dns_on_timer(uv_timer_t *t)
{
	struct dns *dns = t->data;

	ares_process_fd(dns->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dns_update_timer(dns);
	dns_flush_done(dns);
}

static void
dns_on_answer(void *arg, int status, int timeouts, unsigned char *abuf,
    int alen)
{
	struct dns_q *q = arg;
	struct dns_req *req = q->req;
	struct dns *dns = req->dns;
	int rc;
	uint32_t ttl;

	(void)timeouts;
	req->outstanding--;
	/* ares_destroy(): the teardown frees every request itself. */
	if (status == ARES_EDESTRUCTION || dns->closing)
		return;
	rc = dns_map_ares(status);
	ttl = rc == DNS_ENXDOMAIN || rc == DNS_ENODATA ? DNS_CACHE_NEG_TTL_S : 0;

	if (q->qtype == ns_t_mx) {
		struct dns_mx *mx = NULL;
		size_t n = 0;

		if (rc == DNS_OK && abuf != NULL) {
			rc = dns__parse_mx(abuf, alen, &mx, &n);
			if (rc == DNS_OK || rc == DNS_ENULLMX)
				ttl = dns__answer_min_ttl(abuf, alen);
			else if (rc == DNS_ENODATA)
				ttl = DNS_CACHE_NEG_TTL_S;
			else
				ttl = 0;
		}
		if (rc != DNS_ETEMP && rc != DNS_ENOMEM)
			dns_cache_put(dns, ns_t_mx, req->name, rc, ttl, mx, NULL, n);
		req->status = rc;
		req->mx = mx;
		req->nmx = n;
	} else {
		int slot = q->qtype == ns_t_aaaa ? 0 : 1;
		struct sockaddr_storage *v = NULL;
		size_t n = 0;

		if (rc == DNS_OK && abuf != NULL) {
			rc = dns__parse_addrs(q->qtype, abuf, alen, &v, &n);
			if (rc == DNS_OK)
				ttl = dns__answer_min_ttl(abuf, alen);
			else if (rc == DNS_ENODATA)
				ttl = DNS_CACHE_NEG_TTL_S;
			else
				ttl = 0;
		}
		if (rc != DNS_ETEMP && rc != DNS_ENOMEM)
			dns_cache_put(dns, q->qtype, req->name, rc, ttl, NULL, v, n);
		req->st[slot] = rc;
		req->addrs[slot] = v;
		req->naddrs[slot] = n;
	}
	if (req->outstanding == 0)
		dns_req_complete(req);
}

/* ---- sockets ---------------------------------------------------------- */

static void
dns_on_handle_close(uv_handle_t *h)
{
	struct dns *dns = h->data;

	if (h->type == UV_POLL)
		free(h);                      /* the dns_sock, poll is first */
	if (--dns->nhandles > 0)
		return;
	/* The last handle is gone: nothing of ours is left on the loop. */
	if (dns->done_cb != NULL)
		dns->done_cb(dns->done_arg);
	free(dns);
	ares_library_cleanup();
}

static void
dns_on_poll(uv_poll_t *p, int status, int events)
{
	struct dns_sock *s = (struct dns_sock *)p;
	struct dns *dns = s->dns;
	ares_socket_t fd = s->fd;
	ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

	/* On a poll error let c-ares try both ways: its read or write then
	 * fails and it handles the broken socket itself. */
	if (status < 0 || (events & UV_READABLE))
		rfd = fd;
	if (status < 0 || (events & UV_WRITABLE))
		wfd = fd;
	/* This may close S through the sock-state callback; S's memory lives
	 * until its close callback, and we do not touch it again anyway. */
	ares_process_fd(dns->channel, rfd, wfd);
	dns_update_timer(dns);
	dns_flush_done(dns);
}

static void
dns_on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns *dns = data;
	struct dns_sock **pp, *s;
	int events;

	for (pp = &dns->socks; *pp != NULL; pp = &(*pp)->next)
		if ((*pp)->fd == fd)
			break;
	s = *pp;
	if (!readable && !writable) {
		if (s == NULL)
			return;
		*pp = s->next;
		/* Closing now (not just stopping) removes the watcher before
		 * c-ares closes the descriptor; see the top of the file. */
		uv_close((uv_handle_t *)&s->poll, dns_on_handle_close);
		return;
	}
	if (s == NULL) {
		if ((s = calloc(1, sizeof(*s))) == NULL)
			return;               /* c-ares times the query out */
		if (uv_poll_init_socket(dns->loop, &s->poll, fd) != 0) {
			free(s);
			return;
		}
		s->poll.data = dns;
		s->dns = dns;
		s->fd = fd;
		s->next = dns->socks;
		dns->socks = s;
		dns->nhandles++;
	}
	events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
	/* Without a watcher the query can only time out, which c-ares
	 * reports in due course; there is nobody else to tell. */
	(void)uv_poll_start(&s->poll, events, dns_on_poll);
}

/* ---- public ----------------------------------------------------------- */

int
dns_new(uv_loop_t *loop, const char *servers, struct dns **out)
{
	struct ares_options opts;
	struct dns *dns;
	int rc;

	if (loop == NULL || out == NULL)
		return DNS_EINVAL;
	*out = NULL;
	if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
		return DNS_ENOMEM;
	if ((dns = calloc(1, sizeof(*dns))) == NULL) {
		ares_library_cleanup();
		return DNS_ENOMEM;
	}
	dns->loop = loop;
	dns->done_tail = &dns->done_head;
	memset(&opts, 0, sizeof(opts));
	opts.sock_state_cb = dns_on_sock_state;
	opts.sock_state_cb_data = dns;
	opts.timeout = DNS_TIMEOUT_MS;
	opts.tries = DNS_TRIES;
	rc = ares_init_options(&dns->channel, &opts,
	    ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (rc != ARES_SUCCESS) {
		free(dns);
		ares_library_cleanup();
		return rc == ARES_ENOMEM ? DNS_ENOMEM : DNS_ETEMP;
	}
	dns->channel_ok = true;
	if (servers != NULL) {
		rc = ares_set_servers_ports_csv(dns->channel, servers);
		if (rc != ARES_SUCCESS) {
			ares_destroy(dns->channel);
			free(dns);
			ares_library_cleanup();
			return rc == ARES_ENOMEM ? DNS_ENOMEM : DNS_EINVAL;
		}
	}
	/* uv_timer_init cannot fail on Unix (it only fills the struct); the
	 * status is still checked, and the handles are counted from here so
	 * that any later failure can go through the normal close path. */
	if (uv_timer_init(loop, &dns->timer) != 0) {
		ares_destroy(dns->channel);
		free(dns);
		ares_library_cleanup();
		return DNS_ETEMP;
	}
	dns->timer.data = dns;
	dns->nhandles = 1;
	if (uv_timer_init(loop, &dns->defer) != 0) {
		dns_free(dns, NULL, NULL);
		return DNS_ETEMP;
	}
	dns->defer.data = dns;
	dns->nhandles = 2;
	*out = dns;
	return DNS_OK;
}

static void
dns_teardown(struct dns *dns)
{
	struct dns_sock *s;
	unsigned nh = dns->nhandles;

	dns->torn_down = true;
	(void)uv_timer_stop(&dns->timer);
	(void)uv_timer_stop(&dns->defer);
	/* Our query callbacks see ARES_EDESTRUCTION and touch nothing; the
	 * sock-state callback closes the polls of the sockets it shuts. */
	if (dns->channel_ok)
		ares_destroy(dns->channel);
	dns->channel_ok = false;
	while ((s = dns->socks) != NULL) {
		dns->socks = s->next;
		uv_close((uv_handle_t *)&s->poll, dns_on_handle_close);
	}
	dns->done_head = NULL;
	dns->done_tail = &dns->done_head;
	while (dns->reqs != NULL)
		dns_req_free(dns->reqs);
	dns_cache_flush(dns);
	/* The defer timer exists only once nhandles reached 2 in dns_new(). */
	uv_close((uv_handle_t *)&dns->timer, dns_on_handle_close);
	if (nh >= 2 || dns->defer.data == dns)
		uv_close((uv_handle_t *)&dns->defer, dns_on_handle_close);
}

void
dns_free(struct dns *dns, void (*done)(void *arg), void *arg)
{
	if (dns == NULL || dns->closing)
		return;
	dns->closing = true;
	dns->done_cb = done;
	dns->done_arg = arg;
	if (dns->in_flush == 0)
		dns_teardown(dns);
}

static struct dns_req *
dns_req_new(struct dns *dns, enum dns_kind kind, const char *canon, void *arg)
{
	struct dns_req *req = calloc(1, sizeof(*req));

	if (req == NULL)
		return NULL;
	req->dns = dns;
	req->kind = kind;
	req->arg = arg;
	memcpy(req->name, canon, strlen(canon) + 1);
	req->next = dns->reqs;
	if (dns->reqs != NULL)
		dns->reqs->prev = req;
	dns->reqs = req;
	return req;
}

static void
dns_query(struct dns_req *req, int slot, int qtype)
{
	req->q[slot].req = req;
	req->q[slot].qtype = qtype;
	req->outstanding++;
	/* c-ares may answer at once (e.g. ENOMEM, or a closed channel); the
	 * answer callback only queues the request, so that is fine. */
	ares_query(req->dns->channel, req->name, ns_c_in, qtype, dns_on_answer,
	    &req->q[slot]);
}

/* Drop the guard reference taken around the ares_query() calls. */
static void
dns_query_done(struct dns_req *req)
{
	if (--req->outstanding == 0 && !req->dns->closing)
		dns_req_complete(req);
}

int
dns_mx(struct dns *dns, const char *domain, dns_mx_cb cb, void *arg,
    struct dns_req **reqp)
{
	char canon[DNS_NAME_MAX + 1];
	struct dns_cache_entry *e;
	struct dns_req *req;
	int rc;

	if (reqp != NULL)
		*reqp = NULL;
	if (dns == NULL || cb == NULL)
		return DNS_EINVAL;
	if (dns->closing)
		return DNS_ECLOSED;
	if ((rc = dns_canon_name(domain, canon)) != 0)
		return rc;
	if ((req = dns_req_new(dns, DNS_KIND_MX, canon, arg)) == NULL)
		return DNS_ENOMEM;
	req->mx_cb = cb;
	if ((e = dns_cache_get(dns, ns_t_mx, canon)) != NULL) {
		req->status = e->status;
		if (e->n > 0) {
			if ((req->mx = dns_mx_copy(e->mx, e->n)) == NULL)
				req->status = DNS_ENOMEM;
			else
				req->nmx = e->n;
		}
		dns_req_complete(req);
	} else {
		req->outstanding++;               /* guard, see dns_addrs() */
		dns_query(req, 0, ns_t_mx);
		dns_query_done(req);
		dns_update_timer(dns);
	}
	if (reqp != NULL)
		*reqp = req;
	return DNS_OK;
}

/* Fill slot SLOT of REQ from the cache; false on a miss. */
static bool
dns_addrs_from_cache(struct dns_req *req, int slot, int qtype)
{
	struct dns_cache_entry *e = dns_cache_get(req->dns, qtype, req->name);

	if (e == NULL)
		return false;
	req->st[slot] = e->status;
	if (e->n > 0) {
		req->addrs[slot] = malloc(e->n * sizeof(*e->addrs));
		if (req->addrs[slot] == NULL) {
			req->st[slot] = DNS_ENOMEM;
		} else {
			memcpy(req->addrs[slot], e->addrs, e->n * sizeof(*e->addrs));
			req->naddrs[slot] = e->n;
		}
	}
	return true;
}

/* An address literal answers itself: true (and REQ filled) if HOST is one. */
static bool
dns_addrs_literal(struct dns_req *req, const char *host)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, host,
	    &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else
		return false;
	int slot = ss.ss_family == AF_INET6 ? 0 : 1;

	req->st[0] = req->st[1] = DNS_ENODATA;
	if ((req->addrs[slot] = malloc(sizeof(ss))) == NULL) {
		req->st[slot] = DNS_ENOMEM;
	} else {
		memcpy(req->addrs[slot], &ss, sizeof(ss));
		req->naddrs[slot] = 1;
		req->st[slot] = DNS_OK;
	}
	return true;
}

/* dns_addrs() and dns_a(): WANT6 false asks for A records only. */
static int
dns_lookup_addrs(struct dns *dns, const char *host, bool want6,
    dns_addrs_cb cb, void *arg, struct dns_req **reqp)
{
	char canon[DNS_NAME_MAX + 1];
	struct dns_req *req;
	bool have6, have4;
	int rc;

	if (reqp != NULL)
		*reqp = NULL;
	if (dns == NULL || cb == NULL || host == NULL)
		return DNS_EINVAL;
	if (dns->closing)
		return DNS_ECLOSED;
	if (strlen(host) >= sizeof(canon))
		return DNS_EBADNAME;
	if ((req = dns_req_new(dns, DNS_KIND_ADDRS, "", arg)) == NULL)
		return DNS_ENOMEM;
	req->addrs_cb = cb;
	if (dns_addrs_literal(req, host)) {
		dns_req_complete(req);
		goto done;
	}
	if ((rc = dns_canon_name(host, canon)) != 0) {
		dns_req_free(req);
		return rc;
	}
	memcpy(req->name, canon, strlen(canon) + 1);
	/* Without AAAA, slot 0 is an empty answer from the start. */
	req->st[0] = DNS_ENODATA;
	have6 = !want6 || dns_addrs_from_cache(req, 0, ns_t_aaaa);
	have4 = dns_addrs_from_cache(req, 1, ns_t_a);
	if (have6 && have4) {
		dns_req_complete(req);
		goto done;
	}
	/*
	 * c-ares may answer a query from inside ares_query() (bad name, out of
	 * memory).  The guard reference keeps the request from completing
	 * after the first query while the second is not even sent.
	 */
	req->outstanding++;
	if (!have6)
		dns_query(req, 0, ns_t_aaaa);
	if (!have4)
		dns_query(req, 1, ns_t_a);
	dns_query_done(req);
	dns_update_timer(dns);
done:
	if (reqp != NULL)
		*reqp = req;
	return DNS_OK;
}

int
dns_addrs(struct dns *dns, const char *host, dns_addrs_cb cb, void *arg,
    struct dns_req **reqp)
{
	return dns_lookup_addrs(dns, host, true, cb, arg, reqp);
}

int
dns_a(struct dns *dns, const char *name, dns_addrs_cb cb, void *arg,
    struct dns_req **reqp)
{
	return dns_lookup_addrs(dns, name, false, cb, arg, reqp);
}

void
dns_cancel(struct dns_req *req)
{
	/* During its own callback the request is already spent. */
	if (req == NULL || req->delivering)
		return;
	req->cancelled = true;
}

/* ---- primary selection (pure) ----------------------------------------- */

int
dns_select_primaries(const struct dns_mx *mx, size_t n,
    const char *const *self_names, size_t nself,
    struct dns_mx *out, size_t *nout,
    unsigned (*rand_fn)(void *rand_arg), void *rand_arg)
{
	size_t i, j, run, keep;
	bool found = false;
	unsigned self_pref = 0;

	if (nout == NULL)
		return DNS_EINVAL;
	*nout = 0;
	if ((n > 0 && (mx == NULL || out == NULL)) ||
	    (nself > 0 && self_names == NULL))
		return DNS_EINVAL;
	if (n == 0)
		return DNS_ENODATA;
	for (i = 0; i < n; i++) {
		if (mx[i].host == NULL)
			return DNS_EINVAL;
		if (dns_is_root(mx[i].host))
			return DNS_ENULLMX;
	}
	memcpy(out, mx, n * sizeof(*out));
	dns_mx_sort(out, n);
	/* RFC 5321 5.1: hosts of equal preference are tried in random order,
	 * so that the load spreads over them.  Fisher-Yates per run. */
	if (rand_fn != NULL) {
		for (i = 0; i < n; i = run) {
			for (run = i + 1; run < n &&
			    out[run].preference == out[i].preference; run++)
				;
			for (j = run - 1; j > i; j--) {
				size_t k = i + rand_fn(rand_arg) % (j - i + 1);
				struct dns_mx t = out[j];

				out[j] = out[k];
				out[k] = t;
			}
		}
	}
	/* Our own preference: the best one among our names. */
	for (i = 0; i < n && !found; i++) {
		for (j = 0; j < nself; j++) {
			if (self_names[j] != NULL &&
			    dns_name_equal(out[i].host, self_names[j])) {
				found = true;
				self_pref = out[i].preference;
				break;
			}
		}
	}
	if (!found) {
		/*
		 * We are not an MX of this domain at all (a misconfigured
		 * zone, or primary = mx for a domain that lists only other
		 * hosts).  The safe side is to hand the mail to every listed
		 * host: none of them is us by name, and the caller still drops
		 * hosts whose address is ours (dns_addr_is_self).
		 */
		*nout = n;
		return DNS_OK;
	}
	/* Strictly lower preference values only: never ourselves, never a
	 * peer backup at our level or below us. */
	for (keep = 0; keep < n && out[keep].preference < self_pref; keep++)
		;
	*nout = keep;
	return keep == 0 ? DNS_ESELF : DNS_OK;
}

/* ---- self addresses --------------------------------------------------- */

/* Family, 16-byte address (IPv4 as its v4-mapped form) and port. */
static int
dns_addr_key(const struct sockaddr_storage *ss, unsigned char addr[16],
    uint16_t *port)
{
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	    0xff, 0xff };

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		memcpy(addr, mapped, 12);
		memcpy(addr + 12, &sin->sin_addr, 4);
		*port = ntohs(sin->sin_port);
		return AF_INET;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		memcpy(addr, &sin6->sin6_addr, 16);
		*port = ntohs(sin6->sin6_port);
		return memcmp(addr, mapped, 12) == 0 ? AF_INET : AF_INET6;
	}
	return -1;
}

bool
dns_addr_is_self(const struct sockaddr_storage *addr,
    const struct sockaddr_storage *self, size_t nself)
{
	static const unsigned char any6[16];
	static const unsigned char loop6[16] = { [15] = 1 };
	unsigned char a[16], s[16];
	uint16_t ap, sp;
	int af, sf;
	bool a_loopback;

	if (addr == NULL || (self == NULL && nself > 0))
		return false;
	if ((af = dns_addr_key(addr, a, &ap)) < 0)
		return false;
	a_loopback = af == AF_INET ? a[12] == 127 : memcmp(a, loop6, 16) == 0;
	for (size_t i = 0; i < nself; i++) {
		if ((sf = dns_addr_key(&self[i], s, &sp)) < 0)
			continue;
		if (ap != 0 && sp != 0 && ap != sp)
			continue;
		if (sf == af && memcmp(a, s, 16) == 0)
			return true;
		/* A wildcard listener answers on loopback; [::] on a
		 * dual-stack socket takes IPv4 too. */
		if (a_loopback && self[i].ss_family == AF_INET6 &&
		    memcmp(s, any6, 16) == 0)
			return true;
		if (a_loopback && sf == AF_INET && af == AF_INET &&
		    s[12] == 0 && s[13] == 0 && s[14] == 0 && s[15] == 0)
			return true;
	}
	return false;
}

int
dns_local_addrs(struct sockaddr_storage **out, size_t *n)
{
	struct ifaddrs *ifa = NULL, *i;
	struct sockaddr_storage *v;
	size_t count = 0, k = 0;

	if (out == NULL || n == NULL)
		return DNS_EINVAL;
	*out = NULL;
	*n = 0;
	if (getifaddrs(&ifa) != 0)
		return DNS_ETEMP;
	for (i = ifa; i != NULL; i = i->ifa_next)
		if (i->ifa_addr != NULL && (i->ifa_addr->sa_family == AF_INET ||
		    i->ifa_addr->sa_family == AF_INET6))
			count++;
	if ((v = calloc(count ? count : 1, sizeof(*v))) == NULL) {
		freeifaddrs(ifa);
		return DNS_ENOMEM;
	}
	for (i = ifa; i != NULL; i = i->ifa_next) {
		if (i->ifa_addr == NULL)
			continue;
		if (i->ifa_addr->sa_family == AF_INET) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&v[k++];

			memcpy(sin, i->ifa_addr, sizeof(*sin));
			sin->sin_port = 0;
		} else if (i->ifa_addr->sa_family == AF_INET6) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&v[k++];

			memcpy(sin6, i->ifa_addr, sizeof(*sin6));
			sin6->sin6_port = 0;
		}
	}
	freeifaddrs(ifa);
	*out = v;
	*n = k;
	return DNS_OK;
}
