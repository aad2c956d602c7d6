/*
 * verify.h - recipients = learn: the recipient verifier.
 *
 * A backup MX that does not know which recipients exist either accepts
 * everything and bounces later (backscatter) or needs a copy of the user
 * list.  With recipients = learn the relay asks the primary while it is up
 * (a probe transaction: EHLO, MAIL FROM:<>, RCPT TO:<addr>, RSET, on
 * sessions kept open and reused) and remembers the answer per tenant
 * (rcache.h) in a file under spool_dir, so that while the primary is down
 * the cache answers: valid -> 250, invalid -> 550 5.1.1, never seen ->
 * unknown_recipient (tempfail: 450 4.1.1, or accept).  Every recipient the
 * drain delivers is learned as valid too (verify_learn).
 *
 * A dictionary attack must not become a flood against the primary: per
 * tenant at most verify_concurrency probe sessions, at most verify_rate
 * RCPT probes per second and never more than the drain's limit in force,
 * and at most VERIFY_WAIT_MAX distinct addresses waiting; an RCPT that
 * cannot be verified within verify_timeout gets the answer of the down
 * path.
 *
 * Ownership: relay.c creates one verifier after the spool is open and
 * closes it after the SMTP server (which waits for every answer it asked
 * for).  The callback of verify_rcpt() runs exactly once, never from inside
 * verify_rcpt(), at the latest verify_timeout (plus one tick) later, or at
 * verify_close().  CFG and TLS stay the caller's until the next
 * verify_apply_config().
 */
#ifndef MXSPOOL_VERIFY_H
#define MXSPOOL_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "mxspool/config.h"
#include "mxspool/rcache.h"

struct tls_ctx;
struct verify;

/* Distinct addresses waiting for (or in) a probe, per tenant: beyond it an
 * RCPT gets the down-path answer at once.  Bounded so that memory and the
 * answers' delay stay bounded under a dictionary attack. */
#define VERIFY_WAIT_MAX 256

enum verify_answer {
	VERIFY_ACCEPT,                /* 250: valid, or unknown_recipient = accept */
	VERIFY_REJECT,                /* 550 5.1.1: the primary refused it */
	VERIFY_TEMPFAIL,              /* 450 4.1.1: not known, cannot ask now */
	VERIFY_PENDING,               /* asked: the callback gives one of the above */
};
const char *verify_answer_name(enum verify_answer a);

/* The tenant's primary as the drain knows it (verify_deps.primary). */
struct verify_primary {
	struct sockaddr_storage addr;   /* port included */
	char host[CONFIG_HOST_MAX + 1]; /* for SNI and logs */
	double rate_limit;              /* the drain's limit in force; 0 none */
};

struct verify_deps {
	uv_loop_t *loop;
	const char *dir;              /* the caches' directory; copied */
	/* Is the primary of RCPT (an address of TENANT) up?  If so fill OUT
	 * and return true.  Probes for addresses with the same OUT->addr
	 * share sessions. */
	bool (*primary)(void *arg, const char *tenant, const char *rcpt,
	    struct verify_primary *out);
	void *arg;
	/* Wall clock for the cache's times; NULL = util_now_ms. */
	int64_t (*now_ms)(void);
};

/* Start; loads each learn tenant's cache in the background (until it is
 * loaded, its addresses count as not known).  0, or -1 (out of memory). */
int verify_new(const struct verify_deps *deps, const struct config *cfg,
    struct tls_ctx *tls, struct verify **out);
/* A reload: new settings now; a tenant that stops learning keeps its cache
 * (unused) and its probe sessions are closed. */
void verify_apply_config(struct verify *v, const struct config *cfg,
    struct tls_ctx *tls);

typedef void (*verify_cb)(void *arg, enum verify_answer a);
/*
 * The answer for ADDR, a recipient of learn tenant TENANT that its FILE
 * does not list: ACCEPT, REJECT or TEMPFAIL now, or VERIFY_PENDING and CB
 * later (see above).  CB is not kept when the answer is immediate.
 */
enum verify_answer verify_rcpt(struct verify *v, const char *tenant,
    const char *addr, verify_cb cb, void *arg);
/* The drain delivered to ADDR: learned as valid (learn tenants only). */
void verify_learn(struct verify *v, const char *tenant, const char *addr);
/* Entries in TENANT's cache (0 if it does not learn). */
size_t verify_cached(struct verify *v, const char *tenant);
/* Every entry of TENANT's cache, newest first (rcache_walk); -1 if the
 * tenant does not learn. */
int verify_walk(struct verify *v, const char *tenant,
    int (*cb)(void *arg, const struct rcache_entry *e), void *arg);
/* Drop ADDR from TENANT's cache (the file follows within seconds): 0, 1 if
 * it was not cached, -1 if the tenant does not learn. */
int verify_forget(struct verify *v, const char *tenant, const char *addr);
/* Answer every waiter (down path), close the sessions, write the caches
 * that changed; DONE runs when all is closed and written. */
void verify_close(struct verify *v, void (*done)(void *arg), void *arg);

#endif
