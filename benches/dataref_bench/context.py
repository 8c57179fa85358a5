"""What one benchmark run shares: its arguments and work directory, the source data it
writes there, the emulator and the configured tools, and every measurement so far
(results[case][tool] = [run, ...], one run per round)."""

import os
import shutil

from . import procs, transfers
from .procs import MIB, log


def _fill(path, count, name, content, what):
    """Makes path hold exactly `count` files (name % i, each `content()`), unless it does."""
    if os.path.isdir(path) and len(os.listdir(path)) == count:
        return
    log(f"writing {what}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    for i in range(count):
        with open(os.path.join(path, name % i), "wb") as f:
            f.write(content())


class Bench:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.sizes = {"large": args.large_mib * MIB,
                      "small": args.small_count * args.small_kib * 1024,
                      "wide": args.wide}
        self.out_dir = os.path.join(work, "out")
        self.results = {}  # case -> tool -> [runs]
        self.md5_notes = []  # (case, kind, blobs, blobs with a Content-MD5) of preloads
        self.loaded = set()  # what the running emulator holds
        self.stamp_notes = {}  # case 10: stamping -> the checksums a HEAD showed
        self.big_md5 = None  # the source's MD5, computed once
        self.azurite = self.tools = None
        src = os.path.join(work, "src")
        self.big = os.path.join(src, "big.bin")
        self.small_dir = os.path.join(src, "small")
        self.wide_dir = os.path.join(src, "wide")

    def make_data(self, wide):
        """The sources, written once (a work directory given again is reused)."""
        args = self.args
        os.makedirs(self.small_dir, exist_ok=True)
        if not os.path.exists(self.big) or os.path.getsize(self.big) != args.large_mib * MIB:
            log(f"writing {args.large_mib} MiB of random data")
            with open(self.big, "wb") as f:
                left = args.large_mib * MIB
                while left:
                    n = min(left, 16 * MIB)
                    f.write(os.urandom(n))
                    left -= n
        _fill(self.small_dir, args.small_count, "f%05d.bin",
              lambda: os.urandom(args.small_kib * 1024),
              f"{args.small_count} × {args.small_kib} KiB files")
        if wide:
            _fill(self.wide_dir, args.wide, "e%05d", lambda: b"x", f"{args.wide} one-byte files")

    def timed(self, cmd, label, daemon=None, max_wait=None, env=None):
        """procs.timed against this run's emulator, in its work directory: (run, stdout,
        stderr)."""
        return procs.timed(cmd, self.azurite.pid, label, self.work,
                           self.args.max_wait if max_wait is None else max_wait,
                           daemon=daemon, env=env)

    def fresh_dest(self, case, rnd, tool):
        # A new directory per run, and no mass deletion while measuring: ext4 scans for
        # recently deleted inodes when creating files next to thousands just removed
        # (`recently_deleted` in __ext4_new_inode), which would slow whichever tool runs next.
        dest = os.path.join(self.out_dir, f"case{case}-round{rnd + 1}-{tool}")
        os.makedirs(dest)
        os.sync()  # no writeback of the previous run's data during this one
        return dest

    def download_cmds(self, kind, out_dir, prefix=None):
        return transfers.download_cmds(self, kind, out_dir, prefix)

    def record(self, case, tool, run):
        self.results.setdefault(case, {}).setdefault(tool, []).append(run)
