/*
 * config_recipients.c - the recipients side of the config module: how an
 * entry of a recipients file is normalised, and the lookups the SMTP server
 * makes per RCPT (which tenant a domain belongs to, whether an address is
 * listed).  Pure: no I/O, no allocation.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "mxspool/config.h"
#include "mxspool/util.h"
#include "config_internal.h"

int
config__cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * A quoted local part whose content is a plain dot-string means the same
 * mailbox unquoted (RFC 5321 4.1.2), and the SMTP parser hands RCPT such
 * an address without its quotes ("a.b"@x -> a.b@x): list it the same way,
 * or the entry could never match (fuzz_recipients, corpus 30-quoted-plain).
 * S is the entry, AT its last '@'; rewritten in place.  Returns AT's new
 * place.
 */
char *
config__recipients_unquote(char *s, char *at)
{
	static const char atext[] = "!#$%&'*+-/=?^_`{|}~";
	char content[1024];
	size_t n = 0;

	if (s[0] != '"' || at - s < 2 || at[-1] != '"')
		return at;
	for (const char *p = s + 1; p < at - 1; p++) {
		if (*p == '\\' && p + 1 < at - 1)
			p++;
		else if (*p == '"' || *p == '\\')
			return at;    /* not one quoted string */
		if (n + 1 >= sizeof(content))
			return at;
		content[n++] = *p;
	}
	if (n == 0 || content[0] == '.' || content[n - 1] == '.')
		return at;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)content[i];

		if (c == '.' ? content[i - 1] == '.' : !(ch_alnum(c) || c >= 0x80 ||
		    strchr(atext, c) != NULL))
			return at;
	}
	memmove(s + n, at, strlen(at) + 1);
	memcpy(s, content, n);
	return s + n;
}

/* ---- lookups ---- */

/* Compare a lookup key (LEN bytes, any case) with a lower-case entry. */
static int
cmp_key_entry(const char *k, size_t len, const char *e)
{
	for (size_t i = 0; i < len; i++) {
		int a = ch_lower((unsigned char)k[i]), b = (unsigned char)e[i];

		if (a != b)
			return a - b;
	}
	return e[len] == '\0' ? 0 : -1;
}

const struct config_tenant *
config_tenant_for_domain(const struct config *cfg, const char *domain,
    size_t len)
{
	size_t lo = 0, hi;

	if (cfg == NULL || domain == NULL)
		return NULL;
	if (len > 0 && domain[len - 1] == '.')
		len--;
	if (len == 0 || memchr(domain, '\0', len) != NULL)
		return NULL;
	if (cfg->domain_index == NULL) {
		/* A config built by hand (tests of other modules): scan. */
		for (size_t i = 0; i < cfg->ntenants; i++)
			for (size_t j = 0; j < cfg->tenants[i].ndomains; j++)
				if (cmp_key_entry(domain, len, cfg->tenants[i].domains[j]) == 0)
					return &cfg->tenants[i];
		return NULL;
	}
	hi = cfg->ndomain_index;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = cmp_key_entry(domain, len, cfg->domain_index[mid].domain);

		if (c == 0)
			return cfg->domain_index[mid].tenant;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const struct config_tenant *
config_tenant_by_name(const struct config *cfg, const char *name)
{
	if (cfg == NULL || name == NULL)
		return NULL;
	for (size_t i = 0; i < cfg->ntenants; i++)
		if (strcmp(cfg->tenants[i].name, name) == 0)
			return &cfg->tenants[i];
	return NULL;
}

static bool
recipients_has(const struct config_tenant *t, const char *s)
{
	/* A file with no entries leaves the array NULL, which bsearch() must
	 * not be given (fuzz_recipients, corpus 17-empty). */
	if (t->nrecipients == 0)
		return false;
	return bsearch(&s, t->recipients, t->nrecipients, sizeof(*t->recipients),
	    config__cmp_str) != NULL;
}

bool
config_tenant_accepts(const struct config_tenant *t, const char *addr)
{
	char buf[ADDR_MAX];
	size_t len;
	char *at;

	if (t == NULL || addr == NULL)
		return false;
	if (t->recipients_file == NULL)
		return true;
	len = strlen(addr);
	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, addr, len + 1);
	if (buf[len - 1] == '.')
		buf[--len] = '\0';
	util_lower(buf);
	/* The last '@' splits: a quoted local part may itself hold one. */
	at = strrchr(buf, '@');
	if (at == NULL || at == buf || at[1] == '\0')
		return false;
	if (recipients_has(t, buf))
		return true;
	return recipients_has(t, at);
}
