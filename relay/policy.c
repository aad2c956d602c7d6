/*
 * policy.c - relay control, recipient validation and ETRN access.
 *
 * Every decision is a pure function of the config and the parsed input, so
 * the unit tests can enumerate them; the SMTP server turns verdicts into
 * replies and log lines.
 */
#include "config.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "mxspool/policy.h"

int
policy_postmaster_addr(const struct config *cfg, char *buf, size_t len)
{
	int n;

	if (cfg->postmaster != NULL)
		n = snprintf(buf, len, "%s", cfg->postmaster);
	else if (cfg->ntenants > 0 && cfg->tenants[0].ndomains > 0)
		n = snprintf(buf, len, "postmaster@%s", cfg->tenants[0].domains[0]);
	else
		return -1;
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* RCPT TO:<Postmaster> (RFC 5321 4.5.1): always accepted, for the tenant
 * of the address it is rewritten to; the recipients list is not asked (the
 * operator chose the address). */
static enum policy_verdict
policy_check_postmaster(const struct config *cfg, const char *tx_tenant,
    const struct config_tenant **tenant)
{
	char addr[SMTP_PROTO_ADDR_MAX + 1];
	const struct config_tenant *t;
	const char *at;

	if (policy_postmaster_addr(cfg, addr, sizeof(addr)) != 0 ||
	    (at = strrchr(addr, '@')) == NULL)
		return POLICY_POSTMASTER;
	t = config_tenant_for_domain(cfg, at + 1, strlen(at + 1));
	if (t == NULL)
		return POLICY_POSTMASTER;
	if (tx_tenant[0] != '\0' && strcmp(tx_tenant, t->name) != 0)
		return POLICY_OTHER_TENANT;
	*tenant = t;
	return POLICY_OK;
}

enum policy_verdict
policy_check_rcpt(const struct config *cfg, const struct smtp_path *to,
    const char *tx_tenant, const struct config_tenant **tenant)
{
	const struct config_tenant *t;

	*tenant = NULL;
	if (to->postmaster)
		return policy_check_postmaster(cfg, tx_tenant, tenant);
	/* The parser refuses literals for RCPT; a second guard costs nothing
	 * and an address literal is never one of our domains. */
	if (to->null || to->ip_literal || to->domain[0] == '\0')
		return POLICY_RELAY_DENIED;
	t = config_tenant_for_domain(cfg, to->domain, strlen(to->domain));
	if (t == NULL)
		return POLICY_RELAY_DENIED;
	if (t->recipients_learn) {
		/* learn+FILE: the FILE wins; what it lacks is learned. */
		bool listed = t->recipients_file != NULL &&
		    config_tenant_accepts(t, to->addr);

		if (tx_tenant[0] != '\0' && strcmp(tx_tenant, t->name) != 0)
			return POLICY_OTHER_TENANT;
		*tenant = t;
		return listed ? POLICY_OK : POLICY_LEARN;
	}
	if (!config_tenant_accepts(t, to->addr))
		return POLICY_UNKNOWN_USER;
	if (tx_tenant[0] != '\0' && strcmp(tx_tenant, t->name) != 0)
		return POLICY_OTHER_TENANT;
	*tenant = t;
	return POLICY_OK;
}

int
policy_reply(enum policy_verdict v, const char *addr, char *buf, size_t len)
{
	switch (v) {
	case POLICY_OK:
		return snprintf(buf, len, "250 2.1.5 Ok");
	case POLICY_RELAY_DENIED:
		return snprintf(buf, len, "550 5.7.1 <%s>: Relay access denied", addr);
	case POLICY_UNKNOWN_USER:
		return snprintf(buf, len, "550 5.1.1 <%s>: Recipient address rejected: "
		    "User unknown in relay recipient table", addr);
	case POLICY_OTHER_TENANT:
		return snprintf(buf, len, "452 4.5.3 <%s>: Recipient of another "
		    "destination: send it in a new transaction", addr);
	case POLICY_POSTMASTER:
		return snprintf(buf, len, "550 5.1.1 <postmaster>: no postmaster "
		    "address configured");
	case POLICY_UNVERIFIED:
		return snprintf(buf, len, "450 4.1.1 <%s>: Recipient address "
		    "rejected: unverified address: the primary cannot be asked "
		    "now; try again later", addr);
	case POLICY_LEARN:
		break;   /* not a reply: the verifier answers */
	}
	return snprintf(buf, len, "451 4.3.0 Error: internal error");
}

/* Is SA in the list?  A v4 client on a dual-stack socket arrives as
 * ::ffff:a.b.c.d, and lists name it as a.b.c.d. */
static bool
policy_addr_in(const struct config_cidr *list, size_t n,
    const struct sockaddr *sa)
{
	const void *addr;
	int family = sa->sa_family;

	if (family == AF_INET) {
		addr = &((const struct sockaddr_in *)sa)->sin_addr;
	} else if (family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		addr = &s6->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			family = AF_INET;
			addr = &s6->sin6_addr.s6_addr[12];
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (config_cidr_match(&list[i], family, addr))
			return true;
	return false;
}

enum policy_etrn
policy_check_etrn(const struct config *cfg, const char *node,
    const struct sockaddr *sa, const struct config_tenant **tenant)
{
	const struct config_tenant *t;

	*tenant = NULL;
	t = config_tenant_for_domain(cfg, node, strlen(node));
	if (t == NULL)
		return POLICY_ETRN_UNKNOWN_NODE;
	if (!policy_addr_in(t->etrn_from, t->netrn_from, sa))
		return POLICY_ETRN_DENIED;
	*tenant = t;
	return POLICY_ETRN_OK;
}

bool
policy_client_limit_exempt(const struct config *cfg, const struct sockaddr *sa)
{
	return policy_addr_in(cfg->client_limit_exempt, cfg->nclient_limit_exempt, sa);
}

bool
policy_client_rate_exempt(const struct config *cfg, const struct sockaddr *sa)
{
	if (policy_client_limit_exempt(cfg, sa))
		return true;
	for (size_t i = 0; i < cfg->ntenants; i++)
		if (policy_addr_in(cfg->tenants[i].etrn_from,
		    cfg->tenants[i].netrn_from, sa))
			return true;
	return false;
}

bool
policy_dnsbl_allowed(const struct config *cfg, const struct sockaddr *sa)
{
	return policy_addr_in(cfg->dnsbl_allow, cfg->ndnsbl_allow, sa);
}
