/*
 * smtp_session_abuse.c - what a session asks before it takes mail from a
 * client that may be abusing a backup MX: DNSBL listings (dnsbl.c) and the
 * client's message and recipient rates (anvil.c).
 *
 * Both answer 450 4.7.1, a deferral: a real sender retries, usually at the
 * primary, while a spam run moves on.  Neither ever refuses mail because
 * of a failure of its own: a DNSBL that does not answer within
 * dnsbl_timeout lists nobody, and a client the rate table has no room
 * for starts afresh.
 *
 * The DNSBL lookups start when the client connects, so by its first RCPT
 * the answers are usually in (or cached).  If one of the tenant's zones is
 * still out, that RCPT parks (smtp_session_park) and runs again when a
 * zone answers or the deadline passes, at most dnsbl_timeout after the
 * connect.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mxspool/anvil.h"
#include "mxspool/config.h"
#include "mxspool/dnsbl.h"
#include "mxspool/log.h"
#include "mxspool/policy.h"

#include "smtp_server_internal.h"

static void
smtp_abuse_on_dnsbl(void *arg)
{
	struct smtp_session *sess = arg;

	smtp_session_wake(sess);   /* may destroy */
}

void
smtp_abuse_connect(struct smtp_session *sess)
{
	const struct config *cfg = smtp_session_cfg(sess);
	const struct sockaddr *sa = (const struct sockaddr *)&sess->peer;
	const char *zones[DNSBL_MAX_ZONES];
	size_t n = 0;
	struct dnsbl_client client = {
		.session = sess->id, .ip = sess->peer_ip, .sa = sa,
	};

	if (sess->srv->dns == NULL || policy_dnsbl_allowed(cfg, sa))
		return;
	/* Every tenant's zones ([server]'s are copied into those that set
	 * none): which tenant the client writes to is known only at RCPT. */
	for (size_t i = 0; i < cfg->ntenants; i++)
		dnsbl_zone_union(zones, &n, cfg->tenants[i].dnsbl,
		    cfg->tenants[i].ndnsbl);
	if (n == 0)
		return;
	if (dnsbl_check_start(sess->srv->loop, sess->srv->dns, &client, zones, n,
	    cfg->dnsbl_timeout_ms, smtp_abuse_on_dnsbl, sess, &sess->dnsbl) != 0)
		log_event(LOG_LEVEL_WARN, "dnsbl", "session=%" PRIu64 " client=%s "
		    "result=error error=\"cannot start the lookups\"", sess->id,
		    sess->peer_ip);
}

void
smtp_abuse_close(struct smtp_session *sess)
{
	dnsbl_check_free(sess->dnsbl);
	sess->dnsbl = NULL;
}

/* One more KIND from the client within its rate?  Exempt clients and a
 * limit of 0 always are. */
static bool
smtp_abuse_rate_ok(struct smtp_session *sess, enum anvil_kind kind,
    unsigned limit)
{
	const struct config *cfg = smtp_session_cfg(sess);
	const struct sockaddr *sa = (const struct sockaddr *)&sess->peer;
	const void *addr;

	if (limit == 0 || sess->srv->anvil == NULL ||
	    policy_client_rate_exempt(cfg, sa))
		return true;
	if (sa->sa_family == AF_INET6)
		addr = &((const struct sockaddr_in6 *)sa)->sin6_addr;
	else
		addr = &((const struct sockaddr_in *)sa)->sin_addr;
	if (anvil_allow(sess->srv->anvil, sa->sa_family, addr, kind, limit,
	    uv_now(sess->srv->loop)))
		return true;
	sess->srv->abuse.rate_refused++;
	return false;
}

/* The client is over the rate of KEY (LIMIT a minute): log, queue the 450. */
static void
smtp_abuse_refuse_rate(struct smtp_session *sess, const char *stage,
    const char *key, unsigned limit, const char *what)
{
	char reply[128];

	log_event(LOG_LEVEL_INFO, "rate_limit", "session=%" PRIu64 " client=%s "
	    "stage=%s limit=%s rate=%u/min", sess->id, sess->peer_ip, stage, key,
	    limit);
	snprintf(reply, sizeof(reply), "450 4.7.1 Error: too %s from %s", what,
	    sess->peer_ip);
	smtp_tx_log_reject(sess, stage, reply);
	smtp_session_reply(sess, "%s", reply);
}

bool
smtp_abuse_mail_ok(struct smtp_session *sess)
{
	unsigned limit = smtp_session_cfg(sess)->client_message_rate;

	if (smtp_abuse_rate_ok(sess, ANVIL_MESSAGE, limit))
		return true;
	smtp_abuse_refuse_rate(sess, "mail", "client_message_rate", limit,
	    "much mail");
	return false;
}

bool
smtp_abuse_rcpt_ok(struct smtp_session *sess, const struct config_tenant *t)
{
	unsigned limit = smtp_session_cfg(sess)->client_recipient_rate;
	char code[DNSBL_CODE_MAX], reply[400];
	const char *zone;

	/* One zone that lists the client is enough; the others are waited
	 * for only while none does. */
	zone = dnsbl_check_listed(sess->dnsbl, t->dnsbl, t->ndnsbl, code);
	if (zone == NULL && dnsbl_check_pending(sess->dnsbl, t->dnsbl, t->ndnsbl)) {
		smtp_session_park(sess);
		return false;
	}
	if (zone != NULL) {
		sess->srv->abuse.dnsbl_deferred++;
		log_event(LOG_LEVEL_INFO, "dnsbl", "session=%" PRIu64 " client=%s "
		    "tenant=%s zone=%s code=%s action=defer", sess->id, sess->peer_ip,
		    t->name, zone, code);
		snprintf(reply, sizeof(reply), "450 4.7.1 Service unavailable; "
		    "client [%s] listed by %s", sess->peer_ip, zone);
		smtp_tx_log_reject(sess, "rcpt", reply);
		smtp_session_reply(sess, "%s", reply);
		return false;
	}
	if (smtp_abuse_rate_ok(sess, ANVIL_RECIPIENT, limit))
		return true;
	smtp_abuse_refuse_rate(sess, "rcpt", "client_recipient_rate", limit,
	    "many recipients");
	return false;
}
