#!/usr/bin/env bash
# The Debian bookworm root the package is built in (deploy/deb/build.sh) and the
# tests boot with systemd as PID 1 (tests/systemd_host.py): prints the path of a
# tarball of it, building it first if it is not cached.
#
# It is debootstrap's minbase with systemd, plus apt's package lists and, in its
# apt cache, the .debs of python3.11-venv and dpkg-dev (and what they need):
#   - the build installs them from the cache with the network off;
#   - the tests install the package with `apt install ./pushsvc_*.deb`, which
#     resolves the package's Depends (python3.11, ...) from those lists and finds
#     the .debs in the cache, so a test run downloads nothing.
# Lists and .debs come from the same moment, so they always agree.
#
# Cached in .tools/debian/ under a name derived from the recipe below (bump RECIPE
# when changing the steps), so a new recipe builds a new root; several builds at
# once wait for one another (flock).
# Building takes about two minutes and needs Debian's mirror; set DEBIAN_MIRROR
# to use another one.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Packages of the booted test host itself: systemd as PID 1 and D-Bus for systemctl.
INCLUDE=systemd,systemd-sysv,dbus
# Downloaded into the root's apt cache, not installed: the build's tools.
PREFETCH=(python3.11-venv dpkg-dev)
RECIPE=1

CACHE="$PWD/.tools/debian"
mkdir -p "$CACHE"
key=$(printf '%s\n' "$RECIPE" "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$INCLUDE" "${PREFETCH[*]}" |
  sha256sum | cut -c1-12)
tarball="$CACHE/$SUITE-$key.tar.zst"

exec 9>"$CACHE/.lock"
flock 9
if [ -s "$tarball" ]; then
  echo "$tarball"
  exit 0
fi

for tool in debootstrap systemd-nspawn zstd; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
  command -v "$tool" >/dev/null 2>&1 || {
    echo "rootfs.sh: $tool is missing: run deploy/dev/install-systemd-host.sh" >&2
    exit 1
  }
done

work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "building the $SUITE root with debootstrap (one-time, about two minutes)" >&2
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
echo pushsvc-host >"$root/etc/hostname"
# Each boot gets its own machine id.
: >"$root/etc/machine-id"

in_root() {
  bash deploy/deb/nspawn.sh --pipe -D "$root" -E DEBIAN_FRONTEND=noninteractive "$@"
}
{
  in_root apt-get update -qq
  in_root apt-get upgrade -y -qq
  in_root apt-get install -y -qq --download-only --no-install-recommends "${PREFETCH[@]}"
} >"$work/apt.log" 2>&1 || {
  tail -n 30 "$work/apt.log" >&2
  exit 1
}
rm -f "$root/etc/resolv.conf.nspawn" "$root/var/cache/apt/"*.bin

tar --numeric-owner --xattrs -C "$root" -cf - . | zstd -q -T0 -3 -o "$work/root.tar.zst"
mv "$work/root.tar.zst" "$tarball"
# Older recipes' roots are of no further use.
find "$CACHE" -maxdepth 1 -name "$SUITE-*.tar.zst" ! -path "$tarball" -delete
echo "$tarball"
