/*
 * main.c - mxspoold: options, config, spool lock, privilege drop, signals,
 * sd_notify, and the order in which the modules start and stop.
 *
 * Start: load config -> lock spool_dir -> bind SMTP, control and metrics
 * sockets -> drop privileges -> open (recover) the spool -> start the drain
 * -> accept -> READY=1.  Stop (SIGTERM/SIGINT): STOPPING=1 -> stop accepting
 * -> sessions and deliveries finish within a grace period -> the spool
 * flushes its last commits -> every handle closed -> exit 0.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/control.h"
#include "mxspool/drain.h"
#include "mxspool/log.h"
#include "mxspool/relay.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/util.h"

#define MAIN_GRACE_MS 10000     /* sessions and deliveries finishing on stop */

struct main_state {
	struct relay relay;
	uv_signal_t sig_term, sig_int, sig_hup;
	int lock_fd;
	unsigned pending_close;       /* modules still closing on the way out */
};

static void
main_usage(FILE *f)
{
	fprintf(f,
	    "usage: mxspoold -c FILE [-t] [-d]\n"
	    "       mxspoold --version\n"
	    "  -c FILE   configuration file (INI, see mxspool.ini(5))\n"
	    "  -t        check the configuration and exit (0 valid, 78 invalid)\n"
	    "  -d        debug logging\n");
}

static void
main_closed(void *arg)
{
	struct main_state *m = arg;

	if (--m->pending_close == 0) {
		uv_close((uv_handle_t *)&m->sig_term, NULL);
		uv_close((uv_handle_t *)&m->sig_int, NULL);
		uv_close((uv_handle_t *)&m->sig_hup, NULL);
	}
}

static void
main_spool_closed(void *arg)
{
	struct main_state *m = arg;

	/* The resolver goes last: nothing is left to ask it anything. */
	relay_close(&m->relay, main_closed, m);
}

static void
main_drain_closed(void *arg)
{
	struct main_state *m = arg;

	/* The spool goes last: deliveries in flight write their outcomes. */
	if (m->relay.spool)
		spool_close(m->relay.spool, main_spool_closed, m);
	else
		main_closed(m);
}

static void
main_server_closed(void *arg)
{
	struct main_state *m = arg;

	m->relay.server = NULL;   /* freed: control must not ask it any more */
	if (m->relay.drain)
		drain_close(m->relay.drain, main_drain_closed, m);
	else
		main_drain_closed(m);
}

static void
main_stop(struct main_state *m)
{
	struct relay *r = &m->relay;

	if (r->stopping)
		return;
	r->stopping = true;
	relay_notify("STOPPING=1");
	log_event(LOG_LEVEL_INFO, "stop", "reason=signal grace_ms=%u", MAIN_GRACE_MS);
	/* Two chains close in parallel: control, and server -> drain -> spool. */
	m->pending_close = 2;
	control_close(r->control, main_closed, m);
	smtp_server_close(r->server, MAIN_GRACE_MS, main_server_closed, m);
}

static void
main_on_signal(uv_signal_t *h, int signum)
{
	struct main_state *m = h->data;
	char err[1024];

	if (signum == SIGHUP) {
		log_event(LOG_LEVEL_INFO, "signal", "signal=HUP action=reload");
		(void)relay_reload(&m->relay, err, sizeof(err));
		return;
	}
	main_stop(m);
}

/*
 * One daemon per spool: an flock on spool_dir/lock, held for the life of the
 * process (it survives the privilege drop because the fd stays open).
 */
static int
main_lock_spool(const char *dir, int *fdp)
{
	char path[4096], buf[32];
	int fd, n;

	if (util_mkdir_p(dir, 0750) != 0) {
		fprintf(stderr, "mxspoold: cannot create spool_dir %s: %s\n", dir, strerror(errno));
		return EX_CANTCREAT;
	}
	snprintf(path, sizeof(path), "%s/lock", dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		fprintf(stderr, "mxspoold: cannot open %s: %s\n", path, strerror(errno));
		return EX_CANTCREAT;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		n = (int)pread(fd, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		fprintf(stderr, "mxspoold: spool %s is locked by another mxspoold "
		    "(pid %s, lock file %s): refusing to start\n", dir,
		    buf[0] ? buf : "unknown", path);
		close(fd);
		return EX_TEMPFAIL;
	}
	n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		fprintf(stderr, "mxspoold: cannot write %s: %s\n", path, strerror(errno));
		close(fd);
		return EX_IOERR;
	}
	*fdp = fd;
	return 0;
}

/* Hand spool_dir to USER and become USER; sockets are already bound. */
static int
main_drop_privileges(const struct config *cfg)
{
	struct passwd *pw;

	if (cfg->user == NULL || cfg->user[0] == '\0')
		return 0;
	pw = getpwnam(cfg->user);
	if (geteuid() != 0) {
		/* Started as that user already (the systemd unit's User=): fine. */
		if (pw != NULL && pw->pw_uid == geteuid())
			log_event(LOG_LEVEL_INFO, "privileges", "user=%s uid=%ld note=\"started as it\"",
			    cfg->user, (long)geteuid());
		else
			log_event(LOG_LEVEL_WARN, "privileges", "user=%s note=\"not root: running as uid %ld\"",
			    cfg->user, (long)geteuid());
		return 0;
	}
	if (pw == NULL) {
		fprintf(stderr, "mxspoold: user %s: no such user\n", cfg->user);
		return EX_NOUSER;
	}
	/* The control socket keeps control_group when one is set. */
	if (chown(cfg->spool_dir, pw->pw_uid, pw->pw_gid) != 0 ||
	    chown(cfg->control_socket, pw->pw_uid,
	    cfg->control_group ? (gid_t)-1 : pw->pw_gid) != 0) {
		fprintf(stderr, "mxspoold: chown to %s: %s\n", cfg->user, strerror(errno));
		return EX_NOPERM;
	}
	if (setgroups(1, &pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
	    setuid(pw->pw_uid) != 0) {
		fprintf(stderr, "mxspoold: cannot become %s: %s\n", cfg->user, strerror(errno));
		return EX_NOPERM;
	}
	log_event(LOG_LEVEL_INFO, "privileges", "user=%s uid=%ld", cfg->user, (long)pw->pw_uid);
	return 0;
}

static int
main_signals(struct main_state *m)
{
	uv_signal_t *sigs[] = { &m->sig_term, &m->sig_int, &m->sig_hup };
	int nums[] = { SIGTERM, SIGINT, SIGHUP };

	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; i < 3; i++) {
		if (uv_signal_init(m->relay.loop, sigs[i]) != 0 ||
		    uv_signal_start(sigs[i], main_on_signal, nums[i]) != 0)
			return -1;
		sigs[i]->data = m;
	}
	return 0;
}

static int
main_run(struct main_state *m)
{
	struct relay *r = &m->relay;
	struct spool_options so;
	struct spool_recovery_stats rs;
	char err[1024];
	int rc;

	if ((rc = main_lock_spool(r->cfg->spool_dir, &m->lock_fd)) != 0)
		return rc;
	if (relay_bind_smtp(r, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		return EX_UNAVAILABLE;
	}
	if (control_new(r, &r->control, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		return EX_UNAVAILABLE;
	}
	if ((rc = main_drop_privileges(r->cfg)) != 0)
		return rc;

	memset(&so, 0, sizeof(so));
	so.dir = r->cfg->spool_dir;
	so.disk_reserve = r->cfg->disk_reserve;
	so.commit_window_ms = r->cfg->commit_window_ms;
	rc = spool_open(r->loop, &so, &r->spool, &rs);
	if (rc != 0) {
		fprintf(stderr, "mxspoold: cannot open spool %s: %s\n",
		    r->cfg->spool_dir, rc < -1000 ? spool_strerror(rc) : strerror(-rc));
		return EX_IOERR;
	}
	log_event(LOG_LEVEL_INFO, "recovery", "segments=%llu messages=%llu bytes=%llu "
	    "torn_bytes=%llu corrupt_records=%llu duration_ms=%llu",
	    (unsigned long long)rs.segments, (unsigned long long)rs.messages,
	    (unsigned long long)rs.bytes, (unsigned long long)rs.torn_bytes,
	    (unsigned long long)rs.corrupt_records, (unsigned long long)rs.duration_ms);
	if (main_signals(m) != 0) {
		fprintf(stderr, "mxspoold: cannot install signal handlers\n");
		return EX_OSERR;
	}
	if ((rc = relay_start(r, err, sizeof(err))) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		return rc;
	}
	log_event(LOG_LEVEL_INFO, "ready", "version=%s hostname=%s tenants=%zu listen=%zu",
	    PACKAGE_VERSION, r->cfg->hostname, r->cfg->ntenants, r->cfg->nlisten);
	relay_notify("READY=1");

	uv_run(r->loop, UV_RUN_DEFAULT);

	rc = uv_loop_close(r->loop);
	if (rc != 0) {
		log_event(LOG_LEVEL_ERR, "stop", "error=\"handles still open at exit\"");
		uv_print_all_handles(r->loop, stderr);
		return EX_SOFTWARE;
	}
	log_event(LOG_LEVEL_INFO, "stop", "result=ok uptime_s=%lld",
	    (long long)((util_now_ms() - r->started_ms) / 1000));
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct main_state m;
	struct config *cfg = NULL;
	const char *path = NULL;
	char err[1024];
	int check = 0, debug = 0, ch, rc;

	while ((ch = getopt_long(argc, argv, "c:tdh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': path = optarg; break;
		case 't': check = 1; break;
		case 'd': debug = 1; break;
		case 'V': printf("mxspoold %s\n", PACKAGE_VERSION); return 0;
		case 'h': main_usage(stdout); return 0;
		default: main_usage(stderr); return EX_USAGE;
		}
	}
	if (path == NULL || optind != argc) {
		main_usage(stderr);
		return EX_USAGE;
	}
	log_init("mxspoold", debug);

	memset(&m, 0, sizeof(m));
	m.lock_fd = -1;
	if (config_load(path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return EX_CONFIG;
	}
	if (check) {
		config_free(cfg);
		return 0;
	}
	log_event(LOG_LEVEL_INFO, "start", "version=%s config=%s pid=%ld",
	    PACKAGE_VERSION, path, (long)getpid());
	if (relay_init(&m.relay, uv_default_loop(), cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		relay_free(&m.relay);
		return EX_UNAVAILABLE;
	}
	rc = main_run(&m);
	relay_free(&m.relay);
	if (m.lock_fd >= 0)
		close(m.lock_fd);
	return rc;
}
