/*
 * mxspoolctl - talk to a running mxspoold over its control socket.
 *
 * The protocol (control.h): one request line, then the daemon answers "ok" or
 * "error MESSAGE" on the first line, the body after it, and closes.  All the
 * formatting is done by the daemon, so this tool stays a pipe with options.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#include "mxspoolctl.h"

#define CTL_DEFAULT_SOCKET "/run/mxspool/control.sock"
#define CTL_DEFAULT_CONFIG SYSCONFDIR "/mxspool/mxspool.ini"
#define CTL_TIMEOUT_MS 30000

static void
ctl_usage(FILE *f)
{
	fprintf(f,
	    "usage: mxspoolctl [-c FILE | -s SOCKET] COMMAND [ARGS] [--json]\n"
	    "commands:\n"
	    "  status                 daemon and per-tenant figures\n"
	    "  status --fleet         every host of the [fleet] and the sums\n"
	    "  queue [TENANT] [--from A] [--to A] [--older-than D] [--deferred]\n"
	    "        [--limit N] [--after QUEUEID]\n"
	    "                         list queued messages, oldest first\n"
	    "  show QUEUEID           envelope and recipient states of a message\n"
	    "  flush [TENANT]         probe the primary now and drain if it is up\n"
	    "  hold TENANT            stop draining a tenant (mail is still accepted)\n"
	    "  release TENANT         resume draining a tenant\n"
	    "  delete QUEUEID         remove a message without notice\n"
	    "  bounce QUEUEID         return a message to its sender now\n"
	    "  delete|bounce --tenant T [queue's filters] [--dry-run]\n"
	    "                         the same for every message that matches\n"
	    "  requeue [TENANT]       retry deferred mail now (no probe)\n"
	    "  set TENANT KEY=VALUE.. change drain settings until the next reload\n"
	    "  reload                 re-read the configuration file\n"
	    "  backup DIR             consistent copy of the spool into DIR, online\n"
	    "  recipients TENANT      what recipients = learn learned, newest first\n"
	    "  forget TENANT ADDRESS  drop an address from that cache (asked again)\n"
	    "  watch [--interval S] [--count N]\n"
	    "                         full-screen drain view, redrawn every second\n"
	    "-c FILE finds the socket from the config's [server] control_socket;\n"
	    "the default is -c " CTL_DEFAULT_CONFIG " if it exists, else " CTL_DEFAULT_SOCKET ".\n");
}

/*
 * Only control_socket is wanted, and a config that the daemon would refuse
 * must still lead to the socket ("mxspoolctl reload" after a bad edit is how
 * the operator hears about it), so this reader ignores every other key.
 */
static int
ctl_ini_handler(void *user, const char *section, const char *name,
    const char *value)
{
	char **sock = user;

	if (strcmp(section, "server") == 0 && strcmp(name, "control_socket") == 0) {
		free(*sock);
		*sock = strdup(value);
	}
	return 1;
}

static int
ctl_socket_from_config(const char *path, char **sock)
{
	FILE *f = fopen(path, "r");

	if (f == NULL) {
		fprintf(stderr, "mxspoolctl: %s: %s\n", path, strerror(errno));
		return -1;
	}
	(void)ini_parse_file(f, ctl_ini_handler, sock);
	fclose(f);
	if (*sock == NULL)
		*sock = strdup(CTL_DEFAULT_SOCKET);
	return *sock ? 0 : -1;
}

int
ctl_connect(const char *path)
{
	struct sockaddr_un sun;
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "mxspoolctl: socket path too long: %s\n", path);
		return -1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		int e = errno;

		if (e == EACCES || e == EPERM)
			fprintf(stderr, "mxspoolctl: %s: permission denied (the control "
			    "socket is for root, the daemon's user and its control_group)\n",
			    path);
		else
			fprintf(stderr, "mxspoolctl: cannot connect to %s: %s (is mxspoold "
			    "running?)\n", path, strerror(e));
		if (fd >= 0)
			close(fd);
		return e == EACCES || e == EPERM ? -2 : -1;
	}
	return fd;
}

int
ctl_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * One request: send REQ (LEN bytes, newline included) to SOCK and read the
 * whole answer into *RESP (NUL-terminated, free()).  0, or a <sysexits.h>
 * code after saying why on stderr.
 */
int
ctl_request(const char *sock, const char *req, size_t len, char **respp,
    size_t *rlenp)
{
	char *resp = NULL;
	size_t rlen = 0, rcap = 0;
	int fd, rc;

	*respp = NULL;
	if ((fd = ctl_connect(sock)) < 0)
		return fd == -2 ? EX_NOPERM : EX_UNAVAILABLE;
	if (ctl_write_all(fd, req, len) != 0) {
		fprintf(stderr, "mxspoolctl: write to %s: %s\n", sock, strerror(errno));
		close(fd);
		return EX_IOERR;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (rcap - rlen < 4096) {
			char *nr = realloc(resp, rcap * 2 + 65536);

			if (nr == NULL) {
				fprintf(stderr, "mxspoolctl: out of memory\n");
				rc = EX_OSERR;
				goto fail;
			}
			resp = nr;
			rcap = rcap * 2 + 65536;
		}
		if ((rc = poll(&p, 1, CTL_TIMEOUT_MS)) <= 0) {
			if (rc < 0 && errno == EINTR)
				continue;
			fprintf(stderr, "mxspoolctl: no answer from %s\n", sock);
			rc = EX_UNAVAILABLE;
			goto fail;
		}
		n = read(fd, resp + rlen, rcap - rlen - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "mxspoolctl: read from %s: %s\n", sock, strerror(errno));
			rc = EX_IOERR;
			goto fail;
		}
		if (n == 0)
			break;
		rlen += (size_t)n;
	}
	close(fd);
	if (rlen == 0) {
		fprintf(stderr, "mxspoolctl: empty answer from %s\n", sock);
		free(resp);
		return EX_PROTOCOL;
	}
	resp[rlen] = '\0';
	*respp = resp;
	*rlenp = rlen;
	return 0;
fail:
	close(fd);
	free(resp);
	return rc;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	char *sock = NULL, *resp = NULL, req[4096];
	const char *cfg = NULL;
	size_t rlen = 0, off = 0;
	int json = 0, ch, rc;

	while ((ch = getopt_long(argc, argv, "+c:s:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': cfg = optarg; break;
		case 's': free(sock); sock = strdup(optarg); break;
		case 'j': json = 1; break;
		case 'h': ctl_usage(stdout); return 0;
		case 'V': printf("mxspoolctl %s\n", PACKAGE_VERSION); return 0;
		default: ctl_usage(stderr); return EX_USAGE;
		}
	}
	if (optind >= argc) {
		ctl_usage(stderr);
		return EX_USAGE;
	}
	if (sock == NULL) {
		if (cfg == NULL && access(CTL_DEFAULT_CONFIG, R_OK) == 0)
			cfg = CTL_DEFAULT_CONFIG;
		if (cfg != NULL) {
			if (ctl_socket_from_config(cfg, &sock) != 0) {
				free(sock);
				return EX_NOINPUT;
			}
		} else {
			sock = strdup(CTL_DEFAULT_SOCKET);
		}
	}
	if (strcmp(argv[optind], "backup") == 0) {
		rc = ctl_backup(sock, argc - optind, argv + optind, json);
		free(sock);
		return rc;
	}
	if (strcmp(argv[optind], "watch") == 0) {
		rc = ctl_watch(sock, argc - optind, argv + optind);
		free(sock);
		return rc;
	}
	/* Arguments after the command may carry --json too (git style). */
	for (int i = optind; i < argc; i++) {
		const char *a = strcmp(argv[i], "--json") == 0 ? NULL : argv[i];
		int n;

		if (a == NULL) {
			json = 1;
			continue;
		}
		if (strpbrk(a, "\r\n") != NULL) {
			fprintf(stderr, "mxspoolctl: argument contains a line break\n");
			free(sock);
			return EX_USAGE;
		}
		n = snprintf(req + off, sizeof(req) - off, "%s%s", off ? " " : "", a);
		if (n < 0 || (size_t)n >= sizeof(req) - off) {
			fprintf(stderr, "mxspoolctl: command too long\n");
			free(sock);
			return EX_USAGE;
		}
		off += (size_t)n;
	}
	if (json && off + 8 < sizeof(req))
		off += (size_t)snprintf(req + off, sizeof(req) - off, " --json");
	req[off++] = '\n';

	if ((rc = ctl_request(sock, req, off, &resp, &rlen)) != 0) {
		free(sock);
		return rc;
	}
	char *body = strchr(resp, '\n');

	body = body ? body + 1 : resp + rlen;
	if (strncmp(resp, "ok", 2) == 0) {
		fputs(body, stdout);
		rc = 0;
	} else if (strncmp(resp, "error ", 6) == 0) {
		body[-1] = '\0';
		fprintf(stderr, "mxspoolctl: %s\n", resp + 6);
		rc = strncmp(resp + 6, "reload refused", 14) == 0 ? EX_CONFIG :
		    strncmp(resp + 6, "permission denied", 17) == 0 ? EX_NOPERM :
		    EX_DATAERR;
	} else {
		fprintf(stderr, "mxspoolctl: unexpected answer: %.80s\n", resp);
		rc = EX_PROTOCOL;
	}
	free(resp);
	free(sock);
	return rc;
}
