#!/usr/bin/env bash
# System packages the tests and benchmarks need, installed only when missing.
set -euo pipefail
# maven: fetches the Elasticsearch test node from Maven Central (helpers/servers.py).
# chromium: the real-browser test of the apps (Playwright drives /usr/bin/chromium).
packages=(dataset-fashion-mnist maven chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "warning: no apt-get; install ${missing[*]} by hand (tests that need them will skip)" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
