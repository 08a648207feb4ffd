#!/usr/bin/env bash
# Builds meshlite's container images from nothing: every Dockerfile here starts FROM scratch and
# no registry is contacted. Each image holds one binary of this workspace, the shared libraries
# `ldd` lists for it and the dynamic loader (copied from the build machine), a minimal /etc,
# and nothing else: no shell, no package manager.
#
#   meshlite/proxy:<version>    meshlite-proxy (uid/gid 1337), plus iptables-nft for
#                               `meshlite-proxy init` (the capture rules of a pod's init container)
#   meshlite/control:<version>  meshlite-control (uid/gid 1337, as docker/kubernetes/ runs it)
#   meshlite/app:<version>      meshlite-bench: its `app` (the demo app of docker/compose.yaml)
#                               and `pause` (holds a compose pod's network namespace)
#
# Usage: docker/build.sh [--profile release|debug] [--bin-dir DIR] [--tag TAG]...
#   --profile  cargo profile to build (default release; debug binaries are stripped of their
#              debug info when copied, which is what the tests use to save a release build)
#   --bin-dir  take meshlite-proxy, meshlite-control and meshlite-bench from DIR instead of
#              building them (e.g. target/debug after `cargo test --workspace`)
#   --tag      tag to give the images (repeatable); default: the version and `latest`
# Environment: MESHLITE_IMAGE_SOURCE overrides the source URL label (default: git's `origin`).
set -euo pipefail

die() {
    echo "docker/build.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '/^# Usage:/,/^# Environment/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
bin_dir=""
tags=()
while [ $# -gt 0 ]; do
    case "$1" in
    --profile)
        [ $# -ge 2 ] || usage
        profile=$2
        shift 2
        ;;
    --bin-dir)
        [ $# -ge 2 ] || usage
        bin_dir=$2
        shift 2
        ;;
    --tag)
        [ $# -ge 2 ] || usage
        tags+=("$2")
        shift 2
        ;;
    -h | --help) usage ;;
    *)
        echo "docker/build.sh: unknown argument \`$1\`" >&2
        usage
        ;;
    esac
done
case "$profile" in
release | debug) ;;
*) die "--profile must be release or debug, not \`$profile\`" ;;
esac

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running, may this user use it?)"
command -v ldd >/dev/null || die "ldd is missing (Debian's libc-bin)"
command -v objcopy >/dev/null || die "objcopy is missing (Debian's binutils)"
# `meshlite-proxy init` runs iptables-save/-restore (nft backend) inside the init container.
xtables=$(command -v xtables-nft-multi || true)
[ -n "$xtables" ] || [ ! -x /usr/sbin/xtables-nft-multi ] || xtables=/usr/sbin/xtables-nft-multi
[ -n "$xtables" ] || die "xtables-nft-multi is missing: install Debian's iptables package (the proxy image carries it for \`meshlite-proxy init\`)"
xtables_libdir=""
for d in /usr/lib/x86_64-linux-gnu/xtables /usr/lib/xtables /usr/lib64/xtables; do
    [ -d "$d" ] && xtables_libdir=$d && break
done
[ -n "$xtables_libdir" ] || die "the iptables extensions directory (xtables/) was not found"

if [ -z "$bin_dir" ]; then
    echo "== cargo build --profile $profile (meshlite-proxy, meshlite-control, meshlite-bench)"
    (cd "$root" && cargo build --profile "$([ "$profile" = debug ] && echo dev || echo release)" \
        -p meshlite-proxy -p meshlite-control -p meshlite-bench --bins)
    target=${CARGO_TARGET_DIR:-$root/target}
    bin_dir=$target/$profile
fi
for b in meshlite-proxy meshlite-control meshlite-bench; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing (build it, or give --bin-dir)"
done

version=$("$bin_dir/meshlite-proxy" --version | awk '{print $2}')
[ -n "$version" ] || die "cannot read the version from $bin_dir/meshlite-proxy --version"
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
source_url=${MESHLITE_IMAGE_SOURCE:-$(git -C "$root" remote get-url origin 2>/dev/null || true)}
[ ${#tags[@]} -gt 0 ] || tags=("$version" latest)

stage=$(mktemp -d "${TMPDIR:-/tmp}/meshlite-images.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# put ROOTFS SRC DEST: copies the file SRC (symlinks followed) to ROOTFS/DEST.
put() {
    mkdir -p "$1/$(dirname "$3")"
    cp -L "$2" "$1/$3"
}

# libs ROOTFS FILE: copies the shared libraries FILE needs and the dynamic loader, at the paths
# the loader looks them up by.
libs() {
    local lib
    # `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader's
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    while read -r lib; do
        [ -e "$1/$lib" ] || put "$1" "$lib" "$lib"
    done < <(ldd "$2" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}

# rootfs NAME BINARY: a root file system with BINARY at /usr/local/bin, its libraries, the
# users, and name resolution from /etc/hosts then DNS.
rootfs() {
    local fs=$stage/$1/rootfs
    mkdir -p "$fs/usr/local/bin" "$fs/etc" "$fs/tmp"
    chmod 1777 "$fs/tmp"
    # Debug info is most of a debug binary (hundreds of MB); an image needs none of it.
    objcopy --strip-debug "$bin_dir/$2" "$fs/usr/local/bin/$2"
    libs "$fs" "$bin_dir/$2"
    printf 'root:x:0:0:root:/:/nonexistent\nmeshlite:x:1337:1337:meshlite:/nonexistent:/nonexistent\n' >"$fs/etc/passwd"
    printf 'root:x:0:\nmeshlite:x:1337:\n' >"$fs/etc/group"
    printf 'hosts: files dns\n' >"$fs/etc/nsswitch.conf"
}

# The proxy: the sidecar's state directory (a tmpfs or emptyDir mounts over it), the
# credentials' mount points, and iptables for the init container.
rootfs proxy meshlite-proxy
fs=$stage/proxy/rootfs
mkdir -p "$fs/var/run/meshlite" "$fs/var/run/secrets/meshlite/root" "$fs/var/run/secrets/meshlite/token"
chmod 0700 "$fs/var/run/meshlite"
put "$fs" "$xtables" /usr/sbin/xtables-nft-multi
libs "$fs" "$xtables"
for tool in iptables-save iptables-restore ip6tables-save ip6tables-restore; do
    ln -s xtables-nft-multi "$fs/usr/sbin/$tool"
done
mkdir -p "$fs$xtables_libdir"
for ext in "$xtables_libdir"/*.so; do
    put "$fs" "$ext" "$ext"
    libs "$fs" "$ext"
done

# The control plane: its state directory, and the credentials' directories its jobs write (a
# fresh Docker volume mounted there takes their owner, 1337, from the image).
rootfs control meshlite-control
fs=$stage/control/rootfs
mkdir -p "$fs/var/lib/meshlite-control" "$fs/var/run/secrets/meshlite/root" "$fs/var/run/secrets/meshlite/token"
chmod 0700 "$fs/var/lib/meshlite-control"

# The app runs as 1000, not 1337: the capture rules exempt the proxy's uid, so an app running
# as 1337 would bypass its sidecar.
rootfs app meshlite-bench
printf 'app:x:1000:1000:app:/nonexistent:/nonexistent\n' >>"$stage/app/rootfs/etc/passwd"
printf 'app:x:1000:\n' >>"$stage/app/rootfs/etc/group"

# The layers: everything owned by root, then the directories the process writes, owned by
# 1337. tar sets the owners (no root needed here) and a fixed order and time, so the same files
# make the same layers; `ADD` unpacks them.
writable=(var/run/meshlite var/lib/meshlite-control var/run/secrets/meshlite/root var/run/secrets/meshlite/token)
for image in proxy control app; do
    fs=$stage/$image/rootfs
    own=()
    for d in "${writable[@]}"; do [ -d "$fs/$d" ] && own+=("./$d"); done
    excludes=()
    for d in "${own[@]}"; do excludes+=("--exclude=$d"); done
    tar -C "$fs" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 \
        "${excludes[@]}" -cf "$stage/$image/root.tar" .
    [ ${#own[@]} -eq 0 ] || tar -C "$fs" --sort=name --mtime=@0 --numeric-owner --owner=1337 \
        --group=1337 --no-recursion -cf "$stage/$image/writable.tar" "${own[@]}"
    rm -rf "$fs" # the build context is the tars alone
done

for image in proxy control app; do
    args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url")
    for t in "${tags[@]}"; do args+=(-t "meshlite/$image:$t"); done
    echo "== docker build meshlite/$image (${tags[*]})"
    docker build --quiet -f "$root/docker/$image.Dockerfile" "${args[@]}" "$stage/$image" >/dev/null
done

echo "== images (version $version, revision $revision${source_url:+, source $source_url})"
for image in proxy control app; do
    docker image inspect --format "meshlite/$image:${tags[0]}  {{.Size}}" "meshlite/$image:${tags[0]}" |
        awk '{printf "%-32s %6.1f MB\n", $1, $2 / 1000000}'
done
[ -n "$source_url" ] || echo "note: no git remote \`origin\`: set MESHLITE_IMAGE_SOURCE to label the images with their source URL" >&2
