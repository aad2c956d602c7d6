/*
 * test_control.c - the control socket's pure renderers (control_render.c,
 * metrics.c) on hand-built snapshots: text, JSON and Prometheus output.
 *
 * No loop, no spool, no struct relay: each test fills a snapshot of
 * control_internal.h by hand and checks the bytes rendered from it.  The
 * exact strings are the contract of DESIGN.md ("Command line",
 * "Observability") that tests/integration and external tools also pin.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/envelope.h"
#include "mxspool/metrics.h"
#include "../../relay/control_internal.h"

/* ---- a tiny JSON checker: validity and the keys of chosen objects -------- */

struct json_check {
	const char *p;
	int depth;
	int want_depth;              /* record the keys of objects at this depth */
	char keys[64][32];
	size_t nkeys;
	bool keys_done;              /* only the first object at want_depth */
};

static bool json_value(struct json_check *j);

static void
json_ws(struct json_check *j)
{
	while (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r')
		j->p++;
}

/* A string; its content (unescaped bytes only) copied to OUT if given. */
static bool
json_string(struct json_check *j, char *out, size_t outlen)
{
	size_t n = 0;

	if (*j->p++ != '"')
		return false;
	while (*j->p != '"') {
		unsigned char c = (unsigned char)*j->p++;

		if (c < 0x20 || c == '\0')
			return false;          /* a raw control character */
		if (c == '\\') {
			if (*j->p == 'u') {
				for (int i = 1; i <= 4; i++)
					if (!strchr("0123456789abcdefABCDEF", j->p[i]) || !j->p[i])
						return false;
				j->p += 5;
			} else if (*j->p && strchr("\"\\/bfnrt", *j->p)) {
				j->p++;
			} else {
				return false;
			}
		}
		if (out && n + 1 < outlen)
			out[n++] = (char)c;
	}
	if (out)
		out[n] = '\0';
	j->p++;
	return true;
}

static bool
json_container(struct json_check *j, char close)
{
	bool record = close == '}' && j->depth + 1 == j->want_depth && !j->keys_done;

	j->p++;
	j->depth++;
	json_ws(j);
	if (*j->p == close) {
		j->p++;
		j->depth--;
		return true;
	}
	for (;;) {
		json_ws(j);
		if (close == '}') {
			char key[32];

			if (!json_string(j, key, sizeof(key)))
				return false;
			if (record && j->nkeys < 64)
				snprintf(j->keys[j->nkeys++], sizeof(j->keys[0]), "%s", key);
			json_ws(j);
			if (*j->p++ != ':')
				return false;
		}
		if (!json_value(j))
			return false;
		json_ws(j);
		if (*j->p == ',') {
			j->p++;
			continue;
		}
		if (*j->p++ != close)
			return false;
		j->depth--;
		if (record)
			j->keys_done = true;
		return true;
	}
}

static bool
json_value(struct json_check *j)
{
	json_ws(j);
	if (*j->p == '{')
		return json_container(j, '}');
	if (*j->p == '[')
		return json_container(j, ']');
	if (*j->p == '"')
		return json_string(j, NULL, 0);
	for (const char *lit = "true\0false\0null\0"; *lit; lit += strlen(lit) + 1)
		if (strncmp(j->p, lit, strlen(lit)) == 0) {
			j->p += strlen(lit);
			return true;
		}
	if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) {
		char *end;

		(void)strtod(j->p, &end);
		j->p = end;
		return true;
	}
	return false;
}

/* TEXT (after its "ok\n" line) is one JSON value and a newline; the keys of
 * the first object at DEPTH (1 = top level) are left in J. */
static void
assert_json(const char *text, int depth, struct json_check *j)
{
	assert_true(strncmp(text, "ok\n", 3) == 0);
	memset(j, 0, sizeof(*j));
	j->p = text + 3;
	j->want_depth = depth;
	assert_true(json_value(j));
	assert_string_equal(j->p, "\n");
}

static void
assert_keys(const struct json_check *j, const char *const *want, size_t n)
{
	assert_int_equal(j->nkeys, n);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(j->keys[i], want[i]);
}

/* The checker itself refuses what is not JSON (else the tests above prove
 * nothing). */
static void
test_json_checker_rejects(void **state)
{
	static const char *const bad[] = { "{\"a\": 1,}", "{\"a\" 1}", "[1 2]",
		"\"raw\ttab\"", "\"bad \\x escape\"", "{\"a\": tru}", "{" };
	struct json_check j;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&j, 0, sizeof(j));
		j.p = bad[i];
		assert_false(json_value(&j) && *j.p == '\0');
	}
	memset(&j, 0, sizeof(j));
	j.p = "{\"a\": [1, -2.5e3, \"x\\u0001\\\"\"], \"b\": null}";
	assert_true(json_value(&j) && *j.p == '\0');
}

/* ---- snapshots ------------------------------------------------------------ */

static char *demo_domains[] = { "example.test", "two.example" };

static void
make_status(struct control_status *st, struct control_tenant_row rows[2])
{
	memset(rows, 0, 2 * sizeof(rows[0]));
	*st = (struct control_status){
		.version = "1.2.3", .uptime_s = 75, .accepted_total = 12,
		.delivered_total = 9, .bounced_total = 1, .connections = 3,
		.spool_bytes = 4096, .ntenants = 2, .tenants = rows,
	};
	rows[0] = (struct control_tenant_row){
		.name = "demo", .domains = demo_domains, .ndomains = 2,
		.primary_state = "up", .held = false, .queued_messages = 5,
		.queued_bytes = 1234, .oldest_age_ms = 61500, .drain_rate = 1.5,
		.drain_rate_limit = 10, .in_flight = 2, .accepted_total = 10,
		.delivered_total = 8, .bounced_total = 1, .eta_s = 4,
		.queue_lifetime_s = 432000, .delay_warning_s = 14400,
		.primary_caps = { .known = true, .size = 1000, .pipelining = true,
		    .eightbitmime = true, .dsn = true, .age_s = 7 },
		.recipients_cached = 3,
		.drain_concurrency_limit = 2,
		.limit_reason = "cut: mx[10.0.0.1]:25: 421 too many (2 other sessions working)",
	};
	rows[1] = (struct control_tenant_row){
		.name = "other", .domains = demo_domains + 1, .ndomains = 1,
		.primary_state = "down", .held = true, .eta_s = -1,
		.accepted_total = 2, .delivered_total = 1,
		.queue_lifetime_s = 3600, .delay_warning_s = 0,
		.drain_concurrency_limit = 4, .limit_reason = "drain_concurrency",
	};
}

/* The status snapshot of make_status(), built fresh for each test. */
struct status_fixture {
	struct control_status st;
	struct control_tenant_row rows[2];
};

static int
setup_status(void **state)
{
	struct status_fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	make_status(&f->st, f->rows);
	*state = f;
	return 0;
}

static int
teardown_status(void **state)
{
	free(*state);
	return 0;
}

#define FIXTURE_STATUS(state) (&((struct status_fixture *)*(state))->st)
#define FIXTURE_ROWS(state) (((struct status_fixture *)*(state))->rows)

static char *
render_status(const struct control_status *st, bool json)
{
	struct control_buf b = { 0 };

	control_render_status(st, json, &b);
	control_buf_printf(&b, "%s", "");   /* NUL-terminated even if empty */
	return b.data;
}

/* ---- status ---------------------------------------------------------------- */

/* status renders the summary lines and one padded row per tenant. */
static void
test_status_text(void **state)
{
	struct control_status *st = FIXTURE_STATUS(state);
	char *s;

	s = render_status(st, false);
	assert_string_equal(s,
	    "ok\n"
	    "mxspoold 1.2.3, up 75 s, 3 connections, spool 4096 bytes\n"
	    "accepted 12, delivered 9, bounced 1\n"
	    "\n"
	    "TENANT           PRIMARY  HELD      QUEUED        BYTES   OLDEST_S     RATE    LIMIT FLIGHT      ETA_S LIFETIME_S   WARN_S CONN CAPS CONN_REASON\n"
	    "demo             up       no             5         1234         61     1.50    10.00      2          4     432000    14400    2 size=1000,pipelining,8bitmime,dsn,rcptmax=0,mailmax=0,age_s=7 cut: mx[10.0.0.1]:25: 421 too many (2 other sessions working)\n"
	    "other            down     yes            0            0          0     0.00     0.00      0          -       3600        0    4 - drain_concurrency\n");
	free(s);
}

/* status --json is valid JSON with exactly the DESIGN.md keys, in order. */
static void
test_status_json_keys(void **state)
{
	static const char *const top[] = { "version", "uptime_s", "accepted_total",
		"delivered_total", "bounced_total", "connections", "spool_bytes",
		"tenants" };
	static const char *const tenant[] = { "name", "domains", "primary_state",
		"held", "queued_messages", "queued_bytes", "oldest_age_s", "drain_rate",
		"drain_rate_limit", "in_flight", "delivered_total", "bounced_total", "eta_s",
		"queue_lifetime_s", "delay_warning_s", "drain_concurrency_limit",
		"primary_caps", "limit_reason", "recipients_cached" };
	struct control_status *st = FIXTURE_STATUS(state);
	struct json_check j;
	char *s;

	s = render_status(st, true);
	assert_json(s, 1, &j);
	assert_keys(&j, top, sizeof(top) / sizeof(top[0]));
	assert_json(s, 3, &j);          /* {"tenants": [{...}]} */
	assert_keys(&j, tenant, sizeof(tenant) / sizeof(tenant[0]));
	assert_string_equal(s,
	    "ok\n{\"version\": \"1.2.3\", \"uptime_s\": 75, \"accepted_total\": 12, "
	    "\"delivered_total\": 9, \"bounced_total\": 1, \"connections\": 3, "
	    "\"spool_bytes\": 4096, \"tenants\": [{\"name\": \"demo\", \"domains\": "
	    "[\"example.test\", \"two.example\"], \"primary_state\": \"up\", \"held\": false, "
	    "\"queued_messages\": 5, \"queued_bytes\": 1234, \"oldest_age_s\": 61, "
	    "\"drain_rate\": 1.500, \"drain_rate_limit\": 10.000, \"in_flight\": 2, "
	    "\"delivered_total\": 8, \"bounced_total\": 1, \"eta_s\": 4, "
	    "\"queue_lifetime_s\": 432000, \"delay_warning_s\": 14400, "
	    "\"drain_concurrency_limit\": 2, \"primary_caps\": "
	    "{\"size\": 1000, \"pipelining\": true, \"8bitmime\": true, \"smtputf8\": false, "
	    "\"dsn\": true, \"chunking\": false, \"starttls\": false, \"rcptmax\": null, "
	    "\"mailmax\": null, \"age_s\": 7}, \"limit_reason\": "
	    "\"cut: mx[10.0.0.1]:25: 421 too many (2 other sessions working)\", \"recipients_cached\": 3}, "
	    "{\"name\": \"other\", \"domains\": [\"two.example\"], \"primary_state\": \"down\", "
	    "\"held\": true, \"queued_messages\": 0, \"queued_bytes\": 0, \"oldest_age_s\": 0, "
	    "\"drain_rate\": 0.000, \"drain_rate_limit\": 0.000, \"in_flight\": 0, "
	    "\"delivered_total\": 1, \"bounced_total\": 0, \"eta_s\": null, "
	    "\"queue_lifetime_s\": 3600, \"delay_warning_s\": 0, "
	    "\"drain_concurrency_limit\": 4, \"primary_caps\": null, "
	    "\"limit_reason\": \"drain_concurrency\", \"recipients_cached\": 0}]}\n");
	free(s);
}

/* Quotes, backslashes and control characters in strings are escaped, so the
 * answer stays valid JSON whatever a name holds. */
static void
test_status_json_escapes(void **state)
{
	static char *odd_domains[] = { "a\"b\\c", "tab\there\x01" };
	struct control_status *st = FIXTURE_STATUS(state);
	struct control_tenant_row *rows = FIXTURE_ROWS(state);
	struct json_check j;
	char *s;

	rows[0].name = "q\"uote\nline";
	rows[0].domains = odd_domains;
	st->ntenants = 1;
	s = render_status(st, true);
	assert_json(s, 1, &j);
	assert_non_null(strstr(s, "{\"name\": \"q\\\"uote\\u000aline\", "
	    "\"domains\": [\"a\\\"b\\\\c\", \"tab\\u0009here\\u0001\"]"));
	free(s);
}

/* With no tenant, status --json still has the array, empty. */
static void
test_status_json_no_tenants(void **state)
{
	struct control_status *st = FIXTURE_STATUS(state);
	struct json_check j;
	char *s;

	st->ntenants = 0;
	s = render_status(st, true);
	assert_json(s, 1, &j);
	assert_non_null(strstr(s, "\"tenants\": []}\n"));
	free(s);
}

/* ---- metrics ---------------------------------------------------------------- */

/* /metrics of ST, NUL-terminated; free() it. */
static char *
render_metrics(const struct control_status *st)
{
	struct control_buf b = { 0 };

	metrics_render(st, &b);
	control_buf_printf(&b, "%s", "");
	return b.data;
}

static size_t
count_lines(const char *text, const char *prefix)
{
	size_t n = 0, len = strlen(prefix);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, prefix, len) == 0)
			n++;
	return n;
}

/* Every contract metric has HELP and TYPE once and one sample per tenant;
 * the relay-wide ones have one unlabelled sample. */
static void
test_metrics_families(void **state)
{
	static const char *const per_tenant[] = { "mxspool_queue_messages",
		"mxspool_queue_bytes", "mxspool_queue_oldest_seconds", "mxspool_primary_up",
		"mxspool_drain_rate_limit", "mxspool_messages_accepted_total",
		"mxspool_messages_delivered_total", "mxspool_messages_bounced_total" };
	static const char *const global[] = { "mxspool_connections", "mxspool_spool_bytes" };
	struct control_status *st = FIXTURE_STATUS(state);
	char want[128], *m;

	m = render_metrics(st);
	for (size_t i = 0; i < sizeof(per_tenant) / sizeof(per_tenant[0]); i++) {
		snprintf(want, sizeof(want), "# HELP %s ", per_tenant[i]);
		assert_int_equal(count_lines(m, want), 1);
		snprintf(want, sizeof(want), "# TYPE %s ", per_tenant[i]);
		assert_int_equal(count_lines(m, want), 1);
		snprintf(want, sizeof(want), "%s{tenant=\"", per_tenant[i]);
		assert_int_equal(count_lines(m, want), 2);
	}
	for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++) {
		snprintf(want, sizeof(want), "# TYPE %s gauge\n%s ", global[i], global[i]);
		assert_non_null(strstr(m, want));
		snprintf(want, sizeof(want), "%s ", global[i]);
		assert_int_equal(count_lines(m, want), 1);
	}
	assert_non_null(strstr(m,
	    "# HELP mxspool_queue_messages Messages queued for the tenant.\n"
	    "# TYPE mxspool_queue_messages gauge\n"
	    "mxspool_queue_messages{tenant=\"demo\"} 5\n"
	    "mxspool_queue_messages{tenant=\"other\"} 0\n"));
	assert_non_null(strstr(m, "mxspool_queue_oldest_seconds{tenant=\"demo\"} 61.5\n"));
	assert_non_null(strstr(m, "mxspool_primary_up{tenant=\"demo\"} 1\n"
	    "mxspool_primary_up{tenant=\"other\"} 0\n"));
	assert_non_null(strstr(m, "mxspool_queue_lifetime_seconds{tenant=\"demo\"} 432000\n"
	    "mxspool_queue_lifetime_seconds{tenant=\"other\"} 3600\n"));
	assert_non_null(strstr(m, "mxspool_delay_warning_seconds{tenant=\"demo\"} 14400\n"));
	assert_non_null(strstr(m, "# TYPE mxspool_messages_accepted_total counter\n"
	    "mxspool_messages_accepted_total{tenant=\"demo\"} 10\n"));
	assert_non_null(strstr(m, "mxspool_drain_rate{tenant=\"demo\"} 1.5\n"));
	assert_non_null(strstr(m, "mxspool_connections 3\n"));
	assert_non_null(strstr(m, "mxspool_spool_bytes 4096\n"));
	assert_non_null(strstr(m, "mxspool_uptime_seconds 75\n"));
	assert_non_null(strstr(m, "# TYPE mxspool_journal_syncs_total counter\n"
	    "mxspool_journal_syncs_total 0\n"));
	free(m);
}

/* A label value has backslash, quote and newline escaped. */
static void
test_metrics_label_escape(void **state)
{
	struct control_status *st = FIXTURE_STATUS(state);
	struct control_tenant_row *rows = FIXTURE_ROWS(state);
	char *m;

	rows[1].name = "a\"b\\c\nd";
	m = render_metrics(st);
	assert_non_null(strstr(m, "mxspool_queue_messages{tenant=\"a\\\"b\\\\c\\nd\"} 0\n"));
	assert_null(strstr(m, "c\nd"));
	free(m);
}

/* While the old journal is read the top level says so (text and JSON);
 * once ready the keys are gone, so the contract's key set is exact. */
static void
test_status_index_loading(void **state)
{
	struct control_status *st = FIXTURE_STATUS(state);
	char *s;

	st->index_state = "loading";
	st->index_scanned_bytes = 100;
	st->index_old_bytes = 4000;
	s = render_status(st, true);
	assert_non_null(strstr(s, "\"spool_bytes\": 4096, \"index_state\": \"loading\", "
	    "\"index_scanned_bytes\": 100, \"index_old_bytes\": 4000, \"tenants\": ["));
	free(s);
	s = render_status(st, false);
	assert_non_null(strstr(s, "index loading: 100 of 4000 bytes"));
	free(s);
	st->index_state = "ready";
	s = render_status(st, true);
	assert_null(strstr(s, "index_"));
	free(s);
	s = render_status(st, false);
	assert_null(strstr(s, "index loading"));
	free(s);
}

/* Quota use, probes by result, and the histograms in the exposition
 * format: cumulative buckets ending in +Inf equal to _count, then _sum. */
static void
test_metrics_histograms_quota_probes(void **state)
{
	struct control_status *st = FIXTURE_STATUS(state);
	struct control_tenant_row *rows = FIXTURE_ROWS(state);
	struct stats *stats = stats_new();
	size_t n;
	const double *le = stats_hist_bounds(STAT_HIST_ACCEPT, &n);
	char want[200], *m;

	assert_non_null(stats);
	stats_observe(stats, "demo", STAT_HIST_ACCEPT, 0.0004);
	stats_observe(stats, "demo", STAT_HIST_ACCEPT, 0.003);
	stats_observe(stats, "demo", STAT_HIST_ACCEPT, 1000);
	rows[0].hist[STAT_HIST_ACCEPT] = *stats_hist_tenant(stats, "demo", STAT_HIST_ACCEPT);
	rows[0].quota_bytes = 8192;
	rows[0].quota_used = 0.5;
	rows[0].probes_ok = 4;
	rows[0].probes_failed = 7;
	m = render_metrics(st);
	assert_non_null(strstr(m, "# TYPE mxspool_accept_latency_seconds histogram\n"
	    "mxspool_accept_latency_seconds_bucket{tenant=\"demo\",le=\"0.0005\"} 1\n"
	    "mxspool_accept_latency_seconds_bucket{tenant=\"demo\",le=\"0.001\"} 1\n"
	    "mxspool_accept_latency_seconds_bucket{tenant=\"demo\",le=\"0.0025\"} 1\n"
	    "mxspool_accept_latency_seconds_bucket{tenant=\"demo\",le=\"0.005\"} 2\n"));
	snprintf(want, sizeof(want), "mxspool_accept_latency_seconds_bucket"
	    "{tenant=\"demo\",le=\"%g\"} 2\n"
	    "mxspool_accept_latency_seconds_bucket{tenant=\"demo\",le=\"+Inf\"} 3\n"
	    "mxspool_accept_latency_seconds_sum{tenant=\"demo\"} ", le[n - 1]);
	assert_non_null(strstr(m, want));
	assert_non_null(strstr(m, "mxspool_accept_latency_seconds_count{tenant=\"demo\"} 3\n"));
	/* n bounds + Inf per tenant, two tenants */
	assert_int_equal(count_lines(m, "mxspool_accept_latency_seconds_bucket{"), 2 * (n + 1));
	assert_non_null(strstr(m, "mxspool_delivery_latency_seconds_count{tenant=\"other\"} 0\n"));
	assert_non_null(strstr(m, "# TYPE mxspool_queue_delay_seconds histogram\n"));
	assert_non_null(strstr(m, "mxspool_quota_bytes{tenant=\"demo\"} 8192\n"));
	assert_non_null(strstr(m, "mxspool_quota_used_ratio{tenant=\"demo\"} 0.5\n"));
	assert_non_null(strstr(m, "# TYPE mxspool_probes_total counter\n"
	    "mxspool_probes_total{tenant=\"demo\",result=\"ok\"} 4\n"
	    "mxspool_probes_total{tenant=\"demo\",result=\"failed\"} 7\n"));
	free(m);
	stats_free(stats);
}

/* With no tenant the families are still announced, with no sample. */
static void
test_metrics_no_tenants(void **state)
{
	struct control_status *st = FIXTURE_STATUS(state);
	char *m;

	st->ntenants = 0;
	m = render_metrics(st);
	/* 17 per tenant, 6 relay, the probe counter, 3 histograms */
	assert_int_equal(count_lines(m, "# HELP "), 27);
	assert_int_equal(count_lines(m, "mxspool_queue_messages"), 0);
	free(m);
}

/* ---- queue, show, acknowledgements ------------------------------------------ */

static void
make_queue(struct control_queue *q)
{
	struct control_queue_row *r;

	memset(q, 0, sizeof(*q));
	r = control_queue_add(q);
	snprintf(r->qid, sizeof(r->qid), "1A2B3C4D5E6F7081");
	r->tenant = "demo";
	r->size = 352;
	r->age_ms = 29999;
	r->attempts = 2;
	r->next_attempt_ms = 60000;
	r->in_flight = true;
	r->sender = strdup("a@sender.test");
	r->recipients = strdup("u@example.test,v@example.test");
	r->last_reply = strdup("451 4.3.0 try later");
	r = control_queue_add(q);
	snprintf(r->qid, sizeof(r->qid), "1A2B3C4D5E6F7082");
	r->tenant = "t\"x";
	r->size = 7;
}

/* queue: a header, one row per message (* when being delivered), a count. */
static void
test_queue_text_and_json(void **state)
{
	struct control_queue q;
	struct control_buf b = { 0 };
	struct json_check j;
	static const char *const keys[] = { "queue_id", "tenant", "size", "age_s",
		"attempts", "next_attempt_s", "sender", "recipients", "in_flight", "last_reply" };

	(void)state;
	make_queue(&q);
	control_render_queue(&q, false, &b);
	control_buf_printf(&b, "%s", "");
	assert_string_equal(b.data, "ok\n"
	    "QUEUE_ID         TENANT                 SIZE    AGE_S ATTEMPTS   NEXT_S "
	    "SENDER                   RECIPIENTS\n"
	    "1A2B3C4D5E6F7081 demo                    352       29        2       60 "
	    "a@sender.test            u@example.test,v@example.test *\n"
	    "  (451 4.3.0 try later)\n"
	    "1A2B3C4D5E6F7082 t\"x                       7        0        0        0 "
	    "-                        -\n"
	    "-- 2 messages (* = being delivered)\n");
	b.len = 0;
	control_render_queue(&q, true, &b);
	control_buf_printf(&b, "%s", "");
	assert_json(b.data, 3, &j);
	assert_keys(&j, keys, sizeof(keys) / sizeof(keys[0]));
	assert_string_equal(b.data, "ok\n{\"messages\": [{\"queue_id\": \"1A2B3C4D5E6F7081\", "
	    "\"tenant\": \"demo\", \"size\": 352, \"age_s\": 29, \"attempts\": 2, "
	    "\"next_attempt_s\": 60, \"sender\": \"a@sender.test\", "
	    "\"recipients\": \"u@example.test,v@example.test\", \"in_flight\": true, "
	    "\"last_reply\": \"451 4.3.0 try later\"}, "
	    "{\"queue_id\": \"1A2B3C4D5E6F7082\", "
	    "\"tenant\": \"t\\\"x\", \"size\": 7, \"age_s\": 0, \"attempts\": 0, "
	    "\"next_attempt_s\": 0, \"sender\": null, \"recipients\": null, "
	    "\"in_flight\": false, \"last_reply\": null}], \"count\": 2, \"truncated\": false}\n");
	control_buf_free(&b);
	control_queue_free(&q);
}

/* A cut listing says so, in both forms; one message is "message". */
static void
test_queue_truncated(void **state)
{
	struct control_queue q;
	struct control_buf b = { 0 };

	(void)state;
	make_queue(&q);
	q.nrows = 1;
	q.truncated = true;
	control_render_queue(&q, false, &b);
	control_buf_printf(&b, "%s", "");
	assert_non_null(strstr(b.data, " u@example.test,v@example.test *\n"
	    "  (451 4.3.0 try later)\n... (listing stopped after 10000 messages)\n"
	    "-- 1 message (* = being delivered)\n"));
	b.len = 0;
	control_render_queue(&q, true, &b);
	control_buf_printf(&b, "%s", "");
	assert_non_null(strstr(b.data, "], \"count\": 1, \"truncated\": true}\n"));
	control_buf_free(&b);
	control_queue_free(&q);
}

static void
make_message(struct control_message *m, struct control_rcpt_row rc[2])
{
	memset(m, 0, sizeof(*m));
	snprintf(m->qid, sizeof(m->qid), "1A2B3C4D5E6F7081");
	m->tenant = "demo";
	m->sender = "alice@sender.test";
	m->size = 158;
	m->arrival_ms = 1796119638084;
	m->attempts = 1;
	m->client = "client.test [127.0.0.1]";
	m->envid = "abc+2Bdef";
	m->ret = "HDRS";
	m->nrcpt = 2;
	m->rcpt = rc;
	rc[0] = (struct control_rcpt_row){ "bob@example.test", "delivered",
		"rfc822;bob@example.test",
		ENV_NOTIFY_SUCCESS | ENV_NOTIFY_FAILURE | ENV_NOTIFY_DELAY };
	rc[1] = (struct control_rcpt_row){ "carol@two.example", "pending", NULL, 0 };
}

/* show: labelled lines and one line per recipient. */
static void
test_show_text(void **state)
{
	struct control_message m;
	struct control_rcpt_row rc[2];
	struct control_buf b = { 0 };

	(void)state;
	make_message(&m, rc);
	m.sender = "";
	m.client = NULL;
	control_render_message(&m, false, &b);
	control_buf_printf(&b, "%s", "");
	assert_string_equal(b.data, "ok\n"
	    "queue id:  1A2B3C4D5E6F7081\n"
	    "tenant:    demo\n"
	    "sender:    <>\n"
	    "size:      158\n"
	    "attempts:  1\n"
	    "client:    -\n"
	    "recipient: <bob@example.test> delivered\n"
	    "recipient: <carol@two.example> pending\n");
	control_buf_free(&b);
}

/* show --json: DSN fields as given, null when absent, NOTIFY as a list. */
static void
test_show_json(void **state)
{
	static const char *const keys[] = { "queue_id", "tenant", "sender", "size",
		"arrival_ms", "attempts", "client", "envid", "ret", "smtputf8", "last_reply",
		"recipients" };
	struct control_message m;
	struct control_rcpt_row rc[2];
	struct control_buf b = { 0 };
	struct json_check j;

	(void)state;
	make_message(&m, rc);
	control_render_message(&m, true, &b);
	control_buf_printf(&b, "%s", "");
	assert_json(b.data, 1, &j);
	assert_keys(&j, keys, sizeof(keys) / sizeof(keys[0]));
	assert_string_equal(b.data, "ok\n{\"queue_id\": \"1A2B3C4D5E6F7081\", \"tenant\": \"demo\", "
	    "\"sender\": \"alice@sender.test\", \"size\": 158, \"arrival_ms\": 1796119638084, "
	    "\"attempts\": 1, \"client\": \"client.test [127.0.0.1]\", \"envid\": \"abc+2Bdef\", "
	    "\"ret\": \"HDRS\", \"smtputf8\": false, \"last_reply\": null, \"recipients\": [{\"address\": "
	    "\"bob@example.test\", \"state\": \"delivered\", \"orcpt\": \"rfc822;bob@example.test\", "
	    "\"notify\": [\"SUCCESS\", \"FAILURE\", \"DELAY\"]}, {\"address\": \"carol@two.example\", "
	    "\"state\": \"pending\", \"orcpt\": null, \"notify\": []}]}\n");
	b.len = 0;
	m.envid = m.ret = m.client = NULL;
	rc[0].notify = ENV_NOTIFY_NEVER;
	control_render_message(&m, true, &b);
	control_buf_printf(&b, "%s", "");
	assert_json(b.data, 1, &j);
	assert_non_null(strstr(b.data, "\"client\": \"\", \"envid\": null, \"ret\": null, "));
	assert_non_null(strstr(b.data, "\"notify\": [\"NEVER\"]}"));
	control_buf_free(&b);
}

/* The acknowledgements, text and JSON, and the error line. */
static void
test_acks(void **state)
{
	static const struct {
		struct control_ack a;
		const char *text, *json;
	} cases[] = {
		{ { CONTROL_ACK_RELOAD, NULL, 0, NULL, false }, "configuration reloaded", "{\"reload\": \"ok\"}" },
		{ { CONTROL_ACK_RELOAD, NULL, 0, "", false }, "configuration reloaded", "{\"reload\": \"ok\"}" },
		{ { CONTROL_ACK_RELOAD, NULL, 0, "listen dns_servers", false },
		  "configuration reloaded\nrestart needed for: listen dns_servers (they keep "
		  "their old values until then)",
		  "{\"reload\": \"ok\", \"restart_needed\": [\"listen\", \"dns_servers\"]}" },
		{ { CONTROL_ACK_DELETE, NULL, 0, NULL, false }, "deleted", "{\"deleted\": 1}" },
		{ { CONTROL_ACK_BOUNCE, NULL, 0, NULL, false }, "bounce queued", "{\"bounced\": 1}" },
		{ { CONTROL_ACK_SET, NULL, 0, NULL, false }, "applied", "{\"set\": \"ok\"}" },
		{ { CONTROL_ACK_FLUSH, NULL, 1, NULL, false }, "probing the primary of 1 tenant now",
		  "{\"flushed_tenants\": 1}" },
		{ { CONTROL_ACK_FLUSH, NULL, 3, NULL, false }, "probing the primary of 3 tenants now",
		  "{\"flushed_tenants\": 3}" },
		{ { CONTROL_ACK_HOLD, "demo", 0, NULL, false }, "tenant demo held",
		  "{\"tenant\": \"demo\", \"held\": true}" },
		{ { CONTROL_ACK_RELEASE, "demo", 0, NULL, false }, "tenant demo released",
		  "{\"tenant\": \"demo\", \"held\": false}" },
		{ { CONTROL_ACK_DELETE_N, NULL, 5, NULL, false }, "deleted 5 messages",
		  "{\"deleted\": 5}" },
		{ { CONTROL_ACK_DELETE_N, NULL, 1, NULL, true },
		  "would delete 1 message (dry run, nothing changed)",
		  "{\"deleted\": 0, \"matched\": 1, \"dry_run\": true}" },
		{ { CONTROL_ACK_BOUNCE_N, NULL, 2, NULL, false }, "bouncing 2 messages",
		  "{\"bounced\": 2}" },
		{ { CONTROL_ACK_BOUNCE_N, NULL, 0, NULL, true },
		  "would bounce 0 messages (dry run, nothing changed)",
		  "{\"bounced\": 0, \"matched\": 0, \"dry_run\": true}" },
		{ { CONTROL_ACK_REQUEUE, NULL, 3, NULL, false }, "requeued 3 messages",
		  "{\"requeued\": 3}" },
		{ { CONTROL_ACK_FORGET, "demo", 0, "a@example.test", false },
		  "a@example.test forgotten by tenant demo",
		  "{\"tenant\": \"demo\", \"forgotten\": \"a@example.test\"}" },
	};
	struct control_buf b = { 0 };
	char want[256];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int json = 0; json < 2; json++) {
			b.len = 0;
			control_render_ack(&cases[i].a, json, &b);
			control_buf_printf(&b, "%s", "");
			snprintf(want, sizeof(want), "ok\n%s\n", json ? cases[i].json : cases[i].text);
			assert_string_equal(b.data, want);
		}
	}
	control_buf_printf(&b, "partial answer");
	control_render_error(&b, "no tenant named x");
	control_buf_printf(&b, "%s", "");
	assert_string_equal(b.data, "error no tenant named x\n");
	control_buf_free(&b);
}

static void
test_render_delete_freed(void **state)
{
	/* A delete answered after its records are stored says how much mail
	 * went and when the disk space comes back, in text and JSON; the
	 * plain acknowledgement stays the first line / the same key. */
	struct control_ack one = { CONTROL_ACK_DELETE, NULL, 0, NULL, false };
	struct control_ack many = { CONTROL_ACK_DELETE_N, NULL, 3, NULL, false };
	struct control_freed f = { 3000, 0, 8192, 100 };
	struct control_freed bad = { 0, 2, 0, 0 };
	struct control_buf b = { 0 };

	(void)state;
	control_render_delete_ack(&one, &f, false, &b);
	assert_string_equal(b.data, "ok\ndeleted\n3000 bytes of mail; journal space held by "
	    "removed mail: 8192 bytes back within seconds, 100 bytes later (when older "
	    "segments with queued mail go, or the active one fills)\n");
	b.len = 0;
	control_render_delete_ack(&many, &f, true, &b);
	assert_string_equal(b.data, "ok\n{\"deleted\": 3, \"bytes\": 3000, \"failed\": 0, "
	    "\"reclaim_now_bytes\": 8192, \"reclaim_later_bytes\": 100}\n");
	b.len = 0;
	control_render_delete_ack(&many, &bad, false, &b);
	assert_non_null(strstr(b.data, "deleted 3 messages\n"));
	assert_non_null(strstr(b.data, "2 messages could not be deleted (journal write failed; "
	    "still queued)\n"));
	control_buf_free(&b);
}

/* recipients TENANT: a table (text) and an array (JSON) from the same
 * fields, the count and the truncation mark. */
static void
test_recipients_render(void **state)
{
	struct control_rcache_row rows[2] = {
		{ "alice@example.test", "valid", 60, 2678340 },
		{ "nobody@example.test", "invalid", 5, 10795 },
	};
	struct control_rcache rc = { "demo", 2, 2, rows, false };
	struct control_buf b = { 0 };

	(void)state;
	control_render_recipients(&rc, true, &b);
	assert_string_equal(b.data, "ok\n{\"tenant\": \"demo\", \"recipients\": ["
	    "{\"address\": \"alice@example.test\", \"state\": \"valid\", "
	    "\"learned_age_s\": 60, \"expires_in_s\": 2678340}, "
	    "{\"address\": \"nobody@example.test\", \"state\": \"invalid\", "
	    "\"learned_age_s\": 5, \"expires_in_s\": 10795}], "
	    "\"count\": 2, \"truncated\": false}\n");
	b.len = 0;
	rc.truncated = true;
	control_render_recipients(&rc, false, &b);
	assert_non_null(strstr(b.data, "ADDRESS"));
	assert_non_null(strstr(b.data, "alice@example.test"));
	assert_non_null(strstr(b.data, "invalid"));
	assert_non_null(strstr(b.data, "... (listing stopped after 10000 addresses)\n"));
	assert_non_null(strstr(b.data, "-- 2 addresses learned by tenant demo\n"));
	control_buf_free(&b);
}

/* The filters of queue, delete and bounce. */
static int
parse(struct control_filter *f, unsigned allow, const char *line, char *err)
{
	static char buf[512];
	char *argv[32], *save = NULL, *tok;
	int argc = 0;

	snprintf(buf, sizeof(buf), "%s", line);
	for (tok = strtok_r(buf, " ", &save); tok && argc < 32; tok = strtok_r(NULL, " ", &save))
		argv[argc++] = tok;
	err[0] = '\0';
	return control_filter_parse(f, argc, argv, allow, err, 256);
}

#define Q_ALLOW (CONTROL_F_TENANT_POS | CONTROL_F_MATCH | CONTROL_F_PAGE)
#define D_ALLOW (CONTROL_F_QID | CONTROL_F_TENANT_OPT | CONTROL_F_MATCH | CONTROL_F_DRY_RUN)

static void
test_filter_parse(void **state)
{
	struct control_filter f;
	char err[256];

	(void)state;
	assert_int_equal(parse(&f, Q_ALLOW, "queue", err), 0);
	assert_null(f.tenant);
	assert_int_equal(f.older_than_ms, -1);
	assert_int_equal(f.limit, 0);
	assert_false(f.has_after);

	assert_int_equal(parse(&f, Q_ALLOW, "queue demo --from A@B --to x --older-than 2h "
	    "--deferred --limit 5 --after 1A2317162E0000ff", err), 0);
	assert_string_equal(f.tenant, "demo");
	assert_string_equal(f.from, "A@B");
	assert_string_equal(f.to, "x");
	assert_int_equal(f.older_than_ms, 2 * 3600 * 1000);
	assert_true(f.deferred);
	assert_int_equal(f.limit, 5);
	assert_true(f.has_after);
	assert_true(f.after == 0x1A2317162E0000ffULL);

	/* --after alone pages by the default limit. */
	assert_int_equal(parse(&f, Q_ALLOW, "queue --after 0000000000000001", err), 0);
	assert_int_equal(f.limit, CONTROL_PAGE_DEFAULT);

	assert_int_equal(parse(&f, Q_ALLOW, "queue --older-than soon", err), -1);
	assert_non_null(strstr(err, "duration"));
	assert_int_equal(parse(&f, Q_ALLOW, "queue --limit 0", err), -1);
	assert_int_equal(parse(&f, Q_ALLOW, "queue --limit -3", err), -1);
	assert_int_equal(parse(&f, Q_ALLOW, "queue --after 12", err), -1);
	assert_non_null(strstr(err, "queue id"));
	assert_int_equal(parse(&f, Q_ALLOW, "queue --from", err), -1);
	assert_non_null(strstr(err, "needs a value"));
	assert_int_equal(parse(&f, Q_ALLOW, "queue --dry-run", err), -1);
	assert_non_null(strstr(err, "unknown option"));
	assert_int_equal(parse(&f, Q_ALLOW, "queue a b", err), -1);
	assert_int_equal(parse(&f, Q_ALLOW, "queue --tenant demo", err), -1);

	/* delete: a queue id, or --tenant with filters. */
	assert_int_equal(parse(&f, D_ALLOW, "delete 1A2317162E000000", err), 0);
	assert_true(f.has_qid);
	assert_true(f.qid == 0x1A2317162E000000ULL);
	assert_int_equal(parse(&f, D_ALLOW, "delete --tenant t --from junk --dry-run", err), 0);
	assert_false(f.has_qid);
	assert_string_equal(f.tenant, "t");
	assert_true(f.dry_run);
	assert_int_equal(parse(&f, D_ALLOW, "delete", err), -1);
	assert_non_null(strstr(err, "usage"));
	assert_int_equal(parse(&f, D_ALLOW, "delete --from junk", err), -1);
	assert_int_equal(parse(&f, D_ALLOW, "delete 1A2317162E000000 --tenant t", err), -1);
	assert_int_equal(parse(&f, D_ALLOW, "delete nothex", err), -1);
	assert_int_equal(parse(&f, D_ALLOW, "delete --tenant t --limit 3", err), -1);
}

static void
test_filter_match(void **state)
{
	struct control_filter f;
	char err[256];
	int64_t now = 1000000000;

	(void)state;
	assert_true(control_icontains("Alice@Junk.TEST", "junk.test"));
	assert_true(control_icontains("abc", ""));
	assert_true(control_icontains("", ""));
	assert_true(control_icontains(NULL, ""));
	assert_false(control_icontains(NULL, "a"));
	assert_false(control_icontains("ab", "abc"));
	assert_false(control_icontains("alice@good", "junk"));
	assert_true(control_icontains("aab", "ab"));

	assert_int_equal(parse(&f, Q_ALLOW, "queue --older-than 1m --deferred", err), 0);
	/* Young: out; old but never tried and due: out; old and deferred: in. */
	assert_false(control_filter_item(&f, 5, now - 1000, 1, now + 1000, now));
	assert_false(control_filter_item(&f, 5, now - 120000, 0, 0, now));
	assert_true(control_filter_item(&f, 5, now - 120000, 1, now + 1000, now));
	assert_true(control_filter_item(&f, 5, now - 60000, 0, now + 1, now));
	assert_int_equal(parse(&f, Q_ALLOW, "queue --after 0000000000000005", err), 0);
	assert_false(control_filter_item(&f, 5, now, 0, 0, now));
	assert_true(control_filter_item(&f, 6, now, 0, 0, now));
}

/* A paged listing says where the next page starts. */
static void
test_queue_paged_text(void **state)
{
	struct control_queue q;
	struct control_buf b = { 0 };

	(void)state;
	memset(&q, 0, sizeof(q));
	snprintf(control_queue_add(&q)->qid, 17, "%s", "1A2317162E000000");
	snprintf(control_queue_add(&q)->qid, 17, "%s", "1A2317162E000001");
	q.truncated = true;
	q.limit = 2;
	control_render_queue(&q, false, &b);
	control_buf_printf(&b, "%s", "");
	assert_non_null(strstr(b.data, "... (more: --after 1A2317162E000001)\n"));
	assert_null(strstr(b.data, "listing stopped"));
	control_buf_free(&b);
	control_queue_free(&q);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_render_delete_freed),
		cmocka_unit_test(test_json_checker_rejects),
		cmocka_unit_test_setup_teardown(test_status_text, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_status_json_keys, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_status_json_escapes, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_status_json_no_tenants, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_metrics_families, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_metrics_label_escape, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_metrics_no_tenants, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_status_index_loading, setup_status,
		    teardown_status),
		cmocka_unit_test_setup_teardown(test_metrics_histograms_quota_probes,
		    setup_status, teardown_status),
		cmocka_unit_test(test_queue_text_and_json),
		cmocka_unit_test(test_queue_truncated),
		cmocka_unit_test(test_show_text),
		cmocka_unit_test(test_show_json),
		cmocka_unit_test(test_acks),
		cmocka_unit_test(test_recipients_render),
		cmocka_unit_test(test_filter_parse),
		cmocka_unit_test(test_filter_match),
		cmocka_unit_test(test_queue_paged_text),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
