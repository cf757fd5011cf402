#!/usr/bin/env bash
# scripts/testbed.sh: make this machine able to run the integration tests.
#
#  1. Docker: if `docker info` fails, install docker.io (apt-get) when
#     missing and start dockerd (log: /tmp/dockerd.log).
#  2. Images: build mq-redis, mq-rabbitmq, mq-kafka and mq-postgres from Debian packages
#     (and, for Kafka, Apache Kafka's jars from Maven Central), one shared
#     debootstrap base, the images in parallel. Each image is tagged
#     with a hash of its recipe (scripts/images/base + scripts/images/NAME)
#     and skipped when that tag is already present.
#  3. Environment: print `export` lines for the harness (integration/testbed)
#     on stdout and write them to .testbed.env at the repository root.
#
#     eval "$(scripts/testbed.sh)"      # or: scripts/testbed.sh && . .testbed.env
#
# Options: --rebuild   build the images even when their tag exists.
#          --no-build  only check Docker and print the environment.
# Environment: MQ_TESTBED_CACHE (default /var/cache/mqkit): base tarball,
# downloaded .debs, Maven repository, Kafka jars, build logs.
# MQ_TESTBED_MIRROR: Debian mirror (default: the one apt uses here).
#
# Progress goes to stderr with timestamps; stdout carries only the exports.
# Idempotent: a warm run (Docker up, images present) takes about a second.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=$ROOT/scripts/images
CACHE=${MQ_TESTBED_CACHE:-/var/cache/mqkit}
LOGDIR=$CACHE/logs
ENV_FILE=$ROOT/.testbed.env
# Bump when a change to this script changes what goes into an image.
RECIPE_VERSION=1
IMAGES=(redis rabbitmq kafka postgres)

REBUILD=0
BUILD=1
for arg in "$@"; do
  case $arg in
    --rebuild) REBUILD=1 ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "testbed.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

exec 3>&2 # progress, also from build jobs whose stderr goes to a log file
T0=$(date +%s)
log() { printf '[%s +%4ss] testbed: %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - T0))" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }
# step: a timestamped marker in a build log (stdout of the build jobs).
step() { printf '\n=== %s %s\n' "$(date +%H:%M:%S)" "$*"; }

as_root() {
  [[ $(id -u) == 0 ]] || die "this step needs root: run scripts/testbed.sh as root (or with sudo)"
}

APT_UPDATED=0
apt_install() { # packages...
  as_root
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update"
    apt-get update -qq >"$LOGDIR/apt.log" 2>&1 || { tail -20 "$LOGDIR/apt.log" >&3; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOGDIR/apt.log" 2>&1 ||
    { tail -20 "$LOGDIR/apt.log" >&3; die "apt-get install $* failed"; }
}

# ---------------------------------------------------------------- Docker ---

ensure_docker() {
  if docker info >/dev/null 2>&1; then
    log "docker: up ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
    return
  fi
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker >/dev/null || need+=(docker.io)
  if ((${#need[@]})); then apt_install docker.io; fi
  if ! pgrep -x dockerd >/dev/null; then
    as_root
    log "starting dockerd (log: /tmp/dockerd.log)"
    # Detached, holding none of our descriptors (a pipe left open would keep
    # whoever reads this script's output waiting; fd 9 is the lock).
    setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null 3>&- 9>&- &
  else
    log "dockerd is running; waiting for its socket"
  fi
  local i
  for ((i = 0; i < 240; i++)); do
    docker info >/dev/null 2>&1 && { log "docker: up ($(docker version -f '{{.Server.Version}}'))"; return; }
    sleep 0.25
  done
  tail -20 /tmp/dockerd.log >&3 || true
  die "dockerd did not answer within 60 s"
}

# ---------------------------------------------------------------- hashes ---

# recipe_hash DIR... : 12 hex digits over the file names, executable bits and
# contents of the given directories of scripts/images (and RECIPE_VERSION).
recipe_hash() {
  (
    cd "$IMAGES_DIR"
    echo "recipe-version $RECIPE_VERSION"
    find "$@" -type f -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
      if [[ -x $f ]]; then echo "x $f"; else echo "- $f"; fi
      sha256sum <"$f"
    done
  ) | sha256sum | cut -c1-12
}

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------- chroot ---

mirror() {
  if [[ -n ${MQ_TESTBED_MIRROR:-} ]]; then echo "$MQ_TESTBED_MIRROR"; return; fi
  local m=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $m && -f /etc/apt/sources.list ]]; then
    m=$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# umount_under DIR: lazily unmount everything mounted at or below DIR.
umount_under() {
  local d=$1 m
  [[ -d $d ]] || return 0
  d=$(cd "$d" && pwd -P)
  while read -r m; do
    if [[ $m == "$d" || $m == "$d"/* ]]; then umount -l "$m" 2>/dev/null || true; fi
  done < <(awk '{print $2}' /proc/mounts | sort -r)
}

remove_tree() {
  umount_under "$1"
  rm -rf --one-file-system "$1"
}

# in_chroot DIR CMD...: run CMD in DIR with /proc mounted and the host's DNS.
in_chroot() {
  local dir=$1 rc=0
  shift
  mount -t proc proc "$dir/proc"
  rm -f "$dir/etc/resolv.conf"
  cat /etc/resolv.conf >"$dir/etc/resolv.conf"
  chroot "$dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
  umount -l "$dir/proc" || true
  return "$rc"
}

# ------------------------------------------------------------ base rootfs ---

# build_base TARBALL: debootstrap the base root file system into TARBALL.
build_base() {
  local tarball=$1 dir=$CACHE/build/base SUITE VARIANT
  # shellcheck disable=SC1091
  source "$IMAGES_DIR/base/recipe.env"
  # shellcheck disable=SC2064 # expand $dir now: it is local
  trap "umount_under '$dir'" EXIT
  remove_tree "$dir"
  mkdir -p "$CACHE/debs" "$dir/etc/dpkg/dpkg.cfg.d"
  # dpkg without fsync from the first package on (about a third faster).
  cp "$IMAGES_DIR/base/files/etc/dpkg/dpkg.cfg.d/02-mq-unsafe-io" "$dir/etc/dpkg/dpkg.cfg.d/"
  step "debootstrap --variant=$VARIANT $SUITE from $(mirror)"
  debootstrap --variant="$VARIANT" --cache-dir="$CACHE/debs" "$SUITE" "$dir" "$(mirror)"
  cp -a "$IMAGES_DIR/base/files/." "$dir/"
  if [[ -f /etc/apt/sources.list.d/debian.sources ]] &&
    grep -Eq "^Suites:.*\\b$SUITE\\b" /etc/apt/sources.list.d/debian.sources; then
    # The host's own sources: the same mirror, with updates and security.
    mkdir -p "$dir/etc/apt/sources.list.d"
    cp /etc/apt/sources.list.d/debian.sources "$dir/etc/apt/sources.list.d/debian.sources"
    rm -f "$dir/etc/apt/sources.list"
  else
    echo "deb $(mirror) $SUITE main" >"$dir/etc/apt/sources.list"
  fi
  step "apt-get update, dist-upgrade"
  in_chroot "$dir" apt-get update -q
  # Bring the base up to date with bookworm-updates / -security.
  in_chroot "$dir" apt-get -y -q dist-upgrade
  in_chroot "$dir" apt-get clean
  step "tar"
  tar -C "$dir" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  remove_tree "$dir"
}

# ---------------------------------------------------------------- images ---

# fetch_maven_libs POM OUT: copy the runtime dependencies of POM into OUT.
fetch_maven_libs() {
  local pom=$1 out=$2 tmp
  tmp=$(mktemp -d "$CACHE/build/maven.XXXXXX")
  cp "$pom" "$tmp/pom.xml"
  mkdir -p "$CACHE/m2"
  (cd "$tmp" && mvn -B -q -Dmaven.repo.local="$CACHE/m2" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/libs")
  ls "$tmp/libs" | sed 's/^/  /'
  step "done"
  rm -rf "$out"
  mv "$tmp/libs" "$out"
  rm -rf "$tmp"
}

# build_image NAME TAG BASE_TARBALL [MAVEN_LIBS]
build_image() {
  local name=$1 tag=$2 base=$3 libs=${4:-} recipe=$IMAGES_DIR/$1
  local dir=$CACHE/build/$name debs=$CACHE/apt/$name
  local PACKAGES="" MAVEN_LIBS_DIR="" CHANGES=()
  # shellcheck disable=SC1090,SC1091
  source "$recipe/recipe.env"
  # shellcheck disable=SC2064 # expand $dir now: it is local
  trap "umount_under '$dir'" EXIT
  remove_tree "$dir"
  mkdir -p "$dir" "$debs"
  tar -C "$dir" -xf "$base"
  # Reuse the .debs of the previous build of this image (hard links).
  cp -al "$debs/." "$dir/var/cache/apt/archives/" 2>/dev/null || cp -a "$debs/." "$dir/var/cache/apt/archives/"
  step "apt-get install $PACKAGES"
  # shellcheck disable=SC2086
  in_chroot "$dir" apt-get install -y -q $PACKAGES
  rm -rf "$debs.new" && mkdir -p "$debs.new"
  find "$dir/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec ln {} "$debs.new/" \;
  rm -rf "$debs" && mv "$debs.new" "$debs"
  if [[ -d $recipe/files ]]; then cp -a "$recipe/files/." "$dir/"; fi
  if [[ -n $MAVEN_LIBS_DIR ]]; then
    mkdir -p "$dir$MAVEN_LIBS_DIR"
    cp -a "$libs/." "$dir$MAVEN_LIBS_DIR/"
  fi
  if [[ -f $recipe/setup.sh ]]; then
    step "setup.sh"
    cp "$recipe/setup.sh" "$dir/tmp/mq-setup.sh"
    in_chroot "$dir" /bin/bash /tmp/mq-setup.sh
  fi
  # Slim down: package lists, caches, logs of the build.
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin \
    "$dir"/var/cache/debconf/*-old "$dir"/var/log/apt/* "$dir"/var/log/dpkg.log \
    "$dir"/var/log/alternatives.log "$dir"/tmp/* "$dir"/root/.cache
  : >"$dir/etc/resolv.conf"
  local changes=() c
  for c in "${CHANGES[@]}"; do changes+=(-c "$c"); done
  step "docker import $tag ($(du -sh --one-file-system "$dir" | cut -f1))"
  local old_id
  old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  tar -C "$dir" -c . | docker import "${changes[@]}" -m "mqkit testbed $name, recipe ${tag##*:}" - "$tag"
  remove_tree "$dir"
  # A rebuild leaves the previous image of this tag untagged: drop it.
  if [[ -n $old_id && $old_id != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  step "done"
  # Drop the images of older recipes (ignore those still in use).
  docker image ls "mq-$name" --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$tag" |
    xargs -r docker rmi >/dev/null 2>&1 || true
}

# --------------------------------------------------------------------- main ---

mkdir -p "$LOGDIR" "$CACHE/build" 2>/dev/null || as_root
# One testbed.sh at a time on a machine (others wait, then find the images).
exec 9>>"$CACHE/.lock"
if ! flock -n 9; then
  log "another scripts/testbed.sh is running; waiting for it"
  flock 9
fi
ensure_docker

declare -A TAG=()
for name in "${IMAGES[@]}"; do
  TAG[$name]=mq-$name:$(recipe_hash base "$name")
done

todo=()
if [[ $BUILD == 1 ]]; then
  for name in "${IMAGES[@]}"; do
    if [[ $REBUILD == 0 ]] && image_present "${TAG[$name]}"; then
      log "image ${TAG[$name]}: present"
    else
      todo+=("$name")
    fi
  done
fi

if ((${#todo[@]})); then
  as_root
  log "building: ${todo[*]} (logs: $LOGDIR)"
  need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if [[ " ${todo[*]} " == *" kafka "* ]] && ! command -v mvn >/dev/null; then need+=(maven); fi
  if ((${#need[@]})); then apt_install "${need[@]}"; fi

  # Kafka's jars: fetched by Maven while the base is being bootstrapped.
  libs=""
  maven_pid=""
  if [[ " ${todo[*]} " == *" kafka "* ]]; then
    libs=$CACHE/kafka-libs-$(sha256sum <"$IMAGES_DIR/kafka/pom.xml" | cut -c1-12)
    if [[ -d $libs ]]; then
      log "kafka jars: cached ($libs)"
    else
      log "kafka jars: mvn dependency:copy-dependencies (log: $LOGDIR/maven.log)"
      (
        fetch_maven_libs "$IMAGES_DIR/kafka/pom.xml" "$libs" >"$LOGDIR/maven.log" 2>&1
        log "kafka jars: done ($(ls "$libs" | wc -l) jars)"
      ) &
      maven_pid=$!
    fi
  fi

  base=$CACHE/base-$(recipe_hash base).tar
  if [[ -f $base ]]; then
    log "base rootfs: cached ($base)"
  else
    log "base rootfs: debootstrap (log: $LOGDIR/base.log)"
    # (In the background and waited for, so that set -e holds inside.)
    (build_base "$base" >"$LOGDIR/base.log" 2>&1) &
    if ! wait $!; then
      tail -30 "$LOGDIR/base.log" >&3
      die "base rootfs failed (log: $LOGDIR/base.log)"
    fi
    log "base rootfs: done ($(du -h "$base" | cut -f1))"
  fi
  if [[ -n $maven_pid ]] && ! wait "$maven_pid"; then
    tail -30 "$LOGDIR/maven.log" >&3
    die "fetching Kafka's jars failed (log: $LOGDIR/maven.log)"
  fi

  declare -A PID=()
  for name in "${todo[@]}"; do
    log "image ${TAG[$name]}: building (log: $LOGDIR/$name.log)"
    (
      start=$(date +%s)
      build_image "$name" "${TAG[$name]}" "$base" "$libs" >"$LOGDIR/$name.log" 2>&1
      log "image ${TAG[$name]}: built in $(($(date +%s) - start)) s"
    ) &
    PID[$name]=$!
  done
  failed=()
  for name in "${todo[@]}"; do
    wait "${PID[$name]}" || failed+=("$name")
  done
  for name in "${failed[@]}"; do
    log "image ${TAG[$name]}: FAILED; last lines of $LOGDIR/$name.log:"
    tail -40 "$LOGDIR/$name.log" | sed 's/^/    /' >&3
  done
  ((${#failed[@]} == 0)) || die "image build failed: ${failed[*]}"
fi

exports=(
  "export MQ_TEST_REDIS_IMAGE=${TAG[redis]}"
  "export MQ_TEST_RABBITMQ_IMAGE=${TAG[rabbitmq]}"
  "export MQ_TEST_KAFKA_IMAGE=${TAG[kafka]}"
  "export MQ_TEST_POSTGRES_IMAGE=${TAG[postgres]}"
  "export TESTCONTAINERS_RYUK_DISABLED=true"
  "export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1"
)
printf '%s\n' "# written by scripts/testbed.sh; source it before go test" "${exports[@]}" >"$ENV_FILE"
printf '%s\n' "${exports[@]}"
log "ready in $(($(date +%s) - T0)) s; environment in $ENV_FILE"
