#!/usr/bin/env bash
# Fetch Debian's espeak-ng (trixie) into a cache folder without touching the machine's apt set-up, with a stub
# of its audio output library (it only writes .wav files here, and the real one needs PulseAudio); prints the
# espeak-ng binary's path. Usage: fetch_espeak.sh CACHE. Used by benchmarks/speech.py.
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
binary="$cache/root/usr/bin/espeak-ng"
stub="$cache/stub/libpcaudio.so.0"
if [ ! -x "$binary" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
    mkdir -p "$cache/lists/partial" "$cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$cache/sources.list"
    apt_opts=(-q -o "Dir::Etc::sourcelist=$cache/sources.list" -o Dir::Etc::sourceparts=/nonexistent
              -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache=$cache" -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update >&2
    (cd "$cache" && apt-get "${apt_opts[@]}" download espeak-ng libespeak-ng1 libsonic0 espeak-ng-data >&2)
    for deb in "$cache"/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done
    rm -rf "$cache/lists" "$cache"/*.deb
fi
if [ ! -f "$stub" ]; then
    mkdir -p "$cache/stub"
    ${CC:-gcc} -shared -fPIC -O1 -o "$stub.tmp" "$here/pcaudio_stub.c" && mv "$stub.tmp" "$stub"
fi
[ -x "$binary" ] || { echo "espeak-ng missing from the packages" >&2; exit 1; }
echo "$binary"
