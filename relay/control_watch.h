/*
 * control_watch.h - the frame of `mxspoolctl watch`: the status snapshot
 * drawn for a terminal WIDTH columns wide (progress bars, rates, ETA).
 * Pure: rendered in the daemon like every other answer, so mxspoolctl only
 * paints the lines it gets.
 */
#ifndef MXSPOOL_CONTROL_WATCH_H
#define MXSPOOL_CONTROL_WATCH_H

#include "control_internal.h"

#define CONTROL_WATCH_MIN_WIDTH 60
#define CONTROL_WATCH_MAX_WIDTH 240

/* Append "ok\n" and the frame to OUT; WIDTH is clamped to the bounds above,
 * CLOCK (e.g. "11:05:03") is printed as given. */
void control_render_watch(const struct control_status *st, unsigned width,
    const char *clock, struct control_buf *out);

/* "1h02m", "3d04h", "45s"; "-" for a negative value.  BUF of 32 bytes. */
const char *control_watch_duration(int64_t s, char buf[32]);

#endif
