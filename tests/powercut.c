/*
 * powercut.c - LD_PRELOAD recorder of the file-system calls a process makes
 * under one directory, for the power-loss simulation of
 * tests/integration/test_powercut.py (the rebuilder is
 * tests/integration/powercut.py).
 *
 *   POWERCUT_ROOT=/abs/dir   the tree to watch (the spool_dir); calls on
 *                            paths under it, on descriptors opened there,
 *                            and fsyncs of its parent directory are logged
 *   POWERCUT_LOG=/abs/file   the log, one text line per completed call
 *   POWERCUT_DATA=/abs/file  the bytes of every logged write, back to back
 *   POWERCUT_SYNC_DELAY_US=N each watched fsync/fdatasync first sleeps N
 *                            microseconds, as a slow disk would: an answer
 *                            that does not wait for its sync then comes
 *                            visibly before it (default 0)
 *
 * Each line is "SEQ NS OP ARGS", SEQ counting lines from 1 and NS the
 * CLOCK_MONOTONIC time in nanoseconds, both taken under one lock, so lines
 * are in completion order and their times rise.  The time is taken after
 * the call returned: a reply the daemon sends after an fsync returned is
 * necessarily later than that fsync's line, which is what lets the test
 * compare its clients' receive times with crash points.
 *
 *   O FD FLAGS PATH          open/openat/creat succeeded (FLAGS octal)
 *   W FD OFF LEN DATAOFF     LEN bytes written at file offset OFF; the
 *                            bytes are at DATAOFF in POWERCUT_DATA
 *   T FD LEN                 ftruncate
 *   S FD START               fsync or fdatasync returned 0; START is the
 *                            SEQ of the last line logged before it began, so
 *                            only what those lines did is known durable
 *   C FD                     close
 *   M PATH | D PATH | U PATH mkdir, rmdir, unlink
 *   R OLD NEW | L OLD NEW    rename, link
 *
 * Failed calls are not logged (they changed nothing, or nothing we may
 * count on).  Paths are absolute: relative ones are resolved against the
 * working directory or the directory descriptor.  Only the calls mxspoold
 * makes on its spool are covered (no mmap, no O_APPEND, no sendfile).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int logfd = -1, datafd = -1;
static char root[4096], parent[4096];
static size_t rootlen;
static unsigned long long seq, dataoff;
static bool tracked[MAXFD];

#define REAL(ret, name, args) \
	static ret (*real_##name) args; \
	if (real_##name == NULL) \
		real_##name = (ret (*) args)dlsym(RTLD_NEXT, #name)

static void
init(void)
{
	const char *r = getenv("POWERCUT_ROOT"), *l = getenv("POWERCUT_LOG");
	const char *d = getenv("POWERCUT_DATA");
	int (*ropen)(const char *, int, ...) =
	    (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
	char *slash;

	if (r == NULL || l == NULL || d == NULL || r[0] != '/' ||
	    strlen(r) >= sizeof(root))
		return;
	snprintf(root, sizeof(root), "%s", r);
	rootlen = strlen(root);
	while (rootlen > 1 && root[rootlen - 1] == '/')
		root[--rootlen] = '\0';
	snprintf(parent, sizeof(parent), "%s", root);
	slash = strrchr(parent, '/');
	if (slash != NULL)
		slash[slash == parent ? 1 : 0] = '\0';
	logfd = ropen(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	datafd = ropen(d, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

static bool
active(void)
{
	pthread_once(&once, init);
	return logfd >= 0 && datafd >= 0;
}

/* Is P (absolute) the root, under it, or the root's parent itself? */
static bool
watched(const char *p)
{
	if (strncmp(p, root, rootlen) == 0 && (p[rootlen] == '\0' || p[rootlen] == '/'))
		return true;
	return strcmp(p, parent) == 0;
}

/* PATH made absolute against DIRFD (AT_FDCWD: the working directory). */
static void
absolute(int dirfd, const char *path, char *out, size_t len)
{
	char base[4096], link[64];
	ssize_t n;

	if (path[0] == '/') {
		snprintf(out, len, "%s", path);
		return;
	}
	if (dirfd == AT_FDCWD) {
		if (getcwd(base, sizeof(base)) == NULL)
			base[0] = '\0';
	} else {
		snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
		n = readlink(link, base, sizeof(base) - 1);
		base[n > 0 ? n : 0] = '\0';
	}
	snprintf(out, len, "%s/%s", base, path);
}

/* Append one line; with DATA, its bytes go to the data file first. */
static void
emit(const void *data, size_t dlen, const char *fmt, ...)
{
	char line[9000];
	struct timespec ts;
	unsigned long long doff;
	int n, k;
	va_list ap;

	pthread_mutex_lock(&mu);
	doff = dataoff;
	if (data != NULL && dlen > 0) {
		size_t done = 0;

		while (done < dlen) {
			ssize_t w = write(datafd, (const char *)data + done, dlen - done);

			if (w <= 0)
				break;
			done += (size_t)w;
		}
		dataoff += dlen;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	n = snprintf(line, sizeof(line), "%llu %lld ", ++seq,
	    (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
	va_start(ap, fmt);
	k = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (k < 0)
		k = 0;
	n += k;
	if ((size_t)n > sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	/* The data offset is substituted here so it matches the bytes. */
	line[n++] = '\n';
	if (data != NULL) {
		char with[9100];
		int m;

		line[n - 1] = '\0';
		m = snprintf(with, sizeof(with), "%s %llu\n", line, doff);
		(void)!write(logfd, with, (size_t)m);
	} else
		(void)!write(logfd, line, (size_t)n);
	pthread_mutex_unlock(&mu);
}

static unsigned long long
seq_now(void)
{
	unsigned long long s;

	pthread_mutex_lock(&mu);
	s = seq;
	pthread_mutex_unlock(&mu);
	return s;
}

static bool
fd_tracked(int fd)
{
	return fd >= 0 && fd < MAXFD && tracked[fd];
}

static void
opened(int fd, int dirfd, const char *path, int flags)
{
	char abs[4096];
	int saved = errno;

	if (fd < 0 || fd >= MAXFD || !active())
		return;
	tracked[fd] = false;
	absolute(dirfd, path, abs, sizeof(abs));
	if (watched(abs)) {
		tracked[fd] = true;
		emit(NULL, 0, "O %d %o %s", fd, flags, abs);
	}
	errno = saved;
}

static void
pathop(const char *op, int dirfd, const char *path, int dirfd2, const char *path2)
{
	char a[4096], b[4096];
	int saved = errno;

	if (!active())
		return;
	absolute(dirfd, path, a, sizeof(a));
	if (path2 == NULL) {
		if (watched(a))
			emit(NULL, 0, "%s %s", op, a);
	} else {
		absolute(dirfd2, path2, b, sizeof(b));
		if (watched(a) || watched(b))
			emit(NULL, 0, "%s %s %s", op, a, b);
	}
	errno = saved;
}

static void
wrote(int fd, off_t off, const void *buf, ssize_t n)
{
	int saved = errno;

	if (n > 0 && fd_tracked(fd))
		emit(buf, (size_t)n, "W %d %lld %zd", fd, (long long)off, n);
	errno = saved;
}

/* ---- open ---------------------------------------------------------------- */

static mode_t
mode_arg(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int
open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;
	int fd;
	REAL(int, open, (const char *, int, ...));

	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	fd = real_open(path, flags, mode);
	opened(fd, AT_FDCWD, path, flags);
	return fd;
}

int
open64(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;
	int fd;
	REAL(int, open64, (const char *, int, ...));

	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	fd = real_open64(path, flags, mode);
	opened(fd, AT_FDCWD, path, flags);
	return fd;
}

int
__open_2(const char *path, int flags)
{
	return open(path, flags);
}

int
__open64_2(const char *path, int flags)
{
	return open64(path, flags);
}

int
openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;
	int fd;
	REAL(int, openat, (int, const char *, int, ...));

	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	fd = real_openat(dirfd, path, flags, mode);
	opened(fd, dirfd, path, flags);
	return fd;
}

int
openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;
	int fd;
	REAL(int, openat64, (int, const char *, int, ...));

	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	fd = real_openat64(dirfd, path, flags, mode);
	opened(fd, dirfd, path, flags);
	return fd;
}

int
creat(const char *path, mode_t mode)
{
	return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

int
close(int fd)
{
	bool t = fd_tracked(fd);
	int rc;
	REAL(int, close, (int));

	rc = real_close(fd);
	if (t) {
		tracked[fd] = false;
		emit(NULL, 0, "C %d", fd);
	}
	return rc;
}

/* ---- data ---------------------------------------------------------------- */

ssize_t
write(int fd, const void *buf, size_t len)
{
	off_t off = fd_tracked(fd) ? lseek(fd, 0, SEEK_CUR) : 0;
	ssize_t n;
	REAL(ssize_t, write, (int, const void *, size_t));

	n = real_write(fd, buf, len);
	wrote(fd, off, buf, n);
	return n;
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
	ssize_t n;
	REAL(ssize_t, pwrite, (int, const void *, size_t, off_t));

	n = real_pwrite(fd, buf, len, off);
	wrote(fd, off, buf, n);
	return n;
}

ssize_t
pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	ssize_t n;
	REAL(ssize_t, pwrite64, (int, const void *, size_t, off_t));

	n = real_pwrite64(fd, buf, len, off);
	wrote(fd, off, buf, n);
	return n;
}

/* Vectored writes are logged as one write of the gathered bytes. */
static void
wrotev(int fd, off_t off, const struct iovec *iov, int cnt, ssize_t n)
{
	char *flat;
	size_t at = 0;

	if (n <= 0 || !fd_tracked(fd) || (flat = malloc((size_t)n)) == NULL)
		return;
	for (int i = 0; i < cnt && at < (size_t)n; i++) {
		size_t k = iov[i].iov_len < (size_t)n - at ? iov[i].iov_len : (size_t)n - at;

		memcpy(flat + at, iov[i].iov_base, k);
		at += k;
	}
	wrote(fd, off, flat, n);
	free(flat);
}

ssize_t
writev(int fd, const struct iovec *iov, int cnt)
{
	off_t off = fd_tracked(fd) ? lseek(fd, 0, SEEK_CUR) : 0;
	ssize_t n;
	REAL(ssize_t, writev, (int, const struct iovec *, int));

	n = real_writev(fd, iov, cnt);
	wrotev(fd, off, iov, cnt, n);
	return n;
}

ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	ssize_t n;
	REAL(ssize_t, pwritev, (int, const struct iovec *, int, off_t));

	n = real_pwritev(fd, iov, cnt, off);
	wrotev(fd, off, iov, cnt, n);
	return n;
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	return pwritev(fd, iov, cnt, off);
}

int
ftruncate(int fd, off_t len)
{
	int rc;
	REAL(int, ftruncate, (int, off_t));

	rc = real_ftruncate(fd, len);
	if (rc == 0 && fd_tracked(fd))
		emit(NULL, 0, "T %d %lld", fd, (long long)len);
	return rc;
}

int
ftruncate64(int fd, off_t len)
{
	return ftruncate(fd, len);
}

/* ---- durability ------------------------------------------------------------ */

static int
synced(int fd, int (*fn)(int))
{
	unsigned long long start = fd_tracked(fd) ? seq_now() : 0;
	const char *delay = getenv("POWERCUT_SYNC_DELAY_US");
	int rc, saved;

	if (fd_tracked(fd) && delay != NULL && atol(delay) > 0)
		usleep((useconds_t)atol(delay));
	rc = fn(fd);
	saved = errno;

	if (rc == 0 && fd_tracked(fd))
		emit(NULL, 0, "S %d %llu", fd, start);
	errno = saved;
	return rc;
}

int
fsync(int fd)
{
	REAL(int, fsync, (int));
	return synced(fd, real_fsync);
}

int
fdatasync(int fd)
{
	REAL(int, fdatasync, (int));
	return synced(fd, real_fdatasync);
}

/* ---- names ----------------------------------------------------------------- */

int
mkdir(const char *path, mode_t mode)
{
	int rc;
	REAL(int, mkdir, (const char *, mode_t));

	if ((rc = real_mkdir(path, mode)) == 0)
		pathop("M", AT_FDCWD, path, 0, NULL);
	return rc;
}

int
mkdirat(int dirfd, const char *path, mode_t mode)
{
	int rc;
	REAL(int, mkdirat, (int, const char *, mode_t));

	if ((rc = real_mkdirat(dirfd, path, mode)) == 0)
		pathop("M", dirfd, path, 0, NULL);
	return rc;
}

int
rmdir(const char *path)
{
	int rc;
	REAL(int, rmdir, (const char *));

	if ((rc = real_rmdir(path)) == 0)
		pathop("D", AT_FDCWD, path, 0, NULL);
	return rc;
}

int
unlink(const char *path)
{
	int rc;
	REAL(int, unlink, (const char *));

	if ((rc = real_unlink(path)) == 0)
		pathop("U", AT_FDCWD, path, 0, NULL);
	return rc;
}

int
unlinkat(int dirfd, const char *path, int flags)
{
	int rc;
	REAL(int, unlinkat, (int, const char *, int));

	if ((rc = real_unlinkat(dirfd, path, flags)) == 0)
		pathop(flags & AT_REMOVEDIR ? "D" : "U", dirfd, path, 0, NULL);
	return rc;
}

int
rename(const char *a, const char *b)
{
	int rc;
	REAL(int, rename, (const char *, const char *));

	if ((rc = real_rename(a, b)) == 0)
		pathop("R", AT_FDCWD, a, AT_FDCWD, b);
	return rc;
}

int
renameat(int da, const char *a, int db, const char *b)
{
	int rc;
	REAL(int, renameat, (int, const char *, int, const char *));

	if ((rc = real_renameat(da, a, db, b)) == 0)
		pathop("R", da, a, db, b);
	return rc;
}

int
link(const char *a, const char *b)
{
	int rc;
	REAL(int, link, (const char *, const char *));

	if ((rc = real_link(a, b)) == 0)
		pathop("L", AT_FDCWD, a, AT_FDCWD, b);
	return rc;
}

int
linkat(int da, const char *a, int db, const char *b, int flags)
{
	int rc;
	REAL(int, linkat, (int, const char *, int, const char *, int));

	if ((rc = real_linkat(da, a, db, b, flags)) == 0)
		pathop("L", da, a, db, b);
	return rc;
}
