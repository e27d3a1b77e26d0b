#!/usr/bin/env bash
# Installs the tools tests/package.rs needs beyond scripts/setup.sh, skipping whatever is
# already there (safe to run repeatedly):
#   cargo-deb     builds the .deb               (cargo install, a few minutes the first time)
#   dpkg-dev      dpkg-shlibdeps for Depends:   (apt)
#   ansible-core  ansible-playbook --syntax-check
#   ansible-lint  lints the playbook and role
# The Python tools go into the current Python environment when pip may install there
# (a venv, pyenv), else into a venv under ~/.local/share/herald-ci whose commands are
# linked into ~/.local/bin: have that on PATH when running the tests.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# apt packages, with the package lists refreshed once, before the first install.
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! dpkg-query -W -f='${Status}' dpkg-dev 2>/dev/null | grep -q "install ok installed"; then
  echo "ci-extras: installing dpkg-dev"
  apt_install dpkg-dev
fi

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "ci-extras: cargo install cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

if ! command -v ansible-playbook >/dev/null 2>&1 || ! command -v ansible-lint >/dev/null 2>&1; then
  PY_PKGS=(ansible-core ansible-lint)
  # Debian's system Python refuses pip installs (PEP 668): use a venv there.
  if python3 -m pip --version >/dev/null 2>&1 \
    && [ ! -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
    echo "ci-extras: pip install ${PY_PKGS[*]}"
    python3 -m pip install --quiet "${PY_PKGS[@]}"
  else
    VENV=$HOME/.local/share/herald-ci/venv
    echo "ci-extras: installing ${PY_PKGS[*]} into $VENV"
    # Debian ships the venv module without ensurepip, which `venv` needs for pip.
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt_install python3-venv
    fi
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "${PY_PKGS[@]}"
    mkdir -p "$HOME/.local/bin"
    for tool in ansible ansible-playbook ansible-lint ansible-vault; do
      ln -sf "$VENV/bin/$tool" "$HOME/.local/bin/$tool"
    done
    case ":$PATH:" in
      *":$HOME/.local/bin:"*) ;;
      *) echo "ci-extras: add ~/.local/bin to PATH: export PATH=\"\$HOME/.local/bin:\$PATH\"" >&2 ;;
    esac
  fi
fi
