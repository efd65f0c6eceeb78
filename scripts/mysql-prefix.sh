#!/usr/bin/env bash
# Unpacks Debian's Oracle MySQL build (sid: 9.7 LTS) and the libraries it needs, sid's libc
# among them, into a private prefix (default target/mysql-prefix), without touching the system.
# Programs in it run through the prefix's own dynamic loader:
#   $prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path $prefix/usr/lib/x86_64-linux-gnu \
#     $prefix/usr/sbin/mysqld --version
# (plain LD_LIBRARY_PATH does not work: the system's loader is older than sid's libc).
#
# apt resolves what to fetch: with a private configuration whose dpkg status is empty, it
# downloads the server and client packages and their whole dependency closure, whatever sid
# names its libraries this week.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-target/mysql-prefix}"
if [ -x "$prefix/usr/sbin/mysqld" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/state"
: > "$work/state/status"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" > "$work/sources.list"
opts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=$work/state/status" -o "Dir::State=$work/state"
      -o "Dir::Cache=$work/cache" -o "Dir::Etc::preferencesparts=-" -o "Debug::NoLocking=1"
      -o "APT::Install-Recommends=false" -o "APT::Get::AllowUnauthenticated=false")
echo "fetching Debian sid's MySQL server and client into $prefix"
if ! apt-get "${opts[@]}" update -qq 2>"$work/update.err"; then
  echo "mysql-prefix: Debian sid (deb.debian.org) cannot be reached: $(tail -1 "$work/update.err")" >&2
  exit 1
fi
if ! apt-get "${opts[@]}" install --download-only -y -qq mysql-server-core mysql-client-core >"$work/install.log" 2>&1; then
  echo "mysql-prefix: sid has no installable MySQL server/client: $(grep -m1 -E '^E:' "$work/install.log" || tail -1 "$work/install.log")" >&2
  exit 1
fi
mkdir -p "$prefix"
for deb in "$work"/cache/archives/*.deb; do
  dpkg-deb -x "$deb" "$prefix"
done
lib="$prefix/usr/lib/x86_64-linux-gnu"
"$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$prefix/usr/sbin/mysqld" --version
