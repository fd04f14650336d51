#!/usr/bin/env bash
# Build the kuryr container image with podman, with no container registry anywhere:
#   1. base: a minimal Debian root file system (mmdebstrap --variant=minbase, plus python3 and
#      ca-certificates) from Debian's package mirror, cached as a tarball in $KURYR_IMAGE_CACHE
#      and imported into podman as localhost/kuryr-base:<suite>-<recipe hash>;
#   2. wheels: kuryr from this checkout (its working tree) and its runtime dependencies, pinned
#      by constraints/neutron-29.txt where it names them, for the image's Python;
#   3. deploy/image/Containerfile on top (no network, no compiler): a virtualenv in /opt/kuryr,
#      tagged kuryr:<version of the package>, which podman names localhost/kuryr:<version>
#      (as the manifests in deploy/ do).
#
# Usage: deploy/image/build.sh [--save FILE] [--format docker-archive|oci-archive] [--refresh]
#   --save FILE   also write the image as an archive a cluster's runtime or registry can load
#   --format      of that archive (default docker-archive: docker load, ctr images import,
#                 kind load image-archive, skopeo copy)
#   --refresh     make the base root file system anew (Debian updates) and resolve the wheels
#                 on the package index, not from those of earlier builds
# Environment: PYTHON (runs pip; default .venv/bin/python, else python3), PODMAN (default
#   podman), KURYR_IMAGE_CACHE (default /var/lib/kuryr/image-cache), DEBIAN_MIRROR (default
#   http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR (default .../debian-security).
# Progress goes to stderr; the last line on stdout is the image's name.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SUITE=bookworm
IMAGE_PYTHON=3.11                     # bookworm's python3
PACKAGES=python3,ca-certificates
CONSTRAINTS=$ROOT/constraints/neutron-29.txt
CACHE=${KURYR_IMAGE_CACHE:-/var/lib/kuryr/image-cache}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
read -r -a PODMAN <<<"${PODMAN:-podman}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

save="" format=docker-archive refresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --save) save=$2; shift 2 ;;
    --format) format=$2; shift 2 ;;
    --refresh) refresh=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "image: $*" >&2; }
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }
for tool in "${PODMAN[0]}" mmdebstrap; do
  command -v "$tool" >/dev/null || { say "no $tool: apt-get install podman mmdebstrap"; exit 1; }
done

# 1. The base root file system, cached by its recipe.
mm_options=(--variant=minbase --format=tar --include="$PACKAGES"
            --aptopt='Acquire::Languages "none"'
            # as Debian's slim images: no manual pages, documentation or translations
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
            --dpkgopt='path-include=/usr/share/doc/*/copyright'
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
merged_usr=/usr/share/mmdebstrap/hooks/merged-usr  # else apt picks usrmerge, which pulls perl
[ -d "$merged_usr" ] && mm_options+=(--hook-dir="$merged_usr")
sources=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main"
         "deb $SECURITY_MIRROR $SUITE-security main")
key=$(printf '%s\n' "$SUITE" "${mm_options[@]}" "${sources[@]}" | sha256sum | cut -c1-12)
tarball=$CACHE/base-$SUITE-$key.tar
base=localhost/kuryr-base:$SUITE-$key
mkdir -p "$CACHE"
if [ "$refresh" = 1 ] || [ ! -s "$tarball" ]; then
  say "making the $SUITE root file system with mmdebstrap (about 40 s)"
  log=$CACHE/mmdebstrap.log
  if ! mmdebstrap "${mm_options[@]}" "$SUITE" "$tarball.part" "${sources[@]}" >"$log" 2>&1; then
    tail -20 "$log" >&2; rm -f "$tarball.part"; exit 1
  fi
  mv "$tarball.part" "$tarball"
  "${PODMAN[@]}" rmi --force "$base" >/dev/null 2>&1 || true
  say "base root file system: $tarball ($(du -m "$tarball" | cut -f1) MB) after $(elapsed)"
else
  say "base root file system: cached $tarball"
fi
if ! "${PODMAN[@]}" image exists "$base"; then
  "${PODMAN[@]}" import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$base" >/dev/null
  say "imported $base after $(elapsed)"
fi

# 2. Wheels, in a build context of their own. A fixed SOURCE_DATE_EPOCH makes the kuryr wheel
# the same bytes for the same sources: the same digest, and podman's layer cache holds.
context=$(mktemp -d "$CACHE/context.XXXXXX")
trap 'rm -rf "$context"' EXIT
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md src \
  | (mkdir "$context/source" && tar -C "$context/source" -xf -)
# pip tries the wheels of earlier builds first ($CACHE/wheels: no index, a second or two),
# and the index only when they do not satisfy the requirements (or with --refresh).
export SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1
wheelhouse=$CACHE/wheels
mkdir -p "$wheelhouse"
pip_fetch() {
  if [ "$refresh" = 0 ] && "$PYTHON" -m pip "$@" --no-index --find-links "$wheelhouse" \
       >/dev/null 2>&1; then
    return 0
  fi
  "$PYTHON" -m pip "$@" --find-links "$wheelhouse" 2>&1 \
    | { grep -v 'is ignored: it is neither' || true; } >&2
}
pip_fetch wheel --quiet --wheel-dir "$context/wheels" --constraint "$CONSTRAINTS" \
  "$context/source" pip
wheel=$(cd "$context/wheels" && echo kuryr-*-py3-none-any.whl)
version=${wheel#kuryr-}; version=${version%%-*}
host_python=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$host_python" != "$IMAGE_PYTHON" ]; then
  # The wheels above are this Python's; fetch the compiled ones for the image's.
  platforms=()
  for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_$(uname -m)"); done
  for legacy in manylinux2014 manylinux2010 manylinux1; do
    platforms+=(--platform "${legacy}_$(uname -m)")
  done
  pip_fetch download --quiet --dest "$context/wheels" --only-binary=:all: \
    --python-version "$IMAGE_PYTHON" --implementation cp --abi "cp${IMAGE_PYTHON/./}" \
    "${platforms[@]}" --find-links "$context/wheels" --constraint "$CONSTRAINTS" \
    "$context/wheels/$wheel" pip
fi
cp -f "$context/wheels"/*.whl "$wheelhouse"/
digest=$(cd "$context/wheels" && sha256sum ./*.whl | sha256sum | cut -c1-16)
say "wheels for kuryr $version: $(ls "$context/wheels" | wc -l) after $(elapsed)"

# 3. The image. RUN steps get no network, and this host's hard limit of open files: podman's
# default (1048576) may exceed what a host lets a container set ("error setting rlimits").
limits=()
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || limits+=(--ulimit "nofile=$hard:$hard")
image=localhost/kuryr:$version
previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
"${PODMAN[@]}" build --quiet --layers --network none "${limits[@]}" \
  --build-arg BASE="$base" --build-arg VERSION="$version" --build-arg WHEELS="$digest" \
  --tag "$image" --file "$HERE/Containerfile" "$context" >/dev/null
current=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$image")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  # The image this one replaces, and its cached layers (kept if a container still uses it).
  "${PODMAN[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$image")
say "built $image ($(( size / 1000000 )) MB) after $(elapsed)"

if [ -n "$save" ]; then
  mkdir -p "$(dirname "$save")"
  rm -f "$save"
  "${PODMAN[@]}" save --quiet --format "$format" --output "$save" "$image"
  say "saved $image to $save ($format, $(du -m "$save" | cut -f1) MB) after $(elapsed)"
fi
echo "$image"
