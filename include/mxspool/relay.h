/*
 * relay.h - the one struct handed down from main(): the shared resources of
 * the daemon and the wiring between its modules.
 *
 * relay.c creates and frees everything here that more than one module uses:
 * the counters (stats), the one DNS resolver, the TLS contexts; it applies a
 * reload to every module and connects the SMTP server's hooks to the drain.
 * Only main.c, relay.c and control.c include this header: every other module
 * is given what it needs (a deps struct, a config pointer, callbacks) and
 * knows nothing of struct relay.
 *
 * Config pointers are valid only until the next reload: a reload frees the
 * old config after every module has been handed the new one, so a module
 * that must remember a tenant across an async step remembers its name.
 */
#ifndef MXSPOOL_RELAY_H
#define MXSPOOL_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mxspool/config.h"

struct control;
struct dns;
struct drain;
struct handover_fds;
struct fleet;
struct smtp_server;
struct spool;
struct stats;
struct tls_ctx;
struct verify;

struct relay {
	uv_loop_t *loop;
	struct config *cfg;           /* current; replaced whole on reload */
	struct config *started_cfg;   /* the one read at start, once a reload
	                               * replaced it: restart-only keys keep
	                               * its values */
	char restart_keys[160];       /* "listen dns_servers": changed in the
	                               * file, waiting for a restart; "" none */
	struct stats *stats;
	struct dns *dns;
	struct tls_ctx *tls_server;   /* NULL unless [tls] cert and key */
	struct tls_ctx *tls_client;   /* NULL when [tls] outbound = none */
	struct spool *spool;
	struct smtp_server *server;
	struct control *control;
	struct drain *drain;
	struct verify *verify;        /* recipients = learn (verify.h) */
	struct fleet *fleet;          /* [fleet] redis set: the shared budget */
	struct drain_gate *gate;      /* the drain's hook into it */
	int64_t started_ms;           /* wall clock */
	const struct handover_fds *handover;  /* SIGUSR2: the sockets the old
	                               * process passed us, or NULL */
	bool handing_over;            /* SIGUSR2: a new process takes over */
	bool stopping;
};

/* sd_notify(3) without libsystemd ("READY=1", "RELOADING=1", ...). */
void relay_notify(const char *state);

/*
 * Take CFG (the relay owns it from now on) and create the shared resources:
 * counters, resolver, TLS contexts.  0, or -1 with ERR.
 */
int relay_init(struct relay *r, uv_loop_t *loop, struct config *cfg,
    char *err, size_t errlen);
/* Bind the SMTP listeners (before privileges are dropped), hooks wired. */
int relay_bind_smtp(struct relay *r, char *err, size_t errlen);
/* With r->spool open: quotas, the drain, then the SMTP server accepts.
 * 0, or a <sysexits.h> code with ERR. */
int relay_start(struct relay *r, char *err, size_t errlen);

/*
 * Re-read the config file.  A valid file is applied to every module and 0
 * returned (keys that only a restart changes are named in r->restart_keys
 * and logged); an invalid one is refused whole, the old config stays, -1 is
 * returned and ERR holds "FILE:LINE: message".  Logs event=reload either way.
 */
int relay_reload(struct relay *r, char *err, size_t errlen);

/* Close the resolver (after server and drain have closed); DONE runs when
 * its handles are closed. */
void relay_close(struct relay *r, void (*done)(void *arg), void *arg);
/* After the loop has ended: free the TLS contexts, counters and config. */
void relay_free(struct relay *r);

#endif
