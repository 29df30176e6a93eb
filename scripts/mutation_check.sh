#!/usr/bin/env bash
# Mutation check (issue 28): about 20 deliberate faults, each run against the default tests in a
# fresh copy of the committed tree; see scripts/mutation_check.py. Arguments are passed on
# (--list, --only NAME, --tests PATHS, --out PATH). A full run takes tens of minutes on 2 cores:
#   nohup nice -n 10 bash scripts/mutation_check.sh > mutation_check.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/mutation_check.py "$@"
