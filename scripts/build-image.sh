#!/usr/bin/env bash
# Builds a Berth bot image as an OCI image-layout archive, from Debian packages only (nothing downloaded
# from elsewhere). Usage: scripts/build-image.sh minimal [OUT.tar]
#
# minimal: layer 1 = a busybox-static root file system (/bin/sh and the usual tools, /etc/passwd, /data);
#          layer 2 = the static berth-agent at /sbin/berth-agent, the image's entrypoint (PID 1).
# The archive is reproducible: sorted entries, fixed owners and times, gzip without names or stamps.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
flavor="${1:-minimal}"
out="${2:-$root/target/images/berth-$flavor.tar}"
[ "$flavor" = minimal ] || { echo "build-image: unknown flavor '$flavor' (only 'minimal' for now)" >&2; exit 2; }
command -v busybox >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; }
agent="${BERTH_AGENT_BIN:-$(bash "$root/scripts/build-agent.sh")}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/base" "$work/agent/sbin" "$work/blobs/sha256"

# Layer 1: busybox root file system.
b="$work/base"
mkdir -p "$b"/{bin,sbin,usr/bin,usr/sbin,etc,data,tmp,root,proc,sys,dev,run/berth}
cp "$(command -v busybox)" "$b/bin/busybox"
for applet in $("$b/bin/busybox" --list-full); do
  [ -e "$b/$applet" ] || ln -s /bin/busybox "$b/$applet"
done
chmod 1777 "$b/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$b/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$b/etc/group"
printf 'hosts: files dns\n' > "$b/etc/nsswitch.conf"

# Layer 2: the agent.
install -m 0755 "$agent" "$work/agent/sbin/berth-agent"

layer() { # dir -> prints "diff_id digest size"
  local dir="$1" tarf="$work/layer.tar"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$dir" -cf "$tarf" .
  local diff; diff="sha256:$(sha256sum "$tarf" | cut -d' ' -f1)"
  gzip -n -9 -c "$tarf" > "$work/layer.tar.gz"
  local dig; dig="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
  mv "$work/layer.tar.gz" "$work/blobs/sha256/$dig"
  echo "$diff sha256:$dig $(stat -c %s "$work/blobs/sha256/$dig")"
}
blob() { # file -> prints "digest size", moving it into blobs/
  local dig; dig="$(sha256sum "$1" | cut -d' ' -f1)"
  mv "$1" "$work/blobs/sha256/$dig"
  echo "sha256:$dig $(stat -c %s "$work/blobs/sha256/$dig")"
}

read -r diff1 dig1 size1 < <(layer "$work/base")
read -r diff2 dig2 size2 < <(layer "$work/agent")
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/sbin/berth-agent"],"WorkingDir":"/data","Labels":{"io.berth.image":"$flavor"}},"rootfs":{"type":"layers","diff_ids":["$diff1","$diff2"]},"history":[{"created_by":"berth build-image.sh: busybox-static rootfs"},{"created_by":"berth build-image.sh: berth-agent"}]}
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
