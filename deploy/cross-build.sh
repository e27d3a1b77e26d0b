#!/usr/bin/env bash
# deploy/cross-build.sh -- build herald for Raspberry Pi OS without Docker, and smoke-run it.
#
#   sudo deploy/cross-build.sh                    # both targets, from the project root
#   sudo TARGETS=aarch64-unknown-linux-gnu deploy/cross-build.sh
#   sudo DEB=1 deploy/cross-build.sh              # also cargo-deb herald_<ver>_arm64/armhf.deb
#
# Needs: an x86_64 Debian/Ubuntu host, root (debootstrap, chroot, bind mounts), network to a
# Debian mirror. Nothing is installed on the host: everything lives in a Debian *bookworm*
# chroot under $WORK (default /var/tmp/herald-xbuild), re-used on the next run.
#
# Why a bookworm chroot: Raspberry Pi OS bookworm has glibc 2.36. Linking against a newer
# glibc (trixie's 2.41 headers turn sscanf & co into __isoc23_*, GLIBC_2.38) gives binaries
# that refuse to start on the Pi. Building inside bookworm, against bookworm's arm64/armhf
# libasound2-dev, libopus-dev and libsonic-dev (Debian multiarch), guarantees the binary
# only asks for what the Pi has. Inside the chroot:
#   rustc-web + cargo-web      Debian's newer Rust for bookworm (from bookworm-security)
#   libstd-rust-web-dev:ARCH   the matching prebuilt std for the target, unpacked by hand
#                              (its Depends would drag in the target's whole toolchain)
#   gcc-<triplet>              the linker and C compiler (libopus/alsa/sonic are only linked)
#   qemu-user                  runs the result: `qemu-aarch64 -L / herald --version`
#
# Output: $WORK/out/<target>/herald (stripped) and $WORK/out/report.txt (sizes, NEEDED
# libraries, highest GLIBC symbol version, the qemu smoke run). docs/CROSS.md records a run.
#
# Knobs: WORK, SUITE (bookworm), MIRROR/SECURITY_MIRROR (default: the host's apt sources,
# else deb.debian.org), TARGETS, SMOKE=0, DEB=1, CARGO_FLAGS (extra cargo build flags),
# SPEAK_URL=http://127.0.0.1:8000/v1 (+ SPEAK_KEY, default sk-test): also run
# `herald speak --out` under qemu against that server, e.g. a herald-emulator on the host.
set -euo pipefail

WORK=${WORK:-/var/tmp/herald-xbuild}
SUITE=${SUITE:-bookworm}
TARGETS=${TARGETS:-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}
SMOKE=${SMOKE:-1}
DEB=${DEB:-0}
SPEAK_URL=${SPEAK_URL:-}
SPEAK_KEY=${SPEAK_KEY:-sk-test}
CARGO_FLAGS=${CARGO_FLAGS:---locked}
PROJECT=$(pwd)
ROOT=$WORK/$SUITE-root
OUT=$WORK/out
LOGS=$WORK/logs

die() { echo "cross-build: $*" >&2; exit 1; }
say() { echo "cross-build: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and bind mounts need it)"
[ -f "$PROJECT/Cargo.toml" ] && grep -q '^name = "herald"' "$PROJECT/Cargo.toml" \
  || die "run from the herald project root (no herald Cargo.toml in $PROJECT)"
[ "$(uname -m)" = x86_64 ] || die "written for an x86_64 build host (this is $(uname -m))"

# Rust target -> Debian architecture, GNU triplet, qemu-user binary.
target_info() {
  case $1 in
    aarch64-unknown-linux-gnu) ARCH=arm64 TRIPLET=aarch64-linux-gnu QEMU=qemu-aarch64 ;;
    armv7-unknown-linux-gnueabihf) ARCH=armhf TRIPLET=arm-linux-gnueabihf QEMU=qemu-arm ;;
    *) die "unknown target '$1' (allowed: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)" ;;
  esac
}
for t in $TARGETS; do target_info "$t"; done

# The host's own Debian mirror (a local proxy or snapshot keeps working), else the CDN.
mirror_from_host() {  # $1 = debian | debian-security
  local url
  url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^\s*#' | grep -oE "https?://[^ ]+/$1/?( |\$)" | head -n1 | tr -d ' ' || true)
  echo "${url%/}"
}
MIRROR=${MIRROR:-$(mirror_from_host debian)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(mirror_from_host debian-security)}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

mkdir -p "$WORK" "$OUT" "$LOGS"

unmount_all() {
  local m
  for m in project dev/pts dev proc; do
    mountpoint -q "$ROOT/$m" 2>/dev/null && { umount "$ROOT/$m" || umount -l "$ROOT/$m"; }
  done
  return 0
}
# A clean environment: nothing of the host's cargo/rustup/PATH leaks into the chroot.
chrooted() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# ---- 1. the chroot ---------------------------------------------------------------------
if [ ! -f "$ROOT/.herald-bootstrapped" ]; then
  say "debootstrap $SUITE into $ROOT (a few minutes)"
  unmount_all
  if findmnt -rn -o TARGET | grep -q "^$ROOT/"; then die "something is still mounted below $ROOT"; fi
  rm -rf "$ROOT"
  BOOTSTRAP=$(command -v debootstrap || true)
  if [ -z "$BOOTSTRAP" ]; then
    # Not installed on the host: unpack the .deb into $WORK instead of installing it.
    mkdir -p "$WORK/debootstrap"
    (cd "$WORK/debootstrap" && { ls debootstrap_*.deb >/dev/null 2>&1 || apt-get download debootstrap; } \
      && dpkg-deb -x debootstrap_*.deb .)
    export DEBOOTSTRAP_DIR=$WORK/debootstrap/usr/share/debootstrap
    BOOTSTRAP=$WORK/debootstrap/usr/sbin/debootstrap
  fi
  "$BOOTSTRAP" --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGS/debootstrap.log"; die "debootstrap failed (log: $LOGS/debootstrap.log)"; }
  touch "$ROOT/.herald-bootstrapped"
fi

trap unmount_all EXIT
mkdir -p "$ROOT/project"
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
# Read-only: the build writes only to /root/target inside the chroot.
if ! mountpoint -q "$ROOT/project"; then
  mount --bind "$PROJECT" "$ROOT/project"
  mount -o remount,bind,ro "$ROOT/project"
fi
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Extra CAs of the host (a TLS-inspecting proxy) so cargo can fetch crates.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi

# ---- 2. packages -----------------------------------------------------------------------
ARCHES=""
# espeak-ng (the build host's own architecture): the fallback voice is a program herald
# runs, not a library it links, so no :$ARCH -dev package is needed; the smoke run below
# has the emulated herald start it natively.
WANT="rustc-web cargo-web pkg-config ca-certificates qemu-user binutils file espeak-ng"
for t in $TARGETS; do
  target_info "$t"
  ARCHES="$ARCHES $ARCH"
  # libsonic-dev: the time-stretcher (src/audio/stretch.rs). It has no .pc file: plain
  # -lsonic, which the cross gcc finds in /usr/lib/$TRIPLET (multiarch).
  WANT="$WANT gcc-$TRIPLET libc6-dev-$ARCH-cross libasound2-dev:$ARCH libopus-dev:$ARCH libsonic-dev:$ARCH"
done
[ "$DEB" = 1 ] && WANT="$WANT dpkg-dev liblzma-dev"
if [ "$(cat "$ROOT/.herald-packages" 2>/dev/null)" != "$WANT" ]; then
  say "apt: $WANT"
  archlist=amd64
  for a in $ARCHES; do chrooted dpkg --add-architecture "$a"; archlist="$archlist,$a"; done
  rm -f "$ROOT/etc/apt/sources.list.d/debian.sources"
  cat >"$ROOT/etc/apt/sources.list" <<EOF
deb [arch=$archlist] $MIRROR $SUITE main
deb [arch=$archlist] $MIRROR $SUITE-updates main
deb [arch=$archlist] $SECURITY_MIRROR $SUITE-security main
EOF
  # A mirror caught mid-sync serves an index of the wrong size ("File has unexpected size
  # ... Mirror sync in progress?") and apt then ignores it. Drop just that suite/arch pair
  # (e.g. bookworm-security armhf) and go on: bookworm's main index still has every package
  # needed except possibly the target std, which step 3 fetches from the pool directly.
  ok=0
  for attempt in 1 2 3 4; do
    if chrooted apt-get update >"$LOGS/apt-update.log" 2>&1; then ok=1; break; fi
    broken=$(grep -oE 'Failed to fetch [^ ]+/dists/[^/]+/main/binary-[a-z0-9]+/' "$LOGS/apt-update.log" \
      | sed -E 's#.*/dists/([^/]+)/main/binary-([a-z0-9]+)/#\1 \2#' | sort -u || true)
    [ -n "$broken" ] || { sleep 10; continue; }
    while read -r suite arch; do
      say "mirror index $suite/$arch is broken (mirror sync?); not using $arch from $suite"
      sed -i -E "/ $suite main\$/ s/,$arch([],])/\1/" "$ROOT/etc/apt/sources.list"
    done <<<"$broken"
  done
  [ "$ok" = 1 ] || { tail -n 20 "$LOGS/apt-update.log"; die "apt-get update failed"; }
  # shellcheck disable=SC2086  # WANT is a word list
  chrooted apt-get install -y --no-install-recommends $WANT >"$LOGS/apt-install.log" 2>&1 \
    || { tail -n 30 "$LOGS/apt-install.log"; die "apt-get install failed"; }
  chrooted update-ca-certificates >/dev/null 2>&1 || true
  echo "$WANT" >"$ROOT/.herald-packages"
fi

# ---- 3. the target's std, matching the compiler exactly --------------------------------
RUST_VERSION=$(chrooted dpkg-query -W -f='${Version}' rustc-web)
say "compiler: $(chrooted rustc --version) (Debian rustc-web $RUST_VERSION)"
for t in $TARGETS; do
  target_info "$t"
  stamp=$ROOT/usr/lib/rustlib/$t/.herald-std-$RUST_VERSION
  [ -f "$stamp" ] && continue
  say "std for $t from libstd-rust-web-dev:$ARCH $RUST_VERSION"
  rm -f "$ROOT"/tmp/libstd-rust-web-dev_*_"$ARCH".deb
  if ! chrooted sh -c "cd /tmp && apt-get download libstd-rust-web-dev:$ARCH=$RUST_VERSION" >"$LOGS/std-$ARCH.log" 2>&1; then
    # Not in the index (dropped above): the .deb sits next to the amd64 rustc-web in the
    # same pool directory. The version is pinned to the compiler's, as apt would.
    url=$(chrooted apt-get download --print-uris "rustc-web=$RUST_VERSION" | head -n1 | cut -d"'" -f2)
    url=${url/\/rustc-web_/\/libstd-rust-web-dev_}
    url=${url%_amd64.deb}_$ARCH.deb
    say "libstd-rust-web-dev:$ARCH not in the apt index; fetching $url"
    chrooted /usr/lib/apt/apt-helper download-file "$url" "/tmp/libstd-rust-web-dev_${RUST_VERSION}_$ARCH.deb" \
      >>"$LOGS/std-$ARCH.log" 2>&1 || { cat "$LOGS/std-$ARCH.log"; die "cannot download $url"; }
  fi
  rm -rf "$ROOT/usr/lib/rustlib/$t"
  dpkg-deb --fsys-tarfile "$ROOT"/tmp/libstd-rust-web-dev_*_"$ARCH".deb | tar -x -C "$ROOT" "./usr/lib/rustlib/$t"
  touch "$stamp"
done

# ---- 4. build, inspect, smoke-run ------------------------------------------------------
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$PROJECT/Cargo.toml" | head -n1)
REPORT=$OUT/report.txt
{
  echo "herald $VERSION cross build, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "host: $(uname -m), chroot: Debian $SUITE $(cat "$ROOT/etc/debian_version"), $(chrooted rustc --version)"
  echo "profile: $(sed -n '/^\[profile.release\]/,/^\[/p' "$PROJECT/Cargo.toml" | grep -v -e '^\[' -e '^ *#' | grep . | tr '\n' ' ')"
} >"$REPORT"

for t in $TARGETS; do
  target_info "$t"
  t_=${t//-/_}
  T_=${t_^^}
  say "cargo build --release --target $t (log: $LOGS/build-$t.log)"
  start=$(date +%s)
  # CARGO_HOME/target dir live in the chroot: the project mount is read-only and the host's
  # target/ (built by another rustc) is left alone.
  chrooted env CARGO_HOME=/root/.cargo CARGO_TARGET_DIR=/root/target \
    "CARGO_TARGET_${T_}_LINKER=$TRIPLET-gcc" "CC_$t_=$TRIPLET-gcc" "AR_$t_=$TRIPLET-ar" \
    PKG_CONFIG_ALLOW_CROSS=1 "PKG_CONFIG_LIBDIR=/usr/lib/$TRIPLET/pkgconfig:/usr/share/pkgconfig" \
    sh -c "cd /project && cargo build --release --target $t -p herald --bin herald $CARGO_FLAGS" \
    >"$LOGS/build-$t.log" 2>&1 || { tail -n 40 "$LOGS/build-$t.log"; die "build for $t failed"; }
  secs=$(($(date +%s) - start))
  built=/root/target/$t/release/herald
  mkdir -p "$OUT/$t"
  # The profile already strips symbols; strip again with the target's binutils so the size
  # reported is the one installed, whatever the profile says.
  chrooted "$TRIPLET-strip" -o "/root/herald-$t.stripped" "$built"
  cp "$ROOT/root/herald-$t.stripped" "$OUT/$t/herald"
  size=$(stat -c %s "$OUT/$t/herald")
  needed=$(chrooted "$TRIPLET-readelf" -d "$built" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
  glibc=$(chrooted "$TRIPLET-objdump" -T "$built" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sort -Vu | tail -n1)
  {
    echo
    echo "== $t ($ARCH), built in ${secs}s"
    echo "file:   $(chrooted file -b "/root/herald-$t.stripped" | cut -d, -f1-3)"
    echo "size:   $size bytes stripped ($((size / 1024)) KiB)"
    echo "NEEDED: $needed"
    echo "max glibc symbol version: $glibc"
  } | tee -a "$REPORT"
  if [ "$SMOKE" = 1 ]; then
    for args in "--version" "speak --help"; do
      echo "\$ $QEMU -L / herald $args" | tee -a "$REPORT"
      # shellcheck disable=SC2086  # args is a word list
      chrooted "$QEMU" -L / "$built" $args 2>&1 | tee -a "$REPORT" \
        || die "smoke run '$args' failed for $t"
      [ "${PIPESTATUS[0]}" = 0 ] || die "smoke run '$args' exited non-zero for $t"
    done
    # The fallback voice: no API key, so herald speaks locally at once (no network).
    echo "\$ $QEMU -L / herald speak --out /tmp/fallback-$t.wav 'The network is down.'" | tee -a "$REPORT"
    rm -f "$ROOT/tmp/fallback-$t.wav"
    chrooted env -u OPENAI_API_KEY "$QEMU" -L / "$built" speak --out "/tmp/fallback-$t.wav" \
      "The network is down." 2>&1 | tail -n 1 | tee -a "$REPORT"
    [ "${PIPESTATUS[0]}" = 0 ] || die "fallback smoke run exited non-zero for $t"
    echo "wav:    $(chrooted file -b "/tmp/fallback-$t.wav")" | tee -a "$REPORT"
  fi
  if [ -n "$SPEAK_URL" ]; then
    # End to end under qemu: fetch speech from an OpenAI-compatible server (herald-emulator
    # on the host: the chroot shares the host's network), decode the Ogg Opus stream,
    # resample and write a WAV -- the whole pipeline except the sound card.
    echo "\$ $QEMU -L / herald speak --api-base $SPEAK_URL --out /tmp/smoke-$t.wav 'Hello from a Raspberry Pi.'" | tee -a "$REPORT"
    rm -f "$ROOT/tmp/smoke-$t.wav"
    chrooted env OPENAI_API_KEY="$SPEAK_KEY" "$QEMU" -L / "$built" speak --api-base "$SPEAK_URL" \
      --out "/tmp/smoke-$t.wav" "Hello from a Raspberry Pi." 2>&1 | tee -a "$REPORT" \
      || die "speak smoke run failed for $t"
    [ "${PIPESTATUS[0]}" = 0 ] || die "speak smoke run exited non-zero for $t"
    echo "wav:    $(chrooted file -b "/tmp/smoke-$t.wav")" | tee -a "$REPORT"
  fi
  if [ "$DEB" = 1 ]; then
    # cargo-deb built in the chroot's own cargo (once), then packaged for the target arch
    # with the target's dpkg-shlibdeps view of libasound2/libopus0.
    if [ ! -x "$ROOT/root/.cargo/bin/cargo-deb" ]; then
      say "cargo install cargo-deb (once)"
      chrooted env CARGO_HOME=/root/.cargo cargo install cargo-deb --locked >"$LOGS/cargo-deb.log" 2>&1 \
        || { tail -n 20 "$LOGS/cargo-deb.log"; die "cargo install cargo-deb failed"; }
    fi
    chrooted env CARGO_HOME=/root/.cargo CARGO_TARGET_DIR=/root/target PATH=/root/.cargo/bin:/usr/bin:/bin \
      "CARGO_TARGET_${T_}_LINKER=$TRIPLET-gcc" "CC_$t_=$TRIPLET-gcc" "AR_$t_=$TRIPLET-ar" \
      PKG_CONFIG_ALLOW_CROSS=1 "PKG_CONFIG_LIBDIR=/usr/lib/$TRIPLET/pkgconfig:/usr/share/pkgconfig" \
      sh -c "cd /project && cargo deb -p herald --no-build --no-strip --target $t --output /root/deb/" >"$LOGS/deb-$t.log" 2>&1 \
      || { tail -n 20 "$LOGS/deb-$t.log"; die "cargo deb for $t failed"; }
    cp "$ROOT"/root/deb/herald_*_"$ARCH".deb "$OUT/"
    echo "deb:    $(cd "$OUT" && ls herald_*_"$ARCH".deb)" | tee -a "$REPORT"
  fi
done
say "done: binaries in $OUT/<target>/herald, report in $REPORT"
