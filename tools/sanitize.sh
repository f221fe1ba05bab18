#!/usr/bin/env bash
# Rebuild normfast in the active environment with AddressSanitizer and UndefinedBehaviorSanitizer and run
# the test suite under them; any sanitizer report ends the run with a failure. Needs gcc (the sanitizer
# runtimes come with it) and the test extras already installed. Reinstall normally afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q --no-deps --force-reinstall -Ccmake.define.NF_SANITIZE=ON \
    -Cbuild-dir=build/sanitize .

# Python itself is not instrumented, so the ASan runtime must be loaded first; libstdc++ with it, or
# ASan cannot forward the C++ exceptions PyTorch throws (its __cxa_throw interceptor finds no target).
asan="$(gcc -print-file-name=libasan.so)"
cxx="$(gcc -print-file-name=libstdc++.so)"
[ -e "$asan" ] && [ -e "$cxx" ] || { echo "sanitize: gcc has no libasan.so or libstdc++.so" >&2; exit 1; }
export LD_PRELOAD="$asan:$cxx"
# detect_leaks=0: CPython keeps objects alive until exit on purpose, which LeakSanitizer would report.
# allocator_may_return_null=1: an allocation too large to make fails as it does without ASan (NumPy's
# MemoryError, which the tests of huge sizes expect), instead of aborting.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:check_initialization_order=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
python -c "import normfast; print('sanitized build:', normfast.show_config(mode='dicts'))"
# --capture=sys: a report is written to file descriptor 2 just before the abort; fd capture would lose it.
python -m pytest -p no:cacheprovider --capture=sys "$@"
