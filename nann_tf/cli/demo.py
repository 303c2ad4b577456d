"""``nann-tf demo``: the whole chain on generated data, served over gRPC and measured.

    nann-tf demo --workdir work/ [--config ci-synth] [--port 0] [--queries 200] [--fresh]

Runs :func:`nann_tf.demo.run_demo` (see there for the stages and the work directory's layout).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True,
                   help="directory for every artefact (created; reused by a later run)")
    p.add_argument("--config", default="ci-synth",
                   help="config name in configs/ or a .toml path (default ci-synth)")
    p.add_argument("--port", type=int, default=0,
                   help="gRPC port of the local server (default 0: a free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface the server binds (default 127.0.0.1)")
    p.add_argument("--queries", type=int, default=200,
                   help="test users to query over gRPC (default 200)")
    p.add_argument("--model-name", default="nann",
                   help="served model name; versions go to DIR/models/<name>/ (default nann)")
    p.add_argument("--fresh", action="store_true",
                   help="redo every stage instead of reusing up-to-date outputs")
    p.add_argument("--server-timeout", type=float, default=600.0,
                   help="seconds the server may take to load the model (default 600)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP to the demo: unwinds like Ctrl-C so the server is stopped."""


def run(args: argparse.Namespace) -> int:
    """``nann-tf demo``."""
    import logging

    from nann_tf.demo import run_demo

    # Before TensorFlow is first imported: keep the stage lines readable.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):
            raise _Terminated(signal.Signals(signum).name)

        for s in (signal.SIGTERM, signal.SIGHUP):
            handlers[s] = signal.signal(s, on_signal)
    try:
        run_demo(args.workdir, args.config, port=args.port, host=args.host,
                 queries=args.queries, model_name=args.model_name, fresh=args.fresh,
                 server_timeout_s=args.server_timeout)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return 0
