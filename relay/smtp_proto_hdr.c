/*
 * smtp_proto_hdr.c - the Received: field counter (smtp_proto.h), part of
 * the pure smtp_proto module: no I/O, no allocation, no libuv.
 *
 * One state per position in a line of the header section:
 *
 *   BOL     at the start of a line: CR -> BOL_CR, LF -> END (empty line),
 *           SP/HTAB -> LINE (a folded continuation), else NAME
 *   BOL_CR  CR at the start of a line: LF -> END, else LINE
 *   NAME    matching "received" (pos octets so far), case-insensitive;
 *           ':' after all 8 counts, SP/HTAB after all 8 -> NAME_WSP
 *   NAME_WSP  "Received" SP*: ':' counts
 *   LINE    the rest of a line: LF -> BOL
 *   END     the header section is over: nothing more is looked at
 *
 * LF always returns to BOL (from END nothing does), so a field name split
 * across pushes resumes where it stopped.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include "mxspool/smtp_proto.h"

enum { RCV_BOL, RCV_BOL_CR, RCV_NAME, RCV_NAME_WSP, RCV_LINE, RCV_END };

static const char rcv_name[] = "received";
#define RCV_NAME_LEN (sizeof(rcv_name) - 1)

void
smtp_proto_received_init(struct smtp_received_counter *rc)
{
	rc->count = 0;
	rc->state = RCV_BOL;
	rc->pos = 0;
}

static void
rcv_count(struct smtp_received_counter *rc)
{
	if (rc->count < UINT32_MAX)
		rc->count++;
	rc->state = RCV_LINE;
}

/* One octet C at the start of a line or inside a field name. */
static void
rcv_name_octet(struct smtp_received_counter *rc, unsigned char c)
{
	if (rc->pos == RCV_NAME_LEN) {
		if (c == ':')
			rcv_count(rc);
		else if (c == ' ' || c == '\t')
			rc->state = RCV_NAME_WSP;
		else
			rc->state = c == '\n' ? RCV_BOL : RCV_LINE;
		return;
	}
	if ((c | 0x20) == (unsigned char)rcv_name[rc->pos]) {
		rc->pos++;
		rc->state = RCV_NAME;
		return;
	}
	rc->state = c == '\n' ? RCV_BOL : RCV_LINE;
}

uint32_t
smtp_proto_received_push(struct smtp_received_counter *rc, const char *in,
    size_t len)
{
	size_t i = 0;

	while (i < len && rc->state != RCV_END) {
		unsigned char c = (unsigned char)in[i];

		switch (rc->state) {
		case RCV_LINE: {
			/* Most octets: skip to the next LF at once. */
			const char *lf = memchr(in + i, '\n', len - i);

			if (lf == NULL)
				return rc->count;
			i = (size_t)(lf - in) + 1;
			rc->state = RCV_BOL;
			continue;
		}
		case RCV_BOL:
			rc->pos = 0;
			if (c == '\r')
				rc->state = RCV_BOL_CR;
			else if (c == '\n')
				rc->state = RCV_END;
			else if (c == ' ' || c == '\t')
				rc->state = RCV_LINE;
			else
				rcv_name_octet(rc, c);
			break;
		case RCV_BOL_CR:
			rc->state = c == '\n' ? RCV_END : RCV_LINE;
			break;
		case RCV_NAME:
			rcv_name_octet(rc, c);
			break;
		case RCV_NAME_WSP:
			if (c == ':')
				rcv_count(rc);
			else if (c != ' ' && c != '\t')
				rc->state = c == '\n' ? RCV_BOL : RCV_LINE;
			break;
		default:
			break;
		}
		i++;
	}
	return rc->count;
}

bool
smtp_proto_received_done(const struct smtp_received_counter *rc)
{
	return rc->state == RCV_END;
}
