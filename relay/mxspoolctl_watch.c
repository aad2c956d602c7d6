/*
 * mxspoolctl_watch.c - `mxspoolctl watch`: the daemon's watch frame, asked
 * for every second and painted full-screen with ncurses; on something that
 * is not a terminal (a pipe, a log), the frames are printed one after the
 * other, so `mxspoolctl watch --count 1 | mail` works too.
 *
 * The frame is drawn by the daemon (control_watch.c) for the width we send,
 * like every other answer of the control socket: this file only paints.
 * q or Ctrl-C ends the view and restores the terminal.
 */
#include "config.h"

#include <curses.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "mxspoolctl.h"

#define WATCH_WIDTH_PLAIN 100         /* frames printed to a pipe */

struct watch_opts {
	unsigned interval_ms;
	unsigned long count;          /* frames to show; 0 = until stopped */
};

static volatile sig_atomic_t watch_stop;

static void
watch_on_signal(int sig)
{
	(void)sig;
	watch_stop = 1;
}

static int
watch_parse(int argc, char **argv, struct watch_opts *o)
{
	o->interval_ms = 1000;
	o->count = 0;
	for (int i = 1; i < argc; i++) {
		char *end;
		double d;

		if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
			d = strtod(argv[++i], &end);
			if (*end != '\0' || !(d >= 0.1 && d <= 3600)) {
				fprintf(stderr, "mxspoolctl: watch --interval: seconds, "
				    "0.1 to 3600\n");
				return EX_USAGE;
			}
			o->interval_ms = (unsigned)(d * 1000);
		} else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
			o->count = strtoul(argv[++i], &end, 10);
			if (*end != '\0' || argv[i][0] == '-' || o->count == 0) {
				fprintf(stderr, "mxspoolctl: watch --count: a number of "
				    "frames, at least 1\n");
				return EX_USAGE;
			}
		} else {
			fprintf(stderr, "mxspoolctl: watch [--interval SECONDS] "
			    "[--count N]: unknown argument %s\n", argv[i]);
			return EX_USAGE;
		}
	}
	return 0;
}

/* Ask for one frame WIDTH wide; *BODY points into *RESP after "ok".
 * 0, or an exit code (a daemon error is said on stderr). */
static int
watch_fetch(const char *sock, unsigned width, char **resp, const char **body)
{
	char req[64];
	size_t rlen;
	int n, rc;

	n = snprintf(req, sizeof(req), "watch %u\n", width);
	if ((rc = ctl_request(sock, req, (size_t)n, resp, &rlen)) != 0)
		return rc;
	if (strncmp(*resp, "ok\n", 3) != 0) {
		fprintf(stderr, "mxspoolctl: %.*s\n", (int)strcspn(*resp, "\n"),
		    strncmp(*resp, "error ", 6) == 0 ? *resp + 6 : *resp);
		rc = strncmp(*resp, "error permission denied", 23) == 0 ?
		    EX_NOPERM : EX_DATAERR;
		free(*resp);
		*resp = NULL;
		return rc;
	}
	*body = *resp + 3;
	return 0;
}

static void
watch_sleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (!watch_stop && nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int
watch_plain(const char *sock, const struct watch_opts *o)
{
	for (unsigned long i = 0; !watch_stop && (o->count == 0 || i < o->count); i++) {
		const char *body;
		char *resp;
		int rc;

		if (i > 0)
			watch_sleep(o->interval_ms);
		if (watch_stop)
			break;
		if ((rc = watch_fetch(sock, WATCH_WIDTH_PLAIN, &resp, &body)) != 0)
			return rc;
		printf("%s%s", i > 0 ? "\n" : "", body);
		fflush(stdout);
		free(resp);
	}
	return 0;
}

/* Paint BODY from the top-left corner, as many lines as the screen has. */
static void
watch_paint(const char *body)
{
	int row = 0;

	erase();
	for (const char *p = body; *p && row < LINES - 1; row++) {
		size_t n = strcspn(p, "\n");

		mvaddnstr(row, 0, p, (int)n < COLS ? (int)n : COLS);
		p += n + (p[n] == '\n');
	}
	mvaddnstr(LINES - 1, 0, "q: quit", COLS);
	refresh();
}

static int
watch_screen(const char *sock, const struct watch_opts *o)
{
	int rc = 0;

	if (initscr() == NULL)
		return watch_plain(sock, o);
	cbreak();
	noecho();
	curs_set(0);
	keypad(stdscr, TRUE);
	timeout((int)o->interval_ms);
	for (unsigned long i = 0; !watch_stop && (o->count == 0 || i < o->count); i++) {
		const char *body;
		char *resp;
		int ch;

		if ((rc = watch_fetch(sock, (unsigned)COLS, &resp, &body)) != 0)
			break;
		watch_paint(body);
		free(resp);
		if (o->count != 0 && i + 1 == o->count)
			break;
		ch = getch();
		if (ch == 'q' || ch == 'Q')
			break;
	}
	endwin();
	return rc;
}

int
ctl_watch(const char *sock, int argc, char **argv)
{
	struct watch_opts o;
	struct sigaction sa;
	int rc;

	if ((rc = watch_parse(argc, argv, &o)) != 0)
		return rc;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = watch_on_signal;
	sigemptyset(&sa.sa_mask);
	(void)sigaction(SIGINT, &sa, NULL);
	(void)sigaction(SIGTERM, &sa, NULL);
	if (isatty(STDOUT_FILENO) && isatty(STDIN_FILENO) && getenv("TERM") != NULL)
		return watch_screen(sock, &o);
	return watch_plain(sock, &o);
}
