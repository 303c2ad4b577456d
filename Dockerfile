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
# The op's cc_library in cc_ops/BUILD; cc_ops/ is copied to the root of the Serving workspace,
# so the package is //cc_ops. Its sources include "lib/..." relative to the package
# (includes = ["."] on nann_core), so the package path does not matter to them.
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
COPY serving/docker/patch_model_servers_build.py serving/docker/check_build.py /tmp/
RUN python3 /tmp/patch_model_servers_build.py \
        tensorflow_serving/model_servers/BUILD "${NANN_OPS_TARGET}" && \
    grep -n -A12 "^SUPPORTED_TENSORFLOW_OPS" tensorflow_serving/model_servers/BUILD

# 1. Fetch and analyse only (--nobuild), then check that the Serving tree builds against the
#    TensorFlow minor the models are exported with: the -devel images default to Serving's
#    master branch, so a tag can hold other source (tensorflow/serving#2153); fail in minutes,
#    not after hours of compiling.
# 2. Build the server.
# 3. Prove the op is in it (every REGISTER_OP name of cc_ops/ops is in the binary) and that
#    `--version` reports the expected TensorFlow Library; otherwise the build fails.
RUN set -eux; \
    gpu_options=""; \
    if [ "${TF_SERVING_VARIANT}" = "-gpu" ]; then \
        gpu_options="${TF_SERVING_GPU_BUILD_OPTIONS}"; \
        ln -sf /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1; \
        export LD_LIBRARY_PATH="/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH:-}"; \
    fi; \
    bazel_flags="--color=no --curses=no --verbose_failures \
        --local_ram_resources=${BAZEL_RAM_MB} \
        ${gpu_options} ${TF_SERVING_BAZEL_OPTIONS} ${TF_SERVING_BUILD_OPTIONS}"; \
    bazel build ${bazel_flags} --nobuild \
        tensorflow_serving/model_servers:tensorflow_model_server; \
    python3 /tmp/check_build.py versions /tensorflow-serving \
        "$(bazel info output_base)/external/org_tensorflow" "${TF_SERVING_VERSION}"; \
    bazel build ${bazel_flags} tensorflow_serving/model_servers:tensorflow_model_server; \
    cp bazel-bin/tensorflow_serving/model_servers/tensorflow_model_server \
        /usr/local/bin/tensorflow_model_server_nann; \
    python3 /tmp/check_build.py server /usr/local/bin/tensorflow_model_server_nann \
        /tensorflow-serving/cc_ops/ops "${TF_SERVING_VERSION}"

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
