#!/usr/bin/env bash
# Every experiment at the `small` scale, one after the other, pinned to one CPU core so that the rest
# of the machine stays usable. Resumable: rerunning skips the finished runs.
#   nohup experiments/run_small.sh > /dev/null 2>&1 &
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CORE=${CORE:-1}
for x in ${EXPERIMENTS:-blocks solvers partition overlap schedules}; do
  mkdir -p "experiments/results/$x"
  echo "$(date -u +%FT%TZ) start $x" >> experiments/results/run_small.log
  taskset -c "$CORE" "$PY" "experiments/$x.py" --scale small --seeds 0,1,2 --no-progress \
    > "experiments/results/$x/log.txt" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $x rc=$rc" >> experiments/results/run_small.log
done
