#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers (Debian's libonnxruntime-dev, trixie) into a cache folder,
# without touching the machine's apt set-up; prints the include folder. Usage: fetch_headers.sh CACHE
set -euo pipefail
include="$(mkdir -p "$1" && cd "$1" && pwd)/root/usr/include/onnxruntime"
if [ ! -f "$include/onnxruntime_cxx_api.h" ]; then
    "$(dirname "$0")/fetch_debs.sh" "$1" libonnxruntime-dev
fi
[ -f "$include/onnxruntime_cxx_api.h" ] || { echo "headers missing from the package" >&2; exit 1; }
echo "$include"
