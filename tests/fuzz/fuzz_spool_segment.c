/*
 * fuzz_spool_segment.c - libFuzzer target: journal recovery
 * (relay/spool_recover.c) over a whole segment image, through the real
 * journal backend on a scratch directory (tmpfs when /dev/shm is there).
 *
 * fuzz_spool_record checks each decoder alone; this target checks what
 * recovery does with a segment as a crash, a bad disk or a foreign writer
 * leaves it: the scan, the resynchronisation after a damaged record, the
 * torn-tail cut, the replay of MSG and state records into the index, the
 * set-aside into corrupt/.  Byte 0 of the input chooses the form:
 *   even: the rest is the file journal/000000000001.seg as it stands;
 *   odd:  the rest is a recipe - a segment header (valid, or with one byte
 *         changed) and then records, each from a few input bytes (type,
 *         a damage code: none, bad CRC, flipped body byte, lying length,
 *         torn here; a queue id from a small set so that state records meet
 *         their messages; the body), CRCs computed as the writer would.
 * Then:
 *   - spool_open() either succeeds or fails, and leaves the loop clean;
 *   - the recovery figures, spool_total_messages() and a walk of the index
 *     agree, each item has a tenant (maybe "", as a foreign writer may
 *     leave it) and is found by spool_find();
 *   - every message the index holds loads (envelope with recipients, valid
 *     recipient states) and its bytes read to the end, within its size;
 *   - a second spool_open() of what the first left (after whatever
 *     compaction the first ran) finds the same messages: recovery and the
 *     maintenance after it lose nothing they accepted;
 *   - spool_close() completes and the loop has no handle left.
 */
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "../../relay/spool_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define QID_BASE ((uint64_t)1700000000000 << 20)
#define LOAD_MAX 16      /* messages loaded and read per input */
#define IMAGE_MAX (256u * 1024)

struct fx {
	uv_loop_t loop;
	char dir[128];
	char seg[200];
};

/* ---- scratch directory ---------------------------------------------------- */

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

static void
rm_tree(const char *dir)
{
	(void)nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static struct fx *
fx_get(void)
{
	static struct fx *fx;   /* one per process: the loop outlives inputs */
	const char *base;

	if (fx != NULL)
		return fx;
	fx = calloc(1, sizeof(*fx));
	CHECK(fx != NULL && uv_loop_init(&fx->loop) == 0);
	base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(fx->dir, sizeof(fx->dir), "%s/fuzz_spool_segment.%ld", base,
	    (long)getpid());
	snprintf(fx->seg, sizeof(fx->seg), "%s/journal/000000000001.seg", fx->dir);
	return fx;
}

/* ---- the recipe -------------------------------------------------------------- */

struct img {
	uint8_t *p;
	size_t len;
};

static void
img_add(struct img *im, const void *b, size_t n)
{
	if (im->len + n > IMAGE_MAX)
		n = IMAGE_MAX - im->len;
	memcpy(im->p + im->len, b, n);
	im->len += n;
}

struct in {
	const uint8_t *p, *end;
};

static unsigned
in_byte(struct in *in)
{
	return in->p < in->end ? *in->p++ : 0;
}

static const char *const tenants[] = { "acme", "other", "a", "" };

/* A MSG body: an envelope from the recipe and a few message bytes. */
static size_t
msg_body(struct in *in, uint8_t *out, size_t cap)
{
	struct spool_rcpt rcpt[3] = {
		{ "bob@example.test", NULL, 0 },
		{ "carol@example.test", "rfc822;carol@example.test", ENV_NOTIFY_FAILURE },
		{ "", NULL, ENV_NOTIFY_NEVER },
	};
	struct spool_envelope env = { 0 };
	unsigned b = in_byte(in), nmsg = in_byte(in);
	uint8_t *e = NULL;
	size_t elen = 0, n;

	env.tenant = (char *)tenants[b % 4];
	env.sender = (b & 4) ? "" : "alice@example.org";
	env.envid = (b & 8) ? "abc+2Bdef" : NULL;
	env.client = (b & 16) ? "client.example [192.0.2.1]" : NULL;
	env.ret = (enum env_ret)((b >> 5) % 3);
	env.body = ENV_BODY_8BITMIME;
	env.nrcpt = 1 + (b >> 6) % 3;
	env.rcpt = rcpt;
	if (spool_env_encode(&env, 1700000000000 + b, &e, &elen) != 0)
		return 0;
	n = elen < cap ? elen : cap;
	memcpy(out, e, n);
	free(e);
	for (unsigned i = 0; i < nmsg && n < cap; i++)
		out[n++] = (uint8_t)"Subject: x\r\n\r\nbody\r\n"[i % 20];
	return n;
}

/* A state body (or, with RAW, LEN bytes of the input as they are). */
static size_t
state_body(struct in *in, unsigned type, uint8_t *out, size_t cap)
{
	struct spool_caps caps = { 0 };
	unsigned b = in_byte(in);
	int n;

	switch (type) {
	case SPOOL_REC_RCPT:
		spool_rcpt_body_encode(out, b % 4, (enum spool_rcpt_state)(b / 4 % 3));
		return SPOOL_RCPT_BODY_LEN;
	case SPOOL_REC_DEFER:
		spool_defer_body_encode(out, 1700000000000 + (int64_t)b * 1000,
		    b % 7);
		return SPOOL_DEFER_BODY_LEN;
	case SPOOL_REC_HOLD:
		n = spool_hold_body_encode(out, cap, tenants[b % 3], b & 4);
		return n > 0 ? (size_t)n : 0;
	case SPOOL_REC_CAPS:
		caps.ext = b;
		caps.size_max = (uint64_t)b << 16;
		caps.seen_ms = 1700000000000;
		n = spool_caps_body_encode(out, cap, tenants[b % 3], &caps);
		return n > 0 ? (size_t)n : 0;
	default:
		return 0;   /* DELETE, WARNED */
	}
}

/* Returns false when the recipe tore the segment here (nothing follows). */
static bool
recipe_record(struct in *in, struct img *im)
{
	static uint8_t body[8192];
	unsigned op = in_byte(in), q = in_byte(in);
	unsigned type = 1 + op % SPOOL_REC_TYPE_MAX, damage = op >> 4;
	struct spool_rec_hdr h = { .type = (uint8_t)type };
	uint8_t hdr[SPOOL_REC_HDR_LEN];
	size_t len;

	if (op & 8) {
		/* A body straight from the input: whatever the decoders make of
		 * it behind a valid CRC. */
		len = in_byte(in);
		if (len > (size_t)(in->end - in->p))
			len = (size_t)(in->end - in->p);
		memcpy(body, in->p, len);
		in->p += len;
	} else if (type == SPOOL_REC_MSG) {
		len = msg_body(in, body, sizeof(body));
	} else {
		len = state_body(in, type, body, sizeof(body));
	}
	h.qid = (type == SPOOL_REC_HOLD || type == SPOOL_REC_CAPS) ? 0 :
	    QID_BASE + q % 8;
	h.len = (uint32_t)len;
	h.crc = spool_rec_crc(spool_crc32c(0, body, len), &h);
	switch (damage) {
	case 12:
		h.crc ^= 1;
		break;
	case 13:
		if (len > 0)
			body[q % len] ^= 0x40;
		break;
	case 14:
		h.len = (uint32_t)len + 1 + q;
		break;
	default:
		break;
	}
	spool_rec_hdr_encode(hdr, &h);
	img_add(im, hdr, sizeof(hdr));
	if (damage == 15) {
		/* Torn: the header and part of the body, then the end. */
		img_add(im, body, len / 2);
		return false;
	}
	img_add(im, body, len);
	return true;
}

static void
recipe(const uint8_t *data, size_t size, struct img *im)
{
	struct in in = { data, data + size };
	uint8_t seg[SPOOL_SEG_HDR_LEN];
	unsigned b = in_byte(&in);

	spool_seg_hdr_encode(seg, 1);
	if (b & 1)
		seg[in_byte(&in) % SPOOL_SEG_HDR_LEN] ^= (uint8_t)(in_byte(&in) | 1);
	img_add(im, seg, sizeof(seg));
	while (in.p < in.end && im->len < IMAGE_MAX)
		if (!recipe_record(&in, im))
			break;
}

/* ---- the checks ------------------------------------------------------------ */

struct probe {
	struct fx *fx;
	struct spool *sp;
	unsigned pending;
	uint64_t read_bytes, size;
	struct spool_msg *m;
};

static void
on_read(void *arg, int status, const void *buf, size_t len)
{
	struct probe *p = arg;

	(void)buf;
	if (status == 0 && len > 0) {
		p->read_bytes += len;
		CHECK(p->read_bytes <= p->size);
		if (spool_msg_read(p->m, p->read_bytes, 4096, on_read, p) == 0)
			return;
	}
	spool_msg_free(p->m);
	p->pending--;
}

static void
on_load(void *arg, int status, struct spool_msg *m)
{
	struct probe *p = arg;
	const struct spool_envelope *env;

	if (status != 0) {
		CHECK(m == NULL);
		p->pending--;
		return;
	}
	env = spool_msg_envelope(m);
	CHECK(env != NULL && env->tenant != NULL && env->sender != NULL);
	CHECK(env->nrcpt >= 1 && env->rcpt != NULL);
	for (size_t i = 0; i < env->nrcpt; i++)
		CHECK(spool_msg_rcpt_state(m, i) <= SPOOL_RCPT_BOUNCED);
	p->m = m;
	p->size = spool_msg_size(m);
	p->read_bytes = 0;
	if (spool_msg_read(m, 0, 4096, on_read, p) != 0) {
		spool_msg_free(m);
		p->pending--;
	}
}

struct walk {
	struct spool *sp;
	size_t n;
	spool_qid qids[LOAD_MAX];
};

static int
on_item(void *arg, const struct spool_item *it)
{
	struct walk *w = arg;
	struct spool_item again;

	CHECK(it->tenant != NULL);
	CHECK(spool_find(w->sp, it->qid, &again) == 0 && again.qid == it->qid);
	if (w->n < LOAD_MAX)
		w->qids[w->n] = it->qid;
	w->n++;
	return 0;
}

static void
on_closed(void *arg)
{
	*(bool *)arg = true;
}

static void
close_spool(struct fx *fx, struct spool *sp)
{
	bool done = false;

	spool_close(sp, on_closed, &done);
	while (!done)
		CHECK(uv_run(&fx->loop, UV_RUN_ONCE) != 0 || done);
	/* DONE may run before the last close callbacks: the loop must then
	 * end by itself (uv_run returns 0), not hang. */
	(void)uv_run(&fx->loop, UV_RUN_DEFAULT);
	CHECK(!uv_loop_alive(&fx->loop));
}

static int64_t
fixed_now(void)
{
	return 1700000600000;
}

/* Open, check, close; the message count, or -1 when the open failed. */
static long
open_and_check(struct fx *fx, bool load, struct spool_recovery_stats *st)
{
	struct spool_options so = { .dir = fx->dir, .backend = "journal",
	    .now_ms = fixed_now };
	struct spool *sp = NULL;
	struct walk w = { 0 };
	struct probe p = { 0 };
	int rc;

	memset(st, 0, sizeof(*st));
	rc = spool_open(&fx->loop, &so, &sp, st);
	if (rc != 0) {
		CHECK(sp == NULL || rc == 0);
		(void)uv_run(&fx->loop, UV_RUN_NOWAIT);
		CHECK(!uv_loop_alive(&fx->loop));
		return -1;
	}
	w.sp = sp;
	spool_foreach(sp, NULL, on_item, &w);
	CHECK(w.n == spool_total_messages(sp));
	CHECK(st->messages == w.n);
	p.fx = fx;
	p.sp = sp;
	for (size_t i = 0; load && i < w.n && i < LOAD_MAX; i++) {
		p.pending++;
		if (spool_load(sp, w.qids[i], on_load, &p) != 0) {
			p.pending--;
			continue;
		}
		while (p.pending > 0)
			CHECK(uv_run(&fx->loop, UV_RUN_ONCE) != 0 || p.pending == 0);
	}
	close_spool(fx, sp);
	return (long)w.n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fx *fx = fx_get();
	struct spool_recovery_stats st1, st2;
	struct img im = { 0 };
	char jdir[160];
	long n1, n2;
	FILE *f;

	if (size == 0)
		return 0;
	im.p = malloc(IMAGE_MAX);
	CHECK(im.p != NULL);
	if (data[0] & 1)
		recipe(data + 1, size - 1, &im);
	else
		img_add(&im, data + 1, size - 1);
	rm_tree(fx->dir);
	snprintf(jdir, sizeof(jdir), "%s/journal", fx->dir);
	CHECK(mkdir(fx->dir, 0700) == 0 && mkdir(jdir, 0700) == 0);
	f = fopen(fx->seg, "wb");
	CHECK(f != NULL);
	CHECK(fwrite(im.p, 1, im.len, f) == im.len || im.len == 0);
	CHECK(fclose(f) == 0);
	free(im.p);

	n1 = open_and_check(fx, true, &st1);
	if (n1 >= 0) {
		n2 = open_and_check(fx, false, &st2);
		CHECK(n2 == n1);
	}
	rm_tree(fx->dir);
	return 0;
}
