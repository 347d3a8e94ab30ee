#!/usr/bin/env bash
# Download Debian (trixie) packages and unpack them into CACHE/root, without touching the machine's apt set-up.
# Usage: fetch_debs.sh CACHE PACKAGE... Used by fetch_headers.sh (onnxruntime's headers) and
# benchmarks/fetch_espeak.sh (espeak-ng, for the speech clip of the slow tier).
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
shift
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
mkdir -p "$cache/lists/partial" "$cache/archives/partial" "$cache/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$cache/sources.list"
apt_opts=(-q -o "Dir::Etc::sourcelist=$cache/sources.list" -o Dir::Etc::sourceparts=/nonexistent
          -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache=$cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update >&2
(cd "$cache/debs" && apt-get "${apt_opts[@]}" download "$@" >&2)
for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done
rm -rf "$cache/lists" "$cache/debs"
