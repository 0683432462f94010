#!/usr/bin/env bash
# The Defaults table, the head experiment, the learning-rate searches and then the Equal-budget table on a lent
# GPU, in one device call. Runs already in benchmarks/results/glue-gpu/ (committed by an earlier call) are skipped,
# so what STOP leaves out, the next call continues. Prepare here (project root):  bash ../shared/gpu/pack.sh
# then:  run(command="source .device/on-device.sh && bash benchmarks/gpu_defaults.sh", carry=[".device"], timeout_s=590)
# Results come back as $OUT/glue-gpu.tar: untar it into benchmarks/results/ (it holds glue-gpu/<experiment>/*.json).
# WORKERS processes share the GPU and the run list (glue.py's lock files); none starts a run after STOP (UTC).
set -uo pipefail
WORKERS=${WORKERS:-14}
STOP=${STOP:-$(date -u -d "+7 minutes" +%H:%M)}
export SORA_BENCH_RESULTS=/tmp/glue-gpu SORA_DEVICE_MODEL=${SORA_DEVICE_MODEL:-/tmp/minilm}
mkdir -p /tmp/glue-gpu && cp -r benchmarks/results/glue-gpu/. /tmp/glue-gpu/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# The device's transformers was 5.17 (2026-11-28), older than pyproject's minimum: every run failed in
# TrainingArguments. Carry a transformers>=5.23 wheel in .device/wheels (13 MB; the carried tree must stay under 64 MiB).
python3 -c "import sys, transformers as t; v = t.__version__; \
  tuple(map(int, v.split('.')[:2])) < (5, 23) and sys.exit(f'transformers {v} < 5.23: carry a newer wheel')" || exit 1
for w in $(seq "$WORKERS"); do
  python3 benchmarks/glue.py defaults head lrsearch equal --data-dir "$GLUE_DIR" --stop-at "$STOP" > "/tmp/worker$w.log" 2>&1 &
done
wait
grep -h "defaults/\|head/\|lrsearch/\|equal/" /tmp/worker*.log | grep -v ": start$" | tail -n 80
mkdir -p /tmp/pack/glue-gpu && cp -r /tmp/glue-gpu/. /tmp/pack/glue-gpu/
tar -C /tmp/pack -cf "$OUT/glue-gpu.tar" glue-gpu && echo "results: $(find /tmp/glue-gpu -name '*.json' | wc -l) files"
