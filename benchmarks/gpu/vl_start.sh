#!/usr/bin/env bash
# One start of the users' VL preset on a lent H200 (issue 15/16): vtune's Qwen3-VL-2B folder, dummy weights,
# --max-model-len 40960 --max-num-seqs 32 --max-num-batched-tokens 16384 --gpu-memory-utilization 0.95,
# then one chat request carrying a 640x480 PNG. The startup log lands in $OUT/vl-start.log for `vtune estimate
# --check-log`. Prerequisite: kit parts in /tmp/xfer. Usage: bash benchmarks/gpu/vl_start.sh [seconds to wait]
set -u
source benchmarks/gpu/kit_install.sh
mkdir -p "$OUT"
python3 -c "from pathlib import Path; from vtune._tiny_model import build_tiny_vl_model, check_vl_model
d = build_tiny_vl_model(Path('/tmp/vl/qwen3-vl-2b'), shape='qwen3-vl-2b'); print('problems:', check_vl_model(d) or 'none')"
cp /tmp/vl/qwen3-vl-2b/config.json "$OUT/vl-config.json"
t0=$(date +%s)
python3 -m vllm.entrypoints.cli.main serve /tmp/vl/qwen3-vl-2b --load-format dummy --max-model-len 40960 \
  --max-num-seqs 32 --max-num-batched-tokens 16384 --gpu-memory-utilization 0.95 --port 8011 > "$OUT/vl-start.log" 2>&1 &
pid=$!
for _ in $(seq "${1:-180}"); do
  grep -q "Application startup complete" "$OUT/vl-start.log" && break
  kill -0 $pid 2>/dev/null || break
  sleep 1
done
echo "ready after $(( $(date +%s) - t0 )) s (or gave up)"
python3 - <<'PY' > "$OUT/vl-request.txt" 2>&1
import base64, io, json, httpx
from PIL import Image
buf = io.BytesIO(); Image.new("RGB", (640, 480), (200, 30, 60)).save(buf, "PNG")
url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
body = {"model": "/tmp/vl/qwen3-vl-2b", "max_tokens": 16, "messages": [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in the picture?"}]}]}
r = httpx.post("http://127.0.0.1:8011/v1/chat/completions", json=body, timeout=60, trust_env=False)
print(r.status_code, json.dumps(r.json().get("usage")), str(r.json())[:300])
PY
cat "$OUT/vl-request.txt"
grep -E "Model loading took|Available KV cache|GPU KV cache size|Maximum concurrency|peak activation|CUDAGraph|Graph capturing|encoder" "$OUT/vl-start.log" | cut -c1-300 | tail -12
kill $pid 2>/dev/null
