#!/usr/bin/env bash
# contrib/dev.sh - the developer's way in.
#
#   contrib/dev.sh run     install build deps, build, run mxspoold on the demo config
#   contrib/dev.sh check   install build+test deps, build with -Werror, run unit and
#                          integration tests, then again under ASan+UBSan;
#                          last line: "tests: N passed, M failed"
#   contrib/dev.sh fuzz [SECONDS]   build the libFuzzer targets with clang and run each
#
# Idempotent: packages are installed only when missing, configure runs only when
# the build folder has none, and make rebuilds only what changed.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
jobs=$(nproc 2>/dev/null || echo 2)

# ca-certificates: the system trust store that `outbound = verify` uses
# without ca_file (and a test opens); libnet-ssleay-perl: swaks' STARTTLS;
# systemd (systemd-analyze, -sysusers, -tmpfiles) and dpkg-dev, debhelper,
# fakeroot, lintian: tests/packaging (the unit's sandbox, the .deb).
# libhiredis-dev (with its libuv adapter): the fleet's shared budget in Redis;
# redis-server: the fleet tests' Redis; prometheus: promtool checks /metrics
# and the alert rules; testssl.sh: the TLS audit test.
BUILD_PKGS="build-essential autoconf automake libtool pkg-config libuv1-dev
  libc-ares-dev libssl-dev libinih-dev libncurses-dev libhiredis-dev ca-certificates"
TEST_PKGS="libcmocka-dev python3 python3-pytest python3-aiosmtpd python3-dnslib swaks
  libnet-ssleay-perl openssl postfix clang libclang-rt-14-dev
  systemd dpkg-dev debhelper fakeroot lintian redis-server prometheus testssl.sh"

say() { printf '==> %s\n' "$*" >&2; }

need_pkgs() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
			|| missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	say "installing: ${missing[*]}"
	local sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	# postfix asks questions and starts a server when installed: neither is wanted.
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	if [ -x /usr/sbin/postfix ]; then $sudo postfix stop >/dev/null 2>&1 || true; fi
}

bootstrap() {
	if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
		say "autoreconf"
		autoreconf -fi >/dev/null
		# The TAP driver is part of automake but not installed by autoreconf.
		cp -f "$(automake --print-libdir)/tap-driver.sh" build-aux/
	fi
}

# build DIR [configure args...]
build() {
	local dir=$1; shift
	mkdir -p "$dir"
	if [ ! -f "$dir/Makefile" ]; then
		say "configure in $dir"
		(cd "$dir" && "$top/configure" -q "$@")
	fi
	say "make in $dir"
	make -s -C "$dir" -j"$jobs" >/dev/null
}

# count DIR: print "passed failed" from the automake test-suite summary.
count() {
	local log=$1/test-suite.log pass=0 fail=0
	if [ -f "$log" ]; then
		pass=$(awk '/^# PASS:/ {print $3}' "$log" | head -1)
		fail=$(awk '/^# (FAIL|ERROR|XPASS):/ {s += $3} END {print s+0}' "$log")
	fi
	echo "${pass:-0} ${fail:-0}"
}

run_check() {
	local dir=$1 out
	say "make check in $dir"
	set +e
	make -s -C "$dir" -j"$jobs" check > "$dir/check.out" 2>&1
	set -e
	grep -E '^(PASS|FAIL|ERROR|XPASS|SKIP|# )' "$dir/check.out" | grep -vE '^PASS' >&2 || true
	if grep -qE '^(FAIL|ERROR|XPASS)' "$dir/check.out"; then
		say "failures in $dir: see $dir/test-suite.log and $dir/tests/*/*.log"
		for f in $(grep -lE '^(not ok|# (FAIL|ERROR))' "$dir"/tests/*/*.log 2>/dev/null); do
			say "---- $f"; tail -n 60 "$f" >&2
		done
	fi
	if ! grep -q '^# TOTAL:' "$dir/check.out"; then
		say "make check did not run the tests in $dir:"; tail -n 40 "$dir/check.out" >&2
	fi
}

cmd=${1:-}
case "$cmd" in
run)
	need_pkgs $BUILD_PKGS
	bootstrap
	build build
	mkdir -p var/spool var/run
	say "mxspoold on 127.0.0.1:2525 (demo config); Ctrl-C stops it"
	exec build/mxspoold -c contrib/mxspool-demo.ini
	;;
check)
	need_pkgs $BUILD_PKGS $TEST_PKGS
	bootstrap
	build build --enable-werror
	san="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
	build build-asan --enable-werror CFLAGS="$san" LDFLAGS="-fsanitize=address,undefined"
	run_check build
	MXSPOOL_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		UBSAN_OPTIONS=print_stacktrace=1 run_check build-asan
	read -r p1 f1 < <(count build)
	read -r p2 f2 < <(count build-asan)
	passed=$((p1 + p2)); failed=$((f1 + f2))
	if [ "$passed" -eq 0 ]; then failed=$((failed + 1)); fi
	echo "tests: $passed passed, $failed failed"
	[ "$failed" -eq 0 ]
	;;
fuzz)
	need_pkgs $BUILD_PKGS $TEST_PKGS
	secs=${2:-60}
	exec "$top/tests/fuzz/run.sh" "$secs"
	;;
*)
	echo "usage: contrib/dev.sh run | check | fuzz [SECONDS]" >&2
	exit 64
	;;
esac
