#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60), one at a time, and prints
# executions per second and total executions per target. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# New inputs go to fuzz/target/work-corpus/<target> (not committed); the committed seeds in
# fuzz/corpus/<target> are read only. A crash marks the target CRASH (the script goes on with
# the others, then exits 1), with the failing input saved in fuzz/artifacts/<target>/;
# reproduce it with
#   cargo +nightly fuzz run -s none <target> fuzz/artifacts/<target>/<file>
# Sanitizers are off (`-s none`): the code under test forbids `unsafe`, and without ASan both
# the build and the executions are several times faster. Set FUZZ_SANITIZER=address to turn
# it on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: no nightly toolchain (rustup toolchain install nightly)" >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
  exit 0
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
mkdir -p target
started=$(date +%s)
if ! cargo +nightly fuzz build -s "$sanitizer" >target/fuzz-build.log 2>&1; then
  cat target/fuzz-build.log >&2
  exit 1
fi
echo "   built in $(( $(date +%s) - started )) s"

printf '%-26s %10s %14s %8s\n' target "execs/s" "total execs" result
status=0
for t in "${targets[@]}"; do
  work="target/work-corpus/$t"
  mkdir -p "$work" "corpus/$t"
  log="target/fuzz-$t.log"
  if cargo +nightly fuzz run -s "$sanitizer" "$t" "$work" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  printf '%-26s %10s %14s %8s\n' "$t" "${rate:-?}" "${execs:-?}" "$result"
  if [ "$result" = CRASH ]; then
    grep -E "panicked at|SUMMARY|Test unit written" "$log" | sed 's/^/    /' | head -5
  fi
done
exit "$status"
