/*
 * fuzz_spool_record.c - libFuzzer target: the journal's record codec
 * (relay/spool_codec.c, layouts at the top of relay/spool_journal.c).
 *
 * Recovery feeds these decoders whatever a segment holds after a crash, a
 * disk error or a foreign writer, so each must refuse or accept any bytes
 * without reading past them, and what it accepts must survive a round trip:
 *   - the record header and the segment header: decode, encode, same bytes
 *     (but for the segment header's reserved field and its CRC);
 *   - the MSG prefix: the tenant lies inside the bytes given;
 *   - the envelope: decode, encode, decode again, encode again: the two
 *     encodings are the same bytes;
 *   - the RCPT, DEFER, HOLD and CAPS bodies: decode, encode, same bytes.
 * Every decoder sees the whole input (a short input is as interesting as a
 * long one).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../relay/spool_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static void
check_headers(const uint8_t *data, size_t size)
{
	struct spool_rec_hdr h;
	uint8_t out[SPOOL_SEG_HDR_LEN];
	uint64_t segno;

	if (size >= SPOOL_REC_HDR_LEN && spool_rec_hdr_decode(data, &h) == 0) {
		CHECK(h.type >= SPOOL_REC_MSG && h.type <= SPOOL_REC_TYPE_MAX);
		CHECK(h.len <= SPOOL_REC_MAX_BODY);
		spool_rec_hdr_encode(out, &h);
		CHECK(memcmp(out, data, SPOOL_REC_HDR_LEN) == 0);
	}
	/* The decoder ignores the reserved field (the CRC covers it), and the
	 * encoder writes it as 0: the rest must round-trip. */
	if (size >= SPOOL_SEG_HDR_LEN && spool_seg_hdr_decode(data, &segno) == 0) {
		spool_seg_hdr_encode(out, segno);
		CHECK(memcmp(out, data, 24) == 0);
	}
}

static void
check_envelope(const uint8_t *data, size_t size)
{
	struct spool_envelope *env = NULL, *again = NULL;
	struct spool_msg_prefix pf;
	uint8_t *e1 = NULL, *e2 = NULL;
	size_t n1, n2;

	if (spool_msg_prefix_decode(data, size, (uint32_t)size, &pf) == 0) {
		CHECK(pf.env_len <= size && pf.nrcpt > 0);
		CHECK((const uint8_t *)pf.tenant == data + SPOOL_MSG_FIXED_LEN);
		CHECK(SPOOL_MSG_FIXED_LEN + pf.tenant_len <= size);
	}
	if (spool_env_decode(data, size, &env) != 0)
		return;
	CHECK(env->tenant != NULL && env->sender != NULL && env->nrcpt > 0);
	if (spool_env_encode(env, env->arrival_ms, &e1, &n1) == 0) {
		CHECK(spool_env_decode(e1, n1, &again) == 0);
		CHECK(again->nrcpt == env->nrcpt);
		CHECK(strcmp(again->tenant, env->tenant) == 0);
		CHECK(strcmp(again->sender, env->sender) == 0);
		CHECK(spool_env_encode(again, again->arrival_ms, &e2, &n2) == 0);
		CHECK(n1 == n2 && memcmp(e1, e2, n1) == 0);
	}
	free(e1);
	free(e2);
	free(again);
	free(env);
}

static void
check_state_bodies(const uint8_t *data, size_t size)
{
	uint8_t out[SPOOL_CAPS_BODY_FIXED + 0xFFFF];
	enum spool_rcpt_state st;
	struct spool_caps caps;
	uint32_t idx, attempts;
	const char *tn;
	size_t tl;
	int64_t next;
	bool held;
	char name[0x10000];

	if (spool_rcpt_body_decode(data, size, &idx, &st) == 0) {
		spool_rcpt_body_encode(out, idx, st);
		CHECK(memcmp(out, data, SPOOL_RCPT_BODY_LEN) == 0);
	}
	if (spool_defer_body_decode(data, size, &next, &attempts) == 0) {
		spool_defer_body_encode(out, next, attempts);
		CHECK(memcmp(out, data, SPOOL_DEFER_BODY_LEN) == 0);
	}
	/* The encoders take a C string: a tenant with a NUL in it cannot
	 * round-trip (nor could it be written), so only compare without. */
	if (spool_hold_body_decode(data, size, &tn, &tl, &held) == 0) {
		CHECK(tn == (const char *)data + 3 && 3 + tl == size);
		memcpy(name, tn, tl);
		name[tl] = '\0';
		if (strlen(name) == tl) {
			CHECK(spool_hold_body_encode(out, sizeof(out), name, held) ==
			    (int)size);
			CHECK(memcmp(out, data, size) == 0);
		}
	}
	if (spool_caps_body_decode(data, size, &tn, &tl, &caps) == 0) {
		CHECK(tn == (const char *)data + 2 &&
		    SPOOL_CAPS_BODY_FIXED + tl == size);
		memcpy(name, tn, tl);
		name[tl] = '\0';
		if (strlen(name) == tl) {
			CHECK(spool_caps_body_encode(out, sizeof(out), name, &caps) ==
			    (int)size);
			CHECK(memcmp(out, data, size) == 0);
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_headers(data, size);
	check_envelope(data, size);
	check_state_bodies(data, size);
	return 0;
}
