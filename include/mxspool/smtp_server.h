/*
 * smtp_server.h - the inbound ESMTP listeners and session state machine.
 *
 * The server accepts mail for the tenants' domains only, hands each message
 * to the spool and answers 250 only after the spool reports it durable.
 */
#ifndef MXSPOOL_SMTP_SERVER_H
#define MXSPOOL_SMTP_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "mxspool/verify.h"

struct config;
struct dns;
struct smtp_server;
struct spool;
struct tls_ctx;

/* What the server tells the rest of the relay; called on the loop thread,
 * each may be NULL.  TENANT is valid only during the call. */
struct smtp_server_hooks {
	void *arg;
	/* A message for TENANT is durable and the client was told 250;
	 * LATENCY_S is end of data -> the journal's commit. */
	void (*on_accepted)(void *arg, const char *tenant, double latency_s);
	/* An allowed ETRN asked to start TENANT's queue. */
	void (*on_etrn)(void *arg, const char *tenant);
	/* recipients = learn: the answer for ADDR, a recipient of TENANT
	 * that its FILE lacks, as verify_rcpt() gives it (VERIFY_PENDING:
	 * CB runs later, exactly once, never inside this call).  NULL: every
	 * such RCPT is answered 450 4.1.1. */
	enum verify_answer (*learn_rcpt)(void *arg, const char *tenant,
	    const char *addr, verify_cb cb, void *cb_arg);
};

struct smtp_server_deps {
	uv_loop_t *loop;
	struct smtp_server_hooks hooks;
	struct dns *dns;              /* the relay's resolver, for DNSBL; or NULL */
};

/*
 * Bind every `listen` address of CFG (before privileges are dropped), or take
 * the sockets systemd passed (LISTEN_FDS).  CFG and TLS (NULL: no STARTTLS)
 * stay the caller's and must live until the next apply_config.
 */
int smtp_server_new(const struct smtp_server_deps *deps,
    const struct config *cfg, struct tls_ctx *tls, struct smtp_server **out,
    char *err, size_t errlen);
/* A reload: new sessions and commands see CFG and TLS from now on. */
void smtp_server_apply_config(struct smtp_server *s, const struct config *cfg,
    struct tls_ctx *tls);
/* Start accepting connections into SPOOL (after it is open). */
int smtp_server_start(struct smtp_server *s, struct spool *spool);
/* Stop accepting; sessions in progress get 421 at their next command and
 * are closed after at most GRACE_MS; DONE runs when every handle is closed. */
void smtp_server_close(struct smtp_server *s, unsigned grace_ms,
    void (*done)(void *arg), void *arg);
/* SIGUSR2: stop accepting (the new process accepts on the same sockets)
 * without telling anyone; a session between commands that has been silent
 * (no input, no output) for IDLE_MS gets 421, busy ones have GRACE_MS (from
 * now), as for smtp_server_close. */
void smtp_server_close_handover(struct smtp_server *s, unsigned idle_ms,
    unsigned grace_ms, void (*done)(void *arg), void *arg);
/* The listening descriptors, up to MAX, in order; how many. */
size_t smtp_server_listen_fds(const struct smtp_server *s, int *fds,
    size_t max);
/* Sessions open or still closing. */
unsigned smtp_server_connections(const struct smtp_server *s);
/* Intake refusals since start: RCPTs deferred because a DNSBL lists the
 * client, and MAILs or RCPTs over the client's rate (450 4.7.1 each). */
struct smtp_server_abuse {
	uint64_t dnsbl_deferred;
	uint64_t rate_refused;
};
void smtp_server_abuse_counts(const struct smtp_server *s,
    struct smtp_server_abuse *out);
/* The local port listener I is bound to (config `listen` order, or the
 * order of the inherited sockets): what `listen = 127.0.0.1:0` picked.
 * -1 if there is no listener I. */
int smtp_server_local_port(const struct smtp_server *s, size_t i);

#endif
