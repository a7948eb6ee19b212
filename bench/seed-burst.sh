#!/usr/bin/env bash
# The seed's burst, side by side: Shoal (concurrency = "auto") vs. Lambda's model
# (concurrency = 1), on the same machine in the same run. Prints both summaries for each
# burst size. Usage: bench/seed-burst.sh [N ...]   (default: 10 100)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin shoal
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10 100)
for n in "${sizes[@]}"; do
  echo "== seed burst, $n concurrent requests =="
  ./target/debug/shoal demo --requests "$n" | sed -n '/^ *shoal (auto)/,$p'
  echo
done
