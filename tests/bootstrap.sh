#!/usr/bin/env sh
# Installs what `make test` needs from Debian when it is missing; does nothing when all is there.
#   java + mvn      Apache Kafka 4.1 runs from the official jars, fetched by Maven
#   promtool        checks and unit-tests the alert rules (Debian's prometheus package)
#   docker-compose  validates deploy/docker-compose.yml (no Docker engine needed)
#   python3-venv    `python3 -m venv` on Debian's own Python
#   chromium        the console's browser tests (Playwright drives /usr/bin/chromium; it never
#                   downloads a browser of its own)
# As root it runs apt-get itself; otherwise it stops at once and prints the command to run.
set -eu

missing=""
command -v java >/dev/null 2>&1 || missing="$missing openjdk-17-jre-headless"
command -v mvn >/dev/null 2>&1 || missing="$missing maven"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
"${PYTHON:-python3}" -c 'import ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"

[ -z "$missing" ] && exit 0

cmd="apt-get update && apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "make test needs Debian packages that are missing:$missing" >&2
    echo "run as root:  $cmd" >&2
    exit 1
fi
echo "--- installing from Debian:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086  # the package list is meant to split
apt-get install -y -q --no-install-recommends $missing
