/*
 * test_dnsbl.c - DNSBL query names and answer codes (pure), and the check
 * on a real loop against a small UDP name server in this file that lists,
 * clears or never answers by query name: the listing and its code, zones
 * that are clear, the deadline when a zone stays silent, the progress
 * callbacks, freeing from inside the callback, and that the "not listed"
 * answers of many clients do not push other answers out of the resolver's
 * cache.  The daemon end to end
 * (450 at RCPT) is tests/integration/test_dnsbl.py.
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

#include "mxspool/dnsbl.h"

/* ---- pure ---------------------------------------------------------------- */

static struct sockaddr_storage
addr(const char *s)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, s, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, s, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else
		fail_msg("bad address %s", s);
	return ss;
}

static void
test_query_names(void **state)
{
	struct sockaddr_storage a;
	char name[DNSBL_NAME_MAX + 1];

	(void)state;
	a = addr("192.0.2.99");
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&a, "zen.example",
	    name, sizeof(name)), 0);
	assert_string_equal(name, "99.2.0.192.zen.example");
	/* A v4 client on a dual-stack socket is looked up as v4. */
	a = addr("::ffff:127.0.0.2");
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&a, "bl.test",
	    name, sizeof(name)), 0);
	assert_string_equal(name, "2.0.0.127.bl.test");
	/* RFC 5782 2.4: nibbles, last first. */
	a = addr("2001:db8:1:2::abc");
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&a, "bl.test",
	    name, sizeof(name)), 0);
	assert_string_equal(name, "c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.0."
	    "2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test");
	/* Too small a buffer, or no IP address: refused, never cut. */
	a = addr("192.0.2.99");
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&a, "zen.example",
	    name, 10), -1);
	a = addr("2001:db8::1");
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&a, "x", name, 64), -1);
	a.ss_family = AF_UNIX;
	assert_int_equal(dnsbl_query_name((struct sockaddr *)&a, "x", name,
	    sizeof(name)), -1);
}

static void
test_codes(void **state)
{
	struct sockaddr_storage a;

	(void)state;
	a = addr("127.0.0.2");
	assert_true(dnsbl_code_listed(&a));
	a = addr("127.0.0.11");
	assert_true(dnsbl_code_listed(&a));
	/* Spamhaus' "query refused / rate limited" answers list nobody. */
	a = addr("127.255.255.254");
	assert_false(dnsbl_code_listed(&a));
	a = addr("127.255.255.252");
	assert_false(dnsbl_code_listed(&a));
	/* A resolver that rewrites NXDOMAIN answers with its own address. */
	a = addr("192.0.2.1");
	assert_false(dnsbl_code_listed(&a));
	a = addr("::1");
	assert_false(dnsbl_code_listed(&a));
}

static void
test_zone_union(void **state)
{
	char *t1[] = { "a.test", "b.test" }, *t2[] = { "b.test", "c.test" };
	char *many[DNSBL_MAX_ZONES + 5];
	char names[DNSBL_MAX_ZONES + 5][16];
	const char *set[DNSBL_MAX_ZONES];
	size_t n = 0;

	(void)state;
	dnsbl_zone_union(set, &n, t1, 2);
	dnsbl_zone_union(set, &n, t2, 2);
	assert_int_equal(n, 3);
	assert_string_equal(set[2], "c.test");
	for (size_t i = 0; i < DNSBL_MAX_ZONES + 5; i++) {
		snprintf(names[i], sizeof(names[i]), "z%zu.test", i);
		many[i] = names[i];
	}
	dnsbl_zone_union(set, &n, many, DNSBL_MAX_ZONES + 5);
	assert_int_equal(n, DNSBL_MAX_ZONES);
}

/* ---- a name server for the tests ------------------------------------------- */

struct fake_ns {
	uv_udp_t udp;
	unsigned queries;
	unsigned listed_queries;      /* of them, for *.listed.test */
	unsigned port;
	char buf[1024];
};

/* The dotted query name of the packet Q (LEN octets) into OUT, and the
 * offset just past the question; 0 if it cannot be read. */
static size_t
qname(const unsigned char *q, size_t len, char *out, size_t outlen)
{
	size_t p = 12, o = 0;

	while (p < len && q[p] != 0) {
		size_t l = q[p++];

		if (l > 63 || p + l > len || o + l + 2 > outlen)
			return 0;
		if (o > 0)
			out[o++] = '.';
		memcpy(out + o, q + p, l);
		o += l;
		p += l;
	}
	out[o] = '\0';
	return p + 5 <= len ? p + 5 : 0;
}

static void
ns_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct fake_ns *ns = h->data;

	(void)hint;
	*buf = uv_buf_init(ns->buf, sizeof(ns->buf));
}

static void
ns_sent(uv_udp_send_t *req, int status)
{
	(void)status;
	free(req);
}

/*
 * *.listed.test: 127.0.0.2; *.refused.test: 127.255.255.254 (an error
 * code); *.silent.test: no answer ever; anything else NXDOMAIN.
 */
static void
ns_recv(uv_udp_t *u, ssize_t n, const uv_buf_t *buf,
    const struct sockaddr *from, unsigned flags)
{
	struct fake_ns *ns = u->data;
	static const unsigned char rr[] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4 };
	unsigned char *r;
	char name[256];
	size_t end, rlen;
	bool listed, refused;
	uv_buf_t out;

	(void)flags;
	if (n <= 0 || from == NULL)
		return;
	ns->queries++;
	end = qname((const unsigned char *)buf->base, (size_t)n, name, sizeof(name));
	assert_true(end > 0);
	if (strstr(name, ".silent.test") != NULL)
		return;
	listed = strstr(name, ".listed.test") != NULL;
	ns->listed_queries += listed;
	refused = strstr(name, ".refused.test") != NULL;
	r = malloc(sizeof(uv_udp_send_t) + end + sizeof(rr) + 4);
	assert_non_null(r);
	unsigned char *p = r + sizeof(uv_udp_send_t);

	memcpy(p, buf->base, end);
	p[2] = 0x81;                          /* QR, RD */
	p[3] = listed || refused ? 0x80 : 0x83;   /* RA; NXDOMAIN */
	p[6] = 0;
	p[7] = listed || refused ? 1 : 0;     /* ANCOUNT */
	memset(p + 8, 0, 4);                  /* NSCOUNT, ARCOUNT */
	rlen = end;
	if (listed || refused) {
		static const unsigned char l[] = { 127, 0, 0, 2 }, e[] = { 127, 255, 255, 254 };

		memcpy(p + rlen, rr, sizeof(rr));
		memcpy(p + rlen + sizeof(rr), listed ? l : e, 4);
		rlen += sizeof(rr) + 4;
	}
	out = uv_buf_init((char *)p, (unsigned)rlen);
	assert_int_equal(uv_udp_send((uv_udp_send_t *)r, u, &out, 1, from, ns_sent), 0);
}

static void
ns_start(uv_loop_t *loop, struct fake_ns *ns)
{
	struct sockaddr_in sin;
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	memset(ns, 0, sizeof(*ns));
	assert_int_equal(uv_udp_init(loop, &ns->udp), 0);
	ns->udp.data = ns;
	assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sin), 0);
	assert_int_equal(uv_udp_bind(&ns->udp, (struct sockaddr *)&sin, 0), 0);
	assert_int_equal(uv_udp_getsockname(&ns->udp, (struct sockaddr *)&ss, &len), 0);
	ns->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	assert_int_equal(uv_udp_recv_start(&ns->udp, ns_alloc, ns_recv), 0);
}

/* ---- the check ------------------------------------------------------------- */

struct run {
	uv_loop_t loop;
	struct fake_ns ns;
	struct dns *dns;
	struct dnsbl_check *check;
	unsigned calls;
	uint64_t start_ms, over_ms;
	bool free_in_callback;
	/* What the first callback saw. */
	bool first_pending_listed, first_pending_silent, first_over;
};

static char *zones_all[] = { "listed.test", "clear.test", "refused.test",
	"silent.test" };

static void
on_progress(void *arg)
{
	struct run *r = arg;

	if (r->calls++ == 0) {
		r->first_pending_listed = dnsbl_check_pending(r->check, &zones_all[0], 1);
		r->first_pending_silent = dnsbl_check_pending(r->check, &zones_all[3], 1);
		r->first_over = dnsbl_check_done(r->check);
	}
	if (dnsbl_check_done(r->check)) {
		r->over_ms = uv_now(&r->loop) - r->start_ms;
		uv_close((uv_handle_t *)&r->ns.udp, NULL);
		dns_free(r->dns, NULL, NULL);
	}
	if (r->free_in_callback) {
		dnsbl_check_free(r->check);
		r->check = NULL;
		uv_close((uv_handle_t *)&r->ns.udp, NULL);
		dns_free(r->dns, NULL, NULL);
	}
}

static void
run_start(struct run *r, char **zones, size_t n, uint64_t timeout_ms)
{
	struct sockaddr_storage client = addr("127.0.0.2");
	struct dnsbl_client c = { .session = 1, .ip = "127.0.0.2",
		.sa = (struct sockaddr *)&client };
	char servers[64];

	assert_int_equal(uv_loop_init(&r->loop), 0);
	ns_start(&r->loop, &r->ns);
	snprintf(servers, sizeof(servers), "127.0.0.1:%u", r->ns.port);
	assert_int_equal(dns_new(&r->loop, servers, &r->dns), DNS_OK);
	uv_update_time(&r->loop);
	r->start_ms = uv_now(&r->loop);
	assert_int_equal(dnsbl_check_start(&r->loop, r->dns, &c,
	    (const char *const *)zones, n, timeout_ms, on_progress, r,
	    &r->check), 0);
	assert_non_null(r->check);
	assert_int_equal(r->calls, 0);   /* never from inside start */
}

static void
run_finish(struct run *r)
{
	dnsbl_check_free(r->check);
	assert_int_equal(uv_run(&r->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&r->loop), 0);
}

static void
test_listed_clear_and_deadline(void **state)
{
	struct run r = { 0 };
	char code[DNSBL_CODE_MAX];
	const char *z;

	(void)state;
	run_start(&r, zones_all, 4, 400);
	assert_int_equal(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
	/* Three answers, then the deadline for the silent zone. */
	assert_int_equal(r.calls, 4);
	assert_false(r.first_over);
	assert_true(r.first_pending_silent);
	assert_true(r.over_ms >= 400);
	assert_true(r.over_ms < 2000);
	assert_true(dnsbl_check_done(r.check));
	assert_false(dnsbl_check_pending(r.check, zones_all, 4));
	z = dnsbl_check_listed(r.check, zones_all, 4, code);
	assert_non_null(z);
	assert_string_equal(z, "listed.test");
	assert_string_equal(code, "127.0.0.2");
	/* A tenant with only the other zones sees no listing. */
	assert_null(dnsbl_check_listed(r.check, &zones_all[1], 3, code));
	/* A zone the check never looked up lists nobody. */
	char *other[] = { "other.test" };

	assert_null(dnsbl_check_listed(r.check, other, 1, code));
	assert_true(r.ns.queries >= 4);
	run_finish(&r);
}

static void
test_all_answer_before_deadline(void **state)
{
	struct run r = { 0 };
	char code[DNSBL_CODE_MAX];

	(void)state;
	run_start(&r, zones_all, 2, 30000);
	assert_int_equal(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(r.calls, 2);
	/* Over with the last answer, long before the 30 s deadline. */
	assert_true(r.over_ms < 5000);
	assert_string_equal(dnsbl_check_listed(r.check, zones_all, 2, code),
	    "listed.test");
	run_finish(&r);
}

static void
test_free_inside_callback(void **state)
{
	struct run r = { 0 };

	(void)state;
	r.free_in_callback = true;
	run_start(&r, zones_all, 4, 5000);
	assert_int_equal(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
	/* Freed at the first answer: no more callbacks, the loop closes
	 * clean (the timer too) without waiting for the deadline. */
	assert_int_equal(r.calls, 1);
	assert_null(r.check);
	assert_int_equal(uv_loop_close(&r.loop), 0);
}

static void
test_no_zones_is_async(void **state)
{
	struct run r = { 0 };

	(void)state;
	run_start(&r, zones_all, 0, 5000);
	assert_int_equal(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(r.calls, 1);
	assert_true(r.over_ms < 1000);
	assert_int_equal(r.ns.queries, 0);
	run_finish(&r);
}

struct lookups {
	uv_loop_t *loop;
	unsigned done, ok, nxdomain;
	unsigned want;                /* stop the loop when done reaches it */
};

/* Run the loop until L has WANT answers (uv_stop from the callback: a
 * cache hit completes from a timer, after which UV_RUN_ONCE would go on
 * to wait for I/O that never comes). */
static void
lookups_wait(struct lookups *l, unsigned want)
{
	l->want = want;
	if (l->done < want)
		(void)uv_run(l->loop, UV_RUN_DEFAULT);
	assert_int_equal(l->done, want);
}

static void
on_lookup(void *arg, int status, const struct sockaddr_storage *addrs, size_t n)
{
	struct lookups *l = arg;

	(void)addrs;
	(void)n;
	l->done++;
	l->ok += status == DNS_OK;
	l->nxdomain += status == DNS_ENXDOMAIN;
	if (l->done == l->want)
		uv_stop(l->loop);
}

static void
test_negative_answers_do_not_evict(void **state)
{
	/* A busy minute of clean DNSBL answers (NXDOMAIN, more than the
	 * cache holds) must not push out a positive answer: the second
	 * lookup of keep.listed.test is a cache hit. */
	struct run r = { 0 };
	struct lookups l = { 0 };
	char servers[64], name[64];
	unsigned issued = 0;

	(void)state;
	assert_int_equal(uv_loop_init(&r.loop), 0);
	ns_start(&r.loop, &r.ns);
	snprintf(servers, sizeof(servers), "127.0.0.1:%u", r.ns.port);
	assert_int_equal(dns_new(&r.loop, servers, &r.dns), DNS_OK);
	l.loop = &r.loop;
	assert_int_equal(dns_a(r.dns, "keep.listed.test", on_lookup, &l, NULL), DNS_OK);
	lookups_wait(&l, ++issued);
	assert_int_equal(l.ok, 1);
	/* In batches, so that the test server's socket buffer keeps up. */
	for (unsigned i = 0; i < 4200; i++) {
		snprintf(name, sizeof(name), "%u.0.0.10.clean.test", i);
		assert_int_equal(dns_a(r.dns, name, on_lookup, &l, NULL), DNS_OK);
		issued++;
		if (issued % 200 == 0)
			lookups_wait(&l, issued);
	}
	lookups_wait(&l, issued);
	assert_int_equal(l.nxdomain, 4200);
	assert_int_equal(dns_a(r.dns, "keep.listed.test", on_lookup, &l, NULL), DNS_OK);
	lookups_wait(&l, ++issued);
	assert_int_equal(l.ok, 2);
	assert_int_equal(r.ns.listed_queries, 1);
	uv_close((uv_handle_t *)&r.ns.udp, NULL);
	dns_free(r.dns, NULL, NULL);
	assert_int_equal(uv_run(&r.loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&r.loop), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_query_names),
		cmocka_unit_test(test_codes),
		cmocka_unit_test(test_zone_union),
		cmocka_unit_test(test_listed_clear_and_deadline),
		cmocka_unit_test(test_all_answer_before_deadline),
		cmocka_unit_test(test_free_inside_callback),
		cmocka_unit_test(test_no_zones_is_async),
		cmocka_unit_test(test_negative_answers_do_not_evict),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
