#!/usr/bin/env bash
# Fetch Debian's espeak-ng (trixie) into a cache folder (custom_ops/fetch_debs.sh), with a stub of its audio
# output library (it only writes .wav files here, and the real one needs PulseAudio); prints the espeak-ng
# binary's path. Usage: fetch_espeak.sh CACHE. Used by benchmarks/speech.py.
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
binary="$cache/root/usr/bin/espeak-ng"
stub="$cache/stub/libpcaudio.so.0"
if [ ! -x "$binary" ]; then
    "$here/../custom_ops/fetch_debs.sh" "$cache" espeak-ng libespeak-ng1 libsonic0 espeak-ng-data
fi
if [ ! -f "$stub" ]; then
    mkdir -p "$cache/stub"
    ${CC:-gcc} -shared -fPIC -O1 -o "$stub.tmp" "$here/pcaudio_stub.c" && mv "$stub.tmp" "$stub"
fi
[ -x "$binary" ] || { echo "espeak-ng missing from the packages" >&2; exit 1; }
echo "$binary"
