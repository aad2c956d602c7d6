/*
 * smtp_server.h - the inbound ESMTP listeners and session state machine.
 *
 * The server accepts mail for the tenants' domains only, hands each message
 * to the spool and answers 250 only after the spool reports it durable.
 */
#ifndef MXSPOOL_SMTP_SERVER_H
#define MXSPOOL_SMTP_SERVER_H

#include <stddef.h>

struct relay;
struct smtp_server;

/* Bind every `listen` address (before privileges are dropped). */
int smtp_server_new(struct relay *r, struct smtp_server **out, char *err,
    size_t errlen);
/* Start accepting connections (after the spool is open). */
int smtp_server_start(struct smtp_server *s);
/* Stop accepting; sessions in progress get 421 at their next command and
 * are closed after at most GRACE_MS; DONE runs when every handle is closed. */
void smtp_server_close(struct smtp_server *s, unsigned grace_ms,
    void (*done)(void *arg), void *arg);
unsigned smtp_server_connections(const struct smtp_server *s);

#endif
