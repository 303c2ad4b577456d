# TensorFlow Serving with nann-tf's custom op linked in.
#
# tensorflow_model_server cannot load op libraries at run time, so the op is compiled into the
# server (tensorflow_serving/g3doc/custom_op.md): cc_ops/ is copied into the Serving source
# tree of the official -devel image, its cc_library (alwayslink = 1) is appended to
# SUPPORTED_TENSORFLOW_OPS in tensorflow_serving/model_servers/BUILD, the server is rebuilt
# with Bazel, and the binary replaces the one in the official runtime image.
#
#   CPU: docker build -t nann-tf-serving:2.21.0 .
#   GPU: docker build --build-arg TF_SERVING_VARIANT=-gpu -t nann-tf-serving:2.21.0-gpu .
#
# The build compiles TensorFlow: hours, and ~16 GB of RAM (BAZEL_RAM_MB caps Bazel's own
# estimate). A model exported with stock ops only (--visited tf) needs no build: use the stock
# tensorflow/serving image (serving/README.md).

# The release must match the TensorFlow that exported the model (TF 2.21 -> Serving 2.21.0).
ARG TF_SERVING_VERSION=2.21.0
# "" builds on tensorflow/serving:<v>-devel and runs on tensorflow/serving:<v>;
# "-gpu" builds on <v>-devel-gpu and runs on <v>-gpu.
ARG TF_SERVING_VARIANT=""

# ----------------------------------------------------------------------------- build stage
FROM tensorflow/serving:${TF_SERVING_VERSION}-devel${TF_SERVING_VARIANT} AS build
ARG TF_SERVING_VERSION
ARG TF_SERVING_VARIANT
# The op's cc_library: cc_ops/BUILD, copied to the root of the Serving workspace so that
# includes relative to the repository root ("cc_ops/lib/...") keep working.
ARG NANN_OPS_TARGET=//cc_ops:nann_ops
# The official images' build options: --config=release for CPU; the GPU devel image adds the
# CUDA toolchain config (Dockerfile.devel-gpu: --config=cuda_clang --copt=-fPIC).
ARG TF_SERVING_BUILD_OPTIONS="--config=release"
ARG TF_SERVING_GPU_BUILD_OPTIONS="--config=cuda_clang --copt=-fPIC"
ARG TF_SERVING_BAZEL_OPTIONS=""
ARG BAZEL_RAM_MB=16384

# The -devel images keep the Serving sources of their release in /tensorflow-serving.
WORKDIR /tensorflow-serving
COPY cc_ops/ /tensorflow-serving/cc_ops/
COPY serving/docker/patch_model_servers_build.py /tmp/patch_model_servers_build.py
RUN python3 /tmp/patch_model_servers_build.py \
        tensorflow_serving/model_servers/BUILD "${NANN_OPS_TARGET}" && \
    grep -n -A12 "^SUPPORTED_TENSORFLOW_OPS" tensorflow_serving/model_servers/BUILD

RUN set -eux; \
    gpu_options=""; \
    if [ "${TF_SERVING_VARIANT}" = "-gpu" ]; then \
        gpu_options="${TF_SERVING_GPU_BUILD_OPTIONS}"; \
        ln -sf /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1; \
        export LD_LIBRARY_PATH="/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH:-}"; \
    fi; \
    bazel build --color=no --curses=no --verbose_failures \
        --local_ram_resources="${BAZEL_RAM_MB}" \
        ${gpu_options} ${TF_SERVING_BAZEL_OPTIONS} ${TF_SERVING_BUILD_OPTIONS} \
        tensorflow_serving/model_servers:tensorflow_model_server; \
    cp bazel-bin/tensorflow_serving/model_servers/tensorflow_model_server \
        /usr/local/bin/tensorflow_model_server_nann; \
    /usr/local/bin/tensorflow_model_server_nann --version

# ----------------------------------------------------------------------------- runtime stage
FROM tensorflow/serving:${TF_SERVING_VERSION}${TF_SERVING_VARIANT}
ARG TF_SERVING_VERSION
ARG TF_SERVING_VARIANT
ARG NANN_OPS_TARGET=//cc_ops:nann_ops

LABEL org.opencontainers.image.title="nann-tf TensorFlow Serving" \
      org.opencontainers.image.description="tensorflow_model_server with the nann-tf op linked in" \
      nann.tf_serving.version="${TF_SERVING_VERSION}" \
      nann.tf_serving.variant="${TF_SERVING_VARIANT}" \
      nann.ops.target="${NANN_OPS_TARGET}"

COPY --from=build /usr/local/bin/tensorflow_model_server_nann /usr/bin/tensorflow_model_server
COPY serving/tf_serving_entrypoint.sh /usr/bin/nann_serving_entrypoint.sh
COPY serving/models.config serving/batching_parameters.txt serving/monitoring.config serving/session_config.pbtxt /etc/nann-serving/
RUN chmod 0755 /usr/bin/nann_serving_entrypoint.sh && mkdir -p /models

# Same variables as the stock image: the model is $MODEL_BASE_PATH/$MODEL_NAME.
ENV MODEL_NAME=nann \
    MODEL_BASE_PATH=/models \
    NANN_SERVING_VARIANT=${TF_SERVING_VARIANT} \
    NANN_SESSION_CONFIG_FILE=/etc/nann-serving/session_config.pbtxt

# 8500: gRPC (PredictionService, ModelService); 8501: REST and Prometheus metrics.
EXPOSE 8500
EXPOSE 8501

ENTRYPOINT ["/usr/bin/nann_serving_entrypoint.sh"]
