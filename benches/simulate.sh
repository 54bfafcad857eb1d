#!/usr/bin/env bash
# The `murmur simulate` table README shows, at 1,000, 5,000 and 10,000 agents:
#   bash benches/simulate.sh            # every row (about 15 minutes, 9 GB at 10,000)
#   bash benches/simulate.sh 1000 5000  # only these sizes
# Each row is one seeded run of the real membership core on a simulated network (see
# `murmur simulate --help`). 1,000 agents start cold (all join at once through three
# seeds); 5,000 and 10,000 start warm (from a converged cluster), because simulating
# their mass join on one machine takes longer than their whole measured run: every
# agent must pull the state of every other, 10^8 pulls at 10,000. Per size: idle (one
# state change per second across the cluster), 20 kills, and 20 kills at 10% and 30%
# uniform loss. Writes benches/results/simulate-<unix time>.json (one report per line)
# and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 5000 10000)
if [ ! -x /usr/bin/time ]; then
  echo "benches/simulate.sh: needs GNU time for the RSS column (Debian package time)" >&2
  exit 1
fi
cargo build --release --quiet --bin murmur
out="benches/results/simulate-$(date +%s).json"
mkdir -p benches/results
for n in "${sizes[@]}"; do
  start=()
  [ "$n" -gt 1000 ] && start=(--warm)
  for scenario in "idle:--kill 0 --loss 0" "kills:--kill 20 --loss 0" "kills, 10% loss:--kill 20 --loss 10" \
    "kills, 30% loss:--kill 20 --loss 30"; do
    name="${scenario%%:*}"
    # shellcheck disable=SC2086 # the scenario's flags split on purpose
    report=$(/usr/bin/time -f '%M' -o /tmp/murmur-simulate-rss ./target/release/murmur simulate --nodes "$n" \
      ${scenario#*:} --duration 60s --seed 7 "${start[@]}" --json)
    rss_kb=$(cat /tmp/murmur-simulate-rss)
    echo "{\"scenario\":\"$name\",\"rss_mb\":$((rss_kb / 1024)),\"report\":$report}" | tee -a "$out" >&2
  done
done
python3 - "$out" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def s(v):
    return "never" if v is None else f"{v:.2f}"
print("| agents | start | scenario | converged s | detect p50 s | detect p99 s | spread p99 s "
      "| B/s per agent (max) | false dead | wall s | RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row in rows:
    r = row["report"]
    start = "warm" if r["warm"] else "cold"
    conv = "–" if r["warm"] else s(r["converged_s"])
    detect = (s(r["detect_p50_s"]), s(r["detect_p99_s"])) if r["kills"] else ("–", "–")
    print(f"| {r['nodes']:,} | {start} | {row['scenario']} | {conv} | {detect[0]} | {detect[1]} "
          f"| {s(r['spread_p99_s'])} | {r['bytes_per_agent_per_s']:,.0f} ({r['bytes_per_agent_per_s_max']:,.0f}) "
          f"| {r['false_dead']} | {r['wall_s']:.0f} | {row['rss_mb']:,} |")
EOF
