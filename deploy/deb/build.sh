#!/usr/bin/env bash
# `make deb`: build dist/pushsvc_<version>_amd64.deb with dpkg-deb.
#
# Layout of the package:
#   /opt/pushsvc/venv/                    the application in its own virtualenv
#   /usr/bin/pushsvc                      -> /opt/pushsvc/venv/bin/pushsvc
#   /lib/systemd/system/pushsvc@.service  systemd/ of the repository, as is
#   /lib/systemd/system/pushsvc.target
#   /etc/pushsvc/pushsvc.env, 1.env       conffiles, from deploy/env/*.example
#   /usr/share/doc/pushsvc/               operations.md, configuration.md, the nginx example
#   /var/lib/pushsvc/<N>                  not shipped: StateDirectory= of instance N
# and the maintainer scripts of deploy/deb/ (user, upgrades, removal, purge).
#
# How the virtualenv is made. A virtualenv is bound to the interpreter that made
# it (bin/python is a symlink to it, compiled modules match its ABI), so it must
# be made with the target's interpreter: Debian bookworm's /usr/bin/python3.11.
# It is made at build time inside a bookworm root (deploy/deb/rootfs.sh), not in
# postinst on the target:
#   - installing is unpacking files dpkg owns and checks (dpkg -V); no pip, no
#     index and no compiler run on the production host, and a broken install
#     cannot leave a half-made virtualenv behind;
#   - the target needs python3.11 alone: no python3-venv or pip at run time;
#   - the build does not depend on the build machine's own Python.
# The network is used on this machine only: pip downloads the wheels for
# CPython 3.11 on manylinux x86_64 (pinned to the versions of .venv, the ones the
# tests ran with); the root then builds the virtualenv from them with its network
# turned off (pip --no-index). dpkg-shlibdeps, run in the same root, turns the
# compiled modules' libraries into Depends.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
VENV_PY=${VENV_PY:-$REPO/.venv/bin/python}
PATH="$PATH:/usr/sbin:/sbin"

[ -x "$VENV_PY" ] || {
  echo "build.sh: $VENV_PY is missing: run \`make deps\`" >&2
  exit 1
}
version=$("$VENV_PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
deb="dist/pushsvc_${version}_amd64.deb"

bash deploy/dev/install-systemd-host.sh
tarball=$(bash deploy/deb/rootfs.sh)

mkdir -p build dist
work=$(mktemp -d "$REPO/build/deb.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
wheels="$work/wheels"
root="$work/root"
stage="$work/pkg"
out="$work/out"
mkdir -p "$wheels" "$root" "$stage/opt/pushsvc" "$out"

echo "deb: wheels for CPython 3.11 (manylinux x86_64)"
# pushsvc-client (the generated protos and the Python client) is on no index:
# its wheel is built here beside the server's, and found among them.
"$VENV_PY" -m pip wheel -q --no-deps -w "$wheels" clients/python
"$VENV_PY" -m pip wheel -q --no-deps -w "$wheels" .
"$VENV_PY" -m pip freeze --exclude-editable | grep -v -e '^-e ' -e ' @ ' >"$work/constraints.txt"
platform_args=()
for tag in manylinux1 manylinux2010 manylinux2014 $(seq -f 'manylinux_2_%g' 5 36); do
  platform_args+=(--platform "${tag}_x86_64")
done
"$VENV_PY" -m pip download -q -d "$wheels" --only-binary=:all: --python-version 3.11 \
  --implementation cp --abi cp311 --abi abi3 --abi none "${platform_args[@]}" \
  --find-links "$wheels" -c "$work/constraints.txt" "$wheels"/pushsvc-[0-9]*.whl

echo "deb: the virtualenv, made by bookworm's python3.11 with the network off"
zstd -dc "$tarball" | tar --numeric-owner -x -C "$root"
# shellcheck disable=SC2016 # expanded inside the root
inner='
apt-get install -y -qq --no-download --no-install-recommends python3.11-venv dpkg-dev >/dev/null \
  2> >(grep -v "delaying package configuration" >&2)
python3.11 -m venv /tmp/pip-tool
python3.11 -m venv --without-pip /opt/pushsvc/venv
/tmp/pip-tool/bin/pip --python /opt/pushsvc/venv/bin/python install -q --no-index \
  --no-cache-dir --find-links /wheels pushsvc
/tmp/pip-tool/bin/pip --python /opt/pushsvc/venv/bin/python freeze >/out/requirements.txt
# Everything imports, as the unit will run it.
/opt/pushsvc/venv/bin/python -c "import pushsvc.node, pushsvc.cli"
/opt/pushsvc/venv/bin/pushsvc --help >/dev/null
# The libraries the compiled modules link against, as Depends (the package tree
# is also mounted where dpkg-shlibdeps expects it, debian/pushsvc/).
cd /build
printf "Source: pushsvc\n\nPackage: pushsvc\nArchitecture: amd64\n" >debian/control
args=()
while IFS= read -r -d "" lib; do args+=("-e$lib"); done \
  < <(find debian/pushsvc/opt/pushsvc/venv -type f -name "*.so*" -print0)
# (There is no compiler here to ask for the architecture: amd64 it is.)
dpkg-shlibdeps --warnings=0 -O "${args[@]}" 2> >(grep -v "cannot determine CC system type" >&2) |
  sed -n "s/^shlibs:Depends=//p" >/out/shlibs
'
mkdir -p "$root/build/debian/pushsvc" "$stage/DEBIAN"
bash deploy/deb/nspawn.sh --pipe --private-network -D "$root" -E DEBIAN_FRONTEND=noninteractive \
  --bind-ro="$wheels:/wheels" --bind="$stage/opt/pushsvc:/opt/pushsvc" \
  --bind="$stage:/build/debian/pushsvc" --bind="$out:/out" \
  /bin/bash -euo pipefail -c "$inner"
shlibs=$(cat "$out/shlibs")
[ -n "$shlibs" ] || {
  echo "build.sh: dpkg-shlibdeps found no libraries" >&2
  exit 1
}

echo "deb: assembling $deb"
install -D -m 0644 systemd/pushsvc@.service "$stage/lib/systemd/system/pushsvc@.service"
install -D -m 0644 systemd/pushsvc.target "$stage/lib/systemd/system/pushsvc.target"
install -d "$stage/usr/bin"
ln -s /opt/pushsvc/venv/bin/pushsvc "$stage/usr/bin/pushsvc"
install -D -m 0640 deploy/env/pushsvc.env.example "$stage/etc/pushsvc/pushsvc.env"
install -D -m 0640 deploy/env/1.env.example "$stage/etc/pushsvc/1.env"
doc="$stage/usr/share/doc/pushsvc"
install -D -m 0644 docs/operations.md "$doc/operations.md"
install -D -m 0644 docs/configuration.md "$doc/configuration.md"
install -D -m 0644 deploy/deb/copyright "$doc/copyright"
install -D -m 0644 deploy/nginx/pushsvc.conf "$doc/examples/nginx-pushsvc.conf"
install -D -m 0644 "$out/requirements.txt" "$doc/python-requirements.txt"

# python3.11: the virtualenv's interpreter. passwd: useradd/userdel in the
# maintainer scripts. systemd >= 247: the unit's sandbox (ProtectProc= is the
# newest setting it uses); an older systemd would skip settings and run the node
# less confined. The rest: the compiled modules' libraries (dpkg-shlibdeps).
depends="python3.11, passwd, systemd (>= 247), $shlibs"
size=$(du -sk --apparent-size "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
  deploy/deb/control.in >"$stage/DEBIAN/control"
printf '%s\n' /etc/pushsvc/pushsvc.env /etc/pushsvc/1.env >"$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "deploy/deb/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum >DEBIAN/md5sums)

# zstd: bookworm's dpkg reads it, and it compresses the ~60 MB in seconds where xz
# takes a minute or more.
dpkg-deb --root-owner-group -Zzstd --build "$stage" "$deb.tmp" >/dev/null
mv "$deb.tmp" "$deb"
echo "deb: $deb ($(du -h "$deb" | cut -f1)); Depends: $depends"
