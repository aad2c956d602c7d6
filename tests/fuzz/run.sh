#!/bin/sh
# run.sh [-b] [-o DIR] SECONDS [TARGET...] - build the libFuzzer targets with
# clang and fuzz each one for SECONDS.
#
# Each tests/fuzz/fuzz_<target>.c (or only the TARGETs named) is built with
# -fsanitize=fuzzer,address,undefined into DIR (default build-fuzz/ at the
# top of the tree) and run for SECONDS (default 60) on a copy of its seed
# corpus tests/fuzz/corpus/<target>/, so the checked-in seeds are never
# rewritten.  New interesting inputs stay in DIR/corpus/<target>/; a crash
# leaves DIR/crash-* and makes this script exit non-zero.  Copy a crash
# input into the seed corpus once fixed: make check replays it from then on.
# -b builds and runs nothing (tests/fuzz/short.test builds this way).
#
# Objects are compiled once per source file into DIR/obj/ (two at a time)
# and reused while the source is not newer, so the thirteen targets share
# their modules and a second run only links.  The summary line of each run
# gives libFuzzer's executions and its coverage (cov: edges, ft: features).
# -close_fd_mask=2 keeps the daemon's log lines (smtp_session) out of the
# log; libFuzzer and the sanitizers still report on their own copy of it.
set -eu

build_only=0
out=
while [ $# -gt 0 ]; do
	case $1 in
	-b) build_only=1; shift ;;
	-o) out=$2; shift 2 ;;
	*) break ;;
	esac
done
secs=${1:-60}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=${out:-"$top/build-fuzz"}
cc=${CC_FUZZ:-clang}
# The objects of the modules: instrumented for coverage and the sanitizers,
# without libFuzzer's main (only the link names -fsanitize=fuzzer).
cflags="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer
  -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
ldflags="-fsanitize=fuzzer,address,undefined"

command -v "$cc" >/dev/null 2>&1 || {
	echo "run.sh: $cc not found (apt-get install clang libclang-rt-14-dev)" >&2
	exit 1
}
mkdir -p "$out/obj"
out=$(cd "$out" && pwd)
# The modules include the autoconf config.h; PACKAGE_VERSION is all they use.
[ -f "$out/config.h" ] || echo '#define PACKAGE_VERSION "fuzz"' > "$out/config.h"

r=$top/relay
core="$r/util.c $r/log.c $r/config.c $r/config_value.c $r/config_recipients.c"
proto="$r/smtp_proto.c $r/smtp_proto_hdr.c"
spool="$r/spool.c $r/spool_codec.c $r/spool_index.c $r/spool_journal.c
  $r/spool_recover.c $r/spool_ram.c"
server="$r/smtp_server.c $r/smtp_session.c $r/smtp_session_cmd.c
  $r/smtp_session_tx.c $r/smtp_session_abuse.c $r/dnsbl.c $r/anvil.c
  $r/policy.c $r/tls.c $r/dns.c"

# Target name -> the modules it links (and their libraries).
sources_for() {
	case $1 in
	smtp_session) echo "$server $spool $proto $core" ;;
	smtp_*) echo "$proto" ;;
	spool_record) echo "$r/spool_codec.c" ;;
	spool_segment) echo "$spool $core" ;;
	config) echo "$core" ;;
	recipients) echo "$r/policy.c $proto $core" ;;
	control_request) echo "$r/control_proto.c $r/control_render.c $core" ;;
	metrics_http) echo "$r/control_proto.c" ;;
	dns_answer) echo "$r/dns.c" ;;
	dsn) echo "$r/dsn.c" ;;
	rcache_image) echo "$r/rcache.c" ;;
	*) echo "run.sh: no source list for target $1" >&2; return 1 ;;
	esac
}
libs_for() {
	case $1 in
	smtp_session) pkg-config --libs libuv libcares openssl inih 2>/dev/null ||
	    echo "-luv -lcares -lssl -lcrypto -linih" ;;
	config|recipients|control_request|spool_segment)
	    pkg-config --libs inih libuv 2>/dev/null || echo "-linih -luv" ;;
	dns_answer) pkg-config --libs libcares libuv 2>/dev/null || echo "-lcares -luv" ;;
	spool_record) echo "-lpthread" ;;
	rcache_image) pkg-config --libs libcrypto 2>/dev/null || echo "-lcrypto" ;;
	*) echo "" ;;
	esac
}
incs="-I$top/include -I$out $(pkg-config --cflags libuv libcares openssl inih 2>/dev/null || true)"

# DIR/obj/<dir>_<file>.o for SRC.
obj_for() {
	echo "$out/obj/$(basename "$(dirname "$1")")_$(basename "$1" .c).o"
}

if [ $# -eq 0 ]; then
	for f in "$here"/fuzz_*.c; do
		t=$(basename "$f" .c)
		set -- "$@" "${t#fuzz_}"
	done
fi
all_srcs=""
for t in "$@"; do
	all_srcs="$all_srcs $here/fuzz_$t.c $(sources_for "$t")"
done
echo "==> compile $(echo $all_srcs | tr ' ' '\n' | sort -u | wc -l) sources" >&2
export cc cflags incs out top
# Two at a time: the machine is shared.  An object is rebuilt when missing
# or older than its source, a header beside it or a public header.
echo $all_srcs | tr ' ' '\n' | sort -u | xargs -P 2 -I{} sh -c '
	o="$out/obj/$(basename "$(dirname "{}")")_$(basename "{}" .c).o"
	if [ ! -f "$o" ] || [ -n "$(find "{}" "$(dirname "{}")"/*.h "$top/include/mxspool" \
	    -newer "$o" 2>/dev/null | head -n 1)" ]; then
		$cc $cflags $incs -c -o "$o.tmp" "{}" && mv -f "$o.tmp" "$o"
	fi' || { echo "run.sh: compile failed" >&2; exit 1; }

status=0
for t in "$@"; do
	objs=$(obj_for "$here/fuzz_$t.c")
	for s in $(sources_for "$t"); do
		objs="$objs $(obj_for "$s")"
	done
	# shellcheck disable=SC2086
	$cc $ldflags -o "$out/fuzz_$t" $objs $(libs_for "$t") -lm || {
		echo "run.sh: link of $t failed" >&2
		exit 1
	}
	[ "$build_only" -eq 1 ] && continue
	mkdir -p "$out/corpus/$t"
	if [ -d "$here/corpus/$t" ]; then
		cp -f "$here/corpus/$t"/* "$out/corpus/$t"/ 2>/dev/null || true
	fi
	echo "==> fuzz $t for ${secs}s" >&2
	if ! (cd "$out" && ASAN_OPTIONS=detect_leaks=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    "./fuzz_$t" -max_total_time="$secs" -max_len=4096 -timeout=20 \
	    -close_fd_mask=2 \
	    -print_final_stats=1 "corpus/$t" 2> "fuzz_$t.log"); then
		echo "run.sh: $t FAILED, see $out/fuzz_$t.log" >&2
		tail -n 40 "$out/fuzz_$t.log" >&2
		status=1
	else
		grep -E '^#[0-9]+.*(DONE|pulse)' "$out/fuzz_$t.log" | tail -n 1 |
		    sed "s/^/$t: /" >&2 || true
		grep -E '^stat::number_of_executed_units|^stat::peak_rss' \
		    "$out/fuzz_$t.log" | sed "s/^/$t: /" >&2 || true
	fi
done
exit $status
