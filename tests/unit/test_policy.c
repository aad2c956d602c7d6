/*
 * test_policy.c - relay control, recipient lists and ETRN access decisions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/policy.h"
#include "mxspool/smtp_proto.h"

struct fixture {
	char dir[64];
	char ini[128];
	char rcpts[128];
	char lrcpts[128];
	struct config *cfg;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[512];
	FILE *fp;

	snprintf(f->dir, sizeof(f->dir), "/tmp/mxspool-policy-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->rcpts, sizeof(f->rcpts), "%s/rcpts", f->dir);
	fp = fopen(f->rcpts, "w");
	assert_non_null(fp);
	fprintf(fp, "# known users of listed.test\nalice@listed.test\nBob@Listed.Test\n@open.listed.test\n");
	fclose(fp);
	snprintf(f->lrcpts, sizeof(f->lrcpts), "%s/lrcpts", f->dir);
	fp = fopen(f->lrcpts, "w");
	assert_non_null(fp);
	fprintf(fp, "carol@lf.test\n");
	fclose(fp);
	snprintf(f->ini, sizeof(f->ini), "%s/mx.ini", f->dir);
	fp = fopen(f->ini, "w");
	assert_non_null(fp);
	fprintf(fp, "[server]\nspool_dir = %s/spool\n\n"
	    "[tenant:one]\ndomains = example.test, Other.Test\nprimary = 127.0.0.1:2526\n"
	    "etrn_from = 127.0.0.1, 10.1.0.0/16, ::1\n\n"
	    "[tenant:two]\ndomains = listed.test, open.listed.test\nprimary = 127.0.0.1:2527\n"
	    "recipients = %s\n\n"
	    "[tenant:three]\ndomains = learn.test\nprimary = 127.0.0.1:2528\n"
	    "recipients = learn\n\n"
	    "[tenant:four]\ndomains = lf.test\nprimary = 127.0.0.1:2529\n"
	    "recipients = learn+%s\n", f->dir, f->rcpts, f->lrcpts);
	fclose(fp);
	assert_int_equal(config_load(f->ini, &f->cfg, err, sizeof(err)), 0);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[200];

	config_free(f->cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static enum policy_verdict
check(struct fixture *f, const char *path, const char *tx_tenant,
    const struct config_tenant **t)
{
	struct smtp_path p;
	int rc = smtp_proto_parse_path(path, strlen(path), SMTP_PATH_FORWARD, false, &p);

	if (rc == SMTP_PROTO_ERELAY)
		return POLICY_RELAY_DENIED;
	assert_int_equal(rc, SMTP_PROTO_OK);
	return policy_check_rcpt(f->cfg, &p, tx_tenant, t);
}

/* Our domains are accepted in any case and with a trailing dot; others are relaying. */
static void
test_rcpt_domains(void **state)
{
	struct fixture *f = *state;
	const struct config_tenant *t;

	assert_int_equal(check(f, "<user@example.test>", "", &t), POLICY_OK);
	assert_string_equal(t->name, "one");
	assert_int_equal(check(f, "<user@EXAMPLE.Test.>", "", &t), POLICY_OK);
	assert_int_equal(check(f, "<user@other.test>", "", &t), POLICY_OK);
	assert_int_equal(check(f, "<user@sub.example.test>", "", &t), POLICY_RELAY_DENIED);
	assert_null(t);
	assert_int_equal(check(f, "<user@example.test.evil>", "", &t), POLICY_RELAY_DENIED);
	assert_int_equal(check(f, "<user@nowhere.test>", "", &t), POLICY_RELAY_DENIED);
}

/* Every classic open-relay test form addressed "through" one of our domains is refused. */
static void
test_rcpt_open_relay_forms(void **state)
{
	static const char *const forms[] = {
		"<user%nowhere.test@example.test>",
		"<\"user@nowhere.test\"@example.test>",
		"<nowhere.test!user@example.test>",
		"<@example.test:user@nowhere.test>",
		"<user@nowhere.test@example.test>",
		"<user@[127.0.0.1]>",
		"<\"user%nowhere.test\"@example.test>",
		"<user@nowhere.test>",
	};
	struct fixture *f = *state;
	const struct config_tenant *t;

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		enum policy_verdict v = check(f, forms[i], "", &t);

		if (v != POLICY_RELAY_DENIED)
			fail_msg("%s was not refused (verdict %d)", forms[i], v);
	}
}

/* A recipients file admits listed users and @domain entries, case-insensitively, nobody else. */
static void
test_rcpt_recipient_list(void **state)
{
	struct fixture *f = *state;
	const struct config_tenant *t;

	assert_int_equal(check(f, "<alice@listed.test>", "", &t), POLICY_OK);
	assert_int_equal(check(f, "<ALICE@listed.test>", "", &t), POLICY_OK);
	assert_int_equal(check(f, "<bob@listed.test>", "", &t), POLICY_OK);
	assert_int_equal(check(f, "<anyone@open.listed.test>", "", &t), POLICY_OK);
	assert_int_equal(check(f, "<mallory@listed.test>", "", &t), POLICY_UNKNOWN_USER);
	assert_null(t);
}

/* One transaction carries one tenant: a second tenant's recipient is deferred, not mixed in. */
static void
test_rcpt_one_tenant_per_transaction(void **state)
{
	struct fixture *f = *state;
	const struct config_tenant *t;

	assert_int_equal(check(f, "<alice@listed.test>", "one", &t), POLICY_OTHER_TENANT);
	assert_int_equal(check(f, "<x@example.test>", "one", &t), POLICY_OK);
	assert_int_equal(check(f, "<postmaster>", "two", &t), POLICY_OTHER_TENANT);
}

/* A bare <Postmaster> (any case) goes to postmaster@ the first tenant's
 * first domain, or to the configured address (whose tenant's recipients
 * list is not asked); with no tenant domain at all it is refused. */
static void
test_rcpt_postmaster(void **state)
{
	struct fixture *f = *state;
	const struct config_tenant *t;
	char buf[SMTP_PROTO_ADDR_MAX + 1];
	char *saved = f->cfg->postmaster;
	char pm[] = "abuse-desk@listed.test";   /* not in its tenant's list */
	size_t saved_nd = f->cfg->tenants[0].ndomains;

	assert_int_equal(policy_postmaster_addr(f->cfg, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "postmaster@example.test");
	assert_int_equal(check(f, "<PostMaster>", "", &t), POLICY_OK);
	assert_string_equal(t->name, "one");
	assert_int_equal(check(f, "<postmaster>", "one", &t), POLICY_OK);
	assert_int_equal(policy_postmaster_addr(f->cfg, buf, 10), -1);

	f->cfg->postmaster = pm;
	assert_int_equal(policy_postmaster_addr(f->cfg, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "abuse-desk@listed.test");
	assert_int_equal(check(f, "<POSTMASTER>", "", &t), POLICY_OK);
	assert_string_equal(t->name, "two");
	assert_int_equal(check(f, "<postmaster>", "one", &t), POLICY_OTHER_TENANT);
	assert_int_equal(check(f, "<abuse-desk@listed.test>", "", &t), POLICY_UNKNOWN_USER);
	f->cfg->postmaster = saved;

	f->cfg->tenants[0].ndomains = 0;
	assert_int_equal(policy_postmaster_addr(f->cfg, buf, sizeof(buf)), -1);
	assert_int_equal(check(f, "<postmaster>", "", &t), POLICY_POSTMASTER);
	assert_null(t);
	f->cfg->tenants[0].ndomains = saved_nd;
	policy_reply(POLICY_POSTMASTER, "postmaster", buf, sizeof(buf));
	assert_int_equal(strncmp(buf, "550 5.1.1 ", 10), 0);
}

/* Replies carry the address and the Postfix wording and codes. */
static void
test_replies(void **state)
{
	char buf[256];

	policy_reply(POLICY_RELAY_DENIED, "a@b.test", buf, sizeof(buf));
	assert_string_equal(buf, "550 5.7.1 <a@b.test>: Relay access denied");
	policy_reply(POLICY_UNKNOWN_USER, "a@b.test", buf, sizeof(buf));
	assert_int_equal(strncmp(buf, "550 5.1.1 <a@b.test>:", 21), 0);
	policy_reply(POLICY_OTHER_TENANT, "a@b.test", buf, sizeof(buf));
	assert_int_equal(strncmp(buf, "452 4.5.3", 9), 0);
}

static void
sin4(struct sockaddr_storage *ss, const char *ip)
{
	memset(ss, 0, sizeof(*ss));
	ss->ss_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, ip, &((struct sockaddr_in *)ss)->sin_addr), 1);
}

static void
sin6(struct sockaddr_storage *ss, const char *ip)
{
	memset(ss, 0, sizeof(*ss));
	ss->ss_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)ss)->sin6_addr), 1);
}

/* ETRN is honoured only from etrn_from addresses, for our domains, v4-mapped included. */
/* recipients = learn: every address is the verifier's to decide, once the
 * domain and the one-tenant rule passed; with learn+FILE a listed address
 * is accepted here (the FILE wins) and only the others go to it. */
static void
test_rcpt_learn(void **state)
{
	struct fixture *f = *state;
	const struct config_tenant *t;
	char buf[600];

	assert_int_equal(check(f, "<anyone@learn.test>", "", &t), POLICY_LEARN);
	assert_non_null(t);
	assert_string_equal(t->name, "three");
	assert_true(t->recipients_learn);
	assert_int_equal(check(f, "<anyone@learn.test>", "one", &t), POLICY_OTHER_TENANT);
	assert_int_equal(check(f, "<anyone@learn.test>", "three", &t), POLICY_LEARN);
	assert_int_equal(check(f, "<Carol@LF.test>", "", &t), POLICY_OK);
	assert_string_equal(t->name, "four");
	assert_int_equal(check(f, "<dave@lf.test>", "", &t), POLICY_LEARN);
	assert_string_equal(t->name, "four");
	/* Not a learn tenant: the FILE alone decides, as before. */
	assert_int_equal(check(f, "<dave@listed.test>", "", &t), POLICY_UNKNOWN_USER);
	policy_reply(POLICY_UNVERIFIED, "dave@lf.test", buf, sizeof(buf));
	assert_true(strncmp(buf, "450 4.1.1 <dave@lf.test>: ", 26) == 0);
}

static void
test_etrn(void **state)
{
	struct fixture *f = *state;
	const struct config_tenant *t;
	struct sockaddr_storage ss;

	sin4(&ss, "127.0.0.1");
	assert_int_equal(policy_check_etrn(f->cfg, "example.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_OK);
	assert_string_equal(t->name, "one");
	sin4(&ss, "10.1.200.3");
	assert_int_equal(policy_check_etrn(f->cfg, "example.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_OK);
	sin4(&ss, "10.2.0.1");
	assert_int_equal(policy_check_etrn(f->cfg, "example.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_DENIED);
	sin6(&ss, "::ffff:127.0.0.1");
	assert_int_equal(policy_check_etrn(f->cfg, "example.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_OK);
	sin6(&ss, "::1");
	assert_int_equal(policy_check_etrn(f->cfg, "example.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_OK);
	sin6(&ss, "2001:db8::1");
	assert_int_equal(policy_check_etrn(f->cfg, "example.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_DENIED);
	sin4(&ss, "127.0.0.1");
	assert_int_equal(policy_check_etrn(f->cfg, "nowhere.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_UNKNOWN_NODE);
	/* tenant two keeps the default etrn_from = 127.0.0.1 */
	assert_int_equal(policy_check_etrn(f->cfg, "listed.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_OK);
	sin4(&ss, "10.1.0.1");
	assert_int_equal(policy_check_etrn(f->cfg, "listed.test", (struct sockaddr *)&ss, &t),
	    POLICY_ETRN_DENIED);
}

/* Rates: client_limit_exempt (loopback by default) and every tenant's
 * etrn_from are exempt; DNSBL: dnsbl_allow (loopback by default). */
static void
test_rate_exempt_and_dnsbl_allow(void **state)
{
	struct fixture *f = *state;
	struct sockaddr_storage ss;

	sin4(&ss, "127.0.0.9");
	assert_true(policy_client_rate_exempt(f->cfg, (struct sockaddr *)&ss));
	assert_true(policy_dnsbl_allowed(f->cfg, (struct sockaddr *)&ss));
	sin4(&ss, "10.1.7.7");   /* tenant one's etrn_from */
	assert_true(policy_client_rate_exempt(f->cfg, (struct sockaddr *)&ss));
	assert_false(policy_dnsbl_allowed(f->cfg, (struct sockaddr *)&ss));
	sin6(&ss, "::ffff:10.1.7.7");
	assert_true(policy_client_rate_exempt(f->cfg, (struct sockaddr *)&ss));
	sin4(&ss, "192.0.2.1");
	assert_false(policy_client_rate_exempt(f->cfg, (struct sockaddr *)&ss));
	assert_false(policy_dnsbl_allowed(f->cfg, (struct sockaddr *)&ss));
	sin6(&ss, "::1");
	assert_true(policy_dnsbl_allowed(f->cfg, (struct sockaddr *)&ss));
	sin6(&ss, "2001:db8::1");
	assert_false(policy_client_rate_exempt(f->cfg, (struct sockaddr *)&ss));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rcpt_domains),
		cmocka_unit_test(test_rcpt_open_relay_forms),
		cmocka_unit_test(test_rcpt_recipient_list),
		cmocka_unit_test(test_rcpt_one_tenant_per_transaction),
		cmocka_unit_test(test_rcpt_postmaster),
		cmocka_unit_test(test_replies),
		cmocka_unit_test(test_rcpt_learn),
		cmocka_unit_test(test_etrn),
		cmocka_unit_test(test_rate_exempt_and_dnsbl_allow),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
