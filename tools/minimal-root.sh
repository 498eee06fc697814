#!/usr/bin/env bash
# tools/minimal-root.sh [--demo-only] [--rev REV] [ROOT]
#
# The README's two commands on a fresh, minimal Debian 12: builds a root with
# `debootstrap --variant=minbase` (plus git and ca-certificates, nothing else), clones this
# repository's committed REV (default HEAD; uncommitted changes are not part of it) into it,
# and runs `./build.sh demo` then `./build.sh test` there with chroot as root, with an empty
# environment.  Prints one line per command (exit status, wall time) and leaves the logs in
# ROOT.logs/ (demo.log, test.log).  Exit 0 when both pass.
#
# ROOT (default /tmp/epk-minroot) is deleted and made anew on every run: a check of "what a new
# user's machine lacks" must not inherit the previous run's packages.  Needs root, debootstrap
# (installed with apt-get when missing) and about 6 GiB of disk; takes about as long as the
# test command itself plus a few minutes for the root.  The mirror is the host's Debian mirror
# (EPK_MIRROR to override).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
rev=HEAD; demo_only=0; root=/tmp/epk-minroot
while (($#)); do
  case "$1" in
    --rev) rev=$2; shift 2 ;;
    --demo-only) demo_only=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "minimal-root.sh: unknown option $1" >&2; exit 2 ;;
    *) root=$1; shift ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "minimal-root.sh: needs root (debootstrap, chroot)" >&2; exit 2; }
case "$root" in /|/usr|/etc|/home|/root|/work|"") echo "minimal-root.sh: refusing ROOT=$root" >&2; exit 2 ;; esac
commit="$(git -C "$repo" rev-parse --verify "$rev^{commit}")"
mirror="${EPK_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
logs="$root.logs"

if ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

unmount_all() {
  for m in dev/pts dev sys proc; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
  return 0
}
trap unmount_all EXIT
unmount_all
rm -rf "$root" "$logs"
mkdir -p "$logs"

t0=$(date +%s)
debootstrap --variant=minbase --include=git,ca-certificates bookworm "$root" "$mirror" >"$logs/debootstrap.log" 2>&1 \
  || { echo "minimal-root.sh: debootstrap failed (log: $logs/debootstrap.log)" >&2; exit 1; }
# A Debian 12 machine also has the updates and security suites.
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SRC
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
echo "root: $root (debootstrap minbase bookworm + git, ca-certificates; $(chroot "$root" dpkg-query -W -f='.\n' | wc -l) packages) in $(($(date +%s) - t0)) s"

git clone -q --no-local "$repo" "$root/root/epk"
git -C "$root/root/epk" checkout -q "$commit"
echo "clone: $commit"

run() {  # run NAME: ./build.sh NAME inside the root, with an empty environment
  local start status
  start=$(date +%s)
  set +e
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "cd /root/epk && ./build.sh $1" >"$logs/$1.log" 2>&1
  status=$?
  set -e
  local secs=$(($(date +%s) - start))
  printf '%-22s exit %d in %dm%02ds (log: %s)\n' "./build.sh $1" "$status" $((secs / 60)) $((secs % 60)) "$logs/$1.log"
  return $status
}
overall=0
run demo || overall=1
if [ "$demo_only" = 0 ]; then run test || overall=1; fi
if [ "$overall" = 0 ]; then echo "minimal root: PASS"; else echo "minimal root: FAIL"; fi
exit $overall
