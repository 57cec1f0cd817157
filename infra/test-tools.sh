#!/usr/bin/env bash
# System programs the test suite uses beyond Python: Debian's headless Chromium, which
# tests/test_deployments.py drives to render the register-brain form in the Prefect UI
# (deployments/screenshot_form.py).  Installs what is missing with apt; idempotent: a
# second run only checks.  Run as root, like infra/slurm/start.sh.
set -euo pipefail

die() { echo "test-tools: $*" >&2; exit 1; }

packages=(chromium-headless-shell)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (apt-get)"
    echo "test-tools: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
command -v chromium-headless-shell >/dev/null || die "chromium-headless-shell is not on PATH after installing it"
echo "test-tools: ready ($(chromium-headless-shell --version 2>/dev/null | head -1))"
