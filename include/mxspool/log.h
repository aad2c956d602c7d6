/*
 * log.h - one key=value line per event on stderr.
 *
 * Lines look like
 *   level=info event=accept qid=0193A2... tenant=demo size=1234 ...
 * Values with spaces, quotes or control characters are quoted with
 * log_quote().  A timestamp is added unless stderr goes to journald
 * (JOURNAL_STREAM), which stamps lines itself.
 */
#ifndef MXSPOOL_LOG_H
#define MXSPOOL_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERR };

void log_init(const char *progname, int debug);
void log_event(enum log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Startup/config failure: log and exit(code).  Never after startup. */
void log_fatal(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

/*
 * Render S as a log value into BUF: as is when it is a plain token, else in
 * double quotes with \" \\ and \xNN escapes.  Truncates to fit; returns BUF.
 */
const char *log_quote(char *buf, size_t len, const char *s);

#endif
