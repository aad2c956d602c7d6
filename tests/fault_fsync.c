/*
 * fault_fsync.c - LD_PRELOAD shim that makes fdatasync(2) fail on demand,
 * for tests/integration/test_spool_crash.py.
 *
 *   FAULT_FDATASYNC_AFTER=N   the first N calls go through to the kernel
 *   FAULT_FDATASYNC_COUNT=M   the next M calls fail with EIO (default 1);
 *                             later calls go through again
 *
 * A failing call still performs the real fdatasync first, so the test
 * exercises the spool's reaction to the error, not a lost write.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_long calls;

int
fdatasync(int fd)
{
	static int (*real)(int);
	const char *a = getenv("FAULT_FDATASYNC_AFTER");
	const char *c = getenv("FAULT_FDATASYNC_COUNT");
	long n = atomic_fetch_add(&calls, 1) + 1;
	long after = a ? atol(a) : -1, count = c ? atol(c) : 1;
	int rc;

	if (real == NULL)
		real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	rc = real(fd);
	if (after >= 0 && n > after && n <= after + count) {
		errno = EIO;
		return -1;
	}
	return rc;
}
