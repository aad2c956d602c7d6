/*
 * test_tls.c - the memory-BIO TLS glue, run entirely in memory.
 *
 * A self-signed certificate for "mx.test" is made with the OpenSSL API and
 * written to a temporary directory.  A server conn and a client conn are
 * then connected back to back: whatever one puts in pending_out is fed to
 * the other, with no sockets involved.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mxspool/tls.h"

struct fixture {
	char dir[64];
	char cert[96];
	char key[96];
	char other_key[96];
	struct tls_ctx *server;
	struct tls_ctx *client;
};

static EVP_PKEY *
make_key(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");

	assert_non_null(k);
	return k;
}

static void
write_key(EVP_PKEY *k, const char *path)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
}

/* A self-signed certificate for CN/SAN mx.test, valid from now for a day. */
static void
make_cert(EVP_PKEY *k, const char *path)
{
	X509 *x = X509_new();
	X509_NAME *name;
	X509_EXTENSION *ext;
	X509V3_CTX v3;
	FILE *f;

	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -60));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400));
	assert_int_equal(X509_set_pubkey(x, k), 1);
	name = X509_get_subject_name(x);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	    (const unsigned char *)"mx.test", -1, -1, 0), 1);
	assert_int_equal(X509_set_issuer_name(x, name), 1);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:mx.test");
	assert_non_null(ext);
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);
	assert_true(X509_sign(x, k, EVP_sha256()) > 0);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, x), 1);
	assert_int_equal(fclose(f), 0);
	X509_free(x);
}

static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	char err[256];
	EVP_PKEY *k, *k2;

	assert_non_null(fx);
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/mxspool-tls-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	snprintf(fx->cert, sizeof(fx->cert), "%s/cert.pem", fx->dir);
	snprintf(fx->key, sizeof(fx->key), "%s/key.pem", fx->dir);
	snprintf(fx->other_key, sizeof(fx->other_key), "%s/other.pem", fx->dir);
	k = make_key();
	k2 = make_key();
	write_key(k, fx->key);
	write_key(k2, fx->other_key);
	make_cert(k, fx->cert);
	EVP_PKEY_free(k);
	EVP_PKEY_free(k2);
	assert_int_equal(tls_server_ctx_new(fx->cert, fx->key, &fx->server, err,
	    sizeof(err)), TLS_OK);
	assert_int_equal(tls_client_ctx_new(TLS_CLIENT_OPPORTUNISTIC, NULL,
	    &fx->client, err, sizeof(err)), TLS_OK);
	*state = fx;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;

	tls_ctx_free(fx->server);
	tls_ctx_free(fx->client);
	unlink(fx->cert);
	unlink(fx->key);
	unlink(fx->other_key);
	rmdir(fx->dir);
	free(fx);
	return 0;
}

/* Move FROM's pending ciphertext into TO in odd-sized pieces; returns the
 * number of bytes moved and the status of the last feed. */
static size_t
pump(struct tls_conn *from, struct tls_conn *to, int *feed_rc)
{
	unsigned char buf[1777];
	size_t got, total = 0;

	*feed_rc = TLS_OK;
	for (;;) {
		assert_int_equal(tls_conn_pending_out(from, buf, sizeof(buf), &got),
		    TLS_OK);
		if (got == 0)
			break;
		total += got;
		*feed_rc = tls_conn_feed(to, buf, got);
		if (*feed_rc != TLS_OK)
			break;
	}
	return total;
}

/* Run both handshakes to completion; returns the client's final status. */
static int
handshake(struct tls_conn *s, struct tls_conn *c)
{
	int rc, frc, i;

	rc = tls_conn_handshake(c);
	if (rc != TLS_OK && rc != TLS_WANT_IO)
		return rc;
	for (i = 0; i < 20; i++) {
		pump(c, s, &frc);
		if (frc != TLS_OK)
			return frc;
		pump(s, c, &frc);
		if (frc != TLS_OK)
			return frc;
		if (tls_conn_handshake_done(c) && tls_conn_handshake_done(s) &&
		    tls_conn_pending_len(c) == 0 && tls_conn_pending_len(s) == 0)
			return TLS_OK;
	}
	return TLS_WANT_IO;
}

/* Append everything readable from CONN to BUF (capacity CAP). */
static size_t
drain_plain(struct tls_conn *conn, unsigned char *buf, size_t len, size_t cap)
{
	size_t got;
	int rc;

	for (;;) {
		size_t room = cap - len;

		rc = tls_conn_read(conn, buf + len, room > 1000 ? 1000 : room, &got);
		if (rc != TLS_OK)
			break;
		len += got;
		if (len == cap)
			break;
	}
	assert_true(rc == TLS_OK || rc == TLS_WANT_IO);
	return len;
}

static void
test_handshake_and_exchange(void **state)
{
	/* A server and an opportunistic client handshake in memory, exchange
	 * lines both ways, and report TLS 1.3 with the cipher and bit sizes. */
	struct fixture *fx = *state;
	struct tls_conn *s = tls_conn_new(fx->server, true, NULL);
	struct tls_conn *c = tls_conn_new(fx->client, false, "mx.test");
	unsigned char buf[256];
	char info[128];
	struct tls_info ti;
	size_t n;
	int frc;

	assert_non_null(s);
	assert_non_null(c);
	assert_false(tls_conn_handshake_done(c));
	assert_string_equal(tls_conn_info_string(c, info, sizeof(info)), "");
	assert_int_equal(handshake(s, c), TLS_OK);

	assert_int_equal(tls_conn_write(c, "EHLO client.test\r\n", 18), TLS_OK);
	pump(c, s, &frc);
	assert_int_equal(frc, TLS_OK);
	n = drain_plain(s, buf, 0, sizeof(buf));
	assert_int_equal(n, 18);
	assert_memory_equal(buf, "EHLO client.test\r\n", 18);

	assert_int_equal(tls_conn_write(s, "250 mx.test\r\n", 13), TLS_OK);
	pump(s, c, &frc);
	assert_int_equal(frc, TLS_OK);
	n = drain_plain(c, buf, 0, sizeof(buf));
	assert_int_equal(n, 13);
	assert_memory_equal(buf, "250 mx.test\r\n", 13);

	assert_int_equal(tls_conn_info(c, &ti), TLS_OK);
	assert_string_equal(ti.version, "TLSv1.3");
	assert_true(ti.bits >= 128);
	assert_true(ti.peer_cert);
	/* Self-signed and not in the system store: encrypted, not verified. */
	assert_false(ti.peer_verified);
	snprintf((char *)buf, sizeof(buf), "TLSv1.3 with cipher %s (%d/%d bits)",
	    ti.cipher, ti.bits, ti.alg_bits);
	assert_string_equal(tls_conn_info_string(c, info, sizeof(info)),
	    (char *)buf);
	assert_non_null(strstr(info, "TLS_"));
	assert_int_equal(tls_conn_info(s, &ti), TLS_OK);
	assert_false(ti.peer_cert);
	assert_false(ti.peer_verified);
	assert_string_equal(tls_conn_info_string(s, info, sizeof(info)), (char *)buf);

	tls_conn_free(s);
	tls_conn_free(c);
}

static void
exchange_big(struct tls_conn *from, struct tls_conn *to)
{
	const size_t total = 1024 * 1024;
	unsigned char *src = malloc(total), *dst = malloc(total);
	size_t off = 0, got = 0, piece = 1;
	int frc;

	assert_non_null(src);
	assert_non_null(dst);
	for (size_t i = 0; i < total; i++)
		src[i] = (unsigned char)((i * 2654435761u) >> 13);
	while (off < total) {
		/* Pieces of growing, irregular size, interleaved with the
		 * transfer so that records and feeds never line up. */
		piece = piece * 3 + 7;
		if (piece > 70000)
			piece = 13;
		if (piece > total - off)
			piece = total - off;
		assert_int_equal(tls_conn_write(from, src + off, piece), TLS_OK);
		off += piece;
		pump(from, to, &frc);
		assert_int_equal(frc, TLS_OK);
		got = drain_plain(to, dst, got, total);
	}
	assert_int_equal(got, total);
	assert_memory_equal(src, dst, total);
	free(src);
	free(dst);
}

static void
test_megabyte_both_ways(void **state)
{
	/* 1 MiB goes client to server and server to client in uneven pieces
	 * and arrives byte for byte. */
	struct fixture *fx = *state;
	struct tls_conn *s = tls_conn_new(fx->server, true, NULL);
	struct tls_conn *c = tls_conn_new(fx->client, false, "mx.test");

	assert_non_null(s);
	assert_non_null(c);
	assert_int_equal(handshake(s, c), TLS_OK);
	exchange_big(c, s);
	exchange_big(s, c);
	tls_conn_free(s);
	tls_conn_free(c);
}

static void
test_write_before_handshake(void **state)
{
	/* Plaintext queued before the handshake is held and arrives after it,
	 * and the server's reply queued before its side finished does too. */
	struct fixture *fx = *state;
	struct tls_conn *s = tls_conn_new(fx->server, true, NULL);
	struct tls_conn *c = tls_conn_new(fx->client, false, "mx.test");
	unsigned char buf[64];
	size_t n;
	int frc;

	assert_non_null(s);
	assert_non_null(c);
	assert_int_equal(tls_conn_write(c, "EHLO early\r\n", 12), TLS_OK);
	assert_int_equal(tls_conn_write(s, "220 hi\r\n", 8), TLS_OK);
	assert_int_equal(handshake(s, c), TLS_OK);
	pump(c, s, &frc);
	assert_int_equal(frc, TLS_OK);
	n = drain_plain(s, buf, 0, sizeof(buf));
	assert_int_equal(n, 12);
	assert_memory_equal(buf, "EHLO early\r\n", 12);
	pump(s, c, &frc);
	n = drain_plain(c, buf, 0, sizeof(buf));
	assert_int_equal(n, 8);
	assert_memory_equal(buf, "220 hi\r\n", 8);
	tls_conn_free(s);
	tls_conn_free(c);
}

static void
test_shutdown_seen_as_closed(void **state)
{
	/* Data queued before a shutdown still arrives, then the peer reads
	 * TLS_CLOSED, and writing after shutdown is refused. */
	struct fixture *fx = *state;
	struct tls_conn *s = tls_conn_new(fx->server, true, NULL);
	struct tls_conn *c = tls_conn_new(fx->client, false, "mx.test");
	unsigned char buf[64];
	size_t got;
	int frc;

	assert_non_null(s);
	assert_non_null(c);
	assert_int_equal(handshake(s, c), TLS_OK);
	assert_int_equal(tls_conn_write(c, "QUIT\r\n", 6), TLS_OK);
	assert_int_equal(tls_conn_shutdown(c), TLS_OK);
	assert_int_equal(tls_conn_write(c, "X", 1), TLS_EINVAL);
	pump(c, s, &frc);
	assert_int_equal(frc, TLS_OK);
	assert_int_equal(tls_conn_read(s, buf, sizeof(buf), &got), TLS_OK);
	assert_int_equal(got, 6);
	assert_int_equal(tls_conn_read(s, buf, sizeof(buf), &got), TLS_CLOSED);
	assert_int_equal(got, 0);
	tls_conn_free(s);
	tls_conn_free(c);
}

static void
run_verify(struct fixture *fx, const char *ca, const char *host,
    int want, const char *reason)
{
	struct tls_ctx *vctx = NULL;
	struct tls_conn *s, *c;
	struct tls_info ti;
	char err[256];
	int rc, frc;

	assert_int_equal(tls_client_ctx_new(TLS_CLIENT_VERIFY, ca, &vctx, err,
	    sizeof(err)), TLS_OK);
	s = tls_conn_new(fx->server, true, NULL);
	c = tls_conn_new(vctx, false, host);
	assert_non_null(s);
	assert_non_null(c);
	/* The ctx is a reference: freeing it early must not hurt the conn. */
	tls_ctx_free(vctx);
	rc = handshake(s, c);
	assert_int_equal(rc, want);
	if (want == TLS_OK) {
		assert_int_equal(tls_conn_info(c, &ti), TLS_OK);
		assert_true(ti.peer_verified);
		assert_string_equal(tls_conn_error(c), "");
	} else {
		assert_non_null(strstr(tls_conn_error(c), reason));
		/* The client's alert, when it got as far as sending one,
		 * makes the server fail too. */
		if (pump(c, s, &frc) > 0) {
			assert_int_equal(frc, TLS_ERROR);
			assert_true(strlen(tls_conn_error(s)) > 0);
		}
		assert_int_equal(tls_conn_write(c, "x", 1), TLS_ERROR);
	}
	tls_conn_free(s);
	tls_conn_free(c);
}

static void
test_verify_right_host(void **state)
{
	/* VERIFY with ca_file = the self-signed certificate and the right
	 * host name succeeds and reports the peer as verified. */
	struct fixture *fx = *state;

	run_verify(fx, fx->cert, "mx.test", TLS_OK, NULL);
	/* The root dot of a DNS name is not part of the certificate name. */
	run_verify(fx, fx->cert, "MX.test.", TLS_OK, NULL);
}

static void
test_verify_wrong_host(void **state)
{
	/* VERIFY fails with a hostname mismatch against another name, and
	 * with an untrusted chain when the certificate is not in the store. */
	struct fixture *fx = *state;

	run_verify(fx, fx->cert, "other.test", TLS_ERROR, "hostname mismatch");
	run_verify(fx, fx->cert, "x.mx.test", TLS_ERROR, "hostname mismatch");
	run_verify(fx, NULL, "mx.test", TLS_ERROR, "certificate verify failed");
	run_verify(fx, fx->cert, NULL, TLS_ERROR, "no host name");
}

static void
test_garbage_input(void **state)
{
	/* Plain SMTP fed to a TLS server and junk fed to a client fail with a
	 * reason, and the conns stay dead afterwards. */
	struct fixture *fx = *state;
	struct tls_conn *s = tls_conn_new(fx->server, true, NULL);
	struct tls_conn *c = tls_conn_new(fx->client, false, "mx.test");
	static const char junk[] = "EHLO plain.text.client\r\nMAIL FROM:<a@b>\r\n";
	unsigned char buf[64];
	size_t got;

	assert_non_null(s);
	assert_non_null(c);
	assert_int_equal(tls_conn_feed(s, junk, sizeof(junk) - 1), TLS_ERROR);
	assert_true(strlen(tls_conn_error(s)) > 0);
	assert_non_null(strstr(tls_conn_error(s), "handshake failed"));
	assert_int_equal(tls_conn_read(s, buf, sizeof(buf), &got), TLS_ERROR);
	assert_int_equal(tls_conn_feed(s, "x", 1), TLS_ERROR);

	assert_int_equal(tls_conn_handshake(c), TLS_WANT_IO);
	assert_true(tls_conn_pending_len(c) > 0);   /* the ClientHello */
	assert_int_equal(tls_conn_feed(c, "220 smtp.example ESMTP\r\n", 24),
	    TLS_ERROR);
	assert_true(strlen(tls_conn_error(c)) > 0);
	assert_int_equal(tls_conn_handshake(c), TLS_ERROR);
	tls_conn_free(s);
	tls_conn_free(c);
}

/*
 * A plain OpenSSL client limited to protocol versions MINV..MAXV and, on TLS
 * 1.2, to CIPHERS (security level 0, so that it can offer what the server
 * should refuse), run against a server conn of CTX.  Returns true when both
 * ends finish the handshake; the negotiated suite's name goes to NAME.
 */
static bool
raw_client_handshake(struct tls_ctx *ctx, int minv, int maxv,
    const char *ciphers, char *name, size_t namelen)
{
	SSL_CTX *cc = SSL_CTX_new(TLS_client_method());
	struct tls_conn *srv = tls_conn_new(ctx, true, NULL);
	BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
	unsigned char buf[4096];
	bool ok = false;
	SSL *c;

	assert_non_null(cc);
	assert_non_null(srv);
	assert_true(rbio != NULL && wbio != NULL);
	SSL_CTX_set_security_level(cc, 0);
	assert_int_equal(SSL_CTX_set_min_proto_version(cc, minv), 1);
	assert_int_equal(SSL_CTX_set_max_proto_version(cc, maxv), 1);
	if (ciphers != NULL)
		assert_int_equal(SSL_CTX_set_cipher_list(cc, ciphers), 1);
	assert_non_null(c = SSL_new(cc));
	SSL_set_bio(c, rbio, wbio);
	SSL_set_connect_state(c);
	name[0] = '\0';
	for (int i = 0; i < 20 && !ok; i++) {
		size_t got;
		int n, frc = TLS_OK;

		(void)SSL_do_handshake(c);
		while ((n = BIO_read(wbio, buf, sizeof(buf))) > 0 && frc == TLS_OK)
			frc = tls_conn_feed(srv, buf, (size_t)n);
		while (tls_conn_pending_out(srv, buf, sizeof(buf), &got) == TLS_OK &&
		    got > 0)
			assert_int_equal(BIO_write(rbio, buf, (int)got), (int)got);
		if (frc != TLS_OK) {
			(void)SSL_do_handshake(c);   /* read the alert */
			break;
		}
		ok = SSL_is_init_finished(c) && tls_conn_handshake_done(srv);
	}
	if (ok)
		snprintf(name, namelen, "%s", SSL_get_cipher_name(c));
	SSL_free(c);
	SSL_CTX_free(cc);
	tls_conn_free(srv);
	ERR_clear_error();
	return ok;
}

static void
test_default_ciphers_aead_only(void **state)
{
	/* Issue 14: by default TLS 1.2 offers AEAD suites only (no CBC, which
	 * testssl.sh flags as LUCKY13-prone), TLS 1.0/1.1 are refused, and TLS
	 * 1.3 works; [tls] ciphers can put a CBC suite back, and lists that
	 * OpenSSL cannot use are refused with the key's name. */
	struct fixture *fx = *state;
	struct tls_ctx *ctx = NULL;
	char name[64], err[256];

	assert_true(raw_client_handshake(fx->server, TLS1_2_VERSION,
	    TLS1_2_VERSION, NULL, name, sizeof(name)));
	assert_true(strstr(name, "GCM") != NULL || strstr(name, "CHACHA") != NULL);
	assert_false(raw_client_handshake(fx->server, TLS1_2_VERSION,
	    TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA", name, sizeof(name)));
	assert_false(raw_client_handshake(fx->server, TLS1_2_VERSION,
	    TLS1_2_VERSION, "ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256",
	    name, sizeof(name)));
	assert_false(raw_client_handshake(fx->server, TLS1_VERSION,
	    TLS1_1_VERSION, "ALL:@SECLEVEL=0", name, sizeof(name)));
	assert_true(raw_client_handshake(fx->server, TLS1_3_VERSION,
	    TLS1_3_VERSION, NULL, name, sizeof(name)));
	assert_string_equal(name, "TLS_AES_128_GCM_SHA256");

	assert_int_equal(tls_server_ctx_new(fx->cert, fx->key, &ctx, err,
	    sizeof(err)), TLS_OK);
	assert_int_equal(tls_ctx_set_ciphers(ctx, "ECDHE-ECDSA-AES128-SHA",
	    "TLS_CHACHA20_POLY1305_SHA256", err, sizeof(err)), TLS_OK);
	assert_true(raw_client_handshake(ctx, TLS1_2_VERSION, TLS1_2_VERSION,
	    "ECDHE-ECDSA-AES128-SHA", name, sizeof(name)));
	assert_string_equal(name, "ECDHE-ECDSA-AES128-SHA");
	assert_true(raw_client_handshake(ctx, TLS1_3_VERSION, TLS1_3_VERSION,
	    NULL, name, sizeof(name)));
	assert_string_equal(name, "TLS_CHACHA20_POLY1305_SHA256");
	assert_int_equal(tls_ctx_set_ciphers(ctx, "NO-SUCH-CIPHER", NULL, err,
	    sizeof(err)), TLS_ERROR);
	assert_non_null(strstr(err, "ciphers: "));
	assert_int_equal(tls_ctx_set_ciphers(ctx, NULL, "TLS_NO_SUCH_SUITE", err,
	    sizeof(err)), TLS_ERROR);
	assert_non_null(strstr(err, "ciphersuites: "));
	tls_ctx_free(ctx);
	assert_int_equal(tls_ctx_set_ciphers(fx->client, NULL, NULL, err,
	    sizeof(err)), TLS_EINVAL);
}

static void
test_ctx_errors(void **state)
{
	/* Missing files, a key that does not match and a server/client mix-up
	 * are refused with a reason, not a crash. */
	struct fixture *fx = *state;
	struct tls_ctx *ctx = NULL;
	char err[256];
	char missing[128];

	snprintf(missing, sizeof(missing), "%s/nope.pem", fx->dir);
	assert_int_equal(tls_server_ctx_new(missing, fx->key, &ctx, err,
	    sizeof(err)), TLS_ERROR);
	assert_null(ctx);
	assert_non_null(strstr(err, "cannot load certificate"));
	assert_int_equal(tls_server_ctx_new(fx->cert, missing, &ctx, err,
	    sizeof(err)), TLS_ERROR);
	assert_non_null(strstr(err, "cannot load private key"));
	assert_int_equal(tls_server_ctx_new(fx->cert, fx->other_key, &ctx, err,
	    sizeof(err)), TLS_ERROR);
	assert_non_null(strstr(err, "key values mismatch"));
	assert_int_equal(tls_client_ctx_new(TLS_CLIENT_VERIFY, missing, &ctx,
	    err, sizeof(err)), TLS_ERROR);
	assert_non_null(strstr(err, "cannot load CA file"));
	assert_int_equal(tls_server_ctx_new(NULL, fx->key, &ctx, err,
	    sizeof(err)), TLS_EINVAL);
	assert_null(tls_conn_new(fx->server, false, NULL));
	assert_null(tls_conn_new(fx->client, true, NULL));
	assert_null(tls_conn_new(NULL, true, NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake_and_exchange),
		cmocka_unit_test(test_megabyte_both_ways),
		cmocka_unit_test(test_write_before_handshake),
		cmocka_unit_test(test_shutdown_seen_as_closed),
		cmocka_unit_test(test_verify_right_host),
		cmocka_unit_test(test_verify_wrong_host),
		cmocka_unit_test(test_garbage_input),
		cmocka_unit_test(test_ctx_errors),
		cmocka_unit_test(test_default_ciphers_aead_only),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
