/*
 * handover.h - passing the listening sockets and the spool lock from a
 * running mxspoold to the one it re-executes (SIGUSR2), so that no
 * connection is refused and the lock is never free.
 *
 * The old process starts the new binary with the sockets inherited: the
 * SMTP listeners as fds 3.. with LISTEN_FDS (the systemd socket-activation
 * convention, which smtp_server already reads), and the channel, the spool
 * lock's descriptor (the same open file description, so the one flock is
 * held throughout), the control socket and the /metrics listener named in
 * MXSPOOL_HANDOVER.  The kernel queues new connections on the shared
 * sockets whichever process is accepting.
 *
 * The exchange on the channel (one line each, new -> old unless marked):
 *   "ready"     the new process has its config, TLS, sockets: it waits.
 *   "go"        (old -> new) the old one has stopped accepting, finished
 *               its sessions and deliveries and closed its journal: the
 *               new one may recover the spool.  EOF means go as well (the
 *               old one is gone).
 *   "serving"   the new process recovered and accepts; the old one exits.
 * Anything else, or EOF before "ready" / "serving", is a failure the old
 * process handles (it keeps serving, or hands over to its own binary).
 *
 * This module only moves descriptors and lines; main.c runs the steps.
 * Blocking calls here are for the new process before its loop runs.
 */
#ifndef MXSPOOL_HANDOVER_H
#define MXSPOOL_HANDOVER_H

#include <stddef.h>
#include <sys/types.h>

#define HANDOVER_MAX_SMTP 64

struct handover_fds {
	int lock;                     /* the flock'd DIR/lock */
	int control;                  /* control socket listener, -1 none */
	int metrics;                  /* /metrics listener, -1 none */
	int smtp[HANDOVER_MAX_SMTP];  /* SMTP listeners, in config order */
	size_t nsmtp;
};

/*
 * Old side: start EXE with ARGV and FDS inherited (see above), signals at
 * their defaults.  On success *PID is the child and *CHAN our end of the
 * channel (close-on-exec).  0, or -errno: the exec itself failed (ENOENT,
 * EACCES: the binary is missing or not runnable) or a descriptor could
 * not be prepared; then nothing was started.
 */
int handover_spawn(const char *exe, char *const argv[],
    const struct handover_fds *fds, pid_t *pid, int *chan);

/*
 * New side, first thing: 1 when this process was started by
 * handover_spawn (FDS and *CHAN set, the descriptors made close-on-exec,
 * MXSPOOL_HANDOVER removed from the environment and LISTEN_PID set to our
 * pid so the SMTP listeners are taken as inherited); 0 when not; -1 when
 * MXSPOOL_HANDOVER is malformed.
 */
int handover_inherited(struct handover_fds *fds, int *chan);

/* Write LINE and a newline to CHAN (blocking).  0 or -errno. */
int handover_send(int chan, const char *line);

/* New side: block until "go" or EOF.  0 then, -1 on anything else. */
int handover_wait_go(int chan);

#endif
