/*
 * test_control_watch.c - the `mxspoolctl watch` frame: figures, progress
 * bars, and that no line is ever wider than the terminal.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../relay/control_watch.h"

static struct control_tenant_row rows[2];
static struct control_status st;

static void
snapshot(void)
{
	memset(rows, 0, sizeof(rows));
	rows[0].name = "partner-a";
	rows[0].primary_state = "up";
	rows[0].queued_messages = 750;
	rows[0].delivered_total = 900;
	rows[0].delivered_since_up = 250;
	rows[0].last_probe = "mx1.example:25: 221 2.0.0 Bye\nsecond line";
	rows[0].oldest_age_ms = 3723 * 1000;
	rows[0].drain_rate = 9.8;
	rows[0].drain_rate_limit = 10;
	rows[0].in_flight = 4;
	rows[0].eta_s = 75;
	rows[1].name = "partner-b";
	rows[1].primary_state = "down";
	rows[1].held = true;
	rows[1].eta_s = -1;
	memset(&st, 0, sizeof(st));
	st.version = "0.1.0";
	st.uptime_s = 90061;
	st.accepted_total = 1000;
	st.delivered_total = 900;
	st.connections = 3;
	st.spool_bytes = 3 * 1024 * 1024;
	st.ntenants = 2;
	st.tenants = rows;
}

/* Every line of OUT, after "ok", fits WIDTH. */
static void
assert_fits(const struct control_buf *out, unsigned width)
{
	const char *p = out->data;

	assert_true(strncmp(p, "ok\n", 3) == 0);
	for (p += 3; *p; ) {
		const char *nl = strchr(p, '\n');

		assert_non_null(nl);
		assert_true((unsigned)(nl - p) <= width);
		p = nl + 1;
	}
}

static void
test_frame_figures(void **state)
{
	struct control_buf out = { 0 };

	(void)state;
	snapshot();
	control_render_watch(&st, 100, "11:05:03", &out);
	assert_fits(&out, 100);
	assert_non_null(strstr(out.data, "mxspool 0.1.0   up 1d01h   3 connections   "
	    "spool 3.0 MiB   11:05:03\n"));
	assert_non_null(strstr(out.data, "accepted 1000   delivered 900   bounced 0\n"));
	/* The last probe's first line only. */
	assert_non_null(strstr(out.data, "  last probe: mx1.example:25: 221 2.0.0 Bye\n"));
	assert_null(strstr(out.data, "second line"));
	assert_non_null(strstr(out.data, "partner-a        up              750    1h02m     "
	    "9.8    10.0      4    1m15s\n"));
	/* 250 delivered since the primary came up, 750 queued: a quarter of
	 * the bar is filled (the 900 since the start do not count). */
	assert_non_null(strstr(out.data, "  25%  (250 delivered, 750 queued)\n"));
	assert_non_null(strstr(out.data, "down/held"));
	control_buf_free(&out);
}

static void
test_bar_proportion(void **state)
{
	struct control_buf out = { 0 };
	const char *bar, *end;
	size_t fill = 0, len;

	(void)state;
	snapshot();
	control_render_watch(&st, 120, "t", &out);
	bar = strstr(out.data, "  [");
	assert_non_null(bar);
	bar += 3;
	end = strchr(bar, ']');
	assert_non_null(end);
	len = (size_t)(end - bar);
	for (const char *p = bar; p < end; p++)
		fill += *p == '#';
	assert_true(len >= 10);
	assert_int_equal(fill, len / 4);
	control_buf_free(&out);
}

/* A narrow terminal gets cut lines, a huge one the maximum; never more. */
static void
test_width_bounds(void **state)
{
	struct control_buf out = { 0 };

	(void)state;
	snapshot();
	control_render_watch(&st, 10, "t", &out);
	assert_fits(&out, CONTROL_WATCH_MIN_WIDTH);
	control_buf_free(&out);
	memset(&out, 0, sizeof(out));
	control_render_watch(&st, 100000, "t", &out);
	assert_fits(&out, CONTROL_WATCH_MAX_WIDTH);
	control_buf_free(&out);
}

static void
test_empty_and_durations(void **state)
{
	struct control_buf out = { 0 };
	char b[32];

	(void)state;
	snapshot();
	st.ntenants = 0;
	control_render_watch(&st, 80, "t", &out);
	assert_non_null(strstr(out.data, "(no tenants)\n"));
	control_buf_free(&out);
	assert_string_equal(control_watch_duration(-1, b), "-");
	assert_string_equal(control_watch_duration(59, b), "59s");
	assert_string_equal(control_watch_duration(61, b), "1m01s");
	assert_string_equal(control_watch_duration(7260, b), "2h01m");
	assert_string_equal(control_watch_duration(5 * 86400 + 3600, b), "5d01h");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_figures),
		cmocka_unit_test(test_bar_proportion),
		cmocka_unit_test(test_width_bounds),
		cmocka_unit_test(test_empty_and_durations),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
