#!/usr/bin/env bash
# murmur beside HAProxy, dnsmasq, unbound and Serf, in one run on this machine:
#   bash benches/peers.sh
# Installs the peers from Debian when missing (needs root for that), runs
# `cargo bench --bench peers` (see benches/peers.rs for what it measures and the
# MURMUR_PEERS* variables that shorten it), then draws the plots into
# benches/results/plots/ with the small plotting crate in benches/plot.
# Takes about 15 minutes with the defaults on 2 cores. Only loopback addresses are used;
# the membership part adds an nftables table (murmur_peers_bench) for the duration.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in haproxy:haproxy nginx:nginx-light wrk:wrk iperf3:iperf3 dnsperf:dnsperf dnsmasq:dnsmasq-base \
  unbound:unbound serf:serf nft:nftables getconf:libc-bin; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
[ -f "$font" ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "benches/peers.sh: missing ${need[*]}; run as root or install them (Debian packages)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian starts some of these as services on install; the benchmark runs its own.
for svc in nginx haproxy unbound dnsmasq; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done

shopt -s nullglob
before=(benches/results/peers-*.json)
cargo bench --bench peers
after=(benches/results/peers-*.json)
if [ ${#after[@]} -le ${#before[@]} ]; then
  echo "benches/peers.sh: the run wrote no results" >&2
  exit 1
fi
results=$(ls -t "${after[@]}" | head -1)
cargo run --quiet --release --manifest-path benches/plot/Cargo.toml -- "$results" benches/results/plots "$font"
echo "results: $results and ${results%.json}.md; plots: benches/results/plots/"
