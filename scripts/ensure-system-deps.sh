#!/usr/bin/env bash
# Makes sure the programs the tests drive are present: DCMTK (storescu, echoscu, dcmcjpeg, ...),
# dicom3tools (dciodvfy), Orthanc, Redis (the broker of the Celery executor's tests) and Chromium with
# its WebDriver (the web console's browser test). Installs
# them with apt-get when missing and running as root; otherwise names what is missing and exits 1.
set -euo pipefail
declare -A need=([storescu]=dcmtk [echoscu]=dcmtk [dcmcjpeg]=dcmtk [dciodvfy]=dicom3tools [Orthanc]=orthanc [redis-server]=redis-server [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for prog in "${!need[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || missing+=("${need[$prog]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "make test needs these Debian packages: $pkgs" >&2
  echo "install them with: sudo apt-get install -y $pkgs" >&2
  exit 1
fi
echo "installing Debian packages: $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Orthanc's package starts a system service on install where it can; the tests start their own.
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
