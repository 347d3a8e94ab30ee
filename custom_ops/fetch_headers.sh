#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers (Debian's libonnxruntime-dev, trixie) into a cache folder,
# without touching the machine's apt set-up; prints the include folder. Usage: fetch_headers.sh CACHE
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
include="$cache/root/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_cxx_api.h" ]; then echo "$include"; exit 0; fi
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
mkdir -p "$cache/lists/partial" "$cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$cache/sources.list"
apt_opts=(-q -o "Dir::Etc::sourcelist=$cache/sources.list" -o Dir::Etc::sourceparts=/nonexistent
          -o "Dir::State::Lists=$cache/lists" -o "Dir::Cache=$cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update >&2
(cd "$cache" && apt-get "${apt_opts[@]}" download libonnxruntime-dev >&2)
dpkg-deb -x "$cache"/libonnxruntime-dev_*.deb "$cache/root"
rm -rf "$cache/lists" "$cache"/libonnxruntime-dev_*.deb
[ -f "$include/onnxruntime_cxx_api.h" ] || { echo "headers missing from the package" >&2; exit 1; }
echo "$include"
