/*
 * drain_target.c - where the drain connects: the primary's addresses, and a
 * DSN's destination.
 *
 * "primary = host[:port], ..." resolves each host in order (A and AAAA,
 * through dns_addrs(), which answers literals too).  "primary = mx" looks
 * up the MX records of a destination's domain (one destination per domain
 * of the tenant; those whose hosts have the same addresses are merged, see
 * drain__dest_alias) and keeps the hosts dns_select_primaries() returns:
 * preference strictly lower than ours, our names being [server] hostname;
 * if our own entry cannot be placed, that function picks the safe side.
 * Those hosts are then resolved on [server] mx_port.  Either way an address
 * that is one of our own listen addresses is dropped (dns_addr_is_self), so
 * the relay never delivers to itself; the caller falls back from one
 * address to the next when a connection cannot be made.
 *
 * A resolution is one struct drain_resolve, owned by whoever started it
 * until its callback runs (then it is freed here) or until it is cancelled.
 * Its callback never runs from inside drain__resolve_start().
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mxspool/config.h"
#include "mxspool/dns.h"
#include "mxspool/log.h"
#include "drain_internal.h"

/* One host of a resolution and the addresses found for it. */
struct drain_resolve_host {
	struct drain_resolve *res;
	char host[CONFIG_HOST_MAX + 1];
	uint16_t port;
	struct dns_req *req;
	struct drain_target *t;
	size_t n;
	int status;
	bool done;
};

struct drain_resolve {
	struct drain *d;
	drain__resolve_cb cb;
	void *arg;
	struct dns_req *mxreq;
	uint16_t mx_port;
	struct drain_resolve_host *h;
	size_t nh, pending;
};

/* ---- addresses --------------------------------------------------------- */

static void
target_addr_string(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	const void *a = ss->ss_family == AF_INET6 ?
	    (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr :
	    (const void *)&((const struct sockaddr_in *)ss)->sin_addr;

	if (inet_ntop(ss->ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
}

static uint16_t
target_addr_port(const struct sockaddr_storage *ss)
{
	return ntohs(ss->ss_family == AF_INET6 ?
	    ((const struct sockaddr_in6 *)ss)->sin6_port :
	    ((const struct sockaddr_in *)ss)->sin_port);
}

static void
target_addr_set_port(struct sockaddr_storage *ss, uint16_t port)
{
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
	else
		((struct sockaddr_in *)ss)->sin_port = htons(port);
}

void
drain__target_name(const struct drain_target *tg, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	target_addr_string(&tg->addr, a, sizeof(a));
	snprintf(buf, len, "%s[%s]:%u", tg->host, a, target_addr_port(&tg->addr));
}

/* ---- resolution -------------------------------------------------------- */

static void
target_resolve_free(struct drain_resolve *res)
{
	for (size_t i = 0; i < res->nh; i++)
		free(res->h[i].t);
	free(res->h);
	free(res);
}

void
drain__resolve_cancel(struct drain_resolve *res)
{
	if (res == NULL)
		return;
	if (res->mxreq)
		dns_cancel(res->mxreq);
	for (size_t i = 0; i < res->nh; i++)
		if (!res->h[i].done && res->h[i].req)
			dns_cancel(res->h[i].req);
	target_resolve_free(res);
}

static void
target_resolve_finish(struct drain_resolve *res)
{
	struct drain *d = res->d;
	struct drain_target *all = NULL;
	size_t n = 0, cap = 0;
	int status = DNS_ENODATA;
	char why[256] = "no address found";

	for (size_t i = 0; i < res->nh; i++) {
		struct drain_resolve_host *h = &res->h[i];

		if (h->status != DNS_OK) {
			snprintf(why, sizeof(why), "%.200s: %s", h->host,
			    dns_strerror(h->status));
			if (h->status == DNS_ETEMP)
				status = DNS_ETEMP;
			continue;
		}
		for (size_t k = 0; k < h->n; k++) {
			if (dns_addr_is_self(&h->t[k].addr, d->self, d->nself)) {
				snprintf(why, sizeof(why), "%.200s is this host", h->host);
				continue;
			}
			if (n == cap) {
				size_t nc = cap ? cap * 2 : 8;
				struct drain_target *na = realloc(all, nc * sizeof(*na));

				if (na == NULL)
					continue;
				all = na;
				cap = nc;
			}
			all[n++] = h->t[k];
		}
	}
	if (n > 0)
		status = DNS_OK;
	res->cb(res->arg, status, why, all, n);
	target_resolve_free(res);
}

static void
target_on_addrs(void *arg, int status, const struct sockaddr_storage *addrs,
    size_t n)
{
	struct drain_resolve_host *h = arg;
	struct drain_resolve *res = h->res;

	h->done = true;
	h->req = NULL;
	h->status = status;
	if (status == DNS_OK && n > 0) {
		h->t = calloc(n, sizeof(*h->t));
		if (h->t == NULL) {
			h->status = DNS_ENOMEM;
		} else {
			for (size_t i = 0; i < n; i++) {
				h->t[i].addr = addrs[i];
				target_addr_set_port(&h->t[i].addr, h->port);
				snprintf(h->t[i].host, sizeof(h->t[i].host), "%s", h->host);
			}
			h->n = n;
		}
	}
	if (--res->pending == 0)
		target_resolve_finish(res);
}

/* Look up every host of RES (already filled in).  Returns false when no
 * lookup could even start: then nothing was reported and nothing will be. */
static bool
target_hosts_start(struct drain_resolve *res)
{
	struct dns *dns = res->d->dns;

	res->pending = res->nh;
	for (size_t i = 0; i < res->nh; i++) {
		struct drain_resolve_host *h = &res->h[i];
		int rc;

		h->res = res;
		rc = dns ? dns_addrs(dns, h->host, target_on_addrs, h, &h->req) :
		    DNS_ECLOSED;
		if (rc != DNS_OK) {
			h->done = true;
			h->status = rc;
			res->pending--;
		}
	}
	return res->pending > 0;
}

static void
target_on_mx(void *arg, int status, const struct dns_mx *mx, size_t n)
{
	struct drain_resolve *res = arg;
	const struct config *cfg = res->d->cfg;
	const char *self[1] = { cfg->hostname };
	struct dns_mx *sel = NULL;
	size_t nsel = 0;
	int rc;
	char why[300];

	res->mxreq = NULL;
	if ((status == DNS_OK || status == DNS_ENODATA) && n > 0) {
		sel = calloc(n, sizeof(*sel));
		rc = sel ? dns_select_primaries(mx, n, self, 1, sel, &nsel, NULL,
		    NULL) : DNS_ENOMEM;
	} else {
		rc = status;
	}
	if (rc != DNS_OK || nsel == 0) {
		snprintf(why, sizeof(why), "MX lookup: %s", dns_strerror(rc));
		free(sel);
		res->cb(res->arg, rc == DNS_OK ? DNS_ENODATA : rc, why, NULL, 0);
		target_resolve_free(res);
		return;
	}
	res->h = calloc(nsel, sizeof(*res->h));
	if (res->h == NULL) {
		free(sel);
		res->cb(res->arg, DNS_ENOMEM, "out of memory", NULL, 0);
		target_resolve_free(res);
		return;
	}
	res->nh = nsel;
	for (size_t i = 0; i < nsel; i++) {
		snprintf(res->h[i].host, sizeof(res->h[i].host), "%s", sel[i].host);
		res->h[i].port = res->mx_port;
	}
	free(sel);
	if (!target_hosts_start(res)) {
		/* Inside a dns callback: reporting at once is safe here. */
		res->cb(res->arg, DNS_ETEMP, "cannot look up the MX hosts", NULL, 0);
		target_resolve_free(res);
	}
}

/* See drain_internal.h. */
struct drain_resolve *
drain__resolve_start(struct drain *d, const struct config_hostport *hosts,
    size_t nhosts, const char *domain, uint16_t mx_port, drain__resolve_cb cb,
    void *arg)
{
	struct drain_resolve *res = calloc(1, sizeof(*res));
	struct dns *dns = d->dns;

	if (res == NULL || dns == NULL) {
		free(res);
		return NULL;
	}
	res->d = d;
	res->cb = cb;
	res->arg = arg;
	res->mx_port = mx_port;
	if (hosts == NULL) {
		if (dns_mx(dns, domain, target_on_mx, res, &res->mxreq) != DNS_OK) {
			free(res);
			return NULL;
		}
		return res;
	}
	res->h = calloc(nhosts ? nhosts : 1, sizeof(*res->h));
	if (res->h == NULL) {
		free(res);
		return NULL;
	}
	res->nh = nhosts;
	for (size_t i = 0; i < nhosts; i++) {
		snprintf(res->h[i].host, sizeof(res->h[i].host), "%s", hosts[i].host);
		res->h[i].port = hosts[i].port ? hosts[i].port : mx_port;
	}
	/* dns_addrs() answers even literals asynchronously, so the callback
	 * never runs from in here. */
	if (!target_hosts_start(res)) {
		target_resolve_free(res);
		return NULL;
	}
	return res;
}

/* ---- destinations ----------------------------------------------------- */

static bool
dest_same_targets(const struct drain_dest *a, const struct drain_dest *b)
{
	if (a->ntargets == 0 || a->ntargets != b->ntargets)
		return false;
	for (size_t i = 0; i < a->ntargets; i++)
		if (memcmp(&a->targets[i].addr, &b->targets[i].addr,
		    sizeof(a->targets[i].addr)) != 0)
			return false;
	return true;
}

/*
 * Domains whose MX hosts resolve to the same addresses (an ISP's fifty
 * domains on one server) are one destination: DS becomes an alias of the
 * first other one with its addresses, so their mail shares connections,
 * probes and state; those that were DS's aliases follow it.  Addresses that
 * differ (again) make DS its own destination.  See drain_internal.h.
 */
void
drain__dest_alias(struct drain_dest *ds)
{
	struct drain_tenant *t = ds->t;
	struct drain_dest *to = NULL;

	for (size_t i = 0; i < t->ndests && to == NULL; i++) {
		struct drain_dest *o = &t->dests[i];

		if (o != ds && o->alias == NULL && dest_same_targets(o, ds))
			to = o;
	}
	if (to != ds->alias)
		log_event(LOG_LEVEL_INFO, "destination", "tenant=%s domain=%s "
		    "same_as=%s", t->name, ds->domain, to ? to->domain : "none");
	ds->alias = to;
	for (size_t i = 0; to != NULL && i < t->ndests; i++)
		if (t->dests[i].alias == ds)
			t->dests[i].alias = to;
}

/* The destination of a recipient: its domain's (primary = mx with several
 * domains), else the tenant's one. */
struct drain_dest *
drain__dest_for(struct drain_tenant *t, const char *addr)
{
	const char *at = strrchr(addr, '@');

	if (t->ndests > 1 && at != NULL)
		for (size_t i = 0; i < t->ndests; i++)
			if (strcasecmp(t->dests[i].domain, at + 1) == 0)
				return t->dests[i].alias ? t->dests[i].alias :
				    &t->dests[i];
	return t->dests[0].alias ? t->dests[0].alias : &t->dests[0];
}

/* ---- our own addresses ------------------------------------------------- */

void
drain__self_collect(struct drain *d)
{
	const struct config *cfg = d->cfg;
	struct sockaddr_storage *s = NULL, *local = NULL;
	size_t n = 0, nlocal = 0, cap;
	bool wildcard = false;

	(void)dns_local_addrs(&local, &nlocal);
	cap = cfg->nlisten * (1 + nlocal);
	if (cap > 0)
		s = calloc(cap, sizeof(*s));
	for (size_t i = 0; s && i < cfg->nlisten; i++) {
		struct sockaddr_storage ss;
		struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
		const char *h = cfg->listen[i].host;
		char buf[CONFIG_HOST_MAX + 1];
		size_t hl = strlen(h);

		memset(&ss, 0, sizeof(ss));
		if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
			snprintf(buf, sizeof(buf), "%.*s", (int)(hl - 2), h + 1);
			h = buf;
		}
		if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
			ss.ss_family = AF_INET;
			wildcard = a4->sin_addr.s_addr == htonl(INADDR_ANY);
		} else if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
			ss.ss_family = AF_INET6;
			wildcard = IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr);
		} else {
			continue;     /* a name: hostname matching covers it */
		}
		target_addr_set_port(&ss, cfg->listen[i].port);
		s[n++] = ss;
		for (size_t k = 0; wildcard && k < nlocal; k++) {
			s[n] = local[k];
			target_addr_set_port(&s[n], cfg->listen[i].port);
			n++;
		}
	}
	free(local);
	free(d->self);
	d->self = s;
	d->nself = s ? n : 0;
}
