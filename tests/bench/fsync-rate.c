/*
 * fsync-rate.c - the raw fdatasync rate of the disk under DIR: write 4 KiB,
 * fdatasync, repeat, for SECONDS.  A yardstick for spool-bench: group commit
 * is how the spool acknowledges more messages per second than this.
 *
 *   fsync-rate DIR [SECONDS]
 */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	char path[4096], buf[4096];
	double secs = argc > 2 ? atof(argv[2]) : 5.0, t0, t;
	long n = 0;
	int fd;

	if (argc < 2) {
		fprintf(stderr, "usage: fsync-rate DIR [SECONDS]\n");
		return 64;
	}
	snprintf(path, sizeof(path), "%s/fsync-rate.%d", argv[1], (int)getpid());
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	memset(buf, 'x', sizeof(buf));
	t0 = now_s();
	do {
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) ||
		    fdatasync(fd) != 0) {
			perror("write/fdatasync");
			return 1;
		}
		n++;
		t = now_s();
	} while (t - t0 < secs);
	close(fd);
	unlink(path);
	printf("fdatasync/s=%.0f calls=%ld seconds=%.2f (4 KiB appends)\n",
	    (double)n / (t - t0), n, t - t0);
	return 0;
}
