/*
 * spool_internal.h - the journal's pure codec, shared by the spool's files
 * (relay/spool*.c), the unit tests and the crash-test driver.  Nothing here
 * does I/O.
 *
 * The byte layouts are documented once, at the top of relay/spool_journal.c; the
 * constants below are the names that comment uses.  Every multi-byte field
 * is little-endian.
 */
#ifndef MXSPOOL_SPOOL_INTERNAL_H
#define MXSPOOL_SPOOL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mxspool/spool.h"

#define SPOOL_SEG_MAGIC      "MXSPJRNL"   /* 8 bytes, first in every segment */
#define SPOOL_SEG_VERSION    1u
#define SPOOL_SEG_HDR_LEN    32u
#define SPOOL_REC_MAGIC      0x5243584Du  /* "MXCR" as bytes on disk */
#define SPOOL_REC_HDR_LEN    24u
#define SPOOL_REC_MAX_BODY   (1u << 30)   /* 1 GiB: offsets stay in 32 bits */
#define SPOOL_ENV_MAX        (1u << 20)   /* encoded envelope, = read chunk */
#define SPOOL_MSG_FIXED_LEN  22u          /* env_len..tenant_len, see spool_journal.c */
#define SPOOL_MAX_RCPT       0xFFFFFFu    /* the index keeps 24 bits */
#define SPOOL_STR_NULL       0xFFFFu      /* u16 length meaning "absent" */

enum spool_rec_type {
	SPOOL_REC_MSG = 1,            /* a message: envelope + bytes */
	SPOOL_REC_RCPT = 2,           /* one recipient delivered/bounced/pending */
	SPOOL_REC_DEFER = 3,          /* next attempt time + attempt count */
	SPOOL_REC_DELETE = 4,         /* message removed by the operator */
	SPOOL_REC_HOLD = 5,           /* tenant held / released (qid 0) */
	SPOOL_REC_WARNED = 6,         /* the delay notice is done (no body) */
	SPOOL_REC_CAPS = 7,           /* a tenant's primary capabilities (qid 0) */
};
#define SPOOL_REC_TYPE_MAX   SPOOL_REC_CAPS

struct spool_rec_hdr {
	uint8_t type;
	uint32_t len;                 /* body bytes after the 24-byte header */
	uint32_t crc;
	spool_qid qid;
};

/* CRC32C (Castagnoli, reflected, init/xorout ~0): crc32c(0, "123456789", 9)
 * is 0xE3069283.  Pass the previous result to continue a running CRC.  The
 * _sw variant never uses the SSE4.2 instruction (tests compare the two). */
uint32_t spool_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t spool_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* A record's CRC: BODY_CRC (the running CRC of the body) continued over the
 * header's type, flags, reserved, length and queue id bytes. */
uint32_t spool_rec_crc(uint32_t body_crc, const struct spool_rec_hdr *h);
void spool_rec_hdr_encode(uint8_t out[SPOOL_REC_HDR_LEN],
    const struct spool_rec_hdr *h);
/* 0, or SPOOL_ECORRUPT for a bad magic, unknown type or oversized length. */
int spool_rec_hdr_decode(const uint8_t in[SPOOL_REC_HDR_LEN],
    struct spool_rec_hdr *h);

void spool_seg_hdr_encode(uint8_t out[SPOOL_SEG_HDR_LEN], uint64_t segno);
/* 0 with *SEGNO set, or SPOOL_ECORRUPT. */
int spool_seg_hdr_decode(const uint8_t in[SPOOL_SEG_HDR_LEN], uint64_t *segno);

/*
 * The envelope part of a message body.  encode allocates *OUT (free()); its
 * length is the record's env_len.  The message bytes follow it in the body.
 * Returns 0, SPOOL_EINVAL (a string over 65534 bytes, too many recipients)
 * or SPOOL_ENOMEM.
 */
int spool_env_encode(const struct spool_envelope *env, int64_t arrival_ms,
    uint8_t **out, size_t *outlen);
/* Decode a whole envelope part (LEN bytes) into one heap block freed with
 * free(*OUT).  Returns 0 or SPOOL_ECORRUPT. */
int spool_env_decode(const uint8_t *p, size_t len, struct spool_envelope **out);

/* Just what recovery needs from the start of a message body, without
 * allocating: AVAIL may be short, then SPOOL_EINVAL asks for more bytes. */
struct spool_msg_prefix {
	uint32_t env_len;
	uint32_t nrcpt;
	int64_t arrival_ms;
	const char *tenant;           /* points into the body, not terminated */
	size_t tenant_len;
};
int spool_msg_prefix_decode(const uint8_t *body, size_t avail,
    uint32_t body_len, struct spool_msg_prefix *out);

/* State record bodies. */
#define SPOOL_RCPT_BODY_LEN  5u
#define SPOOL_DEFER_BODY_LEN 12u
void spool_rcpt_body_encode(uint8_t out[SPOOL_RCPT_BODY_LEN], uint32_t idx,
    enum spool_rcpt_state st);
int spool_rcpt_body_decode(const uint8_t *p, size_t len, uint32_t *idx,
    enum spool_rcpt_state *st);
void spool_defer_body_encode(uint8_t out[SPOOL_DEFER_BODY_LEN], int64_t next_ms,
    uint32_t attempts);
int spool_defer_body_decode(const uint8_t *p, size_t len, int64_t *next_ms,
    uint32_t *attempts);
/* HOLD body: u8 held, u16 len, tenant.  encode returns the length written
 * into OUT (which holds 3 + 65535 bytes at most) or SPOOL_EINVAL. */
int spool_hold_body_encode(uint8_t *out, size_t cap, const char *tenant,
    bool held);
int spool_hold_body_decode(const uint8_t *p, size_t len, const char **tenant,
    size_t *tenant_len, bool *held);

/* CAPS body: u16 len, tenant, u32 ext, u64 size_max, u32 rcpt_max,
 * u32 mail_max, i64 seen_ms.  encode returns the length written into OUT
 * (SPOOL_CAPS_BODY_FIXED + the tenant's length, at most 65564 bytes) or
 * SPOOL_EINVAL (an empty tenant, one of 65535 bytes or more, CAP short). */
#define SPOOL_CAPS_BODY_FIXED 30u
int spool_caps_body_encode(uint8_t *out, size_t cap, const char *tenant,
    const struct spool_caps *caps);
int spool_caps_body_decode(const uint8_t *p, size_t len, const char **tenant,
    size_t *tenant_len, struct spool_caps *caps);

/* Bytes the in-memory index of SP takes (entries, hash, heaps, side
 * table buckets), for the benchmark. */
size_t spool_index_bytes(const struct spool *sp);
/* Messages compaction set out to copy so far (0 for the RAM backend). */
uint64_t spool_compact_copies(const struct spool *sp);

/* Little-endian helpers. */
static inline void spool_put16(uint8_t *p, uint16_t v)
{ p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void spool_put32(uint8_t *p, uint32_t v)
{ for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline void spool_put64(uint8_t *p, uint64_t v)
{ for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline uint16_t spool_get16(const uint8_t *p)
{ return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t spool_get32(const uint8_t *p)
{ return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
    (uint32_t)p[3] << 24; }
static inline uint64_t spool_get64(const uint8_t *p)
{ return (uint64_t)spool_get32(p) | (uint64_t)spool_get32(p + 4) << 32; }

#endif
