/*
 * mxspoolctl_backup.c - `mxspoolctl backup DIR [--json]`.
 *
 * The one command whose answer streams: the daemon sends "progress ..."
 * lines while it copies (shown on stderr as they come), then "ok" and the
 * summary (stdout) or "error MESSAGE".  The daemon writes DIR itself, as
 * its own user, so DIR is made absolute here (the daemon's working folder
 * is not ours).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "mxspoolctl.h"

/* Progress lines come after every file or 16 MiB; a minute without one
 * means the daemon is stuck (or the disk is). */
#define CTL_BACKUP_LINE_TIMEOUT_MS 60000
#define CTL_BACKUP_ANSWER_MAX (64 * 1024)

/* "progress segments=A/B bytes=C/D messages=M elapsed_ms=E" for people. */
static void
ctl_backup_show_progress(const char *line)
{
	unsigned long long sd, st, bd, bt, msgs, ms;

	if (sscanf(line, "progress segments=%llu/%llu bytes=%llu/%llu messages=%llu "
	    "elapsed_ms=%llu", &sd, &st, &bd, &bt, &msgs, &ms) != 6) {
		fprintf(stderr, "mxspoolctl: %s\n", line);
		return;
	}
	fprintf(stderr, "backup: %llu/%llu segments, %.1f/%.1f MiB, %llu messages, %.1f s\n",
	    sd, st, (double)bd / 1048576.0, (double)bt / 1048576.0, msgs,
	    (double)ms / 1000.0);
}

/* The final answer: "ok\n" + body, or "error MESSAGE\n". */
static int
ctl_backup_answer(char *ans)
{
	char *body = strchr(ans, '\n');

	body = body ? body + 1 : ans + strlen(ans);
	if (strncmp(ans, "ok\n", 3) == 0) {
		fputs(body, stdout);
		return 0;
	}
	if (strncmp(ans, "error ", 6) == 0) {
		body[-1] = '\0';
		fprintf(stderr, "mxspoolctl: %s\n", ans + 6);
		if (strncmp(ans + 6, "permission denied", 17) == 0)
			return EX_NOPERM;
		return strstr(ans + 6, " failed: ") != NULL ? EX_IOERR : EX_DATAERR;
	}
	fprintf(stderr, "mxspoolctl: unexpected answer: %.80s\n", ans);
	return EX_PROTOCOL;
}

/* Read lines until the daemon closes; progress is shown, the rest kept. */
static int
ctl_backup_read(int fd, int *rc)
{
	char buf[CTL_BACKUP_ANSWER_MAX + 1];
	size_t len = 0;
	bool in_answer = false;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char *nl;
		ssize_t n;
		int pr = poll(&p, 1, CTL_BACKUP_LINE_TIMEOUT_MS);

		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0) {
			fprintf(stderr, "mxspoolctl: backup: no word from the daemon for %d s\n",
			    CTL_BACKUP_LINE_TIMEOUT_MS / 1000);
			return EX_UNAVAILABLE;
		}
		if (len == CTL_BACKUP_ANSWER_MAX) {
			fprintf(stderr, "mxspoolctl: backup: answer too long\n");
			return EX_PROTOCOL;
		}
		n = read(fd, buf + len, CTL_BACKUP_ANSWER_MAX - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "mxspoolctl: backup: read: %s\n", strerror(errno));
			return EX_IOERR;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		/* Progress lines come before the answer, whole lines only. */
		while (!in_answer && (nl = memchr(buf, '\n', len)) != NULL) {
			if (strncmp(buf, "progress ", 9) != 0) {
				in_answer = true;
				break;
			}
			*nl = '\0';
			ctl_backup_show_progress(buf);
			len -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, len + 1);
		}
	}
	if (len == 0) {
		fprintf(stderr, "mxspoolctl: backup: the daemon closed without an answer\n");
		return EX_PROTOCOL;
	}
	buf[len] = '\0';
	*rc = ctl_backup_answer(buf);
	return 0;
}

int
ctl_backup(const char *sock, int argc, char **argv, int json)
{
	char req[PATH_MAX + 64], cwd[PATH_MAX];
	const char *dir = NULL;
	int fd, n, rc = 0;

	cwd[0] = '\0';
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else if (dir == NULL)
			dir = argv[i];
		else
			dir = "";
	}
	if (dir == NULL || dir[0] == '\0' || strpbrk(dir, " \t\r\n") != NULL) {
		fprintf(stderr, "usage: mxspoolctl backup DIR [--json] "
		    "(DIR without spaces or line breaks)\n");
		return EX_USAGE;
	}
	if (dir[0] != '/' && getcwd(cwd, sizeof(cwd)) == NULL) {
		fprintf(stderr, "mxspoolctl: getcwd: %s\n", strerror(errno));
		return EX_OSERR;
	}
	n = snprintf(req, sizeof(req), "backup %s%s%s%s\n", dir[0] == '/' ? "" : cwd,
	    dir[0] == '/' ? "" : "/", dir, json ? " --json" : "");
	if (n < 0 || (size_t)n >= sizeof(req) || strpbrk(cwd, " \t") != NULL) {
		fprintf(stderr, "mxspoolctl: backup: %s: path too long or with spaces\n", dir);
		return EX_USAGE;
	}
	if ((fd = ctl_connect(sock)) < 0)
		return fd == -2 ? EX_NOPERM : EX_UNAVAILABLE;
	if (ctl_write_all(fd, req, (size_t)n) != 0) {
		fprintf(stderr, "mxspoolctl: write to %s: %s\n", sock, strerror(errno));
		close(fd);
		return EX_IOERR;
	}
	n = ctl_backup_read(fd, &rc);
	close(fd);
	return n != 0 ? n : rc;
}
