/*
 * main.c - mxspoold: options, config, spool lock, privilege drop, signals,
 * sd_notify, and the order in which the modules start and stop.
 *
 * Start: load config -> lock spool_dir -> bind SMTP, control and metrics
 * sockets -> drop privileges -> open (recover) the spool -> start the drain
 * -> accept -> READY=1.  Stop (SIGTERM/SIGINT): STOPPING=1 -> stop accepting
 * -> sessions and deliveries finish within a grace period -> the spool
 * flushes its last commits -> every handle closed -> exit 0.
 *
 * SIGUSR2 (upgrade without refusing a connection): start the binary again
 * (the path we were started from, so an upgraded file is picked up) with
 * the listeners, the control socket and the locked spool descriptor
 * inherited (handover.h).  Until the new process says "ready" this one
 * serves as before; a new binary that is missing, crashes or fails its
 * config is logged and changes nothing.  Then this one stops accepting (the
 * kernel queues new connections on the shared sockets, nobody refuses
 * them), lets its sessions and deliveries finish, closes its journal and
 * says "go"; the new one recovers the spool, accepts, tells systemd its
 * pid (MAINPID) and says "serving", and this one exits 0.  If the new one
 * dies after "go" (its recovery failed), this process hands over to its
 * own, still-running binary (/proc/self/exe) the same way, so a failed
 * upgrade leaves the old version serving.  One journal writer at a time,
 * one lock throughout: the lock's descriptor is shared, never released.
 *
 * --standby (hot spare on shared storage): wait for the spool lock, then
 * start as usual; see mxspoold(8).
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "mxspool/config.h"
#include "mxspool/control.h"
#include "mxspool/drain.h"
#include "mxspool/handover.h"
#include "mxspool/log.h"
#include "mxspool/relay.h"
#include "mxspool/smtp_server.h"
#include "mxspool/spool.h"
#include "mxspool/util.h"

#define MAIN_GRACE_MS 10000     /* sessions and deliveries finishing on stop */
/* Handover: a session between commands that has been silent this long
 * gets 421.  Silent, not merely between commands: a client just greeted or
 * answered is about to send, and a 421 then crosses its command.  Generous
 * for a slow link or a loaded client; new clients meanwhile wait in the
 * listen queue, which SMTP clients do for minutes. */
#define MAIN_HO_IDLE_MS 2000
#define MAIN_HO_READY_MS 60000  /* handover: the new process must be ready */
#define MAIN_STANDBY_POLL_MS 50 /* --standby: lock retry period */

/* The old side of a SIGUSR2 handover. */
enum main_ho_state {
	MAIN_HO_IDLE,
	MAIN_HO_STARTING,             /* spawned: waiting for "ready" */
	MAIN_HO_STOPPING,             /* ready: our services are closing */
	MAIN_HO_GO_SENT,              /* journal closed: waiting for "serving" */
	MAIN_HO_DONE,                 /* the new process serves: we exit */
};

struct main_handover {
	enum main_ho_state state;
	pid_t pid;
	uv_pipe_t *chan;              /* per child (a closing one may linger) */
	uv_timer_t timer;             /* MAIN_HO_READY_MS */
	char line[64];
	size_t len;
	struct handover_fds fds;      /* our duplicates, passed to each child */
	bool have_fds;
	bool fallback;                /* the child runs our own binary */
	bool child_gone;              /* it died while we were stopping */
	bool term_after;              /* SIGTERM came meanwhile: pass it on */
	int64_t t0;
};

struct main_state {
	struct relay relay;
	uv_signal_t sig_term, sig_int, sig_hup, sig_usr2;
	int lock_fd;
	unsigned pending_close;       /* modules still closing on the way out */
	bool standby;                 /* --standby: wait for the lock */
	char exe[4096];               /* what SIGUSR2 runs */
	char **argv;
	struct main_handover ho;
	struct handover_fds inherited;  /* the new side's sockets */
	int inherited_chan;           /* the new side's channel, or -1 */
	int exit_code;
};

static void
main_usage(FILE *f)
{
	fprintf(f,
	    "usage: mxspoold -c FILE [-t] [-d] [--standby]\n"
	    "       mxspoold --version\n"
	    "  -c FILE    configuration file (INI, see mxspool.ini(5))\n"
	    "  -t         check the configuration and exit (0 valid, 78 invalid)\n"
	    "  -d         debug logging\n"
	    "  --standby  wait until the spool lock is free, then take over\n"
	    "SIGHUP reloads the configuration; SIGUSR2 re-executes the binary\n"
	    "without refusing a connection (upgrades).\n");
}

static void main_ho_chan_close(struct main_handover *ho);

static void
main_closed(void *arg)
{
	struct main_state *m = arg;

	if (--m->pending_close == 0) {
		uv_close((uv_handle_t *)&m->sig_term, NULL);
		uv_close((uv_handle_t *)&m->sig_int, NULL);
		uv_close((uv_handle_t *)&m->sig_hup, NULL);
		uv_close((uv_handle_t *)&m->sig_usr2, NULL);
		uv_close((uv_handle_t *)&m->ho.timer, NULL);
		if (m->ho.chan != NULL)
			main_ho_chan_close(&m->ho);
	}
}

static void main_ho_go(struct main_state *m);

static void
main_spool_closed(void *arg)
{
	struct main_state *m = arg;

	m->relay.spool = NULL;
	if (m->ho.state == MAIN_HO_STOPPING) {
		/* Our journal is shut: the new process may recover it. */
		main_ho_go(m);
		return;
	}
	/* The resolver goes last: nothing is left to ask it anything. */
	relay_close(&m->relay, main_closed, m);
}

static void
main_drain_closed(void *arg)
{
	struct main_state *m = arg;

	m->relay.drain = NULL;    /* freed: a late reload must not reach it */
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

/* ---- SIGUSR2: the old side of a handover ---------------------------------- */

static void
main_ho_close_fds(struct main_handover *ho)
{
	if (!ho->have_fds)
		return;
	for (size_t i = 0; i < ho->fds.nsmtp; i++)
		(void)close(ho->fds.smtp[i]);
	(void)close(ho->fds.lock);
	if (ho->fds.control >= 0)
		(void)close(ho->fds.control);
	if (ho->fds.metrics >= 0)
		(void)close(ho->fds.metrics);
	ho->have_fds = false;
}

/* Our own copies of every socket to pass (close-on-exec), so that a second
 * child can be given them after our listeners are closed. */
static int
main_ho_dup_fds(struct main_state *m)
{
	struct main_handover *ho = &m->ho;
	int fds[HANDOVER_MAX_SMTP], ctl = -1, met = -1;
	size_t n = smtp_server_listen_fds(m->relay.server, fds, HANDOVER_MAX_SMTP);

	memset(&ho->fds, 0, sizeof(ho->fds));
	ho->fds.control = ho->fds.metrics = -1;
	ho->fds.lock = fcntl(m->lock_fd, F_DUPFD_CLOEXEC, 3);
	if (ho->fds.lock < 0)
		return -errno;
	ho->have_fds = true;
	for (size_t i = 0; i < n; i++) {
		if ((ho->fds.smtp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0)
			return -errno;
		ho->fds.nsmtp++;
	}
	if (control_listen_fds(m->relay.control, &ctl, &met) != 0)
		return -EBADF;
	if (ctl >= 0 && (ho->fds.control = fcntl(ctl, F_DUPFD_CLOEXEC, 3)) < 0)
		return -errno;
	if (met >= 0 && (ho->fds.metrics = fcntl(met, F_DUPFD_CLOEXEC, 3)) < 0)
		return -errno;
	return 0;
}

/* The child is no good: make sure it is gone and reaped. */
static void
main_ho_kill_child(struct main_handover *ho)
{
	int st;

	if (ho->pid <= 0)
		return;
	if (waitpid(ho->pid, &st, WNOHANG) == 0) {
		(void)kill(ho->pid, SIGKILL);
		(void)waitpid(ho->pid, &st, 0);   /* SIGKILL: at once */
	}
	ho->pid = 0;
}

static void
main_ho_chan_freed(uv_handle_t *h)
{
	free(h);
}

static void
main_ho_chan_close(struct main_handover *ho)
{
	if (ho->chan != NULL) {
		uv_close((uv_handle_t *)ho->chan, main_ho_chan_freed);
		ho->chan = NULL;
	}
	(void)uv_timer_stop(&ho->timer);
}

static int main_ho_spawn(struct main_state *m, const char *exe);

/*
 * The child failed.  Before "ready" nothing of ours was touched: go on
 * serving.  After that our services are closed (or closing): hand over to
 * our own binary instead; if even that fails, nobody can serve the spool
 * from this process and it exits with an error (systemd restarts it).
 */
static void
main_ho_failed(struct main_state *m, const char *why)
{
	struct main_handover *ho = &m->ho;
	enum main_ho_state was = ho->state;

	log_event(LOG_LEVEL_ERR, "reexec", "result=failed stage=%s pid=%ld error=\"%s\"%s",
	    was == MAIN_HO_STARTING ? "start" : "takeover", (long)ho->pid, why,
	    was == MAIN_HO_STARTING ? " note=\"this process keeps serving\"" : "");
	main_ho_chan_close(ho);
	main_ho_kill_child(ho);
	if (was == MAIN_HO_STARTING) {
		main_ho_close_fds(ho);
		ho->state = MAIN_HO_IDLE;
		return;
	}
	if (was == MAIN_HO_STOPPING) {
		ho->child_gone = true;    /* main_ho_go hands over once we are shut */
		return;
	}
	if (!ho->fallback && main_ho_spawn(m, "/proc/self/exe") == 0) {
		ho->fallback = true;
		ho->state = MAIN_HO_GO_SENT;   /* services closed: go at "ready" */
		return;
	}
	log_event(LOG_LEVEL_ERR, "reexec", "result=failed note=\"no process serves the spool; exiting\"");
	ho->state = MAIN_HO_DONE;
	m->exit_code = EX_SOFTWARE;
	relay_close(&m->relay, main_closed, m);
}

/* Our journal is closed ("go"), or a fallback child became ready. */
static void
main_ho_go(struct main_state *m)
{
	struct main_handover *ho = &m->ho;
	uv_os_fd_t fd;

	ho->state = MAIN_HO_GO_SENT;
	if (ho->child_gone) {
		ho->child_gone = false;
		main_ho_failed(m, "the new process died while this one stopped");
		return;
	}
	if (ho->chan == NULL || uv_fileno((uv_handle_t *)ho->chan, &fd) != 0 ||
	    handover_send(fd, "go") != 0) {
		main_ho_failed(m, "cannot tell the new process to go");
		return;
	}
	log_event(LOG_LEVEL_INFO, "reexec", "stage=go pid=%ld", (long)ho->pid);
}

static void
main_ho_stop_services(struct main_state *m)
{
	struct relay *r = &m->relay;

	m->ho.state = MAIN_HO_STOPPING;
	r->handing_over = true;
	r->stopping = true;
	log_event(LOG_LEVEL_INFO, "reexec", "stage=ready pid=%ld note=\"this process "
	    "stops accepting; the new one takes the sockets\"", (long)m->ho.pid);
	m->pending_close = 2;
	control_close(r->control, main_closed, m);
	smtp_server_close_handover(r->server, MAIN_HO_IDLE_MS, MAIN_GRACE_MS,
	    main_server_closed, m);
}

static void
main_ho_line(struct main_state *m, const char *line)
{
	struct main_handover *ho = &m->ho;

	if (strcmp(line, "ready") == 0)
		(void)uv_timer_stop(&ho->timer);
	if (strcmp(line, "ready") == 0 && ho->state == MAIN_HO_STARTING) {
		main_ho_stop_services(m);
	} else if (strcmp(line, "ready") == 0 && ho->state == MAIN_HO_GO_SENT &&
	    ho->fallback) {
		main_ho_go(m);
	} else if (strcmp(line, "serving") == 0 && ho->state == MAIN_HO_GO_SENT) {
		log_event(LOG_LEVEL_INFO, "reexec", "result=ok pid=%ld binary=%s "
		    "duration_ms=%lld", (long)ho->pid, ho->fallback ? "/proc/self/exe" : m->exe,
		    (long long)(util_mono_ms() - ho->t0));
		ho->state = MAIN_HO_DONE;
		if (ho->term_after)
			(void)kill(ho->pid, SIGTERM);
		main_ho_chan_close(ho);
		main_ho_close_fds(ho);
		relay_close(&m->relay, main_closed, m);
	} else {
		main_ho_failed(m, "unexpected word from the new process");
	}
}

static void
main_ho_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct main_state *m = h->data;

	(void)hint;
	*buf = uv_buf_init(m->ho.line + m->ho.len,
	    (unsigned)(sizeof(m->ho.line) - 1 - m->ho.len));
}

static void
main_ho_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct main_state *m = s->data;
	struct main_handover *ho = &m->ho;
	char *nl;

	(void)buf;
	if (n < 0) {
		main_ho_failed(m, n == UV_EOF ? "the new process exited" : uv_strerror((int)n));
		return;
	}
	ho->len += (size_t)n;
	ho->line[ho->len] = '\0';
	while (ho->chan != NULL && (nl = strchr(ho->line, '\n')) != NULL) {
		*nl = '\0';
		main_ho_line(m, ho->line);
		ho->len -= (size_t)(nl + 1 - ho->line);
		memmove(ho->line, nl + 1, ho->len + 1);
	}
	if (ho->chan != NULL && ho->len == sizeof(ho->line) - 1)
		main_ho_failed(m, "line too long");
}

static void
main_ho_timeout(uv_timer_t *t)
{
	main_ho_failed(t->data, "not ready in time");
}

/* Start EXE with our sockets; 0 or -errno (logged). */
static int
main_ho_spawn(struct main_state *m, const char *exe)
{
	struct main_handover *ho = &m->ho;
	int chan, rc;

	rc = handover_spawn(exe, m->argv, &ho->fds, &ho->pid, &chan);
	if (rc != 0) {
		log_event(LOG_LEVEL_ERR, "reexec", "result=failed stage=exec binary=%s "
		    "error=\"%s\" note=\"this process keeps serving\"", exe, strerror(-rc));
		return rc;
	}
	ho->chan = xcalloc(1, sizeof(*ho->chan));
	uv_pipe_init(m->relay.loop, ho->chan, 0);
	ho->chan->data = m;
	ho->len = 0;
	if ((rc = uv_pipe_open(ho->chan, chan)) != 0 ||
	    (rc = uv_read_start((uv_stream_t *)ho->chan, main_ho_alloc, main_ho_read)) != 0) {
		main_ho_chan_close(ho);
		main_ho_kill_child(ho);
		return rc;
	}
	uv_timer_start(&ho->timer, main_ho_timeout, MAIN_HO_READY_MS, 0);
	log_event(LOG_LEVEL_INFO, "reexec", "stage=spawned pid=%ld binary=%s",
	    (long)ho->pid, exe);
	return 0;
}

static void
main_reexec(struct main_state *m)
{
	struct main_handover *ho = &m->ho;
	int rc;

	if (m->relay.stopping || ho->state != MAIN_HO_IDLE) {
		log_event(LOG_LEVEL_WARN, "reexec", "result=ignored note=\"%s\"",
		    ho->state != MAIN_HO_IDLE ? "a handover is in progress" : "stopping");
		return;
	}
	ho->t0 = util_mono_ms();
	ho->fallback = ho->child_gone = ho->term_after = false;
	if ((rc = main_ho_dup_fds(m)) != 0) {
		log_event(LOG_LEVEL_ERR, "reexec", "result=failed stage=sockets error=\"%s\"",
		    strerror(-rc));
		main_ho_close_fds(ho);
		return;
	}
	if (main_ho_spawn(m, m->exe) != 0) {
		main_ho_close_fds(ho);
		return;
	}
	ho->state = MAIN_HO_STARTING;
}

static void
main_on_signal(uv_signal_t *h, int signum)
{
	struct main_state *m = h->data;
	char err[1024];

	if (signum == SIGHUP && m->relay.stopping) {
		/* Modules are closing (a stop or a handover): nothing to apply to. */
		log_event(LOG_LEVEL_WARN, "signal", "signal=HUP action=ignored note=\"stopping\"");
		return;
	}
	if (signum == SIGHUP) {
		log_event(LOG_LEVEL_INFO, "signal", "signal=HUP action=reload");
		(void)relay_reload(&m->relay, err, sizeof(err));
		return;
	}
	if (signum == SIGUSR2) {
		log_event(LOG_LEVEL_INFO, "signal", "signal=USR2 action=reexec binary=%s", m->exe);
		main_reexec(m);
		return;
	}
	if (m->ho.state == MAIN_HO_STARTING) {
		/* Asked to stop before the new process took anything: it goes. */
		main_ho_failed(m, "stop requested");
	} else if (m->ho.state != MAIN_HO_IDLE) {
		/* The new process is taking over: it gets the stop when it serves. */
		m->ho.term_after = true;
		return;
	}
	main_stop(m);
}

/* "PID HOST" of the lock's holder, as it wrote it, for messages. */
static void
main_lock_holder(int fd, char *buf, size_t len)
{
	ssize_t n = pread(fd, buf, len - 1, 0);

	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (buf[0] == '\0')
		snprintf(buf, len, "unknown");
}

/* Say who holds the lock now: "PID HOST". */
static int
main_lock_write(int fd)
{
	char buf[320], host[256];
	int n;

	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "unknown");
	host[sizeof(host) - 1] = '\0';
	n = snprintf(buf, sizeof(buf), "%ld %s\n", (long)getpid(), host);
	if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n)
		return -1;
	return 0;
}

/*
 * --standby: poll the lock until its holder lets go (it exits, or dies:
 * the kernel, or the NFS server once the holder's lease expires, drops a
 * dead process's lock).  Polling rather than a blocking flock keeps the
 * wait correct on NFS, where a blocked lock request may not be woken.
 */
static int
main_lock_wait(int fd, const char *dir)
{
	struct timespec ts = { 0, MAIN_STANDBY_POLL_MS * 1000000L };
	char holder[320];
	int64_t t0 = util_mono_ms();

	main_lock_holder(fd, holder, sizeof(holder));
	log_event(LOG_LEVEL_INFO, "standby", "spool=%s holder=\"%s\" note=\"waiting "
	    "for the spool lock\"", dir, holder);
	relay_notify("STATUS=standby: waiting for the spool lock");
	while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno != EWOULDBLOCK && errno != EINTR) {
			fprintf(stderr, "mxspoold: lock %s: %s\n", dir, strerror(errno));
			return EX_IOERR;
		}
		(void)nanosleep(&ts, NULL);
	}
	log_event(LOG_LEVEL_INFO, "standby", "spool=%s result=acquired waited_ms=%lld "
	    "previous=\"%s\"", dir, (long long)(util_mono_ms() - t0), holder);
	return 0;
}

/*
 * One daemon per spool: an flock on spool_dir/lock, held for the life of the
 * process (it survives the privilege drop because the fd stays open, and a
 * SIGUSR2 re-exec because the new process inherits the descriptor).  On
 * shared storage the lock is shared too (NFS locks, a cluster file system):
 * a spool whose lock another live host holds is refused, or waited for
 * with --standby.
 */
static int
main_lock_spool(const char *dir, bool standby, int *fdp)
{
	char path[4096], holder[320];
	int fd, rc;

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
		if (standby && errno == EWOULDBLOCK) {
			rc = main_lock_wait(fd, dir);
		} else {
			main_lock_holder(fd, holder, sizeof(holder));
			fprintf(stderr, "mxspoold: spool %s is locked by another mxspoold "
			    "(pid and host: %s; lock file %s): refusing to start "
			    "(--standby waits for it)\n", dir, holder, path);
			rc = EX_TEMPFAIL;
		}
		if (rc != 0) {
			close(fd);
			return rc;
		}
	}
	if (main_lock_write(fd) != 0) {
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
	uv_signal_t *sigs[] = { &m->sig_term, &m->sig_int, &m->sig_hup, &m->sig_usr2 };
	int nums[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR2 };

	signal(SIGPIPE, SIG_IGN);
	if (uv_timer_init(m->relay.loop, &m->ho.timer) != 0)
		return -1;
	m->ho.timer.data = m;
	for (size_t i = 0; i < 4; i++) {
		if (uv_signal_init(m->relay.loop, sigs[i]) != 0 ||
		    uv_signal_start(sigs[i], main_on_signal, nums[i]) != 0)
			return -1;
		sigs[i]->data = m;
	}
	return 0;
}

/*
 * One descriptor per SMTP session, plus the journal, the control and
 * metrics clients, DNS and the drain's connections: with a soft limit of
 * 1024 (the default outside systemd, whose unit sets LimitNOFILE) accepts
 * failed with EMFILE long before max_connections, and libuv drops such
 * connections without a word.  Raise the soft limit up to the hard one (a
 * root start may raise the hard one too) and say so when it stays short.
 */
#define MAIN_FD_RESERVE 256

static void
main_raise_nofile(const struct config *cfg)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)cfg->max_connections + MAIN_FD_RESERVE;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
		return;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		struct rlimit up = { need, need };

		if (setrlimit(RLIMIT_NOFILE, &up) == 0) {
			rl = up;
			goto done;
		}
	}
	rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need ?
	    rl.rlim_max : need;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
done:
	if (rl.rlim_cur < need)
		log_event(LOG_LEVEL_WARN, "limits", "nofile=%llu max_connections=%u "
		    "note=\"the descriptor limit is below max_connections + %d: "
		    "connections past it are dropped at accept\"",
		    (unsigned long long)rl.rlim_cur, cfg->max_connections, MAIN_FD_RESERVE);
}

/*
 * A handover passes the lock of the old process's spool_dir: if the file we
 * were given names another one, the old process would go on owning a spool
 * we cannot see and we would write one we hold no lock for.  That edit
 * needs a real restart.
 */
static int
main_lock_is_ours(int fd, const char *dir)
{
	char path[4096];
	struct stat a, b;

	snprintf(path, sizeof(path), "%s/lock", dir);
	if (fstat(fd, &a) != 0 || stat(path, &b) != 0 || a.st_dev != b.st_dev ||
	    a.st_ino != b.st_ino) {
		fprintf(stderr, "mxspoold: handover: spool_dir %s is not the spool the "
		    "running daemon holds (spool_dir changed? restart instead)\n", dir);
		return EX_CONFIG;
	}
	return 0;
}

/* Lock (or the lock handed over), sockets, privileges. */
static int
main_prepare(struct main_state *m)
{
	struct relay *r = &m->relay;
	char err[1024];
	int rc;

	if (m->inherited_chan >= 0) {
		m->lock_fd = m->inherited.lock;   /* held by the old process too */
		r->handover = &m->inherited;
		if ((rc = main_lock_is_ours(m->lock_fd, r->cfg->spool_dir)) != 0)
			return rc;
	} else if ((rc = main_lock_spool(r->cfg->spool_dir, m->standby, &m->lock_fd)) != 0) {
		return rc;
	}
	main_raise_nofile(r->cfg);
	if (relay_bind_smtp(r, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		return EX_UNAVAILABLE;
	}
	if (control_new(r, &r->control, err, sizeof(err)) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		return EX_UNAVAILABLE;
	}
	return main_drop_privileges(r->cfg);
}

/* The new side of a handover: ready, then wait until the old process has
 * closed its journal; from then on the lock's one writer is us. */
static int
main_takeover(struct main_state *m)
{
	if (handover_send(m->inherited_chan, "ready") != 0 ||
	    handover_wait_go(m->inherited_chan) != 0) {
		fprintf(stderr, "mxspoold: handover: the old process did not say go\n");
		return EX_PROTOCOL;
	}
	if (main_lock_write(m->lock_fd) != 0)
		log_event(LOG_LEVEL_WARN, "reexec", "error=\"cannot write the lock file\"");
	log_event(LOG_LEVEL_INFO, "reexec", "stage=takeover pid=%ld", (long)getpid());
	return 0;
}

/* The background index load ended (spool_options.on_indexed): from now on
 * the drain sees the old mail.  A scan that failed (a read error) leaves an
 * index that must not be drained from: stop, as a failed open would. */
static void
main_indexed(void *arg, int status, const struct spool_recovery_stats *rs)
{
	struct main_state *m = arg;

	if (status != 0) {
		log_event(LOG_LEVEL_ERR, "index", "state=failed error=\"%s\"",
		    status < -1000 ? spool_strerror(status) : strerror(-status));
		m->exit_code = EX_IOERR;
		main_stop(m);
		return;
	}
	log_event(LOG_LEVEL_INFO, "index", "state=ready segments=%llu messages=%llu "
	    "records=%llu bytes=%llu torn_bytes=%llu corrupt_records=%llu "
	    "duration_ms=%llu", (unsigned long long)rs->segments,
	    (unsigned long long)rs->messages, (unsigned long long)rs->records,
	    (unsigned long long)rs->bytes, (unsigned long long)rs->torn_bytes,
	    (unsigned long long)rs->corrupt_records,
	    (unsigned long long)rs->duration_ms);
}

static int
main_run(struct main_state *m)
{
	struct relay *r = &m->relay;
	struct spool_options so;
	struct spool_recovery_stats rs;
	char err[1024], note[64];
	int rc;

	if ((rc = main_prepare(m)) != 0)
		return rc;
	if (m->inherited_chan >= 0 && (rc = main_takeover(m)) != 0)
		return rc;

	memset(&so, 0, sizeof(so));
	so.dir = r->cfg->spool_dir;
	so.disk_reserve = r->cfg->disk_reserve;
	so.commit_window_ms = r->cfg->commit_window_ms;
	/* Take mail at once whatever the spool's size; the old segments are
	 * indexed on the loop meanwhile (mxspoold(8), STARTUP). */
	so.index_background = true;
	so.on_indexed = main_indexed;
	so.on_indexed_arg = m;
	rc = spool_open(r->loop, &so, &r->spool, &rs);
	if (rc != 0) {
		fprintf(stderr, "mxspoold: cannot open spool %s: %s\n",
		    r->cfg->spool_dir, rc < -1000 ? spool_strerror(rc) : strerror(-rc));
		return EX_IOERR;
	}
	log_event(LOG_LEVEL_INFO, "recovery", "segments=%llu messages=%llu bytes=%llu "
	    "torn_bytes=%llu corrupt_records=%llu duration_ms=%llu index_state=%s",
	    (unsigned long long)rs.segments, (unsigned long long)rs.messages,
	    (unsigned long long)rs.bytes, (unsigned long long)rs.torn_bytes,
	    (unsigned long long)rs.corrupt_records, (unsigned long long)rs.duration_ms,
	    spool_index_loading(r->spool, NULL, NULL) ? "loading" : "ready");
	if (main_signals(m) != 0) {
		fprintf(stderr, "mxspoold: cannot install signal handlers\n");
		return EX_OSERR;
	}
	if ((rc = relay_start(r, err, sizeof(err))) != 0) {
		fprintf(stderr, "mxspoold: %s\n", err);
		return rc;
	}
	log_event(LOG_LEVEL_INFO, "ready", "version=%s hostname=%s tenants=%zu listen=%zu "
	    "pid=%ld%s", PACKAGE_VERSION, r->cfg->hostname, r->cfg->ntenants,
	    r->cfg->nlisten, (long)getpid(), m->inherited_chan >= 0 ? " handed_over=yes" : "");
	/* After a re-exec systemd must follow the new pid (NotifyAccess=all). */
	snprintf(note, sizeof(note), "MAINPID=%ld\nREADY=1", (long)getpid());
	relay_notify(m->inherited_chan >= 0 ? note : "READY=1");
	if (m->inherited_chan >= 0) {
		(void)handover_send(m->inherited_chan, "serving");
		(void)close(m->inherited_chan);
		m->inherited_chan = -1;
	}

	uv_run(r->loop, UV_RUN_DEFAULT);

	rc = uv_loop_close(r->loop);
	if (rc != 0) {
		log_event(LOG_LEVEL_ERR, "stop", "error=\"handles still open at exit\"");
		uv_print_all_handles(r->loop, stderr);
		return EX_SOFTWARE;
	}
	log_event(LOG_LEVEL_INFO, "stop", "result=%s uptime_s=%lld%s",
	    m->exit_code == 0 ? "ok" : "failed",
	    (long long)((util_now_ms() - r->started_ms) / 1000),
	    m->ho.state == MAIN_HO_DONE ? " reason=handover" : "");
	return m->exit_code;
}

/* What SIGUSR2 runs: the file we were started from, by name, so that an
 * upgrade that replaced it is picked up ("(deleted)" is the old inode). */
static void
main_find_exe(struct main_state *m)
{
	ssize_t n = readlink("/proc/self/exe", m->exe, sizeof(m->exe) - 1);
	const char *del = " (deleted)";
	size_t dl = strlen(del);

	if (n <= 0) {
		snprintf(m->exe, sizeof(m->exe), "%s", m->argv[0]);
		return;
	}
	m->exe[n] = '\0';
	if ((size_t)n > dl && strcmp(m->exe + n - dl, del) == 0)
		m->exe[n - dl] = '\0';
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ "standby", no_argument, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	struct main_state m;
	struct config *cfg = NULL;
	const char *path = NULL;
	char err[1024];
	int check = 0, debug = 0, standby = 0, ch, rc;

	while ((ch = getopt_long(argc, argv, "c:tdh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': path = optarg; break;
		case 't': check = 1; break;
		case 'd': debug = 1; break;
		case 'S': standby = 1; break;
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
	m.inherited_chan = -1;
	m.standby = standby;
	m.argv = argv;
	main_find_exe(&m);
	if (!check && handover_inherited(&m.inherited, &m.inherited_chan) < 0) {
		fprintf(stderr, "mxspoold: MXSPOOL_HANDOVER is malformed\n");
		return EX_USAGE;
	}
	if (config_load(path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return EX_CONFIG;
	}
	if (check) {
		config_free(cfg);
		return 0;
	}
	log_event(LOG_LEVEL_INFO, "start", "version=%s config=%s pid=%ld%s",
	    PACKAGE_VERSION, path, (long)getpid(),
	    m.inherited_chan >= 0 ? " mode=handover" : standby ? " mode=standby" : "");
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
