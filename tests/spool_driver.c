/*
 * spool_driver.c - producer and verifier for the spool crash tests
 * (tests/integration/test_spool_crash.py).
 *
 *   spool_driver run DIR SEED PRODUCERS [COUNT [SEGSIZE]]
 *     PRODUCERS concurrent transactions append messages whose bytes derive
 *     from SEED and a counter; every second acknowledged message then has its
 *     recipient marked delivered.  Prints, flushed, only after the callback:
 *       ACK <qid> <seed> <counter> <size>     commit returned 0
 *       NACK <qid> <seed> <counter> <status>  commit failed
 *       DONE <qid>                            the delivery record is durable
 *     Runs until killed, or until COUNT messages were acknowledged.  With
 *     SPOOL_DRIVER_PAUSE_MS=N in the environment each producer waits N ms
 *     between messages (keeps sanitizer runs of the crash loop short).
 *
 *   spool_driver verify DIR
 *     Opens (recovers) the spool and prints one line per message,
 *       MSG <qid> <seed> <counter> <size> OK|BAD
 *     where the seed and counter come from the message's ENVID, after a
 *     "STATS messages=N corrupt=N torn=N" line.  Exit 0 unless the spool
 *     could not be opened or read.
 */
#include "config.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/spool.h"

static uv_loop_t *loop;
static struct spool *sp;
static uint64_t seed, next_counter, acked, want;
static int exit_code;
static bool stopping;
static uint64_t pause_ms;

static uint32_t
prng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return (uint32_t)(*s >> 32);
}

static uint64_t
msg_state(uint64_t sd, uint64_t counter)
{
	return (sd * 1000003u + counter) * 0x9E3779B97F4A7C15ull | 1;
}

/* Sizes: mostly small, every 13th over the 64 KiB spill threshold. */
static size_t
msg_size(uint64_t sd, uint64_t counter)
{
	uint64_t s = msg_state(sd, counter) ^ 0x5555;

	if (counter % 13 == 5)
		return 70000 + prng(&s) % 200000;
	return 100 + prng(&s) % 6000;
}

static void
msg_fill(uint64_t sd, uint64_t counter, uint8_t *buf, size_t len)
{
	uint64_t s = msg_state(sd, counter);

	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)prng(&s);
}

/* ---- run --------------------------------------------------------------- */

struct producer {
	uv_timer_t pause;
	struct spool_tx *tx;
	uint64_t counter;
	spool_qid qid;
	uint8_t *data;
	size_t size, off;
};

static void producer_start(struct producer *p);
static void producer_write(struct producer *p);

static void
on_closed(void *arg)
{
	(void)arg;
}

static struct producer *producers;
static int nproducers;

static void
maybe_stop(void)
{
	if (stopping || want == 0 || acked < want)
		return;
	stopping = true;
	for (int i = 0; i < nproducers; i++)
		uv_close((uv_handle_t *)&producers[i].pause, NULL);
	spool_close(sp, on_closed, NULL);
}

static void
pause_done(uv_timer_t *t)
{
	struct producer *p = t->data;

	if (!stopping)
		producer_start(p);
}

static void
on_delivered(void *arg, int status)
{
	spool_qid *q = arg;
	char qs[SPOOL_QID_STRLEN + 1];

	spool_qid_format(*q, qs);
	if (status == 0) {
		printf("DONE %s\n", qs);
		fflush(stdout);
	}
	free(q);
}

static void
on_commit(void *arg, int status, spool_qid qid)
{
	struct producer *p = arg;
	char qs[SPOOL_QID_STRLEN + 1];

	spool_qid_format(qid, qs);
	if (status == 0) {
		printf("ACK %s %" PRIu64 " %" PRIu64 " %zu\n", qs, seed, p->counter, p->size);
		acked++;
	} else
		printf("NACK %s %" PRIu64 " %" PRIu64 " %d\n", qs, seed, p->counter, status);
	fflush(stdout);
	if (status == 0 && p->counter % 2 == 0 && !stopping) {
		spool_qid *q = malloc(sizeof(*q));

		*q = qid;
		if (spool_mark_rcpt(sp, qid, 0, SPOOL_RCPT_DELIVERED, on_delivered, q) != 0)
			free(q);
	}
	free(p->data);
	p->data = NULL;
	p->tx = NULL;
	maybe_stop();
	if (stopping)
		return;
	if (pause_ms > 0)
		uv_timer_start(&p->pause, pause_done, pause_ms, 0);
	else
		producer_start(p);
}

static void
on_written(void *arg, int status)
{
	struct producer *p = arg;

	if (status != 0) {
		fprintf(stderr, "spill failed: %s\n", spool_strerror(status));
		spool_tx_abort(p->tx);
		p->tx = NULL;
		free(p->data);
		p->data = NULL;
		if (!stopping)
			producer_start(p);
		return;
	}
	producer_write(p);
}

static void
producer_write(struct producer *p)
{
	int rc;

	if (stopping) {
		spool_tx_abort(p->tx);
		p->tx = NULL;
		free(p->data);
		p->data = NULL;
		return;
	}
	while (p->off < p->size) {
		size_t n = p->size - p->off < 16384 ? p->size - p->off : 16384;

		rc = spool_tx_write(p->tx, p->data + p->off, n, on_written, p);
		p->off += n;
		if (rc == SPOOL_PENDING)
			return;
		if (rc != 0) {
			fprintf(stderr, "write: %s\n", spool_strerror(rc));
			exit(2);
		}
	}
	rc = spool_tx_commit(p->tx, on_commit, p);
	if (rc != 0) {
		/* Refused up front (quota, reserve): report and go on. */
		char qs[SPOOL_QID_STRLEN + 1];

		spool_qid_format(p->qid, qs);
		printf("NACK %s %" PRIu64 " %" PRIu64 " %d\n", qs, seed, p->counter, rc);
		fflush(stdout);
		free(p->data);
		p->data = NULL;
		if (!stopping)
			producer_start(p);
	}
}

static void
producer_start(struct producer *p)
{
	char envid[64], rcpt[64];
	struct spool_rcpt r = { rcpt, NULL, ENV_NOTIFY_FAILURE };
	struct spool_envelope env = {
		.tenant = "crash", .sender = "sender@example.org", .envid = envid,
		.nrcpt = 1, .rcpt = &r,
	};
	int rc;

	p->counter = next_counter++;
	snprintf(envid, sizeof(envid), "%" PRIu64 "-%" PRIu64, seed, p->counter);
	snprintf(rcpt, sizeof(rcpt), "r%" PRIu64 "@example.test", p->counter);
	rc = spool_tx_begin(sp, &env, &p->tx);
	if (rc != 0) {
		fprintf(stderr, "begin: %s\n", spool_strerror(rc));
		exit(2);
	}
	p->qid = spool_tx_qid(p->tx);
	p->size = msg_size(seed, p->counter);
	p->off = 0;
	p->data = malloc(p->size);
	msg_fill(seed, p->counter, p->data, p->size);
	producer_write(p);
}

static int
do_run(const char *dir, int nprod, uint64_t segsize)
{
	struct spool_options o = { .dir = dir, .segment_size = segsize };
	struct spool_recovery_stats st;
	struct producer *ps;
	int rc;

	rc = spool_open(loop, &o, &sp, &st);
	if (rc != 0) {
		fprintf(stderr, "open: %s\n", spool_strerror(rc));
		return 2;
	}
	/* (seed, counter) names a message: each run uses a fresh seed. */
	next_counter = 0;
	ps = calloc((size_t)nprod, sizeof(*ps));
	producers = ps;
	nproducers = nprod;
	if (getenv("SPOOL_DRIVER_PAUSE_MS") != NULL)
		pause_ms = strtoull(getenv("SPOOL_DRIVER_PAUSE_MS"), NULL, 10);
	for (int i = 0; i < nprod; i++) {
		uv_timer_init(loop, &ps[i].pause);
		ps[i].pause.data = &ps[i];
	}
	for (int i = 0; i < nprod; i++)
		producer_start(&ps[i]);
	uv_run(loop, UV_RUN_DEFAULT);
	free(ps);
	return exit_code;
}

/* ---- verify ------------------------------------------------------------ */

struct vctx {
	struct spool_msg *m;
	uint64_t sd, counter;
	uint8_t *want;
	uint64_t off;
	bool bad;
	bool done;
};

static void verify_next(void);

static spool_qid *qids;
static size_t nq, iq;

static int
collect(void *arg, const struct spool_item *it)
{
	(void)arg;
	qids = realloc(qids, (nq + 1) * sizeof(*qids));
	qids[nq++] = it->qid;
	return 0;
}

static void
verify_finish(struct vctx *v)
{
	char qs[SPOOL_QID_STRLEN + 1];

	spool_qid_format(spool_msg_qid(v->m), qs);
	printf("MSG %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %s\n", qs, v->sd,
	    v->counter, spool_msg_size(v->m), v->bad ? "BAD" : "OK");
	spool_msg_free(v->m);
	free(v->want);
	free(v);
	iq++;
	verify_next();
}

static void
on_read(void *arg, int status, const void *buf, size_t len)
{
	struct vctx *v = arg;

	if (status != 0 || len == 0) {
		if (status != 0 || v->off != spool_msg_size(v->m))
			v->bad = true;
		verify_finish(v);
		return;
	}
	if (v->off + len > spool_msg_size(v->m) ||
	    memcmp(v->want + v->off, buf, len) != 0)
		v->bad = true;
	v->off += len;
	if (spool_msg_read(v->m, v->off, 65536, on_read, v) != 0) {
		v->bad = true;
		verify_finish(v);
	}
}

static void
on_load(void *arg, int status, struct spool_msg *m)
{
	struct vctx *v = calloc(1, sizeof(*v));
	const struct spool_envelope *env;
	char qs[SPOOL_QID_STRLEN + 1];

	(void)arg;
	if (status != 0) {
		spool_qid_format(qids[iq], qs);
		printf("MSG %s 0 0 0 BAD load=%d\n", qs, status);
		free(v);
		iq++;
		verify_next();
		return;
	}
	v->m = m;
	env = spool_msg_envelope(m);
	if (env->envid == NULL ||
	    sscanf(env->envid, "%" SCNu64 "-%" SCNu64, &v->sd, &v->counter) != 2 ||
	    msg_size(v->sd, v->counter) != spool_msg_size(m)) {
		v->bad = true;
		verify_finish(v);
		return;
	}
	v->want = malloc(spool_msg_size(m) + 1);
	msg_fill(v->sd, v->counter, v->want, spool_msg_size(m));
	if (spool_msg_read(m, 0, 65536, on_read, v) != 0) {
		v->bad = true;
		verify_finish(v);
	}
}

static void
verify_next(void)
{
	if (iq >= nq) {
		spool_close(sp, on_closed, NULL);
		return;
	}
	if (spool_load(sp, qids[iq], on_load, NULL) != 0) {
		char qs[SPOOL_QID_STRLEN + 1];

		spool_qid_format(qids[iq], qs);
		printf("MSG %s 0 0 0 BAD\n", qs);
		iq++;
		verify_next();
	}
}

static int
do_verify(const char *dir)
{
	struct spool_options o = { .dir = dir };
	struct spool_recovery_stats st;
	int rc;

	rc = spool_open(loop, &o, &sp, &st);
	if (rc != 0) {
		fprintf(stderr, "open: %s\n", spool_strerror(rc));
		return 2;
	}
	printf("STATS messages=%" PRIu64 " corrupt=%" PRIu64 " torn=%" PRIu64
	    " segments=%" PRIu64 " ms=%" PRIu64 "\n", st.messages,
	    st.corrupt_records, st.torn_bytes, st.segments, st.duration_ms);
	spool_foreach(sp, NULL, collect, NULL);
	verify_next();
	uv_run(loop, UV_RUN_DEFAULT);
	free(qids);
	fflush(stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	uv_loop_t l;
	int rc;

	if (uv_loop_init(&l) != 0)
		return 2;
	loop = &l;
	if (argc >= 5 && strcmp(argv[1], "run") == 0) {
		seed = strtoull(argv[3], NULL, 10);
		want = argc >= 6 ? strtoull(argv[5], NULL, 10) : 0;
		rc = do_run(argv[2], atoi(argv[4]),
		    argc >= 7 ? strtoull(argv[6], NULL, 10) : 0);
	} else if (argc == 3 && strcmp(argv[1], "verify") == 0)
		rc = do_verify(argv[2]);
	else {
		fprintf(stderr, "usage: spool_driver run DIR SEED PRODUCERS [COUNT [SEGSIZE]]\n"
		    "       spool_driver verify DIR\n");
		return 64;
	}
	if (uv_loop_close(&l) != 0 && rc == 0)
		rc = 3;
	return rc;
}
