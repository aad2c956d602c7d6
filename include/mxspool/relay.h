/*
 * relay.h - the one struct handed down from main() to every module.
 *
 * There is no other global mutable state.  Config pointers are valid only
 * inside one callback: a reload frees the old config, so a module that must
 * remember a tenant across an async step remembers its name.
 */
#ifndef MXSPOOL_RELAY_H
#define MXSPOOL_RELAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "mxspool/config.h"

struct spool;
struct smtp_server;
struct control;
struct drain;
struct dns;
struct tls_ctx;

/* Counters that the status command and /metrics report per tenant. */
struct relay_tenant_counters {
	char name[CONFIG_TENANT_NAME_MAX + 1];
	uint64_t accepted_total;
	uint64_t delivered_total;
	uint64_t bounced_total;
};

struct relay {
	uv_loop_t *loop;
	struct config *cfg;           /* current; replaced whole on reload */
	struct spool *spool;
	struct smtp_server *server;
	struct control *control;
	struct drain *drain;
	struct dns *dns;
	struct tls_ctx *tls_server;   /* NULL unless [tls] cert and key */
	struct tls_ctx *tls_client;
	int64_t started_ms;           /* wall clock */
	bool stopping;

	uint64_t accepted_total;
	uint64_t delivered_total;
	uint64_t bounced_total;
	struct relay_tenant_counters *tenant_counters;
	size_t ntenant_counters;
};

/* Counters for TENANT, created on first use (names are bounded by config). */
struct relay_tenant_counters *relay_counters(struct relay *r,
    const char *tenant);

/*
 * Re-read the config file.  A valid file is applied in place and 0 returned;
 * an invalid one is refused whole, the old config stays, -1 is returned and
 * ERR holds "FILE:LINE: message".  Logs event=reload either way.
 */
int relay_reload(struct relay *r, char *err, size_t errlen);

/* Begin a graceful stop (as on SIGTERM). */
void relay_stop(struct relay *r);

#endif
