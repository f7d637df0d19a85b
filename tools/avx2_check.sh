#!/usr/bin/env bash
# The INT8 tests under AVX2 kernels, on any x86-64 machine. qemu-user's TCG (`-cpu max`) reports
# AVX2 without AVX-512 or VNNI, so ONNX Runtime takes its saturating U8S8 kernels. This checks
# numerics only: timings under emulation mean nothing, and quantize-level tests take hours there.
# Needs Debian's qemu-user (apt-get install qemu-user). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
if ! command -v qemu-x86_64 >/dev/null; then
    echo "tools/avx2_check.sh: needs qemu-x86_64 (Debian: apt-get install qemu-user)" >&2
    exit 2
fi
qemu-x86_64 -cpu max "$python" -c '
from segexport.runtime.cpu_isa import detect_cpu_isa
found = detect_cpu_isa()
print("INT8 kernels under qemu -cpu max:", found)
raise SystemExit(found != "avx2")'
# The probe-vs-flags test is left out: under qemu-user /proc/cpuinfo shows the host CPU's flags.
exec qemu-x86_64 -cpu max "$python" -m pytest -n 0 -p no:cacheprovider \
    tests/test_sensitivity.py tests/test_cpu_isa.py -k "not matches_the_cpu_flags" "$@"
