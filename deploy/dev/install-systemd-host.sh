#!/usr/bin/env bash
# What `make deb` and the systemd-host tests (tests/test_systemd_host.py) need from
# Debian: debootstrap (the bookworm root the package is built in and the tests
# boot), systemd-container (systemd-nspawn) and zstd (the cached root tarball).
# Idempotent: does nothing when they are present. Run by `make tools`
# (deploy/dev/install-tools.sh) and by `make deb`.
set -euo pipefail

missing=()
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  # Wait for another apt/dpkg run on this machine instead of failing on its lock.
  lock=(-o DPkg::Lock::Timeout=600)
  $SUDO apt-get "${lock[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${lock[@]}" install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
