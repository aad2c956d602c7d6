/*
 * policy.h - who may send us what: relay control, recipient validation and
 * ETRN access, decided from the config alone (no I/O, no logging).
 *
 * The parser (smtp_proto) has already refused every address form that could
 * make a host relay (source routes, %-hack, bang paths, quoted '@', address
 * literals); what is left here is a clean, lower-cased domain to compare
 * with the tenants' domains.
 */
#ifndef MXSPOOL_POLICY_H
#define MXSPOOL_POLICY_H

#include <stdbool.h>
#include <sys/socket.h>

#include "mxspool/config.h"
#include "mxspool/smtp_proto.h"

enum policy_verdict {
	POLICY_OK,
	POLICY_RELAY_DENIED,          /* 550 5.7.1 Relay access denied */
	POLICY_UNKNOWN_USER,          /* 550 5.1.1 not in the recipients list */
	POLICY_OTHER_TENANT,          /* 452 4.5.3 next transaction, please */
	POLICY_POSTMASTER,            /* 550 5.1.1 bare <postmaster>, nowhere to send it */
	/* recipients = learn: not in the tenant's FILE (or there is none);
	 * *TENANT is set and the verifier decides (verify.h).  Not a reply. */
	POLICY_LEARN,
	/* The verifier's "not known" while the primary cannot be asked, with
	 * unknown_recipient = tempfail: 450 4.1.1, a real sender retries. */
	POLICY_UNVERIFIED,
};

/*
 * Where RCPT TO:<Postmaster> (no domain, any case: RFC 5321 4.5.1) goes:
 * the config's `postmaster`, or postmaster@ the first domain of the first
 * tenant.  Into BUF; 0, or -1 when there is none or BUF is too small.
 */
int policy_postmaster_addr(const struct config *cfg, char *buf, size_t len);

/*
 * Decide on one RCPT.  A bare <Postmaster> is decided for the address of
 * policy_postmaster_addr() (the caller rewrites it): POLICY_OK for its
 * tenant whatever that tenant's recipients list says, POLICY_OTHER_TENANT,
 * or POLICY_POSTMASTER if there is no such address.  TX_TENANT is the tenant of the recipients already
 * accepted in this transaction ("" if none): one message, one tenant, so
 * that quotas and drains stay per tenant.  On POLICY_OK, *TENANT is the
 * tenant that will spool the message (valid until the config is freed).
 * For a tenant with recipients = learn, an address its FILE lists is
 * POLICY_OK (the FILE always wins) and any other is POLICY_LEARN, with
 * *TENANT set, once the other checks passed.
 */
enum policy_verdict policy_check_rcpt(const struct config *cfg,
    const struct smtp_path *to, const char *tx_tenant,
    const struct config_tenant **tenant);

/* The SMTP reply line (no CRLF) for a verdict about ADDR. */
int policy_reply(enum policy_verdict v, const char *addr, char *buf,
    size_t len);

enum policy_etrn {
	POLICY_ETRN_OK,
	POLICY_ETRN_UNKNOWN_NODE,     /* 459 4.7.1 not a domain we spool for */
	POLICY_ETRN_DENIED,           /* 459 4.7.1 client not in etrn_from */
};

/* May the client at SA ask to flush NODE (a domain, '@' = its subdomains
 * too: we match the domain itself only)?  *TENANT set on POLICY_ETRN_OK. */
enum policy_etrn policy_check_etrn(const struct config *cfg, const char *node,
    const struct sockaddr *sa, const struct config_tenant **tenant);
/* Is the client at SA exempt from the per-client limits
 * (client_limit_exempt; loopback by default, as Postfix exempts
 * $mynetworks)? */
bool policy_client_limit_exempt(const struct config *cfg,
    const struct sockaddr *sa);
/* Is the client at SA exempt from client_message_rate and
 * client_recipient_rate: in client_limit_exempt or in the etrn_from of
 * some tenant (the partner's own hosts)? */
bool policy_client_rate_exempt(const struct config *cfg,
    const struct sockaddr *sa);
/* Is the client at SA in dnsbl_allow (never looked up in a DNSBL)? */
bool policy_dnsbl_allowed(const struct config *cfg, const struct sockaddr *sa);

#endif
