/*
 * envelope.h - the envelope vocabulary that the SMTP parser, the spool, the
 * DSN builder and the SMTP client share: RFC 3461 NOTIFY and RET, and the
 * BODY type of RFC 6152 / RFC 3030.
 *
 * One definition, so a value travels from MAIL FROM to the journal to the
 * primary (or into a bounce) without a cast or a translation table.  The
 * journal stores these as bytes; spool_codec.c maps them explicitly, so the
 * on-disk values do not depend on the order of the enums below.
 */
#ifndef MXSPOOL_ENVELOPE_H
#define MXSPOOL_ENVELOPE_H

/* DSN NOTIFY bits (RFC 3461 4.1); 0 = not given. */
#define ENV_NOTIFY_NEVER   0x1
#define ENV_NOTIFY_SUCCESS 0x2
#define ENV_NOTIFY_FAILURE 0x4
#define ENV_NOTIFY_DELAY   0x8

/* DSN RET (RFC 3461 4.3). */
enum env_ret {
	ENV_RET_NONE,                 /* not given: the reporter chooses */
	ENV_RET_FULL,
	ENV_RET_HDRS,
};

/* MAIL FROM BODY= (RFC 6152, RFC 3030); NONE = not given (7bit). */
enum env_body {
	ENV_BODY_NONE,
	ENV_BODY_7BIT,
	ENV_BODY_8BITMIME,
	ENV_BODY_BINARYMIME,
};

#endif
