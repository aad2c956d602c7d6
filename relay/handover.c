/*
 * handover.c - the descriptors and lines of a SIGUSR2 re-exec (handover.h).
 *
 * The child is started with posix_spawn: glibc reports a failed exec (a
 * missing binary) to the caller as the spawn's error, so the old process
 * learns of it at once and has changed nothing.  Every descriptor to pass
 * is first duplicated above HANDOVER_HIGH_FD (close-on-exec), then the
 * spawn's file actions put each copy at its place in the child, which
 * clears close-on-exec there; so no target can collide with a source.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mxspool/handover.h"
#include "mxspool/util.h"

#define HANDOVER_ENV "MXSPOOL_HANDOVER"
#define HANDOVER_HIGH_FD 100          /* above every target (3 + 64 + 4) */

extern char **environ;

/* Our environment without the socket-activation and handover variables,
 * plus LISTEN_FDS=N and MXSPOOL_HANDOVER=VALUE (NULL-terminated, free()). */
static char **
handover_env(size_t nsmtp, const char *value)
{
	size_t n = 0, k = 0;
	char **env;

	while (environ[n] != NULL)
		n++;
	env = xcalloc(n + 3, sizeof(*env));
	for (size_t i = 0; i < n; i++) {
		const char *e = environ[i];

		if (strncmp(e, "LISTEN_PID=", 11) == 0 || strncmp(e, "LISTEN_FDS=", 11) == 0 ||
		    strncmp(e, "LISTEN_FDNAMES=", 15) == 0 ||
		    strncmp(e, HANDOVER_ENV "=", sizeof(HANDOVER_ENV)) == 0)
			continue;
		env[k++] = xstrdup(e);
	}
	env[k] = xmalloc(32);
	snprintf(env[k++], 32, "LISTEN_FDS=%zu", nsmtp);
	env[k] = xmalloc(strlen(value) + sizeof(HANDOVER_ENV) + 1);
	sprintf(env[k++], HANDOVER_ENV "=%s", value);
	env[k] = NULL;
	return env;
}

static void
handover_env_free(char **env)
{
	for (size_t i = 0; env[i] != NULL; i++)
		free(env[i]);
	free(env);
}

int
handover_spawn(const char *exe, char *const argv[],
    const struct handover_fds *fds, pid_t *pid, int *chan)
{
	/* Sources in target order: smtp..., channel, lock, control, metrics. */
	int src[HANDOVER_MAX_SMTP + 4], hi[HANDOVER_MAX_SMTP + 4], sv[2];
	size_t n = 0, nhi = 0;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	char value[128], **env;
	int rc;

	if (fds->nsmtp > HANDOVER_MAX_SMTP)
		return -EINVAL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return -errno;
	for (size_t i = 0; i < fds->nsmtp; i++)
		src[n++] = fds->smtp[i];
	src[n++] = sv[1];
	src[n++] = fds->lock;
	if (fds->control >= 0)
		src[n++] = fds->control;
	if (fds->metrics >= 0)
		src[n++] = fds->metrics;
	rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		hi[nhi] = fcntl(src[i], F_DUPFD_CLOEXEC, HANDOVER_HIGH_FD);
		if (hi[nhi] < 0)
			rc = -errno;
		else
			nhi++;
	}
	snprintf(value, sizeof(value), "chan=%zu lock=%zu control=%d metrics=%d",
	    fds->nsmtp + 3, fds->nsmtp + 4,
	    fds->control >= 0 ? (int)fds->nsmtp + 5 : -1,
	    fds->metrics >= 0 ? (int)fds->nsmtp + 5 + (fds->control >= 0) : -1);
	if (rc == 0 && (rc = -posix_spawn_file_actions_init(&fa)) == 0) {
		for (size_t i = 0; i < nhi && rc == 0; i++)
			rc = -posix_spawn_file_actions_adddup2(&fa, hi[i], 3 + (int)i);
		if (rc == 0 && (rc = -posix_spawnattr_init(&at)) == 0) {
			sigemptyset(&none);
			sigfillset(&all);
			(void)posix_spawnattr_setsigmask(&at, &none);
			(void)posix_spawnattr_setsigdefault(&at, &all);
			(void)posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK |
			    POSIX_SPAWN_SETSIGDEF);
			env = handover_env(fds->nsmtp, value);
			rc = -posix_spawn(pid, exe, &fa, &at, argv, env);
			handover_env_free(env);
			posix_spawnattr_destroy(&at);
		}
		posix_spawn_file_actions_destroy(&fa);
	}
	for (size_t i = 0; i < nhi; i++)
		(void)close(hi[i]);
	(void)close(sv[1]);
	if (rc != 0) {
		(void)close(sv[0]);
		return rc;
	}
	*chan = sv[0];
	return 0;
}

static int
handover_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);

	return fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) != 0 ? -1 : 0;
}

int
handover_inherited(struct handover_fds *fds, int *chan)
{
	const char *v = getenv(HANDOVER_ENV), *n = getenv("LISTEN_FDS");
	char pid[32];
	int c, l, ctl, met;

	if (v == NULL)
		return 0;
	if (sscanf(v, "chan=%d lock=%d control=%d metrics=%d", &c, &l, &ctl, &met) != 4 ||
	    c < 3 || l < 3 || n == NULL || atol(n) < 0 || atol(n) > HANDOVER_MAX_SMTP)
		return -1;
	memset(fds, 0, sizeof(*fds));
	fds->nsmtp = (size_t)atol(n);
	for (size_t i = 0; i < fds->nsmtp; i++)
		fds->smtp[i] = 3 + (int)i;
	fds->lock = l;
	fds->control = ctl;
	fds->metrics = met;
	*chan = c;
	if (handover_cloexec(c) != 0 || handover_cloexec(l) != 0 ||
	    (ctl >= 0 && handover_cloexec(ctl) != 0) ||
	    (met >= 0 && handover_cloexec(met) != 0))
		return -1;
	unsetenv(HANDOVER_ENV);
	/* smtp_server takes fds 3.. only when LISTEN_PID names us. */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	if (fds->nsmtp > 0)
		setenv("LISTEN_PID", pid, 1);
	else
		unsetenv("LISTEN_FDS");
	return 1;
}

int
handover_send(int chan, const char *line)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%s\n", line);
	ssize_t w;

	if (n < 0 || (size_t)n >= sizeof(buf))
		return -EINVAL;
	do
		w = send(chan, buf, (size_t)n, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	return w == n ? 0 : (w < 0 ? -errno : -EIO);
}

int
handover_wait_go(int chan)
{
	char buf[16];
	size_t len = 0;

	for (;;) {
		ssize_t r = read(chan, buf + len, sizeof(buf) - 1 - len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return 0;   /* the old process is gone: its journal is shut */
		len += (size_t)r;
		buf[len] = '\0';
		if (strchr(buf, '\n') != NULL)
			return strcmp(buf, "go\n") == 0 ? 0 : -1;
		if (len == sizeof(buf) - 1)
			return -1;
	}
}
