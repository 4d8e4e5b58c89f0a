#!/usr/bin/env bash
# Builds a Berth bot image as an OCI image-layout archive, from Debian packages only (nothing downloaded
# from elsewhere). Usage: scripts/build-image.sh minimal|full [OUT.tar]
#
# minimal: layer 1 = a busybox-static root file system (/bin/sh and the usual tools, /etc/passwd, /data);
# full:    layer 1 = a Debian root file system made by debootstrap (minbase, the host's release) with
#          nodejs, npm (npx), python3 (venv, pip) and ca-certificates, for bots that run npx/uvx-style
#          tool servers. The Debian layer is cached outside the clone, like cargo's registry, keyed by the
#          hash of its recipe (this script's full_base, the release, the mirror): in
#          $BERTH_CACHE_DIR (default ~/.cache/berth), rebuilt when the recipe changes, when older than
#          14 days (security updates), or with BERTH_REBUILD_IMAGE=1. BERTH_DEBIAN_MIRROR picks the
#          mirror (default deb.debian.org).
# Both:    layer 2 = the static berth-agent at /sbin/berth-agent, the image's entrypoint (PID 1).
# The minimal archive is reproducible: sorted entries, fixed owners and times, gzip without names or
# stamps (the full one is as reproducible as the Debian archive it is built from on a given day).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
flavor="${1:-minimal}"
out="${2:-$root/target/images/berth-$flavor.tar}"
case "$flavor" in minimal|full) ;; *) echo "build-image: unknown flavor '$flavor' (minimal or full)" >&2; exit 2;; esac
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need busybox busybox-static
agent="${BERTH_AGENT_BIN:-$(bash "$root/scripts/build-agent.sh")}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/base" "$work/agent/sbin" "$work/blobs/sha256"

b="$work/base"
minimal_base() { # busybox root file system
  mkdir -p "$b"/{bin,sbin,usr/bin,usr/sbin,etc,data,tmp,root,proc,sys,dev,run/berth}
  cp "$(command -v busybox)" "$b/bin/busybox"
  for applet in $("$b/bin/busybox" --list-full); do
    [ -e "$b/$applet" ] || ln -s /bin/busybox "$b/$applet"
  done
  chmod 1777 "$b/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$b/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$b/etc/group"
  printf 'hosts: files dns\n' > "$b/etc/nsswitch.conf"
}
full_base() { # debootstrap + the runtimes tool servers need
  need debootstrap debootstrap
  local suite mirror
  suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  mirror="${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  echo "build-image: debootstrap $suite from $mirror (a few minutes, once)" >&2
  debootstrap --variant=minbase "$suite" "$b" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  cp /etc/resolv.conf "$b/etc/resolv.conf"
  chroot "$b" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$b" apt-get install -y -qq --no-install-recommends \
    ca-certificates nodejs npm python3 python3-venv python3-pip >"$work/apt.log" 2>&1 \
    || { tail -20 "$work/apt.log" >&2; exit 1; }
  chroot "$b" apt-get clean
  rm -rf "$b"/var/lib/apt/lists/* "$b"/var/cache/apt/*.bin "$b/etc/resolv.conf" "$b"/var/log/*.log
  : > "$b/etc/resolv.conf"
  rm -rf "${b:?}"/dev/* "${b:?}"/proc/* "${b:?}"/sys/*   # the runtime mounts its own
  mkdir -p "$b/data" "$b/run/berth"
}

# Layer 2: the agent.
install -m 0755 "$agent" "$work/agent/sbin/berth-agent"

layer() { # dir -> prints "diff_id digest size"
  local dir="$1" tarf="$work/layer.tar"
  # The minimal layer's files all belong to root; a Debian root file system keeps its owners.
  local owners=(--owner=0 --group=0)
  [ "$flavor" = full ] && owners=()
  tar --sort=name "${owners[@]}" --numeric-owner --mtime=@0 --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$dir" -cf "$tarf" .
  local diff; diff="sha256:$(sha256sum "$tarf" | cut -d' ' -f1)"
  gzip -n -"${GZIP_LEVEL:-9}" -c "$tarf" > "$work/layer.tar.gz"
  local dig; dig="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
  mv "$work/layer.tar.gz" "$work/blobs/sha256/$dig"
  echo "$diff sha256:$dig $(stat -c %s "$work/blobs/sha256/$dig")"
}
blob() { # file -> prints "digest size", moving it into blobs/
  local dig; dig="$(sha256sum "$1" | cut -d' ' -f1)"
  mv "$1" "$work/blobs/sha256/$dig"
  echo "sha256:$dig $(stat -c %s "$work/blobs/sha256/$dig")"
}

if [ "$flavor" = minimal ]; then
  minimal_base
  read -r diff1 dig1 size1 < <(layer "$work/base")
else
  suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  recipe="$( { declare -f full_base layer; echo "$suite ${BERTH_DEBIAN_MIRROR:-}"; } | sha256sum | cut -c1-16)"
  cache="${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}/images/full-base-$suite-$recipe"
  mkdir -p "$cache"
  ids="$cache/full-base.ids"
  if [ -n "${BERTH_REBUILD_IMAGE:-}" ] || [ ! -s "$ids" ] || [ -n "$(find "$ids" -mtime +14)" ] \
      || ! read -r diff1 dig1 size1 < "$ids" \
      || [ "$(sha256sum "$cache/full-base.blob" 2>/dev/null | cut -d' ' -f1)" != "${dig1#sha256:}" ]; then
    full_base
    read -r diff1 dig1 size1 < <(GZIP_LEVEL=6 layer "$work/base")
    cp "$work/blobs/sha256/${dig1#sha256:}" "$cache/full-base.blob.tmp"
    mv "$cache/full-base.blob.tmp" "$cache/full-base.blob"
    echo "$diff1 $dig1 $size1" > "$ids.tmp" && mv "$ids.tmp" "$ids"
  else
    echo "build-image: the Debian layer from $cache (recipe $recipe)" >&2
    cp "$cache/full-base.blob" "$work/blobs/sha256/${dig1#sha256:}"
  fi
fi
read -r diff2 dig2 size2 < <(layer "$work/agent")
history1="$([ "$flavor" = minimal ] && echo "busybox-static rootfs" || echo "debootstrap minbase + nodejs npm python3")"
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/sbin/berth-agent"],"WorkingDir":"/data","Labels":{"io.berth.image":"$flavor"}},"rootfs":{"type":"layers","diff_ids":["$diff1","$diff2"]},"history":[{"created_by":"berth build-image.sh: $history1"},{"created_by":"berth build-image.sh: berth-agent"}]}
JSON
read -r cdig csize < <(blob "$work/config.json")
L=application/vnd.oci.image.layer.v1.tar+gzip
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$cdig","size":$csize},"layers":[{"mediaType":"$L","digest":"$dig1","size":$size1},{"mediaType":"$L","digest":"$dig2","size":$size2}]}
JSON
read -r mdig msize < <(blob "$work/manifest.json")
cat > "$work/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$mdig","size":$msize,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"berth/$flavor:latest","io.containerd.image.name":"berth/$flavor:latest"}}]}
JSON
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "$out"
