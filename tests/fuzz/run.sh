#!/bin/sh
# run.sh SECONDS - build every libFuzzer target with clang and fuzz it.
#
# Each tests/fuzz/fuzz_*.c is built with -fsanitize=fuzzer,address,undefined
# into build-fuzz/ at the top of the tree and run for SECONDS (default 60) on
# a copy of its seed corpus tests/fuzz/corpus/<target>/, so the checked-in
# seeds are never rewritten.  New interesting inputs stay in
# build-fuzz/corpus/<target>/; a crash leaves build-fuzz/crash-* and makes
# this script exit non-zero.  Copy a crash input into the seed corpus once
# fixed: make check replays it from then on.
set -eu

secs=${1:-60}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out="$top/build-fuzz"
cc=${CC_FUZZ:-clang}
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"

command -v "$cc" >/dev/null 2>&1 || {
	echo "run.sh: $cc not found (apt-get install clang libclang-rt-14-dev)" >&2
	exit 1
}
mkdir -p "$out"
# The modules include the autoconf config.h; they need nothing from it.
[ -f "$out/config.h" ] || : > "$out/config.h"

# Target name -> the modules it links (and their libraries).
sources_for() {
	case $1 in
	smtp_*) echo "$top/relay/smtp_proto.c $top/relay/smtp_proto_hdr.c" ;;
	spool_*) echo "$top/relay/spool_codec.c" ;;
	config) echo "$top/relay/util.c $top/relay/log.c $top/relay/config.c $top/relay/config_value.c" ;;
	*) echo "run.sh: no source list for target $1" >&2; return 1 ;;
	esac
}
libs_for() {
	case $1 in
	config) pkg-config --cflags --libs inih libuv 2>/dev/null || echo "-linih -luv" ;;
	spool_*) pkg-config --cflags libuv 2>/dev/null; echo "-lpthread" ;;
	*) echo "" ;;
	esac
}

status=0
for f in "$here"/fuzz_*.c; do
	t=$(basename "$f" .c)
	t=${t#fuzz_}
	srcs=$(sources_for "$t")
	libs=$(libs_for "$t")
	echo "==> build $t" >&2
	# shellcheck disable=SC2086
	$cc $flags -I"$top/include" -I"$out" -o "$out/fuzz_$t" "$f" $srcs $libs
	mkdir -p "$out/corpus/$t"
	if [ -d "$here/corpus/$t" ]; then
		cp -f "$here/corpus/$t"/* "$out/corpus/$t"/ 2>/dev/null || true
	fi
	echo "==> fuzz $t for ${secs}s" >&2
	if ! (cd "$out" && ASAN_OPTIONS=detect_leaks=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    "./fuzz_$t" -max_total_time="$secs" -max_len=4096 \
	    -print_final_stats=1 "corpus/$t" 2> "fuzz_$t.log"); then
		echo "run.sh: $t FAILED, see $out/fuzz_$t.log" >&2
		tail -n 40 "$out/fuzz_$t.log" >&2
		status=1
	else
		grep -E '^stat::number_of_executed_units|^stat::peak_rss' \
		    "$out/fuzz_$t.log" | sed "s/^/$t: /" >&2 || true
	fi
done
exit $status
