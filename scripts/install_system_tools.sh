#!/usr/bin/env bash
# Install the Debian tools the DICOM tests validate with: dciodvfy (dicom3tools), dsrdump
# (dcmtk) and pdftoppm (poppler-utils). Idempotent: installs only what is missing. Needs root
# and apt-get; where either is missing it says so and exits 0, and the tests that need a
# missing tool are skipped with its name.
set -uo pipefail

declare -A PACKAGE_OF=([dciodvfy]=dicom3tools [dsrdump]=dcmtk [pdftoppm]=poppler-utils)
missing=()
for tool in dciodvfy dsrdump pdftoppm; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system tools: dciodvfy, dsrdump and pdftoppm already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system tools: SKIPPED, no apt-get here; install ${missing[*]} yourself (the tests needing them will skip)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system tools: SKIPPED, not root; run 'sudo apt-get install -y ${missing[*]}' (the tests needing them will skip)"
    exit 0
fi
echo "system tools: installing ${missing[*]}"
if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }; }; then
    echo "system tools: SKIPPED, apt-get could not install ${missing[*]} (the tests needing them will skip)"
fi
exit 0
