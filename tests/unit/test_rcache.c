/*
 * test_rcache.c - the learned-recipient cache on a fake clock: expiry of
 * valid and invalid answers, the size bound and what it evicts, forget,
 * and the durable image (round trip, damage refused whole, bounds).
 *
 * Time is a plain int64 of milliseconds; nothing here sleeps.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxspool/rcache.h"

#define HOUR (3600LL * 1000)
#define DAY (24 * HOUR)
#define T0 1700000000000LL

/* A valid answer lasts until its expiry and reads UNKNOWN from then on;
 * case does not matter. */
static void
test_expiry(void **state)
{
	struct rcache *c = rcache_new(10);

	(void)state;
	assert_non_null(c);
	assert_int_equal(rcache_put(c, "Alice@Example.TEST", RCACHE_VALID, T0,
	    T0 + 31 * DAY), RCACHE_OK);
	assert_int_equal(rcache_put(c, "nobody@example.test", RCACHE_INVALID, T0,
	    T0 + 3 * HOUR), RCACHE_OK);
	assert_int_equal(rcache_get(c, "alice@example.test", T0 + 30 * DAY),
	    RCACHE_VALID);
	assert_int_equal(rcache_get(c, "NOBODY@example.test", T0 + 3 * HOUR - 1),
	    RCACHE_INVALID);
	assert_int_equal(rcache_get(c, "nobody@example.test", T0 + 3 * HOUR),
	    RCACHE_UNKNOWN);
	assert_int_equal(rcache_count(c), 1);   /* the expired one was dropped */
	assert_int_equal(rcache_get(c, "alice@example.test", T0 + 31 * DAY),
	    RCACHE_UNKNOWN);
	assert_int_equal(rcache_count(c), 0);
	assert_int_equal(rcache_get(c, "carol@example.test", T0), RCACHE_UNKNOWN);
	rcache_free(c);
}

/* A new answer replaces the old one, state and expiry both. */
static void
test_replace(void **state)
{
	struct rcache *c = rcache_new(10);

	(void)state;
	assert_int_equal(rcache_put(c, "a@x.test", RCACHE_INVALID, T0, T0 + HOUR), 0);
	assert_int_equal(rcache_put(c, "A@X.test", RCACHE_VALID, T0 + 10, T0 + DAY), 0);
	assert_int_equal(rcache_count(c), 1);
	assert_int_equal(rcache_get(c, "a@x.test", T0 + 2 * HOUR), RCACHE_VALID);
	rcache_free(c);
}

/* Bad input is refused and changes nothing. */
static void
test_einval(void **state)
{
	struct rcache *c = rcache_new(10);
	char longaddr[RCACHE_ADDR_MAX + 2];

	(void)state;
	memset(longaddr, 'a', sizeof(longaddr) - 1);
	longaddr[sizeof(longaddr) - 1] = '\0';
	assert_int_equal(rcache_put(c, "", RCACHE_VALID, T0, T0 + DAY), RCACHE_EINVAL);
	assert_int_equal(rcache_put(c, longaddr, RCACHE_VALID, T0, T0 + DAY),
	    RCACHE_EINVAL);
	assert_int_equal(rcache_put(c, "a@x", RCACHE_UNKNOWN, T0, T0 + DAY),
	    RCACHE_EINVAL);
	assert_int_equal(rcache_count(c), 0);
	assert_false(rcache_forget(c, ""));
	rcache_free(c);
}

/* Full: a flood of invalid addresses evicts invalid ones (oldest first)
 * and never the valid users; valid ones go only when nothing else is left. */
static void
test_bound_evicts_invalid_first(void **state)
{
	struct rcache *c = rcache_new(100);
	char a[64];

	(void)state;
	for (int i = 0; i < 10; i++) {
		snprintf(a, sizeof(a), "user%d@x.test", i);
		assert_int_equal(rcache_put(c, a, RCACHE_VALID, T0 + i, T0 + DAY), 0);
	}
	for (int i = 0; i < 10000; i++) {
		snprintf(a, sizeof(a), "dict%d@x.test", i);
		assert_int_equal(rcache_put(c, a, RCACHE_INVALID, T0 + 100 + i,
		    T0 + HOUR), 0);
	}
	assert_int_equal(rcache_count(c), 100);
	for (int i = 0; i < 10; i++) {
		snprintf(a, sizeof(a), "user%d@x.test", i);
		assert_int_equal(rcache_get(c, a, T0 + 20000), RCACHE_VALID);
	}
	/* The newest invalid ones survived, the oldest went. */
	assert_int_equal(rcache_get(c, "dict9999@x.test", T0 + 20000), RCACHE_INVALID);
	assert_int_equal(rcache_get(c, "dict0@x.test", T0 + 20000), RCACHE_UNKNOWN);
	/* Valid answers push out invalid ones, then the oldest valid ones. */
	for (int i = 10; i < 110; i++) {
		snprintf(a, sizeof(a), "user%d@x.test", i);
		assert_int_equal(rcache_put(c, a, RCACHE_VALID, T0 + 30000 + i,
		    T0 + DAY), 0);
	}
	assert_int_equal(rcache_count(c), 100);
	assert_int_equal(rcache_get(c, "dict9999@x.test", T0 + 40000), RCACHE_UNKNOWN);
	assert_int_equal(rcache_get(c, "user9@x.test", T0 + 40000), RCACHE_UNKNOWN);
	assert_int_equal(rcache_get(c, "user10@x.test", T0 + 40000), RCACHE_VALID);
	assert_int_equal(rcache_get(c, "user109@x.test", T0 + 40000), RCACHE_VALID);
	/* Shrinking the bound evicts at once. */
	rcache_set_max(c, 5);
	assert_int_equal(rcache_count(c), 5);
	assert_int_equal(rcache_get(c, "user109@x.test", T0 + 40000), RCACHE_VALID);
	assert_int_equal(rcache_get(c, "user104@x.test", T0 + 40000), RCACHE_UNKNOWN);
	rcache_free(c);
}

struct walked {
	char addr[8][64];
	enum rcache_state st[8];
	int n;
};

static int
walk_cb(void *arg, const struct rcache_entry *e)
{
	struct walked *w = arg;

	snprintf(w->addr[w->n], sizeof(w->addr[0]), "%s", e->addr);
	w->st[w->n] = e->state;
	return ++w->n >= 8;
}

/* The walk merges both states, newest first; forget drops one; expire
 * sweeps the expired ones. */
static void
test_walk_forget_expire(void **state)
{
	struct rcache *c = rcache_new(10);
	struct walked w = { .n = 0 };

	(void)state;
	rcache_put(c, "a@x", RCACHE_VALID, T0 + 1, T0 + DAY);
	rcache_put(c, "b@x", RCACHE_INVALID, T0 + 2, T0 + HOUR);
	rcache_put(c, "c@x", RCACHE_VALID, T0 + 3, T0 + DAY);
	assert_int_equal(rcache_walk(c, walk_cb, &w), 0);
	assert_int_equal(w.n, 3);
	assert_string_equal(w.addr[0], "c@x");
	assert_string_equal(w.addr[1], "b@x");
	assert_int_equal(w.st[1], RCACHE_INVALID);
	assert_string_equal(w.addr[2], "a@x");
	assert_true(rcache_forget(c, "C@X"));
	assert_false(rcache_forget(c, "c@x"));
	assert_int_equal(rcache_expire(c, T0 + 2 * HOUR), 1);
	assert_int_equal(rcache_count(c), 1);
	assert_int_equal(rcache_get(c, "a@x", T0 + 2 * HOUR), RCACHE_VALID);
	rcache_free(c);
}

/* An image round-trips (expired entries left out), and loading merges
 * behind what the cache learned since the start, up to its bound. */
static void
test_image_round_trip(void **state)
{
	struct rcache *c = rcache_new(10), *d = rcache_new(3);
	uint8_t *img;
	size_t len, loaded;

	(void)state;
	rcache_put(c, "a@x", RCACHE_VALID, T0 + 1, T0 + DAY);
	rcache_put(c, "b@x", RCACHE_INVALID, T0 + 2, T0 + HOUR);
	rcache_put(c, "c@x", RCACHE_VALID, T0 + 3, T0 + DAY);
	rcache_put(c, "old@x", RCACHE_INVALID, T0, T0 + 10);
	assert_int_equal(rcache_encode(c, T0 + 100, &img, &len), RCACHE_OK);
	assert_true(len <= rcache_image_max(rcache_count(c)));
	/* D already knows b@x as valid: that newer answer stays. */
	rcache_put(d, "b@x", RCACHE_VALID, T0 + 50, T0 + DAY);
	assert_int_equal(rcache_decode(d, img, len, T0 + 100, &loaded), RCACHE_OK);
	assert_int_equal(loaded, 2);   /* c@x, a@x; the bound is 3 */
	assert_int_equal(rcache_get(d, "b@x", T0 + 100), RCACHE_VALID);
	assert_int_equal(rcache_get(d, "c@x", T0 + 100), RCACHE_VALID);
	assert_int_equal(rcache_get(d, "a@x", T0 + 100), RCACHE_VALID);
	assert_int_equal(rcache_get(d, "old@x", T0 + 100), RCACHE_UNKNOWN);
	rcache_free(d);
	/* A fresh cache gets all three back, invalid included. */
	d = rcache_new(10);
	assert_int_equal(rcache_decode(d, img, len, T0 + 100, &loaded), RCACHE_OK);
	assert_int_equal(loaded, 3);
	assert_int_equal(rcache_get(d, "b@x", T0 + 100), RCACHE_INVALID);
	/* Loaded entries still expire on time. */
	assert_int_equal(rcache_get(d, "b@x", T0 + 2 + HOUR), RCACHE_UNKNOWN);
	free(img);
	rcache_free(c);
	rcache_free(d);
}

/* Every single flipped byte and every truncation of an image is refused,
 * and leaves the cache as it was. */
static void
test_image_damage(void **state)
{
	struct rcache *c = rcache_new(10), *d = rcache_new(10);
	uint8_t *img;
	size_t len;

	(void)state;
	rcache_put(c, "a@x", RCACHE_VALID, T0 + 1, T0 + DAY);
	rcache_put(c, "b@x", RCACHE_INVALID, T0 + 2, T0 + HOUR);
	assert_int_equal(rcache_encode(c, T0, &img, &len), RCACHE_OK);
	for (size_t i = 0; i < len; i++) {
		img[i] ^= 0x20;
		assert_true(rcache_decode(d, img, len, T0, NULL) < 0);
		img[i] ^= 0x20;
		assert_int_equal(rcache_count(d), 0);
	}
	for (size_t l = 0; l < len; l++)
		assert_true(rcache_decode(d, img, l, T0, NULL) < 0);
	assert_int_equal(rcache_decode(d, img, len, T0, NULL), RCACHE_OK);
	assert_int_equal(rcache_count(d), 2);
	free(img);
	rcache_free(c);
	rcache_free(d);
}

/* An empty cache encodes to a valid empty image. */
static void
test_image_empty(void **state)
{
	struct rcache *c = rcache_new(1);
	uint8_t *img;
	size_t len, loaded = 99;

	(void)state;
	assert_int_equal(rcache_encode(c, T0, &img, &len), RCACHE_OK);
	assert_int_equal(len, RCACHE_IMAGE_HDR + RCACHE_IMAGE_DIGEST);
	assert_int_equal(rcache_decode(c, img, len, T0, &loaded), RCACHE_OK);
	assert_int_equal(loaded, 0);
	assert_string_equal(rcache_strerror(RCACHE_ECHECKSUM),
	    "recipient cache image digest mismatch");
	free(img);
	rcache_free(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_expiry),
		cmocka_unit_test(test_replace),
		cmocka_unit_test(test_einval),
		cmocka_unit_test(test_bound_evicts_invalid_first),
		cmocka_unit_test(test_walk_forget_expire),
		cmocka_unit_test(test_image_round_trip),
		cmocka_unit_test(test_image_damage),
		cmocka_unit_test(test_image_empty),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
