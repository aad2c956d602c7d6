/*
 * spool_codec.c - CRC32C and the byte codec of journal records.
 *
 * Pure functions, no I/O and no global mutable state except the CRC tables,
 * which are built once under pthread_once (flush jobs checksum on several
 * threadpool threads at a time).  The layouts are the ones documented at the
 * top of relay/spool_journal.c.
 */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "spool_internal.h"

/* ---- CRC32C ------------------------------------------------------------ */

#define CRC32C_POLY 0x82F63B78u       /* Castagnoli, bit-reflected */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_have_hw;

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc_table[0][i] = c;
	}
	/* Slicing-by-8: table[k][i] is the CRC of byte i followed by k zeros. */
	for (uint32_t i = 0; i < 256; i++)
		for (int k = 1; k < 8; k++)
			crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^
			    crc_table[0][crc_table[k - 1][i] & 0xFF];
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc_have_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t
spool_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	while (len > 0 && ((uintptr_t)p & 7) != 0) {
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
		len--;
	}
	while (len >= 8) {
		uint32_t lo = spool_get32(p) ^ crc, hi = spool_get32(p + 4);

		crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
		    crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
		    crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
		    crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
		p += 8;
		len -= 8;
	}
	while (len-- > 0)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
	return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t
crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
	uint64_t c = ~crc;

	while (len > 0 && ((uintptr_t)p & 7) != 0) {
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
		len--;
	}
	while (len >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
		p += 8;
		len -= 8;
	}
	while (len-- > 0)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
	return ~(uint32_t)c;
}
#endif

uint32_t
spool_crc32c(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc_once, crc_init);
#if defined(__x86_64__)
	if (crc_have_hw)
		return crc32c_hw(crc, buf, len);
#endif
	return spool_crc32c_sw(crc, buf, len);
}

/* ---- headers ----------------------------------------------------------- */

uint32_t
spool_rec_crc(uint32_t body_crc, const struct spool_rec_hdr *h)
{
	uint8_t b[SPOOL_REC_HDR_LEN];

	spool_rec_hdr_encode(b, h);
	/* Bytes 4..11 are type, flags, reserved and length; 16..23 the qid.
	 * The CRC field itself (12..15) and the magic are not covered. */
	body_crc = spool_crc32c(body_crc, b + 4, 8);
	return spool_crc32c(body_crc, b + 16, 8);
}

void
spool_rec_hdr_encode(uint8_t out[SPOOL_REC_HDR_LEN], const struct spool_rec_hdr *h)
{
	spool_put32(out, SPOOL_REC_MAGIC);
	out[4] = h->type;
	out[5] = 0;
	spool_put16(out + 6, 0);
	spool_put32(out + 8, h->len);
	spool_put32(out + 12, h->crc);
	spool_put64(out + 16, h->qid);
}

int
spool_rec_hdr_decode(const uint8_t in[SPOOL_REC_HDR_LEN], struct spool_rec_hdr *h)
{
	if (spool_get32(in) != SPOOL_REC_MAGIC || in[5] != 0 ||
	    spool_get16(in + 6) != 0)
		return SPOOL_ECORRUPT;
	h->type = in[4];
	h->len = spool_get32(in + 8);
	h->crc = spool_get32(in + 12);
	h->qid = spool_get64(in + 16);
	if (h->type < SPOOL_REC_MSG || h->type > SPOOL_REC_TYPE_MAX ||
	    h->len > SPOOL_REC_MAX_BODY)
		return SPOOL_ECORRUPT;
	return 0;
}

void
spool_seg_hdr_encode(uint8_t out[SPOOL_SEG_HDR_LEN], uint64_t segno)
{
	memcpy(out, SPOOL_SEG_MAGIC, 8);
	spool_put32(out + 8, SPOOL_SEG_VERSION);
	spool_put32(out + 12, SPOOL_SEG_HDR_LEN);
	spool_put64(out + 16, segno);
	spool_put32(out + 24, 0);
	spool_put32(out + 28, spool_crc32c(0, out, 28));
}

int
spool_seg_hdr_decode(const uint8_t in[SPOOL_SEG_HDR_LEN], uint64_t *segno)
{
	if (memcmp(in, SPOOL_SEG_MAGIC, 8) != 0 ||
	    spool_get32(in + 28) != spool_crc32c(0, in, 28))
		return SPOOL_ECORRUPT;
	/* A newer format is refused rather than misread. */
	if (spool_get32(in + 8) != SPOOL_SEG_VERSION ||
	    spool_get32(in + 12) != SPOOL_SEG_HDR_LEN)
		return SPOOL_ECORRUPT;
	*segno = spool_get64(in + 16);
	return 0;
}

/* ---- envelope ---------------------------------------------------------- */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	bool bad;
};

static void
w_bytes(struct wbuf *w, const void *s, size_t n)
{
	if (w->p != NULL && w->len + n <= w->cap)
		memcpy(w->p + w->len, s, n);
	w->len += n;
}

static void
w_u8(struct wbuf *w, unsigned v)
{
	uint8_t b = (uint8_t)v;

	w_bytes(w, &b, 1);
}

/* A u16 length then the bytes; NULL is SPOOL_STR_NULL when ALLOW_NULL. */
static void
w_str(struct wbuf *w, const char *s, bool allow_null)
{
	uint8_t b[2];
	size_t n;

	if (s == NULL) {
		if (!allow_null)
			w->bad = true;
		spool_put16(b, SPOOL_STR_NULL);
		w_bytes(w, b, 2);
		return;
	}
	n = strlen(s);
	if (n >= SPOOL_STR_NULL) {
		w->bad = true;
		n = 0;
	}
	spool_put16(b, (uint16_t)n);
	w_bytes(w, b, 2);
	w_bytes(w, s, n);
}

/* On-disk bytes of RET and BODY (format version 1), independent of the
 * order of the enums in envelope.h. */
static uint8_t
codec_ret_byte(enum env_ret ret)
{
	return ret == ENV_RET_FULL ? 1 : ret == ENV_RET_HDRS ? 2 : 0;
}

static uint8_t
codec_body_byte(enum env_body body)
{
	return body == ENV_BODY_8BITMIME ? 1 : body == ENV_BODY_BINARYMIME ? 2 : 0;
}

static void
env_write(struct wbuf *w, const struct spool_envelope *env, int64_t arrival_ms)
{
	uint8_t fixed[20];

	spool_put32(fixed, (uint32_t)w->cap);
	spool_put32(fixed + 4, (uint32_t)env->nrcpt);
	spool_put64(fixed + 8, (uint64_t)arrival_ms);
	fixed[16] = codec_ret_byte(env->ret);
	fixed[17] = codec_body_byte(env->body);
	fixed[18] = env->smtputf8 ? 1 : 0;
	fixed[19] = 0;
	w_bytes(w, fixed, sizeof(fixed));
	w_str(w, env->tenant, false);
	w_str(w, env->sender, false);
	w_str(w, env->envid, true);
	w_str(w, env->client, true);
	for (size_t i = 0; i < env->nrcpt; i++) {
		w_str(w, env->rcpt[i].addr, false);
		w_str(w, env->rcpt[i].orcpt, true);
		w_u8(w, env->rcpt[i].notify);
	}
}

int
spool_env_encode(const struct spool_envelope *env, int64_t arrival_ms,
    uint8_t **out, size_t *outlen)
{
	struct wbuf w = { 0 };

	if (env->nrcpt == 0 || env->nrcpt > SPOOL_MAX_RCPT || env->rcpt == NULL)
		return SPOOL_EINVAL;
	/* First pass measures, second pass writes (cap = final length). */
	env_write(&w, env, arrival_ms);
	if (w.bad || w.len > SPOOL_ENV_MAX)
		return SPOOL_EINVAL;
	w.cap = w.len;
	w.len = 0;
	w.p = malloc(w.cap);
	if (w.p == NULL)
		return SPOOL_ENOMEM;
	env_write(&w, env, arrival_ms);
	*out = w.p;
	*outlen = w.len;
	return 0;
}

struct rbuf {
	const uint8_t *p;
	size_t len, off;
	bool bad;
};

static const uint8_t *
r_take(struct rbuf *r, size_t n)
{
	const uint8_t *s;

	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return NULL;
	}
	s = r->p + r->off;
	r->off += n;
	return s;
}

/* Returns the string's bytes and sets *N, or NULL with *N = SIZE_MAX for
 * an absent string (or a decoding error, which sets r->bad). */
static const uint8_t *
r_str(struct rbuf *r, size_t *n, bool allow_null)
{
	const uint8_t *b = r_take(r, 2);
	uint16_t l;

	*n = SIZE_MAX;
	if (b == NULL)
		return NULL;
	l = spool_get16(b);
	if (l == SPOOL_STR_NULL) {
		if (!allow_null)
			r->bad = true;
		return NULL;
	}
	b = r_take(r, l);
	if (b != NULL)
		*n = l;
	return b;
}

/* Copies a decoded string into the arena; NULL stays NULL. */
static char *
arena_str(char **arena, const uint8_t *s, size_t n)
{
	char *d;

	if (n == SIZE_MAX)
		return NULL;
	d = *arena;
	memcpy(d, s, n);
	d[n] = '\0';
	*arena += n + 1;
	return d;
}

int
spool_env_decode(const uint8_t *p, size_t len, struct spool_envelope **out)
{
	struct rbuf r = { .p = p, .len = len };
	struct spool_envelope *env;
	struct spool_rcpt *rc;
	const uint8_t *fixed, *s;
	size_t n, strbytes = 0;
	uint32_t nrcpt;
	char *arena;

	fixed = r_take(&r, 20);
	if (fixed == NULL || spool_get32(fixed) != len)
		return SPOOL_ECORRUPT;
	nrcpt = spool_get32(fixed + 4);
	if (nrcpt == 0 || nrcpt > SPOOL_MAX_RCPT || nrcpt > len / 5)
		return SPOOL_ECORRUPT;
	/* Pass one: validate and size the strings. */
	for (int i = 0; i < 4; i++) {
		r_str(&r, &n, i >= 2);
		if (n != SIZE_MAX)
			strbytes += n;
		strbytes++;
	}
	for (uint32_t i = 0; i < nrcpt && !r.bad; i++) {
		r_str(&r, &n, false);
		strbytes += n + 1;
		r_str(&r, &n, true);
		strbytes += (n == SIZE_MAX ? 0 : n) + 1;
		r_take(&r, 1);
	}
	if (r.bad || r.off != len)
		return SPOOL_ECORRUPT;

	env = malloc(sizeof(*env) + nrcpt * sizeof(*rc) + strbytes);
	if (env == NULL)
		return SPOOL_ENOMEM;
	rc = (struct spool_rcpt *)(env + 1);
	arena = (char *)(rc + nrcpt);
	r.off = 20;
	env->arrival_ms = (int64_t)spool_get64(fixed + 8);
	env->ret = fixed[16] == 1 ? ENV_RET_FULL : fixed[16] == 2 ? ENV_RET_HDRS :
	    ENV_RET_NONE;
	env->body = fixed[17] == 1 ? ENV_BODY_8BITMIME :
	    fixed[17] == 2 ? ENV_BODY_BINARYMIME : ENV_BODY_7BIT;
	env->smtputf8 = fixed[18] & 1;
	s = r_str(&r, &n, false);
	env->tenant = arena_str(&arena, s, n);
	s = r_str(&r, &n, false);
	env->sender = arena_str(&arena, s, n);
	s = r_str(&r, &n, true);
	env->envid = arena_str(&arena, s, n);
	s = r_str(&r, &n, true);
	env->client = arena_str(&arena, s, n);
	env->nrcpt = nrcpt;
	env->rcpt = rc;
	for (uint32_t i = 0; i < nrcpt; i++) {
		s = r_str(&r, &n, false);
		rc[i].addr = arena_str(&arena, s, n);
		s = r_str(&r, &n, true);
		rc[i].orcpt = arena_str(&arena, s, n);
		rc[i].notify = *r_take(&r, 1);
	}
	*out = env;
	return 0;
}

int
spool_msg_prefix_decode(const uint8_t *body, size_t avail, uint32_t body_len,
    struct spool_msg_prefix *out)
{
	if (body_len < SPOOL_MSG_FIXED_LEN)
		return SPOOL_ECORRUPT;
	if (avail < SPOOL_MSG_FIXED_LEN)
		return SPOOL_EINVAL;
	out->env_len = spool_get32(body);
	out->nrcpt = spool_get32(body + 4);
	out->arrival_ms = (int64_t)spool_get64(body + 8);
	out->tenant_len = spool_get16(body + 20);
	if (out->env_len > body_len || out->nrcpt == 0 ||
	    out->nrcpt > SPOOL_MAX_RCPT || out->tenant_len == SPOOL_STR_NULL ||
	    SPOOL_MSG_FIXED_LEN + out->tenant_len > out->env_len)
		return SPOOL_ECORRUPT;
	if (avail < SPOOL_MSG_FIXED_LEN + out->tenant_len)
		return SPOOL_EINVAL;
	out->tenant = (const char *)body + SPOOL_MSG_FIXED_LEN;
	return 0;
}

/* ---- state records ----------------------------------------------------- */

void
spool_rcpt_body_encode(uint8_t out[SPOOL_RCPT_BODY_LEN], uint32_t idx,
    enum spool_rcpt_state st)
{
	spool_put32(out, idx);
	out[4] = (uint8_t)st;
}

int
spool_rcpt_body_decode(const uint8_t *p, size_t len, uint32_t *idx,
    enum spool_rcpt_state *st)
{
	if (len != SPOOL_RCPT_BODY_LEN || p[4] > SPOOL_RCPT_BOUNCED)
		return SPOOL_ECORRUPT;
	*idx = spool_get32(p);
	*st = (enum spool_rcpt_state)p[4];
	return 0;
}

void
spool_defer_body_encode(uint8_t out[SPOOL_DEFER_BODY_LEN], int64_t next_ms,
    uint32_t attempts)
{
	spool_put64(out, (uint64_t)next_ms);
	spool_put32(out + 8, attempts);
}

int
spool_defer_body_decode(const uint8_t *p, size_t len, int64_t *next_ms,
    uint32_t *attempts)
{
	if (len != SPOOL_DEFER_BODY_LEN)
		return SPOOL_ECORRUPT;
	*next_ms = (int64_t)spool_get64(p);
	*attempts = spool_get32(p + 8);
	return 0;
}

int
spool_hold_body_encode(uint8_t *out, size_t cap, const char *tenant, bool held)
{
	size_t n = strlen(tenant);

	if (n == 0 || n >= SPOOL_STR_NULL || cap < 3 + n)
		return SPOOL_EINVAL;
	out[0] = held ? 1 : 0;
	spool_put16(out + 1, (uint16_t)n);
	memcpy(out + 3, tenant, n);
	return (int)(3 + n);
}

int
spool_hold_body_decode(const uint8_t *p, size_t len, const char **tenant,
    size_t *tenant_len, bool *held)
{
	if (len < 3 || p[0] > 1 || spool_get16(p + 1) == 0 ||
	    (size_t)spool_get16(p + 1) + 3 != len)
		return SPOOL_ECORRUPT;
	*held = p[0] == 1;
	*tenant_len = spool_get16(p + 1);
	*tenant = (const char *)p + 3;
	return 0;
}

int
spool_caps_body_encode(uint8_t *out, size_t cap, const char *tenant,
    const struct spool_caps *caps)
{
	size_t n = strlen(tenant);
	uint8_t *p = out;

	if (n == 0 || n >= SPOOL_STR_NULL || cap < SPOOL_CAPS_BODY_FIXED + n)
		return SPOOL_EINVAL;
	spool_put16(p, (uint16_t)n);
	memcpy(p + 2, tenant, n);
	p += 2 + n;
	spool_put32(p, (uint32_t)caps->ext);
	spool_put64(p + 4, caps->size_max);
	spool_put32(p + 12, caps->rcpt_max);
	spool_put32(p + 16, caps->mail_max);
	spool_put64(p + 20, (uint64_t)caps->seen_ms);
	return (int)(SPOOL_CAPS_BODY_FIXED + n);
}

int
spool_caps_body_decode(const uint8_t *p, size_t len, const char **tenant,
    size_t *tenant_len, struct spool_caps *caps)
{
	size_t n;

	if (len < SPOOL_CAPS_BODY_FIXED)
		return SPOOL_ECORRUPT;
	n = spool_get16(p);
	if (n == 0 || n == SPOOL_STR_NULL || SPOOL_CAPS_BODY_FIXED + n != len)
		return SPOOL_ECORRUPT;
	*tenant = (const char *)p + 2;
	*tenant_len = n;
	p += 2 + n;
	memset(caps, 0, sizeof(*caps));
	caps->ext = spool_get32(p);
	caps->size_max = spool_get64(p + 4);
	caps->rcpt_max = spool_get32(p + 12);
	caps->mail_max = spool_get32(p + 16);
	caps->seen_ms = (int64_t)spool_get64(p + 20);
	return 0;
}
