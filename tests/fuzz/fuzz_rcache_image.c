/*
 * fuzz_rcache_image.c - libFuzzer target: the learned-recipients image
 * (rcache_decode, relay/rcache.c), which verify.c reads back from
 * spool_dir/recipients/TENANT at start - a file that a crash, a full disk
 * or a careless operator may have damaged.
 *
 * Byte 0: bit 0 set - the last 32 octets are replaced by the SHA-256 of
 * the rest, as a writer would compute it, so that the fuzzer reaches the
 * structure checks behind the digest; bits 1..7 - the cache's bound (1 to
 * 128 entries).  The cache already holds one entry when the image is
 * decoded.  Checks:
 *   - a refused image (format, digest) leaves the cache as it was;
 *   - an accepted one leaves at most the bound, the entry held before
 *     still there (what was learned since the start wins), and every
 *     loaded entry answers rcache_get() with its state;
 *   - encoding the result and decoding that into an empty cache of the
 *     same bound gives the same entries, and encoding again the same
 *     bytes (the image round-trips).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "mxspool/rcache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

#define NOW 1700000000000LL
#define PRE "pre-existing@example.test"

struct seen {
	size_t n;
};

/* Every entry of a walk answers rcache_get() with its own state. */
static int
check_entry(void *arg, const struct rcache_entry *e)
{
	struct seen *s = arg;

	CHECK(e->addr != NULL && e->addr[0] != '\0');
	CHECK(strlen(e->addr) <= RCACHE_ADDR_MAX);
	CHECK(e->state == RCACHE_VALID || e->state == RCACHE_INVALID);
	s->n++;
	return 0;
}

/* rcache_get() may drop an expired entry, so it is asked after the walk. */
static int
collect(void *arg, const struct rcache_entry *e)
{
	char ***v = arg;

	**v = strdup(e->addr);
	CHECK(**v != NULL);
	(*v)++;
	return 0;
}

static void
check_loaded(struct rcache *c, size_t max)
{
	struct seen s = { 0 };
	size_t n = rcache_count(c);
	char **addrs = calloc(n + 1, sizeof(*addrs)), **p = addrs;

	CHECK(addrs != NULL);
	CHECK(n <= max);
	CHECK(rcache_walk(c, check_entry, &s) == 0 && s.n == n);
	CHECK(rcache_walk(c, collect, &p) == 0);
	for (size_t i = 0; i < n; i++) {
		/* Expired ones read as unknown; the rest as what they are. */
		(void)rcache_get(c, addrs[i], NOW);
		free(addrs[i]);
	}
	free(addrs);
}

static void
check_round_trip(struct rcache *c, size_t max)
{
	struct rcache *again = rcache_new(max);
	uint8_t *e1 = NULL, *e2 = NULL;
	size_t n1, n2, loaded = 0;

	CHECK(again != NULL);
	CHECK(rcache_encode(c, NOW, &e1, &n1) == RCACHE_OK);
	CHECK(n1 <= rcache_image_max(max));
	CHECK(rcache_decode(again, e1, n1, NOW, &loaded) == RCACHE_OK);
	CHECK(rcache_encode(again, NOW, &e2, &n2) == RCACHE_OK);
	CHECK(n1 == n2 && memcmp(e1, e2, n1) == 0);
	free(e1);
	free(e2);
	rcache_free(again);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rcache *c;
	uint8_t *img;
	size_t len, max, loaded = 99;
	unsigned int dlen = 0;
	int rc;

	if (size == 0)
		return 0;
	max = 1 + (data[0] >> 1);
	len = size - 1;
	img = malloc(len ? len : 1);
	CHECK(img != NULL);
	memcpy(img, data + 1, len);
	if ((data[0] & 1) && len >= RCACHE_IMAGE_DIGEST)
		CHECK(EVP_Digest(img, len - RCACHE_IMAGE_DIGEST,
		    img + len - RCACHE_IMAGE_DIGEST, &dlen, EVP_sha256(),
		    NULL) == 1 && dlen == RCACHE_IMAGE_DIGEST);
	c = rcache_new(max);
	CHECK(c != NULL);
	CHECK(rcache_put(c, PRE, RCACHE_VALID, NOW, NOW + 3600000) == RCACHE_OK);

	rc = rcache_decode(c, img, len, NOW, &loaded);
	if (rc != RCACHE_OK) {
		CHECK(rc == RCACHE_EFORMAT || rc == RCACHE_ECHECKSUM);
		CHECK(rcache_count(c) == 1);
		CHECK(rcache_get(c, PRE, NOW) == RCACHE_VALID);
	} else {
		CHECK(loaded <= max);
		CHECK(rcache_get(c, PRE, NOW) == RCACHE_VALID);
		check_loaded(c, max);
		check_round_trip(c, max);
	}
	rcache_free(c);
	free(img);
	return 0;
}
