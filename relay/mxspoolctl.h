/*
 * mxspoolctl.h - internal to the control tool (relay/mxspoolctl*.c).
 */
#ifndef MXSPOOL_MXSPOOLCTL_H
#define MXSPOOL_MXSPOOLCTL_H

#include <stddef.h>

/* One request line REQ (LEN bytes with its newline) to SOCK; the whole
 * answer in *RESP (free()).  0, or a <sysexits.h> code, said on stderr. */
int ctl_request(const char *sock, const char *req, size_t len, char **resp,
    size_t *rlen);

/* Connect to the control socket at PATH: the fd, or -1 (-2: permission
 * denied), said on stderr. */
int ctl_connect(const char *path);
int ctl_write_all(int fd, const char *buf, size_t len);

/* `mxspoolctl backup DIR [--json]`: ARGV[0] is "backup".  Progress on
 * stderr, the summary on stdout.  Returns the exit code. */
int ctl_backup(const char *sock, int argc, char **argv, int json);

/* `mxspoolctl watch [--interval S] [--count N]`: ARGV[0] is "watch".
 * Returns the exit code. */
int ctl_watch(const char *sock, int argc, char **argv);

#endif
