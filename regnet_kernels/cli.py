"""``python -m regnet_kernels {info,check,bench,sweep,pick,aot}``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    from regnet_kernels.info import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2, default=str) if args.json else format_environment(env))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from regnet_kernels.backends import BackendUnavailableError
    from regnet_kernels.selfcheck import run_selfcheck

    try:
        return run_selfcheck(backend=args.backend, verbose=True)
    except BackendUnavailableError as e:  # asked for a backend this machine cannot run: a user error
        reason = str(e).splitlines()[0]
        raise SystemExit(f"check: {reason} (`python -m regnet_kernels info` lists every backend and why)") from None


def _use_interpreter_without_gpu(argv: Optional[List[str]]) -> None:
    """The command line, not the library, turns the Triton interpreter on for a CPU-only run.

    Triton fixes the mode of every ``@triton.jit`` function when it is decorated, its own standard library
    included, and importing this package already imports Triton (through ``torch._dynamo``). So when the
    variable is unset on a machine without a GPU, a command-line run (``argv`` None) starts itself again
    with ``TRITON_INTERPRET=1``; a call from Python only sets the variable, for kernels not yet decorated.
    """
    import os

    import torch

    if torch.cuda.is_available() or "TRITON_INTERPRET" in os.environ:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    if argv is None and "triton" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "regnet_kernels"] + sys.argv[1:])


def _cmd_bench(args: argparse.Namespace) -> int:
    from regnet_kernels.benchmark.report import main as bench_main

    _use_interpreter_without_gpu(getattr(args, "argv", None))

    return bench_main(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from regnet_kernels.benchmark.sweep import sweep_main

    return sweep_main(args)


def _cmd_pick(args: argparse.Namespace) -> int:
    from regnet_kernels.benchmark.pareto import pick_main

    return pick_main(args)


def _cmd_aot(args: argparse.Namespace) -> int:
    from regnet_kernels.benchmark.aot import main as aot_main

    return aot_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m regnet_kernels", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, GPUs, and which backends can run here (and why not)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    check = sub.add_parser("check", help="quick numerics self-check of the fused ops against eager")
    check.add_argument("--backend", default="auto", choices=["auto", "eager", "triton", "cuda"])
    check.set_defaults(func=_cmd_check)

    bench = sub.add_parser("bench", help="benchmark and numerics report (the main job)")
    from regnet_kernels.benchmark.report import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    from regnet_kernels.benchmark.pareto import add_pick_arguments
    from regnet_kernels.benchmark.sweep import add_sweep_arguments

    sweep = sub.add_parser("sweep", help="time every zoo variant here; JSON + accuracy/latency Pareto chart")
    add_sweep_arguments(sweep)
    sweep.set_defaults(func=_cmd_sweep)

    pick = sub.add_parser("pick", help="the most accurate variant within a latency (and memory) budget here")
    add_pick_arguments(pick)
    pick.set_defaults(func=_cmd_pick)

    from regnet_kernels.benchmark.aot import add_arguments as add_aot_arguments

    aot = sub.add_parser("aot", help="compile every planned Triton kernel for sm_90/sm_80 (no GPU needed); "
                                     "registers, spills, tensor-core use and a per-launch performance model")
    add_aot_arguments(aot)
    aot.set_defaults(func=_cmd_aot)
    return p


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """argparse errors as one line (no usage block), for ``parser`` and its subcommands."""

    def error(message: str, prog: str = parser.prog) -> None:
        sys.stderr.write(f"{prog}: error: {message} (see {prog} --help)\n")
        sys.exit(2)

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _one_line_errors(sub)


def main(argv: Optional[List[str]] = None) -> int:
    """Run a subcommand; user errors exit non-zero with a one-line message, never a traceback."""
    parser = build_parser()
    _one_line_errors(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    from regnet_kernels import backends

    try:  # a bad REGNET_KERNELS_BACKEND would otherwise surface as a traceback deep inside an op
        backends.requested()
    except ValueError as e:
        print(f"python -m regnet_kernels {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
