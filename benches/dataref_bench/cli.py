"""The command line and the run as a whole: parses the arguments, prepares the work
directory, tools, data and emulator, runs the chosen cases in order (each in its module:
transfers for 1-4 and 10, mounts for 5-9) and prints the report. `scripts/bench` calls main().
"""

import argparse
import atexit
import os
import shutil
import tempfile
import time

from . import checkpoint, mounts, procs, report, scale, transfers
from .azurite import Azurite, account_sas, free_port
from .cases import CASES, title
from .context import Bench
from .procs import MIB, die, log
from .tools import Tools, ensure_tools

DESCRIPTION = ("Benchmarks dataref's Azure Blob transfers and its mount against rclone and "
               "curl, in one run.")


def parser():
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")),
                    help="rounds per case; the median is reported (default 3, or $BENCH_ROUNDS)")
    ap.add_argument("--cases", default=",".join(map(str, CASES)),
                    help="which cases, e.g. 1,3 or 5,6,7,8,9 or 1,3,4,10 (default: all)")
    ap.add_argument("--workdir", help="where data and targets live (default: a temp dir)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/dataref as is")
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument("--small-count", type=int, default=2000)
    ap.add_argument("--small-kib", type=int, default=64)
    ap.add_argument("--wide", type=int, default=10000, help="entries of the folder of cases 8-9")
    ap.add_argument("--dataref", help="measure this dataref binary (implies --no-build)")
    ap.add_argument("--max-wait", type=float, default=120,
                    help="before each run, wait up to this many seconds for other processes "
                         "to go quiet (default 120)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--scale", metavar="N,N,...",
                    help="instead of the cases: the scale study on a local datastore, e.g. "
                         "1000,10000,100000 (download, mount `find` and `ls -lR`)")
    ap.add_argument("--scale-on", choices=scale.STORES, default="local",
                    help="where the scale study's files are: a local datastore (default) or "
                         "Azurite (preloaded, untimed)")
    ap.add_argument("--checkpoint", action="store_true",
                    help="instead of the cases: a --large-mib checkpoint saved into a folder "
                         "synced continuously (time blocked, commit to durable)")
    return ap


def parse_args(argv=None):
    """(arguments, the cases to run in the order given); exits on a case outside 1..10."""
    args = parser().parse_args(argv)
    cases = [int(c) for c in args.cases.split(",") if c.strip()]
    if args.dataref:
        args.no_build = True
    if any(c not in CASES for c in cases) or args.rounds < 1:
        die(f"--cases takes 1..{max(CASES)}, --rounds at least 1")
    if args.scale:
        try:
            args.scale = scale.parse_sizes(args.scale)
        except ValueError as e:
            die(str(e))
    return args, cases


def disk_needed(args, with_mounts):
    """Bytes the work directory needs: the sources, one large download at a time, every small
    download tree (kept until the end), and for the mount cases dataref's disk cache of the
    large file."""
    small_bytes = args.small_count * args.small_kib * 1024
    return ((3 if with_mounts else 2) * args.large_mib * MIB
            + (2 + 3 * args.rounds) * small_bytes + 512 * MIB)


def main(argv=None):
    procs.install_handlers()
    args, cases = parse_args(argv)
    mount_cases = [c for c in cases if CASES[c][1] == "mount"]
    mount_kinds = sorted({CASES[c][2] for c in mount_cases})

    work = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="dataref-bench.")
    os.makedirs(work, exist_ok=True)
    if not args.keep and not args.workdir:
        atexit.register(shutil.rmtree, work, True)
    atexit.register(mounts.cleanup_mounts)  # before the work directory goes
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    need = disk_needed(args, bool(mount_cases))
    st = os.statvfs(work)
    if st.f_bavail * st.f_frsize < need:
        die(f"{work}: {st.f_bavail * st.f_frsize / MIB:.0f} MiB free, {need / MIB:.0f} needed "
            "(use --workdir)")

    dataref, azurite_bin, versions = ensure_tools(args, bool(mount_cases) or bool(args.scale))
    if args.scale:
        rows = scale.run_scale(dataref, work, args.scale, args.rounds, args.max_wait,
                               args.scale_on, azurite_bin)
        print(scale.title(args.scale_on, args.rounds) + "\n")
        print(scale.table(rows))
        return
    if args.checkpoint:
        azurite = Azurite(azurite_bin, free_port(), os.path.join(work, "azurite"), account_sas())
        atexit.register(azurite.stop)
        azurite.start()
        rows = checkpoint.run_checkpoint(azurite, Tools(dataref, work, azurite.endpoint), work,
                                         args.large_mib, args.rounds, args.max_wait)
        print(f"## Checkpoints: medians of {args.rounds} round(s)\n")
        print(checkpoint.table(rows, args.large_mib))
        return
    bench = Bench(args, work)
    bench.make_data("wide" in mount_kinds)
    azurite = bench.azurite = Azurite(azurite_bin, free_port(), os.path.join(work, "azurite"),
                                      account_sas())
    atexit.register(azurite.stop)
    azurite.start()
    log(f"Azurite pid {azurite.pid} on {azurite.endpoint}; work dir {work}")
    bench.tools = Tools(dataref, work, azurite.endpoint)

    started = time.monotonic()
    for case in cases:
        _, direction, kind = CASES[case]
        log(f"case {case}: "
            + title(case, args.large_mib, args.small_count, args.small_kib, args.wide))
        bench.results.setdefault(case, {})
        if direction == "stamped":
            transfers.run_stamped(bench, case)
        elif direction != "mount":
            transfers.run_case(bench, case, direction, kind)
        elif case == 9 and 8 in cases:
            log(" measured with case 8 (the second listing of each of its mounts)")
        else:
            mounts.run_case(bench, case, kind)
    azurite.stop()
    elapsed = time.monotonic() - started
    shutil.rmtree(bench.out_dir, ignore_errors=True)

    print(report.render(bench.results, cases, args, bench.sizes, versions, elapsed,
                        bench.md5_notes, os.environ, os.cpu_count(), bench.stamp_notes))
    if args.json:
        report.write_json(args.json, versions, args.rounds, bench.results)
