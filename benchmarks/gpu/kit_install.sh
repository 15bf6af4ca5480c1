#!/usr/bin/env bash
# Installs the offline vLLM 0.26.0 kit on a lent GPU machine (see ../shared/gpu/README.md).
# Usage (on the device, parts already copied to /tmp/xfer): source benchmarks/gpu/kit_install.sh
set -e
if [ ! -d /tmp/site/vllm ]; then
  (cd /tmp/xfer && sha256sum -c --ignore-missing SHA256SUMS >/dev/null && cat part-00 part-01 > /tmp/kit.tar.xz)
  mkdir -p /tmp/kitx && tar -xJf /tmp/kit.tar.xz -C /tmp/kitx
  PIP_CONFIG_FILE=/dev/null python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/kitx/kit/*.whl
  PIP_CONFIG_FILE=/dev/null python3 -m pip install -q --no-index --no-deps --target /tmp/site-fb /tmp/kitx/kit/fallback/*.whl
fi
if [ -f /tmp/xfer/addon-moe.tar.xz ] && [ ! -f /tmp/site/vllm/.moe-addon ]; then
  tar -xJf /tmp/xfer/addon-moe.tar.xz -C /tmp/site/vllm/ && touch /tmp/site/vllm/.moe-addon
fi
export PYTHONPATH=/tmp/site-fb:/tmp/site:$PWD PATH=/tmp/site/bin:$PATH VLLM_USE_FLASHINFER_SAMPLER=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
set +e
