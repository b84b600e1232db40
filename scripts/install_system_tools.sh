#!/usr/bin/env bash
# Debian tools the tests use to check outputs with independent programs, installed when missing:
#   dciodvfy (dicom3tools) and dsrdump (dcmtk)  validate the DICOM objects,
#   pdftoppm (poppler-utils)                    turns report PDF pages into PNG,
#   chromium                                    opens the HTML report headless.
# Idempotent: installs only what is missing. Where apt-get cannot run (not root and no sudo,
# no network, not Debian) it says so and exits 0: the tests that need a tool then skip with
# a reason instead of failing.
set -uo pipefail

missing=()
need() {  # need COMMAND PACKAGE
    if command -v "$1" > /dev/null 2>&1; then
        echo "$1: present"
    else
        missing+=("$2")
    fi
}
need dciodvfy dicom3tools
need dsrdump dcmtk
need pdftoppm poppler-utils
need chromium chromium

if [ ${#missing[@]} -eq 0 ]; then
    echo "system tools: all present"
    exit 0
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "system tools: skipped, no apt-get here; install ${missing[*]} by hand (tests that need them will skip)"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo > /dev/null 2>&1 && sudo -n true 2> /dev/null; then
    SUDO=(sudo -n)
else
    echo "system tools: skipped, not root and no password-less sudo; install ${missing[*]} (tests that need them will skip)"
    exit 0
fi
echo "system tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" > /tmp/install_system_tools.log 2>&1; then
    "${SUDO[@]}" apt-get update > /dev/null 2>&1
    if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" > /tmp/install_system_tools.log 2>&1; then
        tail -n 5 /tmp/install_system_tools.log
        echo "system tools: could not install ${missing[*]} (see /tmp/install_system_tools.log); tests that need them will skip"
        exit 0
    fi
fi
echo "system tools: installed ${missing[*]}"
