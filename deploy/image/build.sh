#!/usr/bin/env bash
# Builds the murmur sidecar image with podman, FROM scratch (no base image is pulled):
#
#   deploy/image/build.sh [--binary PATH] [--tag NAME]
#
# Without --binary it builds target/release/murmur first. The binary is stripped and
# copied with the shared libraries `ldd` lists (glibc's loader, libc, libm, libgcc_s) to
# the same paths, so the image needs nothing else: glibc 2.34 and later resolve names
# (seeds given as DNS names) from /etc/hosts and DNS without NSS modules. A static
# (musl) binary works too; ldd then lists nothing to copy. Prints the image's size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=""
tag=localhost/murmur:latest
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--tag NAME]" >&2; exit 2 ;;
    esac
done
for tool in podman ldd strip; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is needed (apt-get install -y podman runc binutils)" >&2; exit 1; }
done
if [ -z "$binary" ]; then
    (cd "$root" && cargo build --release --locked --bin murmur)
    binary=$root/target/release/murmur
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
rootfs=$ctx/rootfs
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$ctx/state"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/murmur"
strip "$rootfs/murmur"
# `ldd` prints "name => /path (addr)" and "/lib64/ld-linux-x86-64.so.2 (addr)".
for lib in $(ldd "$binary" 2>/dev/null | grep -oE '/[^ ]+' || true); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
printf 'root:x:0:0:root:/:/sbin/nologin\nmurmur:x:65532:65532:murmur:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nmurmur:x:65532:\n' >"$rootfs/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
cp "$here/Containerfile" "$ctx/Containerfile"
podman build --quiet --tag "$tag" --file "$ctx/Containerfile" "$ctx" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $size bytes ($((size / 1024 / 1024)) MiB)"
