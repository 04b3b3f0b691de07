#!/usr/bin/env bash
# Build the retool sandbox image without a container registry.
#
# Why: many training and eval machines can reach a Debian mirror (or a proxy of one) but no
# registry, so `docker build` from sandbox/Dockerfile is impossible there. This script bootstraps a
# minimal Debian rootfs with debootstrap, adds the unprivileged `sandbox` user (uid/gid 1000) and
# the in-container interpreter (sandbox/runner.py), and turns it into an image with `docker import`.
#
# The debootstrapped rootfs is cached as a tarball, so a rebuild after `docker rmi` (or after
# editing runner.py) takes seconds; only the first build talks to the mirror (a few minutes).
#
# Usage (as root, with a running Docker engine):
#   bash sandbox/build_offline_image.sh            # build unless the image already exists
#   bash sandbox/build_offline_image.sh --force    # rebuild the image (reuses the cached rootfs)
#   bash sandbox/build_offline_image.sh --refresh  # also re-run debootstrap
#
# Environment overrides:
#   RETOOL_DEBIAN_MIRROR  (default http://deb.debian.org/debian)
#   RETOOL_DEBIAN_SUITE   (default bookworm)
#   RETOOL_SANDBOX_IMAGE  (default retool-sandbox:latest)
#   RETOOL_EXTRA_PACKAGES (comma-separated Debian packages added to the default set)
#   XDG_CACHE_HOME        (rootfs cache lives in ${XDG_CACHE_HOME:-~/.cache}/retool/)
set -euo pipefail

MIRROR="${RETOOL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${RETOOL_DEBIAN_SUITE:-bookworm}"
IMAGE="${RETOOL_SANDBOX_IMAGE:-retool-sandbox:latest}"
PACKAGES="python3,python3-numpy,python3-sympy,python3-scipy,tini${RETOOL_EXTRA_PACKAGES:+,$RETOOL_EXTRA_PACKAGES}"
BUILD_ONLY_PACKAGES="python3-pythran python3-beniget python3-gast python3-ply python3-all-dev python3-dev
    python3.11-dev libpython3-all-dev libpython3-dev libpython3.11-dev libexpat1-dev zlib1g-dev g++ g++-12
    gcc gcc-12 cpp cpp-12 libstdc++-12-dev libgcc-12-dev libc6-dev libcrypt-dev libnsl-dev libtirpc-dev
    rpcsvc-proto linux-libc-dev libboost-dev libboost1.74-dev libxsimd-dev libopenblas-dev
    libopenblas-pthread-dev binutils binutils-common binutils-x86-64-linux-gnu libbinutils libctf0
    libctf-nobfd0 libgprofng0 libjansson4 libasan8 liblsan0 libtsan2 libubsan1 libitm1 libisl23 libmpc3
    libjs-jquery libjs-sphinxdoc libjs-underscore"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/retool"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUNNER="$HERE/runner.py"
BOOT="$HERE/../retool/sandbox/jail_boot.py"  # the runner imports its thread stopping from it

FORCE=0
REFRESH=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --refresh) FORCE=1; REFRESH=1 ;;
        -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "debootstrap and the rootfs ownership need root: run with sudo"
command -v docker >/dev/null || die "docker CLI not found (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "Docker engine not reachable: start it with 'sudo dockerd &' (or set DOCKER_HOST)"
[ -f "$RUNNER" ] || die "missing $RUNNER"
[ -f "$BOOT" ] || die "missing $BOOT"

# The image carries the hash of the runner (and the boot module it imports) it was built with; a
# change to either means a rebuild (retool.sandbox.docker_engine.runner_sha computes the same).
RUNNER_SHA="$(cat "$RUNNER" "$BOOT" | sha256sum | cut -c1-16)"
if [ "$FORCE" -eq 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    BUILT_SHA="$(docker image inspect -f '{{ index .Config.Labels "retool.runner" }}' "$IMAGE" 2>/dev/null || true)"
    if [ "$BUILT_SHA" = "$RUNNER_SHA" ]; then
        echo "$IMAGE is up to date (runner $RUNNER_SHA; use --force to rebuild)"
        exit 0
    fi
    echo "$IMAGE was built from another runner.py ($BUILT_SHA, now $RUNNER_SHA): rebuilding"
fi

# The cache key covers everything that shapes the rootfs, so changing the suite, mirror or package
# list never reuses a stale tarball.
KEY="$(printf '%s|%s|%s|%s|v2' "$SUITE" "$MIRROR" "$PACKAGES" "$BUILD_ONLY_PACKAGES" | sha256sum | cut -c1-12)"
TARBALL="$CACHE_DIR/rootfs-$SUITE-$KEY.tar"
mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/retool-rootfs.XXXXXX")"
cleanup() { rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT
ROOTFS="$WORK/rootfs"
START=$SECONDS

if [ "$REFRESH" -eq 1 ] || [ ! -f "$TARBALL" ]; then
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    step "debootstrap $SUITE from $MIRROR (minbase + $PACKAGES); takes a few minutes"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
        > "$WORK/debootstrap.log" 2>&1 || { tail -n 40 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

    step "adding user sandbox (1000:1000) and stripping caches and docs"
    grep -q '^sandbox:' "$ROOTFS/etc/group" || echo 'sandbox:x:1000:' >> "$ROOTFS/etc/group"
    grep -q '^sandbox:' "$ROOTFS/etc/passwd" \
        || echo 'sandbox:x:1000:1000:retool sandbox:/home/sandbox:/bin/sh' >> "$ROOTFS/etc/passwd"
    grep -q '^sandbox:' "$ROOTFS/etc/shadow" || echo 'sandbox:!:19000::::::' >> "$ROOTFS/etc/shadow"
    install -d -o 1000 -g 1000 -m 0755 "$ROOTFS/home/sandbox"
    install -d -m 1777 "$ROOTFS/work"
    # bookworm's python3-scipy depends on python3-pythran, which drags in g++, boost and the Python
    # headers (~500 MB) that only matter when compiling; scipy's compiled modules do not use them.
    chroot "$ROOTFS" dpkg --purge --force-depends $BUILD_ONLY_PACKAGES > "$WORK/purge.log" 2>&1 \
        || { tail -n 20 "$WORK/purge.log" >&2; die "purging build-only packages failed"; }
    rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/* \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/tmp/*
    # The libraries' own test suites (~75 MB) are not needed to run model code.
    for pkg in numpy scipy sympy mpmath; do
        find "$ROOTFS/usr/lib/python3/dist-packages/$pkg" -depth -type d -name tests -exec rm -rf {} +
    done

    step "caching rootfs as $TARBALL"
    tar -C "$ROOTFS" --numeric-owner -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
else
    step "reusing cached rootfs $TARBALL"
    mkdir -p "$ROOTFS"
    tar -C "$ROOTFS" --numeric-owner -xf "$TARBALL"
fi

step "installing runner.py and retool_boot.py into /opt/retool"
install -d -m 0755 "$ROOTFS/opt/retool"
install -m 0644 "$RUNNER" "$ROOTFS/opt/retool/runner.py"
install -m 0644 "$BOOT" "$ROOTFS/opt/retool/retool_boot.py"

step "docker import -> $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'USER 1000:1000' \
    --change 'WORKDIR /work' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8 HOME=/home/sandbox PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1' \
    --change 'LABEL org.opencontainers.image.title=retool-sandbox' \
    --change "LABEL retool.runner=$RUNNER_SHA" \
    --change 'CMD ["python3", "/opt/retool/runner.py"]' \
    --message "retool sandbox: debootstrap $SUITE minbase + $PACKAGES" \
    - "$IMAGE" >/dev/null

step "smoke test"
docker run --rm --network none -i "$IMAGE" python3 -c \
    'import os, numpy, sympy, scipy; print("uid", os.getuid(), "numpy", numpy.__version__, "sympy", sympy.__version__, "scipy", scipy.__version__)'
docker image ls "$IMAGE"
echo "built $IMAGE in $((SECONDS - START)) s"
