#!/usr/bin/env bash
# Run systemd-nspawn (its arguments are this script's) in a cgroup of its own.
#
# On hosts where systemd is not PID 1 (CI machines, containers), nspawn runs with
# --register=no --keep-unit and takes the cgroup it was started in as the
# container's: two containers started from the same cgroup would share one tree
# and stop each other's services. So each gets a fresh child cgroup, in every
# mounted hierarchy that systemd uses, removed again when nspawn exits.
set -euo pipefail

name="pushsvc-nspawn-$$-$RANDOM"
dirs=()
while IFS=: read -r _ controllers path; do
  case "$controllers" in
  name=systemd) mount=/sys/fs/cgroup/systemd ;;
  "") # cgroup v2: the unified hierarchy, alone or beside the v1 ones
    if [ -d /sys/fs/cgroup/unified ]; then mount=/sys/fs/cgroup/unified; else mount=/sys/fs/cgroup; fi ;;
  *) continue ;;
  esac
  [ -w "$mount$path" ] || continue
  mkdir "$mount$path/$name"
  dirs+=("$mount$path/$name")
done </proc/self/cgroup

cleanup() {
  local dir
  for dir in "${dirs[@]}"; do
    # Deepest first: the container's systemd may leave empty cgroups behind.
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}
trap cleanup EXIT

# In the background, so that SIGTERM/SIGINT reach nspawn (which then shuts a
# booted container down cleanly) while this script waits to clean up.
exec 3<&0
(
  for dir in "${dirs[@]}"; do echo "$BASHPID" >"$dir/cgroup.procs"; done
  # Without systemd on the host, nspawn says this of every container at exit.
  exec systemd-nspawn --quiet --register=no --keep-unit "$@" <&3 \
    2> >(grep --line-buffered -v '^Attempted to remove disk file system under' >&2)
) &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  # wait returns early (status > 128) when a trapped signal arrives.
  kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
