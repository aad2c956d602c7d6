/*
 * test_handover.c - unit tests of the SIGUSR2 descriptor handover
 * (relay/handover.c): what the child finds (LISTEN_FDS, MXSPOOL_HANDOVER,
 * the same sockets at their places), a missing binary, the parsing on the
 * new side and the ready / go lines.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mxspool/handover.h"

/* Read one line from FD (blocking, bounded). */
static void
read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n < len - 1) {
		ssize_t r = read(fd, buf + n, 1);

		assert_true(r == 1);
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
}

static void
fds_init(struct handover_fds *f, int *pair)
{
	memset(f, 0, sizeof(*f));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
	f->smtp[0] = pair[0];
	f->nsmtp = 1;
	f->lock = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(f->lock >= 0);
	f->control = -1;
	f->metrics = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(f->metrics >= 0);
}

/* The child gets LISTEN_FDS=1, the channel and the rest at the places
 * MXSPOOL_HANDOVER names, and fd 3 is our socket (what we write to our end
 * of the pair comes out of its fd 3). */
static void
test_spawn_passes_descriptors(void **state)
{
	struct handover_fds f;
	int pair[2], chan, st;
	pid_t pid;
	char line[256];
	char *const argv[] = { "sh", "-c",
	    "read x <&3; echo \"$LISTEN_FDS|$MXSPOOL_HANDOVER|$x|${LISTEN_PID:-none}\" >&4", NULL };

	(void)state;
	fds_init(&f, pair);
	assert_int_equal(handover_spawn("/bin/sh", argv, &f, &pid, &chan), 0);
	assert_int_equal(write(pair[1], "hello\n", 6), 6);
	read_line(chan, line, sizeof(line));
	assert_string_equal(line, "1|chan=4 lock=5 control=-1 metrics=6|hello|none");
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* Our copies are untouched and still close-on-exec. */
	assert_true(fcntl(pair[0], F_GETFD) & FD_CLOEXEC);
	close(chan);
	close(pair[0]);
	close(pair[1]);
	close(f.lock);
	close(f.metrics);
}

/* A missing binary is reported by the spawn itself; nothing is started. */
static void
test_spawn_missing_binary(void **state)
{
	struct handover_fds f;
	int pair[2], chan = -1;
	pid_t pid = 0;
	char *const argv[] = { "mxspoold", NULL };

	(void)state;
	fds_init(&f, pair);
	assert_int_equal(handover_spawn("/nonexistent/mxspoold", argv, &f, &pid, &chan),
	    -ENOENT);
	assert_int_equal(chan, -1);
	assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);   /* no child */
	close(pair[0]);
	close(pair[1]);
	close(f.lock);
	close(f.metrics);
}

/* The new side: absent is 0, malformed -1, well formed 1 with LISTEN_PID set
 * to us, the variable gone and the descriptors close-on-exec. */
static void
test_inherited_parsing(void **state)
{
	struct handover_fds f;
	int chan, a = open("/dev/null", O_RDONLY), b = open("/dev/null", O_RDONLY);
	char v[128], pid[32];

	(void)state;
	unsetenv("MXSPOOL_HANDOVER");
	assert_int_equal(handover_inherited(&f, &chan), 0);
	setenv("MXSPOOL_HANDOVER", "chan=x", 1);
	setenv("LISTEN_FDS", "1", 1);
	assert_int_equal(handover_inherited(&f, &chan), -1);
	snprintf(v, sizeof(v), "chan=%d lock=%d control=-1 metrics=-1", a, b);
	setenv("MXSPOOL_HANDOVER", v, 1);
	assert_int_equal(handover_inherited(&f, &chan), 1);
	assert_int_equal(chan, a);
	assert_int_equal(f.lock, b);
	assert_int_equal(f.nsmtp, 1);
	assert_int_equal(f.smtp[0], 3);
	assert_int_equal(f.control, -1);
	assert_null(getenv("MXSPOOL_HANDOVER"));
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	assert_string_equal(getenv("LISTEN_PID"), pid);
	assert_true(fcntl(a, F_GETFD) & FD_CLOEXEC);
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	close(a);
	close(b);
}

/* "go" and EOF let the new side go on; anything else stops it. */
static void
test_lines(void **state)
{
	int p[2];
	char line[32];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, p), 0);
	assert_int_equal(handover_send(p[0], "ready"), 0);
	read_line(p[1], line, sizeof(line));
	assert_string_equal(line, "ready");
	assert_int_equal(handover_send(p[1], "go"), 0);
	assert_int_equal(handover_wait_go(p[0]), 0);
	assert_int_equal(handover_send(p[1], "nope"), 0);
	assert_int_equal(handover_wait_go(p[0]), -1);
	close(p[1]);
	assert_int_equal(handover_wait_go(p[0]), 0);      /* EOF: the old one left */
	assert_true(handover_send(p[0], "serving") != 0);  /* nobody listens */
	close(p[0]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_spawn_passes_descriptors),
		cmocka_unit_test(test_spawn_missing_binary),
		cmocka_unit_test(test_inherited_parsing),
		cmocka_unit_test(test_lines),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
