#!/usr/bin/env bash
# deploy/install-over-ssh.sh -- install herald on one Raspberry Pi over ssh and check it came up.
#
#   deploy/install-over-ssh.sh [options] USER@HOST DEB_OR_DIR
#
#   DEB_OR_DIR   a herald_<ver>_<arch>.deb, or a directory holding one per architecture
#                (e.g. /var/tmp/herald-xbuild/out from deploy/cross-build.sh DEB=1): the one
#                matching the Pi's `dpkg --print-architecture` (arm64 / armhf) is used.
#   -k FILE      the OpenAI API key, read from FILE (first line). Without -k the key is taken
#                from $HERALD_API_KEY if set. It is sent over ssh's stdin, never on a command
#                line, never printed. An existing key on the Pi is kept unless -K is given.
#   -K           replace the key already on the Pi.
#   -c FILE      install FILE as /etc/herald/herald.toml (root:herald 0640).
#   -a FILE      install FILE as /etc/asound.conf (an example from deploy/alsa/).
#   -p PORT      ssh port.
#
# Needs on the Pi: Raspberry Pi OS bookworm or later (or Debian), a user that may sudo
# without a password (the first user on Raspberry Pi OS can), network to its apt mirror
# (apt resolves libasound2 and libopus0). Exit status 0 only if the service is active and
# `herald check` passes.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "install-over-ssh: $*" >&2; exit 1; }

KEYFILE="" REPLACE_KEY=0 CONFIG="" ASOUND="" PORT=""
while getopts "k:Kc:a:p:h" opt; do
  case $opt in
    k) KEYFILE=$OPTARG ;;
    K) REPLACE_KEY=1 ;;
    c) CONFIG=$OPTARG ;;
    a) ASOUND=$OPTARG ;;
    p) PORT=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || usage
TARGET=$1 PKG=$2

SSH_OPTS=(-o BatchMode=yes -o ConnectTimeout=15)
[ -n "$PORT" ] && SSH_OPTS+=(-p "$PORT")
SCP_OPTS=(-o BatchMode=yes -o ConnectTimeout=15)
[ -n "$PORT" ] && SCP_OPTS+=(-P "$PORT")
on_pi() { ssh "${SSH_OPTS[@]}" "$TARGET" "$@"; }

for f in "$KEYFILE" "$CONFIG" "$ASOUND"; do
  [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
done

# --- which package --------------------------------------------------------------------
ARCH=$(on_pi dpkg --print-architecture) || die "cannot reach $TARGET over ssh (key-based login needed)"
if [ -d "$PKG" ]; then
  DEB=$(find "$PKG" -maxdepth 1 -name "herald_*_$ARCH.deb" | sort -V | tail -n1)
  [ -n "$DEB" ] || die "no herald_*_$ARCH.deb in $PKG ($TARGET is $ARCH)"
else
  DEB=$PKG
  [ -r "$DEB" ] || die "cannot read $DEB"
  DEB_ARCH=$(dpkg-deb -f "$DEB" Architecture 2>/dev/null || basename "$DEB" .deb | sed 's/.*_//')
  [ "$DEB_ARCH" = "$ARCH" ] || die "$DEB is for $DEB_ARCH but $TARGET runs $ARCH"
fi
echo "install-over-ssh: $TARGET ($ARCH) <- $(basename "$DEB")"

# --- install --------------------------------------------------------------------------
REMOTE_DEB=/tmp/$(basename "$DEB")
scp -q "${SCP_OPTS[@]}" "$DEB" "$TARGET:$REMOTE_DEB"
on_pi "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q '$REMOTE_DEB' && rm -f '$REMOTE_DEB'"

if [ -n "$CONFIG" ]; then
  on_pi "sudo install -m 0640 -o root -g herald /dev/stdin /etc/herald/herald.toml" <"$CONFIG"
  echo "install-over-ssh: config installed"
fi
if [ -n "$ASOUND" ]; then
  on_pi "sudo install -m 0644 -o root -g root /dev/stdin /etc/asound.conf" <"$ASOUND"
  echo "install-over-ssh: /etc/asound.conf installed"
fi

# --- the key: over stdin only ---------------------------------------------------------
HAVE_KEY=$(on_pi "sudo test -e /etc/herald/openai_api_key && echo yes || echo no")
if [ "$HAVE_KEY" = no ] || [ "$REPLACE_KEY" = 1 ]; then
  if [ -n "$KEYFILE" ]; then
    head -n1 "$KEYFILE" | tr -d '\r\n' \
      | on_pi "sudo install -m 0600 -o root -g root /dev/stdin /etc/herald/openai_api_key"
    echo "install-over-ssh: API key set"
  elif [ -n "${HERALD_API_KEY:-}" ]; then
    printf '%s' "$HERALD_API_KEY" \
      | on_pi "sudo install -m 0600 -o root -g root /dev/stdin /etc/herald/openai_api_key"
    echo "install-over-ssh: API key set"
  elif [ "$HAVE_KEY" = no ]; then
    die "installed, but $TARGET has no API key: give one with -k FILE or \$HERALD_API_KEY"
  fi
fi

# --- (re)start and check ----------------------------------------------------------------
# Type=notify: `systemctl restart` returns once herald has said READY=1, or fails.
on_pi "sudo systemctl daemon-reload && sudo systemctl start herald.socket && sudo systemctl restart herald.service" \
  || { on_pi "sudo journalctl -u herald -n 30 --no-pager" || true; die "herald did not start on $TARGET"; }

status=0
if on_pi "herald check --help >/dev/null 2>&1"; then
  on_pi "sudo herald check" || status=1
else
  echo "install-over-ssh: this herald has no 'check' subcommand; skipping it" >&2
fi
ACTIVE=$(on_pi "systemctl is-active herald.service" || true)
echo "install-over-ssh: herald.service is $ACTIVE on $TARGET"
[ "$ACTIVE" = active ] || { on_pi "sudo journalctl -u herald -n 30 --no-pager" || true; status=1; }
exit $status
