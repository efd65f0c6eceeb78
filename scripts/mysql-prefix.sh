#!/usr/bin/env bash
# Unpacks Debian's Oracle MySQL build (sid: 9.7 LTS) and the libraries it needs, sid's libc
# among them, into a private prefix (default target/mysql-prefix), without touching the system.
# Programs in it run through the prefix's own dynamic loader:
#   $prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path $prefix/usr/lib/x86_64-linux-gnu \
#     $prefix/usr/sbin/mysqld --version
# (plain LD_LIBRARY_PATH does not work: the system's loader is older than sid's libc).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-target/mysql-prefix}"
if [ -x "$prefix/usr/sbin/mysqld" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" > "$work/sources.list"
opts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$work/lists"
      -o "Dir::Cache=$work/cache" -o "Debug::NoLocking=1")
echo "fetching Debian sid's MySQL server and client into $prefix"
apt-get "${opts[@]}" update -qq
# The server and client, and every library they load (resolved by hand: apt cannot install
# into a prefix).
packages=(mysql-server-core mysql-client-core libaio1t64 libc6 libcurl4t64 libedit2 libfido2-1 libgcc-s1
  libgoogle-perftools4t64 libtcmalloc-minimal4t64 libunwind8 libgssapi-krb5-2 libkrb5-3 libk5crypto3
  libkrb5support0 libcom-err2 libkeyutils1 libicu78 liblz4-1 libmecab2 libnuma1 libprotobuf-lite32t64
  libprotobuf32t64 libssl3t64 libstdc++6 libtirpc3t64 libtirpc-common libzstd1 zlib1g libbsd0 libmd0
  libcbor0.10 libudev1 libtinfo6 libnghttp2-14 libnghttp3-9 libngtcp2-16 libngtcp2-crypto-ossl0 libidn2-0
  libunistring5 librtmp1 libssh2-1t64 libpsl5t64 libbrotli1 libldap2 libsasl2-2 libgnutls30t64
  libhogweed6t64 libnettle8t64 libgmp10 libp11-kit0 libtasn1-6 libffi8 libselinux1 libpcre2-8-0 libcap2
  liblzma5 libsystemd0 libgcrypt20 libgpg-error0 libsasl2-modules-db libdb5.3t64 libcrypt1)
(cd "$work/debs" && apt-get "${opts[@]}" download -qq "${packages[@]}" 2>/dev/null)
mkdir -p "$prefix"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$prefix"
done
lib="$prefix/usr/lib/x86_64-linux-gnu"
"$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$prefix/usr/sbin/mysqld" --version
