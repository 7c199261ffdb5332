#!/usr/bin/env bash
# Print the path of a headless-capable Chromium, installing Debian's `chromium` package the first
# time (root and apt: like cluster/local/slurm.sh does for SLURM). The report's browser test uses it.
set -euo pipefail
for name in chromium chromium-browser; do
  if path=$(command -v "$name"); then echo "$path"; exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "error: chromium is not installed and this is not a root shell with apt-get; install Debian's chromium package" >&2
  exit 2
fi
echo "installing chromium (Debian package, first time only)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
command -v chromium
