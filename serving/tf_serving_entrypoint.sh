#!/bin/bash
# Entrypoint of the nann-tf TF Serving image (the top-level Dockerfile). Same contract as the
# stock image's /usr/bin/tf_serving_entrypoint.sh: gRPC on 8500, REST on 8501, the model
# $MODEL_BASE_PATH/$MODEL_NAME, and every argument of `docker run ... IMAGE <args>` appended
# (so --model_config_file, --enable_batching, ... go there). It adds:
#   - the XLA JIT flag the model's jit_compile scorer needs: --xla_cpu_compilation_enabled=true
#     on the CPU image, --xla_gpu_compilation_enabled=true (TF Serving >= 2.18) on the GPU one;
#     override with NANN_XLA_FLAGS (set it empty for a model exported with --no-xla);
#   - --enable_model_warmup=true (TF Serving's default, made explicit);
#   - --tensorflow_session_config_file=$NANN_SESSION_CONFIG_FILE (allow_soft_placement);
#     set NANN_SESSION_CONFIG_FILE empty to leave TF Serving's default session config.
set -euo pipefail

if [ -z "${NANN_XLA_FLAGS+set}" ]; then
  case "${NANN_SERVING_VARIANT:-}" in
    *gpu*) NANN_XLA_FLAGS="--xla_gpu_compilation_enabled=true" ;;
    *) NANN_XLA_FLAGS="--xla_cpu_compilation_enabled=true" ;;
  esac
fi
extra=()
if [ -n "${NANN_XLA_FLAGS}" ]; then
  read -r -a xla <<< "${NANN_XLA_FLAGS}"
  extra+=("${xla[@]}")
fi
extra+=("--enable_model_warmup=true")
if [ -n "${NANN_SESSION_CONFIG_FILE:-}" ]; then
  extra+=("--tensorflow_session_config_file=${NANN_SESSION_CONFIG_FILE}")
fi

exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" \
  "${extra[@]}" "$@"
