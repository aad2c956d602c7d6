/*
 * spool-bench.c - throughput, group commit and recovery of the spool.
 * A benchmark, not a test: it never asserts, it prints figures.
 *
 *   spool-bench append DIR N SIZE PRODUCERS [WINDOW_MS]
 *     N messages of SIZE bytes from PRODUCERS concurrent transactions, with
 *     real fdatasync.  Prints messages/s, MB/s, fdatasyncs issued and the
 *     p50/p99 latency from spool_tx_begin to the commit callback.
 *   spool-bench recover DIR
 *     Times spool_open (recovery) of an existing spool and prints the peak
 *     RSS and the index bytes per message.
 *   spool-bench walk DIR [N]
 *     Fills DIR up to N (default 1000000) messages of 256 bytes whose
 *     arrivals are spread over 5 days (a fake clock), reopens it, and times
 *     one spool_walk_aged call per simulated second (queue_lifetime 5 days,
 *     delay_warning 4 h): nothing due; a few due (the expired ones are
 *     deleted after each call, outside the timing); the warn cursor's
 *     catch-up after the restart and then its steady pass (the callback
 *     calls spool_mark_warned, inside the timing).  Prints µs per call.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "mxspool/spool.h"
#include "../../relay/spool_internal.h"

static uv_loop_t loop;
static struct spool *sp;
static uint64_t n_total, n_started, n_done, n_failed, msg_size;
static uint8_t *payload;
static double *lat;
static int64_t bench_now;             /* the walk's fake clock */
static int64_t bench_step;            /* ms it advances per message; 0 = real */
static int64_t bench_clock(void) { return bench_now; }

struct producer {
	struct spool_tx *tx;
	uint64_t t0;
	uint64_t off;
};

static void start(struct producer *p);
static void write_more(struct producer *p);

static void
closed(void *arg)
{
	(void)arg;
}

static void
on_commit(void *arg, int status, spool_qid qid)
{
	struct producer *p = arg;

	(void)qid;
	if (status != 0)
		n_failed++;
	lat[n_done++] = (double)(uv_hrtime() - p->t0) / 1e6;
	if (n_done == n_total)
		spool_close(sp, closed, NULL);
	else
		start(p);
}

static void
on_written(void *arg, int status)
{
	struct producer *p = arg;

	if (status != 0) {
		fprintf(stderr, "spill: %s\n", spool_strerror(status));
		exit(1);
	}
	write_more(p);
}

static void
write_more(struct producer *p)
{
	int rc;

	while (p->off < msg_size) {
		size_t n = msg_size - p->off < 65536 ? msg_size - p->off : 65536;

		rc = spool_tx_write(p->tx, payload + p->off, n, on_written, p);
		p->off += n;
		if (rc == SPOOL_PENDING)
			return;
		if (rc != 0) {
			fprintf(stderr, "write: %s\n", spool_strerror(rc));
			exit(1);
		}
	}
	rc = spool_tx_commit(p->tx, on_commit, p);
	if (rc != 0) {
		fprintf(stderr, "commit: %s\n", spool_strerror(rc));
		exit(1);
	}
}

static void
start(struct producer *p)
{
	static struct spool_rcpt r = { "user@example.test", NULL, 0 };
	static struct spool_envelope env = { .tenant = "bench",
		.sender = "sender@example.org", .nrcpt = 1, .rcpt = &r };
	int rc;

	if (n_started == n_total)
		return;
	n_started++;
	bench_now += bench_step;
	p->t0 = uv_hrtime();
	p->off = 0;
	rc = spool_tx_begin(sp, &env, &p->tx);
	if (rc != 0) {
		fprintf(stderr, "begin: %s\n", spool_strerror(rc));
		exit(1);
	}
	write_more(p);
}

static int
dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int
do_append(const char *dir, uint64_t n, uint64_t size, int np, uint64_t window)
{
	struct spool_options o = { .dir = dir, .commit_window_ms = window,
	    .now_ms = bench_step != 0 ? bench_clock : NULL };
	struct producer *ps = calloc((size_t)np, sizeof(*ps));
	uint64_t t0, syncs;
	double secs;
	int rc;

	if ((rc = spool_open(&loop, &o, &sp, NULL)) != 0) {
		fprintf(stderr, "open: %s\n", spool_strerror(rc));
		return 1;
	}
	n_total = n;
	msg_size = size;
	payload = malloc(size + 1);
	for (uint64_t i = 0; i < size; i++)
		payload[i] = (uint8_t)("abcdefghijklmnopqrstuvwxyz0123\r\n"[i % 32]);
	lat = malloc(n * sizeof(*lat));
	t0 = uv_hrtime();
	for (int i = 0; i < np; i++)
		start(&ps[i]);
	/* The flush count must be read before the close frees the spool. */
	while (n_done < n_total)
		uv_run(&loop, UV_RUN_ONCE);
	secs = (double)(uv_hrtime() - t0) / 1e9;
	syncs = spool_flush_count(sp);
	uv_run(&loop, UV_RUN_DEFAULT);
	qsort(lat, n, sizeof(*lat), dbl_cmp);
	printf("append: messages=%" PRIu64 " size=%" PRIu64 " producers=%d "
	    "window_ms=%" PRIu64 "\n", n, size, np, window);
	printf("  seconds=%.2f messages/s=%.0f MB/s=%.1f fdatasyncs=%" PRIu64
	    " messages/fdatasync=%.1f failed=%" PRIu64 "\n", secs, (double)n / secs,
	    (double)n * (double)size / secs / 1e6, syncs,
	    syncs ? (double)n / (double)syncs : 0.0, n_failed);
	printf("  latency_ms p50=%.2f p99=%.2f max=%.2f\n", lat[n / 2],
	    lat[(size_t)((double)n * 0.99)], lat[n - 1]);
	free(ps);
	free(lat);
	free(payload);
	return 0;
}

static long
rss_kb(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static int
do_recover(const char *dir)
{
	struct spool_options o = { .dir = dir };
	struct spool_recovery_stats st;
	long before = rss_kb();
	uint64_t t0 = uv_hrtime();
	size_t idx;
	int rc;

	if ((rc = spool_open(&loop, &o, &sp, &st)) != 0) {
		fprintf(stderr, "open: %s\n", spool_strerror(rc));
		return 1;
	}
	idx = spool_index_bytes(sp);
	printf("recover: seconds=%.2f segments=%" PRIu64 " records=%" PRIu64
	    " messages=%" PRIu64 " MB=%.0f torn=%" PRIu64 " corrupt=%" PRIu64 "\n",
	    (double)(uv_hrtime() - t0) / 1e9, st.segments, st.records, st.messages,
	    (double)st.bytes / 1e6, st.torn_bytes, st.corrupt_records);
	printf("  peak_rss_MB=%.1f (before open %.1f) index_bytes=%zu "
	    "index_bytes/message=%.1f\n", (double)rss_kb() / 1024,
	    (double)before / 1024, idx,
	    st.messages ? (double)idx / (double)st.messages : 0.0);
	spool_close(sp, closed, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	return 0;
}


#define WALK_SPREAD_MS  (5LL * 86400 * 1000)   /* arrivals over 5 days */
#define WALK_LIFETIME   (5LL * 86400 * 1000)
#define WALK_WARN       (4LL * 3600 * 1000)

struct walk_seen {
	spool_qid q[1024];
	unsigned n;
	bool mark;
};

static int
walk_cb(void *arg, const struct spool_item *it, enum spool_age what)
{
	struct walk_seen *w = arg;

	if (what == SPOOL_AGE_EXPIRED && w->n < 1024)
		w->q[w->n++] = it->qid;
	if (what == SPOOL_AGE_WARN && w->mark)
		(void)spool_mark_warned(sp, it->qid, NULL, NULL);
	return 0;
}

/* Time SECONDS calls, one per simulated second from *NOW on. */
static void
walk_phase(const char *name, int64_t *now, unsigned seconds, bool warn,
    bool mark)
{
	double sum = 0, worst = 0;
	uint64_t visits = 0;

	for (unsigned i = 0; i < seconds; i++, *now += 1000) {
		struct walk_seen w = { .mark = mark };
		uint64_t t0 = uv_hrtime();
		unsigned n = spool_walk_aged(sp, "bench", *now - WALK_LIFETIME,
		    warn ? *now - WALK_WARN : INT64_MIN, 1000, walk_cb, &w);
		double us = (double)(uv_hrtime() - t0) / 1e3;

		sum += us;
		if (us > worst)
			worst = us;
		visits += n;
		for (unsigned k = 0; k < w.n; k++)
			(void)spool_delete(sp, w.q[k], NULL, NULL);
		uv_run(&loop, UV_RUN_NOWAIT);
	}
	printf("walk %-22s %6u calls  %8.2f us/call avg  %8.2f us max  "
	    "%" PRIu64 " callbacks\n", name, seconds, sum / seconds, worst, visits);
}

static int
do_walk(const char *dir, uint64_t n)
{
	struct spool_options o = { .dir = dir, .now_ms = bench_clock };
	struct spool_recovery_stats st;
	uint64_t have, t0;
	int64_t start = 1700000000000, now;
	int rc;

	bench_now = start;
	if ((rc = spool_open(&loop, &o, &sp, &st)) != 0)
		return rc;
	have = spool_total_messages(sp);
	if (have < n) {
		spool_close(sp, closed, NULL);
		uv_run(&loop, UV_RUN_DEFAULT);
		/* do_append's producers, on the fake clock: one step per begin. */
		printf("walk: filling %s with %" PRIu64 " messages\n", dir, n - have);
		bench_step = WALK_SPREAD_MS / (int64_t)n;
		rc = do_append(dir, n - have, 256, 64, 2);
		bench_step = 0;
		if (rc != 0)
			return rc;
		if ((rc = spool_open(&loop, &o, &sp, &st)) != 0)
			return rc;
	}
	printf("walk: %" PRIu64 " messages, recovery %" PRIu64 " ms, index %.1f "
	    "bytes/message\n", spool_total_messages(sp), st.duration_ms,
	    (double)spool_index_bytes(sp) / (double)spool_total_messages(sp));
	/* Newest arrival is about start + 5 days: "now" is just before the
	 * oldest expires, then the clock runs on. */
	now = start + WALK_LIFETIME - 1001000;
	walk_phase("nothing-due", &now, 1000, false, false);
	now = start + WALK_LIFETIME + 1000;
	walk_phase("few-due(expiry)", &now, 1000, false, false);
	t0 = uv_hrtime();
	{
		struct walk_seen w = { .mark = true };
		unsigned calls = 0;

		while (spool_walk_aged(sp, "bench", now - WALK_LIFETIME,
		    now - WALK_WARN, 1000, walk_cb, &w) > 0 || calls == 0) {
			calls++;
			for (unsigned k = 0; k < w.n; k++)
				(void)spool_delete(sp, w.q[k], NULL, NULL);
			w.n = 0;
			uv_run(&loop, UV_RUN_NOWAIT);
		}
		printf("walk %-22s %6u calls  %8.2f us/call avg (MAX 1000: the "
		    "backlog of notices after a restart)\n", "warn-catch-up", calls,
		    (double)(uv_hrtime() - t0) / 1e3 / calls);
	}
	walk_phase("warn-cursor(steady)", &now, 1000, true, true);
	spool_close(sp, closed, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	return 0;
}

int
main(int argc, char **argv)
{
	int rc;

	if (uv_loop_init(&loop) != 0)
		return 1;
	if (argc >= 6 && strcmp(argv[1], "append") == 0)
		rc = do_append(argv[2], strtoull(argv[3], NULL, 10),
		    strtoull(argv[4], NULL, 10), atoi(argv[5]),
		    argc > 6 ? strtoull(argv[6], NULL, 10) : 0);
	else if (argc == 3 && strcmp(argv[1], "recover") == 0)
		rc = do_recover(argv[2]);
	else if ((argc == 3 || argc == 4) && strcmp(argv[1], "walk") == 0)
		rc = do_walk(argv[2], argc == 4 ? strtoull(argv[3], NULL, 10) :
		    1000000);
	else {
		fprintf(stderr, "usage: spool-bench append DIR N SIZE PRODUCERS [WINDOW_MS]\n"
		    "       spool-bench recover DIR\n");
		return 64;
	}
	(void)uv_loop_close(&loop);
	return rc;
}
