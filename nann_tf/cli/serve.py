"""``nann-tf serve``: the local development gRPC server (TF Serving's API and flag names).

No TensorFlow import at module level: ``nann-tf --help`` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import textwrap
import threading

__all__ = ["add_arguments", "run", "IGNORED_TF_SERVING_FLAGS"]

log = logging.getLogger("nann_tf.serve")

DESCRIPTION = """\
Development stand-in for TensorFlow Serving's tensorflow_model_server: the same gRPC API
(PredictionService.Predict / GetModelMetadata, ModelService.GetModelStatus), the same model
directory layout, version policies, polling, hot swap and warm-up, and the same flag names for
what it implements. It runs models in-process with the TF1 session loader, as TF Serving does.
PRODUCTION SERVING IS TENSORFLOW SERVING (docker image built from the top-level Dockerfile, or
the stock tensorflow/serving image for models exported with stock ops only): see
serving/README.md. TF Serving flags this server does not implement are accepted and ignored
with a warning."""

# TF Serving flags (tensorflow_serving/model_servers/main.cc) accepted and ignored.
IGNORED_TF_SERVING_FLAGS = (
    "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching", "batching_parameters_file",
    "allow_version_labels_for_unavailable_models", "model_config_file_poll_wait_seconds",
    "num_load_threads", "num_unload_threads", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "use_alts_credentials", "grpc_channel_arguments",
    "monitoring_config_file", "enable_signature_method_name_check",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model",
    "num_tflite_pools", "num_tflite_interpreters_per_pool", "enable_profiler",
    "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "enable_per_model_batching_parameters",
    "enable_serialization_as_tensor_content", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled",
)


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "t", "yes", "y"):
        return True
    if value in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_bool(parser, name: str, default: bool, help: str) -> None:
    parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default,
                        metavar="BOOL", help=help + f" (default {str(default).lower()})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``nann-tf serve``'s flags (TF Serving's names, ``--flag=value`` style)."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("model server flags (same meaning as tensorflow_model_server)")
    # Numeric flags: (name, metavar, type, default, help).
    numbers = [
        ("port", "N", int, 8500, "gRPC port; 0 picks a free one (default 8500)"),
        ("num_request_iterations_for_warmup", "N", int, 1,
         "times each warm-up record runs (default 1)"),
        ("file_system_poll_wait_seconds", "S", float, 1.0,
         "seconds between polls of the base paths for new versions; 0 = only at start "
         "(default 1)"),
        ("max_num_load_retries", "N", int, 5, "retries of a version that failed to load "
                                              "(default 5)"),
        ("load_retry_interval_micros", "US", int, 60_000_000,
         "microseconds between load retries (default 60000000)"),
        ("tensorflow_intra_op_parallelism", "N", int, 0,
         "intra-op threads per session (0 = TensorFlow's default)"),
        ("tensorflow_inter_op_parallelism", "N", int, 0,
         "inter-op threads per session (0 = TensorFlow's default)"),
        ("grpc_max_threads", "N", int, 16,
         "gRPC worker threads, i.e. concurrent requests (default 16)"),
    ]
    for name, metavar, kind, default, helptext in numbers:
        g.add_argument(f"--{name}", metavar=metavar, type=kind, default=default, help=helptext)
    g.add_argument("--model_name", metavar="NAME", default="default",
                   help="name of the model (ignored with --model_config_file)")
    g.add_argument("--model_base_path", metavar="DIR", default="",
                   help="directory of numbered version directories of the model")
    g.add_argument("--model_config_file", metavar="FILE", default="",
                   help="text-format ModelServerConfig (several models, version policies, "
                   "labels); overrides --model_name/--model_base_path")
    _flag_bool(g, "enable_model_warmup", True,
               "replay assets.extra/tf_serving_warmup_requests before a version serves")
    g.add_argument("--saved_model_tags", metavar="TAGS", default="serve",
                   help="comma-separated MetaGraph tags to load (default serve)")
    g.add_argument("--tensorflow_session_config_file", metavar="FILE", default="",
                   help="text-format ConfigProto for every session (soft placement is "
                   "always on here)")
    g.add_argument("--version", action="store_true",
                   help="print the version and exit")
    own = parser.add_argument_group("flags of this development server")
    own.add_argument("--host", metavar="HOST", default="0.0.0.0",
                     help="interface to bind (default 0.0.0.0; 127.0.0.1 for loopback only)")
    own.add_argument("--max_batch_size", metavar="N", type=int, default=1024,
                     help="refuse requests with more rows (INVALID_ARGUMENT; default 1024)")
    own.add_argument("--shutdown_grace_seconds", metavar="S", type=float, default=30.0,
                     help="on SIGTERM/SIGINT, how long in-flight requests may finish "
                     "(default 30)")
    ign = parser.add_argument_group(
        "accepted for compatibility with tensorflow_model_server command lines, ignored "
        "with a warning")
    for name in IGNORED_TF_SERVING_FLAGS:
        ign.add_argument(f"--{name}", nargs="?", const="true", default=None,
                         metavar="VALUE", help=argparse.SUPPRESS)
    ign.description = textwrap.fill("--" + ", --".join(IGNORED_TF_SERVING_FLAGS), width=92)


def _session_config(args):
    import tensorflow as tf
    from google.protobuf import text_format

    from nann_tf.cli import CliError

    config = tf.compat.v1.ConfigProto()
    if args.tensorflow_session_config_file:
        try:
            with open(args.tensorflow_session_config_file, encoding="utf-8") as f:
                text_format.Parse(f.read(), config)
        except (OSError, text_format.ParseError) as e:
            raise CliError(f"--tensorflow_session_config_file="
                           f"{args.tensorflow_session_config_file}: not a readable text-format "
                           f"ConfigProto: {e}") from e
    if args.tensorflow_intra_op_parallelism > 0:
        config.intra_op_parallelism_threads = args.tensorflow_intra_op_parallelism
    if args.tensorflow_inter_op_parallelism > 0:
        config.inter_op_parallelism_threads = args.tensorflow_inter_op_parallelism
    config.allow_soft_placement = True
    return config


def run(args: argparse.Namespace) -> int:
    """Runs the server until SIGTERM/SIGINT; returns 0 after a clean shutdown."""
    from nann_tf.cli import CliError

    if args.version:
        import tensorflow as tf

        import nann_tf

        print(f"nann-tf development ModelServer {nann_tf.__version__} (stand-in for "
              f"tensorflow_model_server)\nTensorFlow Library: {tf.__version__}")
        return 0
    for name in IGNORED_TF_SERVING_FLAGS:
        value = getattr(args, name)
        if value is not None:
            log.warning("--%s=%s is a TF Serving flag this development server does not "
                        "implement; ignored", name, value)
    for name in ("port", "max_batch_size", "grpc_max_threads",
                 "num_request_iterations_for_warmup"):
        value = getattr(args, name)
        if value < (0 if name == "port" else 1) or (name == "port" and value > 65535):
            raise CliError(f"--{name}={value} is out of range")
    if args.max_num_load_retries < 0 or args.load_retry_interval_micros < 0:
        raise CliError("--max_num_load_retries and --load_retry_interval_micros must be >= 0")

    from nann_tf.serving.model_config import (ModelConfigError, ServedModelConfig,
                                              ServerOptions, load_model_config_file)
    from nann_tf.serving.server import ModelServer

    try:
        if args.model_config_file:
            if args.model_base_path:
                log.warning("--model_config_file is set: --model_name/--model_base_path are "
                            "ignored")
            configs = load_model_config_file(args.model_config_file)
        elif args.model_base_path:
            configs = [ServedModelConfig(args.model_name, os.path.abspath(args.model_base_path))]
        else:
            raise CliError("give --model_base_path (and --model_name) or --model_config_file")
    except ModelConfigError as e:
        raise CliError(str(e)) from e
    tags = tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    if not tags:
        raise CliError("--saved_model_tags is empty")
    options = ServerOptions(
        host=args.host, port=args.port, max_batch_size=args.max_batch_size,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_s=args.load_retry_interval_micros / 1e6,
        grpc_max_threads=args.grpc_max_threads, saved_model_tags=tags,
        session_config=_session_config(args))
    server = ModelServer(configs, options)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        if len(received) > 1:  # a second signal: do not wait for the graceful stop
            log.warning("received %s again: exiting without waiting", received[-1])
            os._exit(1)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except (ModelConfigError, OSError) as e:
            raise CliError(f"Failed to start server: {e}") from e
        print(f"nann-tf serve: gRPC ModelServer listening on {options.host}:{server.port} "
              f"(models: {', '.join(c.name for c in configs)})", flush=True)
        while not stop.wait(0.5):
            pass
        log.info("received %s: stopping (in-flight requests get up to %.0f s)", received[0],
                 args.shutdown_grace_seconds)
        server.stop(args.shutdown_grace_seconds)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
