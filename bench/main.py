"""
C{python -m bench}: run the workloads against mailappliance and its peers,
interleaved, and print the figures, the ratios and the issue's targets.

For each workload, each of the C{--reps} repetitions runs every target once,
in an order rotated from one repetition to the next (so no target always
runs right after the same other one), each on a fresh instance in a fresh
folder under the work folder. Nothing is deleted while the benchmark runs
(file creation in a folder that just saw many deletions is slower on ext4);
the work folder is removed at the end unless C{--keep}.

Use C{bench/run}, which installs Postfix and Dovecot first and stops
whatever this leaves behind; run this module directly only when they are
installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.dovecot import Dovecot
from bench.floor import measure_floor
from bench.postfix import Postfix
from bench.processes import BenchError, Registry
from bench.profiling import Profiler
from bench.report import Series, summary_table, workload_block
from bench.targets import Mailappliance, TwistedReference
from bench.workloads import WORKLOADS, Sink, Workload, measure

ALL_TARGETS = ("mailappliance", "postfix", "dovecot", "twisted-nofsync")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS),
                        help="comma-separated, from W1,W2,W3,W4,W5,R20 (default: all)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS),
                        help=f"comma-separated, from {','.join(ALL_TARGETS)} (default: all)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each workload (default: 3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply message counts (e.g. 0.1 for a quick trial; figures are then not the issue's)")
    parser.add_argument("--workdir", help="folder for every run (default: a new one under $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs our server")
    parser.add_argument("--profile", metavar="DIR",
                        help="attach py-spy to our server in every run; write stacks and summaries to DIR")
    parser.add_argument("--profile-all-threads", action="store_true",
                        help="sample every thread not idle (time in fsync included), not only the GIL holder")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy program")
    return parser.parse_args(argv)


def _versions() -> str:
    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    import twisted

    postfix = first_line(["postconf", "-d", "-h", "mail_version"])
    dovecot = first_line(["dovecot", "--version"])
    return (f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
            f"Twisted {twisted.__version__}, Postfix {postfix}, Dovecot {dovecot}")


def _spread_over_block_groups(folder: str) -> None:
    """
    Mark the work folder as a top of directory hierarchies for ext4's
    Orlov allocator (C{chattr +T}), so that each run's folder goes to a
    block group of its own rather than the one where the previous runs
    just created (and, for Postfix's queue, freed) thousands of inodes.
    Best effort: other file systems ignore or refuse it.
    """
    try:
        subprocess.run(["chattr", "+T", folder], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _scaled(workload: Workload, scale: float) -> Workload:
    if scale == 1.0:
        return workload
    from dataclasses import replace

    return replace(workload, count=max(1, round(workload.count * scale)))


def main(argv: list[str] | None = None) -> None:
    arguments = _arguments(argv)
    if os.geteuid() != 0:
        sys.exit("python -m bench: run as root (Postfix and Dovecot instances are started and stopped here)")
    keys = [k.strip() for k in arguments.workloads.split(",") if k.strip()]
    known = {w.key: w for w in WORKLOADS}
    unknown = [k for k in keys if k not in known]
    chosen_targets = {t.strip() for t in arguments.targets.split(",") if t.strip()}
    if unknown or not chosen_targets <= set(ALL_TARGETS):
        sys.exit(f"python -m bench: unknown workload or target: {unknown or sorted(chosen_targets - set(ALL_TARGETS))}")
    workloads = [_scaled(known[k], arguments.scale) for k in keys]

    workdir = arguments.workdir or tempfile.mkdtemp(prefix="mailbench.")
    os.makedirs(workdir, exist_ok=True)
    # Postfix's and Dovecot's unprivileged processes must reach their
    # folders inside it.
    os.chmod(workdir, 0o755)
    registry = Registry(workdir)
    _spread_over_block_groups(workdir)
    # SIGTERM/SIGHUP end the run through the finally below, like Ctrl-C.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)

    print(f"mailappliance benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(_versions())
    print(f"work folder {workdir}; {arguments.reps} repetitions, interleaved; figures are median [min-max]")
    if arguments.scale != 1.0:
        print(f"counts scaled by {arguments.scale:g}: a trial run, not the issue's workloads")
    print(f"disk floor: {measure_floor(os.path.join(workdir, 'floor')).describe()}")
    sys.stdout.flush()

    sink = None
    profiler = None
    if arguments.profile:
        profiler = Profiler(arguments.py_spy, os.path.abspath(arguments.profile), gil=not arguments.profile_all_threads)
    results: dict[str, dict[str, Series]] = {}
    try:
        if any(w.kind == "relay" for w in workloads):
            sink = Sink(registry, arguments.python).start()
        sink_port = sink.port if sink is not None else None
        factories = {
            "mailappliance": lambda: Mailappliance(registry, arguments.python, sink_port),
            "postfix": lambda: Postfix(registry, sink_port),
            "dovecot": lambda: Dovecot(registry),
            "twisted-nofsync": lambda: TwistedReference(registry, arguments.python),
        }
        for workload in workloads:
            names = [n for n in workload.targets if n in chosen_targets]
            series = results[workload.key] = {n: Series(workload, n, []) for n in names}
            for rep in range(arguments.reps):
                order = names[rep % len(names):] + names[: rep % len(names)] if names else []
                for name in order:
                    run_dir = os.path.join(workdir, f"{workload.key}-r{rep + 1}-{name}")
                    result = measure(workload, factories[name](), run_dir, sink, profiler)
                    if workload.kind == "large":
                        result.value = result.peak_rss_mb or 0.0
                    series[name].runs.append(result)
                    rss = f", peak RSS {result.peak_rss_mb:.1f} MB" if result.peak_rss_mb is not None else ""
                    cpu = f"; {result.cpu.describe()}" if result.cpu is not None else ""
                    if result.create_us is not None:
                        cpu += f"; file creation {result.create_us:.0f} us"
                    print(f"  {workload.key} run {rep + 1} {name:<16} {result.value:10.2f} {workload.unit}"
                          f" ({result.seconds:.2f}s{rss}{cpu})")
                    sys.stdout.flush()
    except BenchError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        _report(workloads, results, profiler)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if sink is not None:
            sink.stop()
        if not arguments.keep and not arguments.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif arguments.keep:
            print(f"work folder kept: {workdir}")
    _report(workloads, results, profiler)


def _report(workloads: list[Workload], results: dict[str, dict[str, Series]], profiler: Profiler | None) -> None:
    done = [w for w in workloads if results.get(w.key) and all(s.runs for s in results[w.key].values())]
    if not done:
        return
    print()
    for workload in done:
        print("\n".join(workload_block(workload, results[workload.key])))
    print()
    print("\n".join(summary_table(results, done)))
    if profiler is not None:
        for key, name, text in profiler.summaries:
            print(f"\n--- profile of our server, {name} ---")
            print(text)
