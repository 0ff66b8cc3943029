"""The command line: the only reader of argv and the environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from predictor import artifacts

if TYPE_CHECKING:
    from predictor.config import ModelConfig
    from predictor.serving.cpu import WorkerPlan

logger = logging.getLogger(__name__)

SUBCOMMANDS = ("serve", "demo", "demo-model", "import-mar", "bench")
DEFAULT_MODEL_DIR = "/mnt/models"
DEFAULT_DEMO_DIR = "demo-model"

_SERVE_EXAMPLES = """examples:
  predictor --model_name bert --model_dir /mnt/models
  python -m predictor serve --model_name bert --model_dir ./my-model --http_port 8080 --grpc_port 8081
  python -m predictor --model_name qa --model_dir ./qa --model_config ./model-config.yaml --model_version 2.0

The model directory holds a save_pretrained folder with tokenizer files and model-config.yaml
(index_to_name.json optional), a TorchScript file (save_mode: torchscript), or a TorchServe .mar.
Routes: /v1/models/NAME:predict|:explain, /v2/models/NAME/infer, gRPC v2 on --grpc_port,
TorchServe's /ping, /predictions/NAME[/VERSION], /explanations/NAME, OPTIONS /, and /metrics;
TorchServe's gRPC inference API on --ts_grpc_port (7070) and its management API (GET /models[/NAME])
on --ts_management_port (8082); --token_file turns on TorchServe's token authorization.
"""

_BENCH_PARSER_TEXT = {
    "usage": "%(prog)s [-h] [BENCHMARK FLAGS ...]",
    "description": "Run the project's benchmark (predictor/bench/run.py, see predictor/bench/README.md) "
                   "with its own flags.",
    "epilog": """examples:
  python -m predictor bench --quick                       # smoke run, about two minutes
  python -m predictor bench --out bench-results.json      # full run, 10 to 15 minutes
  python -m predictor bench --only limit,server --duration 10
  python -m predictor bench --wait-idle 300 --out results.json

Every flag after `bench` goes to the benchmark unchanged. Its load generator and plots need the
`bench` extra: pip install 'predictor[bench]'.
""",
}


def _bench_unavailable(missing: Sequence[str]) -> str:
    return (f"the benchmark needs {', '.join(repr(m) for m in missing)}, which is not installed: "
            "pip install 'predictor[bench]' (in a checkout: pip install -e '.[bench]')")


class BenchmarkUnavailableError(ImportError):
    """The benchmark cannot be imported here; the message says what to do."""


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value!r}")
    return number


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR,
                        help="model directory, as KServe's storage initializer leaves it (default: %(default)s)")
    parser.add_argument("--model_config", default=None,
                        help="model-config.yaml to use instead of the one in the model directory")
    parser.add_argument("--model_version", default=None,
                        help="served version (default: the .mar's, then modelVersion in the config, then 1.0)")
    # A .mar is unpacked before its model-config.yaml can be read, so its limits are flags.
    parser.add_argument("--mar_max_bytes", type=_positive_int, default=artifacts.ArchiveLimits.max_bytes,
                        help="a .mar may unpack to at most this many bytes (default: %(default)s)")
    parser.add_argument("--mar_max_entries", type=_positive_int, default=artifacts.ArchiveLimits.max_entries,
                        help="a .mar may hold at most this many files (default: %(default)s)")
    parser.add_argument("--mar_max_ratio", type=_positive_int, default=artifacts.ArchiveLimits.max_ratio,
                        help="a .mar member over 1 MiB may expand at most this many times "
                             "(default: %(default)s)")
    parser.add_argument("--load_retry_seconds", type=float, default=60.0,
                        help="keep retrying a failing model load this long, then exit 1 (default: %(default)s)")
    parser.add_argument("--grace_period", type=int, default=25,
                        help="seconds from SIGTERM to exit: drain delay, then in-flight and queued requests "
                             "finish; keep it a few seconds under the pod's terminationGracePeriodSeconds "
                             "(Kubernetes' default: 30) (default: %(default)s)")
    parser.add_argument("--drain_seconds", type=float, default=3.0,
                        help="after SIGTERM, stay not-ready with the port open this long (new work: 503, "
                             "Connection: close) so Kubernetes removes the pod from its endpoints and "
                             "requests still arriving are answered; part of --grace_period (default: %(default)s)")
    parser.add_argument("--model_workers", type=_positive_int, default=os.environ.get("PREDICTOR_MODEL_WORKERS"),
                        help="forward passes run side by side, sharing one copy of the weights (default: "
                             "one per core up to 4 cores, then one per 4 cores; one on a GPU or with "
                             "pt2.compile). minWorkers of model-config.yaml keeps TorchServe's meaning "
                             "(worker processes, each using every core) and selects this default")
    parser.add_argument("--intra_op_threads", type=_positive_int, default=None,
                        help="torch threads of each forward pass (default: the container's CPU limit "
                             "shared among the model workers)")
    parser.add_argument("--openmp_wait", choices=["passive", "short-spin"],
                        default=os.environ.get("PREDICTOR_OPENMP_WAIT", "short-spin"),
                        help="how idle torch threads wait: 'short-spin' spins briefly, then sleeps (a lone "
                             "request then gains from every core); 'passive' sleeps at once "
                             "(default: %(default)s)")
    parser.add_argument("--ts_grpc_port", type=_port, default=os.environ.get("PREDICTOR_TS_GRPC_PORT", "7070"),
                        help="port of TorchServe's gRPC inference API (inference.proto); 0 turns it off "
                             "(default: %(default)s)")
    parser.add_argument("--ts_management_port", type=_port,
                        default=os.environ.get("PREDICTOR_TS_MANAGEMENT_PORT", "8082"),
                        help="port of TorchServe's management API (GET /models, /models/NAME; also /metrics); "
                             "TorchServe's 8081 is kserve's gRPC port here; 0 turns it off (default: %(default)s)")
    parser.add_argument("--token_file", default=os.environ.get("PREDICTOR_TOKEN_FILE"),
                        help="turn on token authorization: TorchServe's key_file.json (its inference key guards "
                             "inference, its management key the management API) or a file holding one bare "
                             "token (guards both); or set PREDICTOR_TOKEN to the token (default: off)")
    parser.add_argument("--cors_origins", default=os.environ.get("PREDICTOR_CORS_ORIGINS", ""),
                        help="comma-separated origins allowed to call this server from a browser "
                             "(e.g. 'null' for the viewer opened from disk); off by default")
    parser.add_argument("--log_level", default=os.environ.get("PREDICTOR_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default: %(default)s)")
    # kserve's flag (on in kserve) is off here: a log line per request, and its timing middleware costs
    # the event loop CPU on every request (two getrusage calls and a route lookup).
    parser.set_defaults(enable_latency_logging=False)


def build_parser() -> argparse.ArgumentParser:
    """The predictor CLI: serve (the default), demo, demo-model."""
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(
        prog="predictor", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="KServe predictor for HuggingFace Transformers (TorchServe's generalized handler, "
                    "served by KServe). Without a subcommand, `serve` is assumed.",
        epilog=_SERVE_EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    serve = sub.add_parser("serve", parents=[kserve_parser], help="serve a model (default)",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_SERVE_EXAMPLES)
    _serve_flags(serve)
    demo = sub.add_parser("demo", parents=[kserve_parser], help="build the demo model if needed and serve it",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example:\n  python -m predictor demo --http_port 8080\n")
    _serve_flags(demo)
    demo.set_defaults(model_dir=DEFAULT_DEMO_DIR, model_name="demo")
    build = sub.add_parser("demo-model", help="build the demo sentiment classifier (MiniLM, fine-tuned locally)",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="example:\n  python -m predictor demo-model ./demo-model --seconds 60\n")
    build.add_argument("out_dir", type=Path)
    build.add_argument("--seconds", type=float, default=None, help="training time budget")
    build.add_argument("--seed", type=int, default=0)
    mar = sub.add_parser(
        "import-mar", help="turn a TorchServe .mar into a KServe model folder + inferenceservice.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m predictor import-mar bert_seq.mar ./bert-seq\n"
               "  python -m predictor import-mar bert_seq.mar ./bert-seq --tokenizer ./bert-tokenizer "
               "--storage_uri s3://models/bert-seq\n",
    )
    mar.add_argument("archive", type=Path, help="the .mar file (built for the generalized Transformers handler)")
    mar.add_argument("out_dir", type=Path, help="new folder for the model (upload it to your storage)")
    mar.add_argument("--tokenizer", type=Path, default=None,
                     help="local tokenizer folder, for archives that ship none (TorchServe fetched it from the hub)")
    mar.add_argument("--storage_uri", default=None, help="storageUri for the InferenceService (default: a placeholder)")
    mar.add_argument("--name", default=None, help="InferenceService name (default: the archive's model name)")
    mar.add_argument("--config_properties", type=Path, default=None,
                     help="TorchServe's config.properties: carries over workers, batch size and delay, response "
                          "timeout, queue size, request size and token authorization; warns for each other setting "
                          "(default: a config.properties inside the archive, if any)")
    # Listed for --help only: main() hands `bench` its argv before parsing (see bench()).
    _bench_arguments(sub.add_parser("bench", help="run the benchmark (needs the bench extra)", add_help=False,
                                    formatter_class=argparse.RawDescriptionHelpFormatter, **_BENCH_PARSER_TEXT))
    return parser


def _bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the benchmark's flags")
    parser.add_argument("flags", nargs=argparse.REMAINDER, metavar="BENCHMARK FLAGS",
                        help="the benchmark's own flags (below), passed through unchanged")
    return parser


class ClientErrorLogFilter(logging.Filter):
    """kserve logs every 400/404/501/503 it answers at ERROR with a traceback; they are the client's errors.

    Rewritten to one INFO line, as our own routes log them; 5xx keep ERROR and the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Downgrade records about client errors."""
        from kserve import errors

        client_errors = (errors.InvalidInput, errors.ModelNotFound, errors.ModelNotReady, NotImplementedError,
                         errors.ServerNotReady, errors.UnsupportedProtocol)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, client_errors) and record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "%s: %s", (type(exc).__name__, exc)
            record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str, latency_logging: bool = False) -> None:
    """One handler on the root logger; every record carries the request id it belongs to."""
    from predictor.serving.middleware import RequestIdLogFilter

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    kserve_logger = logging.getLogger("kserve")
    kserve_logger.handlers = [handler]  # kserve configures its own handlers when it finds none
    kserve_logger.addFilter(ClientErrorLogFilter())
    kserve_logger.propagate = False
    kserve_logger.setLevel(level)
    # kserve's per-request latency lines (--enable_latency_logging)
    logging.getLogger("kserve.trace").setLevel(level if latency_logging else logging.WARNING)


def serve(args: argparse.Namespace) -> int:
    """Serve one model until SIGTERM; exit 1 when the model never loads."""
    import kserve.model_server

    from predictor.config import TaskName
    from predictor.errors import ConfigError
    from predictor.handler import GeneralizedHandler
    from predictor.serving.auth import load_keys
    from predictor.serving.cpu import available_cores, configure_threads
    from predictor.serving.kserve_model import TransformersModel
    from predictor.serving.server import PredictorServer, ServeOptions

    if args.workers != 1:
        logger.error("--workers %d: one model per process; scale with replicas (KServe minReplicas), "
                     "or run forward passes side by side with --model_workers", args.workers)
        return 2
    model_dir = Path(args.model_dir)
    config_path = Path(args.model_config) if args.model_config else None
    cache_dir = artifacts.default_cache_dir(os.environ)
    try:  # a broken config is not transient: fail now, with the key and value named
        archive_limits = artifacts.ArchiveLimits(args.mar_max_bytes, args.mar_max_entries, args.mar_max_ratio)
        resolved = artifacts.resolve_model(model_dir, config_path, cache_dir, archive_limits)
    except ConfigError as exc:
        logger.error("cannot serve %s: %s", model_dir, exc)
        return 1
    try:
        keys = load_keys(args.token_file, dict(os.environ))
    except ConfigError as exc:
        logger.error("cannot serve %s: %s", model_dir, exc)
        return 1
    logger.info("token authorization: %s", "on" if keys is not None else "off")
    config = resolved.config
    mode = config.handler.mode
    plan = worker_plan(args, config, available_cores())
    configure_threads(plan)
    handler = GeneralizedHandler(model_dir, config_path=config_path, version=args.model_version,
                                 cache_dir=cache_dir, archive_limits=archive_limits, resolved=resolved)
    if fault := os.environ.get("PREDICTOR_FAULT_INJECTION"):
        from predictor.serving.faults import fault_hook

        handler.fault_hook = fault_hook(fault)
    generation = mode is TaskName.TEXT_GENERATION
    model = TransformersModel(args.model_name, handler, plan)
    options = ServeOptions(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                           grace_period_s=args.grace_period, load_retry_s=args.load_retry_seconds,
                           drain_s=max(0.0, min(args.drain_seconds, args.grace_period / 2)),
                           max_threads=args.max_threads, event_loop=args.event_loop,
                           latency_logging=bool(args.enable_latency_logging),
                           ts_grpc_port=args.ts_grpc_port, ts_management_port=args.ts_management_port,
                           keys=keys, max_body_bytes=config.limits.max_body_bytes,
                           cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()))
    return PredictorServer(model, options).run(kserve.model_server.app, generation)


def worker_plan(args: argparse.Namespace, config: ModelConfig, cores: int) -> WorkerPlan:
    """--model_workers (PREDICTOR_MODEL_WORKERS) forces a layout; minWorkers selects the default plan.

    TorchServe's minWorkers counts worker processes of the model, each a copy using every core; here
    one copy serves with every core busy whatever it says, so it must not pick a slower layout.
    """
    from predictor.devices import chooses_cuda
    from predictor.serving.cpu import plan_workers

    if config.min_workers is not None:
        logger.info("minWorkers: %d read with TorchServe's meaning (worker processes of one model, each "
                    "using every core): one copy of the model serves on every core with the default "
                    "plan; --model_workers forces a layout",
                    config.min_workers)
    return plan_workers(cores, workers=args.model_workers, threads=args.intra_op_threads,
                        gpu=chooses_cuda(config.handler.device), compiled=config.compile.enable)


def demo(args: argparse.Namespace) -> int:
    """Build the demo model once, print what to try, then serve it."""
    import subprocess

    from predictor.demo_files import demo_model_ready

    out = Path(args.model_dir)
    if not demo_model_ready(out):
        logger.info("building the demo model into %s (about a minute, once)", out)
        # In a child process: the server never imports the trainer or keeps its memory.
        built = subprocess.run([sys.executable, "-m", "predictor", "demo-model", str(out)], check=False)
        if built.returncode != 0:
            logger.error("cannot serve the demo: building it into %s failed (exit %d)", out, built.returncode)
            return built.returncode
    base = f"http://localhost:{args.http_port}"
    logger.info(
        "once ready, try:\n  curl %s/ping\n  curl %s/predictions/%s -d 'What a wonderful, friendly place.'\n"
        "  curl %s/v1/models/%s:predict -H 'Content-Type: application/json' "
        "-d '{\"instances\": [\"The service was slow and rude.\"]}'\n"
        "  curl %s/v1/models/%s:explain -H 'Content-Type: application/json' "
        "-d '{\"instances\": [\"I loved this film\"]}'",
        base, base, args.model_name, base, args.model_name, base, args.model_name)
    return serve(args)


def build_demo(args: argparse.Namespace) -> int:
    """Build the demo model into a directory."""
    from predictor.demo import DEFAULT_SECONDS, build_demo_model

    build_demo_model(args.out_dir, seconds=args.seconds or DEFAULT_SECONDS, seed=args.seed)
    return 0


def import_mar(args: argparse.Namespace) -> int:
    """Convert a .mar; a clear message and exit 1 when something is missing."""
    from predictor.errors import ConfigError
    from predictor.mar import import_mar as convert

    try:
        result = convert(args.archive, args.out_dir, tokenizer=args.tokenizer, storage_uri=args.storage_uri,
                         name=args.name, config_properties=args.config_properties)
    except ConfigError as exc:
        logger.error("import-mar: %s", exc)
        return 1
    logger.info("model folder: %s\ninferenceservice: %s", result.model_dir, result.inference_service)
    return 0


def load_benchmark() -> ModuleType:
    """predictor.bench.run, imported only now: serving never loads the benchmark or its dependencies.

    Raises:
        BenchmarkUnavailableError: a dependency of the `bench` extra is not installed.
    """
    import importlib

    from predictor.bench import missing_dependencies

    if missing := missing_dependencies():
        raise BenchmarkUnavailableError(_bench_unavailable(missing))
    try:
        return importlib.import_module("predictor.bench.run")
    except ModuleNotFoundError as exc:  # one the list above does not name
        if exc.name is None or exc.name.split(".")[0] == "predictor":
            raise
        raise BenchmarkUnavailableError(_bench_unavailable([exc.name])) from exc


def bench(argv: Sequence[str]) -> int:
    """Run the benchmark with its own flags; 2 and one line on stderr where it cannot be imported."""
    wants_help = argv[:1] in (["-h"], ["--help"])
    if wants_help:
        _bench_arguments(argparse.ArgumentParser(
            prog="predictor bench", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
            **_BENCH_PARSER_TEXT)).print_help()
    try:
        run = load_benchmark()
    except BenchmarkUnavailableError as exc:
        # A usage error, reported the way argparse reports them: the benchmark sets up its own logging.
        sys.stderr.write(f"predictor bench: {exc}\n")
        return 0 if wants_help else 2
    if wants_help:
        sys.stdout.write("\nthe benchmark's flags:\n\n" + run.build_parser().format_help())
        return 0
    return int(run.main(list(argv)))


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": serve, "demo": demo, "demo-model": build_demo, "import-mar": import_mar,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `predictor` and `python -m predictor`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # before the serving set-up below, which would change what the benchmark measures
        return bench(argv[1:])
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]  # KServe runtimes call `python -m predictor --model_name ... --model_dir ...`
    artifacts.offline_environment(os.environ)  # before anything imports transformers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from predictor.serving.cpu import openmp_wait, openmp_waiting

    try:
        openmp_wait(getattr(args, "openmp_wait", "short-spin"))  # before anything imports torch
    except ValueError as exc:  # PREDICTOR_OPENMP_WAIT set to something else
        sys.stderr.write(f"predictor: {exc}\n")
        return 2
    configure_logging(getattr(args, "log_level", "INFO"), bool(getattr(args, "enable_latency_logging", False)))
    if hasattr(args, "openmp_wait"):
        logger.info("idle OpenMP threads: %s", openmp_waiting())
    return _COMMANDS[args.command](args)
