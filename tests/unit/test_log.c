/*
 * test_log.c - key=value log lines and value quoting.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mxspool/log.h"

/* Plain tokens pass as they are; anything a parser could misread is quoted and escaped. */
static void
test_quote(void **state)
{
	char buf[64];

	(void)state;
	assert_string_equal(log_quote(buf, sizeof(buf), "demo"), "demo");
	assert_string_equal(log_quote(buf, sizeof(buf), ""), "\"\"");
	assert_string_equal(log_quote(buf, sizeof(buf), NULL), "\"\"");
	assert_string_equal(log_quote(buf, sizeof(buf), "250 2.0.0 Ok"), "\"250 2.0.0 Ok\"");
	assert_string_equal(log_quote(buf, sizeof(buf), "a=b"), "\"a=b\"");
	assert_string_equal(log_quote(buf, sizeof(buf), "say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
	assert_string_equal(log_quote(buf, sizeof(buf), "x\r\ny"), "\"x\\x0d\\x0ay\"");
}

/* Quoting never writes past the buffer and always leaves a closed, terminated string. */
static void
test_quote_truncates(void **state)
{
	char buf[12];
	char big[200];

	(void)state;
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	big[3] = ' ';
	log_quote(buf, sizeof(buf), big);
	assert_true(strlen(buf) < sizeof(buf));
	assert_int_equal(buf[0], '"');
	assert_int_equal(buf[strlen(buf) - 1], '"');
	log_quote(buf, 2, "a b");
	assert_string_equal(buf, "");
}

/* One event is one line on stderr: level, event, then the caller's pairs; debug only when enabled. */
static void
test_event_line(void **state)
{
	int fds[2], saved;
	char out[512];
	ssize_t n;

	(void)state;
	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
	setenv("JOURNAL_STREAM", "1:1", 1);   /* no timestamp: exact line */
	log_init("test", 0);
	log_event(LOG_LEVEL_DEBUG, "hidden", "k=v");
	log_event(LOG_LEVEL_INFO, "accept", "qid=%s size=%d", "ABC", 12);
	log_event(LOG_LEVEL_WARN, "probe", NULL);
	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], out, sizeof(out) - 1);
	close(fds[0]);
	assert_true(n > 0);
	out[n] = '\0';
	assert_string_equal(out, "level=info event=accept qid=ABC size=12\n"
	    "level=warn event=probe\n");
	unsetenv("JOURNAL_STREAM");
}

/* With a stamp: "YYYY-MM-DDTHH:MM:SS.mmmZ prog[pid]: level=... event=...",
 * the UTC time of the call. */
static void
test_event_line_stamped(void **state)
{
	int fds[2], saved;
	char out[512], want[64];
	struct tm tm;
	struct timespec t0, t1;
	ssize_t n;

	(void)state;
	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
	unsetenv("JOURNAL_STREAM");
	log_init("stamped", 0);
	/* The clock the log reads (time() may be a coarser one). */
	clock_gettime(CLOCK_REALTIME, &t0);
	log_event(LOG_LEVEL_INFO, "accept", "qid=%s", "ABC");
	clock_gettime(CLOCK_REALTIME, &t1);
	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], out, sizeof(out) - 1);
	close(fds[0]);
	assert_true(n > 24);
	out[n] = '\0';
	/* The second may tick between the call and the checks: either. */
	gmtime_r(&t0.tv_sec, &tm);
	strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S.", &tm);
	if (strncmp(out, want, 20) != 0) {
		gmtime_r(&t1.tv_sec, &tm);
		strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S.", &tm);
	}
	assert_memory_equal(out, want, 20);
	for (int i = 20; i < 23; i++)
		assert_true(out[i] >= '0' && out[i] <= '9');
	snprintf(want, sizeof(want), "Z stamped[%ld]: level=info event=accept qid=ABC\n",
	    (long)getpid());
	assert_string_equal(out + 23, want);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quote),
		cmocka_unit_test(test_quote_truncates),
		cmocka_unit_test(test_event_line),
		cmocka_unit_test(test_event_line_stamped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
