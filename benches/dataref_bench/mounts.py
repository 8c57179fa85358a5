"""Cases 5-9, through the kernel: `dataref mount` against `rclone mount` (and case 5 against
`dataref download`), a fresh FUSE mount for every timed run, the mount daemon's peak RSS
(VmHWM) and CPU (/proc) sampled around it, every byte count and listing checked, and the
large file's MD5 once per tool.
"""

import os
import shutil
import signal
import subprocess
import time

from .azurite import fresh_loaded
from .cases import round_order
from .procs import MOUNT_ENV, TIMED_ENV, die, end, log, proc_rss_mib, spawn
from .transfers import check_md5, timed_download

# Mounts: listings and attributes trusted this long by both tools (dataref's default TTL).
MOUNT_TTL = 60
# rclone mount, tuned for a read-only streaming mount: no VFS cache, large ranged reads.
RCLONE_MOUNT = ["--read-only", "--vfs-cache-mode", "off", "--vfs-read-chunk-size", "64M",
                "--buffer-size", "32M", "--attr-timeout", f"{MOUNT_TTL}s",
                "--dir-cache-time", f"{MOUNT_TTL}s"]
READERS = 8
# What is timed through a mount (8 also stands for 9, its second listing on the same mount).
# Bytes are counted by `wc -c` (a pipe both tools pay for alike); listings are read back.
MOUNT_CMDS = {
    5: lambda mnt: ["sh", "-c", 'cat "$1" | wc -c', "sh", f"{mnt}/big/big.bin"],
    6: lambda mnt: ["sh", "-c", f'find "$1" -type f | xargs -P {READERS} -n 50 cat | wc -c',
                    "sh", f"{mnt}/small"],
    7: lambda mnt: ["ls", "-lR", f"{mnt}/small"],
    8: lambda mnt: ["ls", "-l", f"{mnt}/wide"],
}
# Reads also measured with dataref's disk cache on (the setting of `dataref run` mounts).
CACHE_CASES = (5, 6)

_live_mounts = {}  # mount point -> Mount


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


class Mount:
    """A FUSE daemon in the foreground (own process group, dies with us) on a new mount point:
    a fresh mount is a new superblock, so no page cache, dentry or attribute survives from
    another run."""

    def __init__(self, tool, cmd, mnt, cache, log_dir):
        self.tool, self.mnt, self.cache = tool, mnt, cache
        os.makedirs(mnt)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        self.log = open(os.path.join(log_dir, os.path.basename(mnt) + ".log"), "w")
        self.proc = spawn(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=TIMED_ENV)
        _live_mounts[mnt] = self
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if self.proc.poll() is not None:
                die(f"{tool} mount exited {self.proc.returncode} before mounting "
                    f"(log: {self.log.name})")
            if time.monotonic() > deadline:
                die(f"{tool} did not mount {mnt} within 30 s")
            time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid

    def unmount(self, force=False):
        """Stops the daemon (SIGTERM: both unmount and exit); returns its peak RSS in MiB,
        read from /proc just before."""
        hwm = proc_rss_mib(self.pid, "VmHWM")
        end(self.proc, signal.SIGKILL if force else signal.SIGTERM, timeout=30,
            on_timeout=lambda: log(f"warning: {self.tool} mount ignored SIGTERM for 30 s"))
        self.log.close()
        if is_mounted(self.mnt):
            if not force:
                log(f"warning: {self.tool} exited {self.proc.returncode} leaving {self.mnt} mounted")
            subprocess.call(["umount", "-l", self.mnt])
        del _live_mounts[self.mnt]
        try:
            os.rmdir(self.mnt)
        except OSError as e:
            if not force:
                die(f"{self.mnt} after the unmount: {e}")
        if self.tool == "dataref+cache" and os.path.exists(self.cache) and not force:
            die(f"dataref's cache directory {self.cache} outlived its mount")
        shutil.rmtree(self.cache, ignore_errors=True)
        return hwm


def cleanup_mounts():
    """At exit: every mount still up is unmounted (forcibly)."""
    for m in list(_live_mounts.values()):
        m.unmount(force=True)


def drop_page_cache(path):
    """POSIX_FADV_DONTNEED (a no-op on a fresh mount; drop_caches would hit the whole machine)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def mount_fresh(bench, tool, tag):
    """A new mount of the whole container (with a new, empty cache directory: rclone's is
    unused with --vfs-cache-mode off; dataref's only for "dataref+cache")."""
    mnt = os.path.join(bench.work, "mnt", tag)
    cache = os.path.join(bench.work, "cache", f"{tag}-{tool}")
    if tool.startswith("dataref"):
        # The cache directory is created by the mount and deleted at its unmount.
        cmd = bench.tools.dataref_mount(mnt, MOUNT_TTL, cache if tool == "dataref+cache" else None)
    else:
        cmd = bench.tools.rclone_mount(mnt, cache, RCLONE_MOUNT)
    return Mount(tool, cmd, mnt, cache, os.path.join(bench.work, "logs"))


def check_listing(out, files, size, what):
    entries = [line.split() for line in out.splitlines() if line.startswith("-")]
    total = sum(int(e[4]) for e in entries)
    if len(entries) != files or total != files * size:
        die(f"{what}: listed {len(entries)} files of {total} bytes, "
            f"expected {files} of {files * size}")


def mount_run(bench, case, rnd, tool):
    """A fresh mount, the case's timed command through it, the checks, the unmount."""
    args = bench.args
    big_path = lambda m: os.path.join(m.mnt, "big", "big.bin")
    if case == 5 and rnd == 0:
        m = mount_fresh(bench, tool, f"md5-{tool}")
        check_md5(bench, big_path(m), f"{tool} mount")
        m.unmount()
    m = mount_fresh(bench, tool, f"case{case}-round{rnd + 1}-{tool}")
    cmd = MOUNT_CMDS[8 if case == 9 else case](m.mnt)
    runs = {}
    if case == 5:
        drop_page_cache(big_path(m))
    r, out, _ = bench.timed(cmd, tool, daemon=m.pid, env=MOUNT_ENV)
    if case in (5, 6):
        expect = bench.sizes["large" if case == 5 else "small"]
        if int(out.split()[0]) != expect:
            die(f"{tool}: read {out.strip()} bytes through the mount, expected {expect}")
        runs[case] = r
    elif case == 7:
        check_listing(out, args.small_count, args.small_kib * 1024, f"{tool} ls -lR")
        runs[case] = r
    else:
        # Cold (8), then warm (9): the same listing again on the same mount, within the TTL.
        check_listing(out, args.wide, 1, f"{tool} ls -l cold")
        warm, out, _ = bench.timed(cmd, f"{tool} warm", daemon=m.pid, env=MOUNT_ENV,
                                max_wait=min(args.max_wait, 5))
        check_listing(out, args.wide, 1, f"{tool} ls -l warm")
        warm["within_ttl"] = warm["start"] + warm["wall"] - r["start"] < MOUNT_TTL
        if not warm["within_ttl"]:
            log(f"warning: {tool}'s warm listing ended {MOUNT_TTL} s or more after the cold "
                "one started: not all of it was within the TTL")
        runs = {8: r, 9: warm}
    hwm = m.unmount()
    for c, r in runs.items():
        r["daemon_rss_mib"] = hwm
        bench.record(c, tool, r)
    log(f"  {tool} mount: peak RSS {hwm:.0f} MiB")


def download_run(bench, case, rnd):
    """`dataref download` of the large blob, the yardstick of case 5 (its MD5 checked in
    round 1)."""
    def verify(dest):
        check_md5(bench, os.path.join(dest, "big", "big.bin"), "download")

    r = timed_download(bench, case, rnd, "large", "dataref", label="download",
                       verify=verify if rnd == 0 else None)
    bench.record(case, "download", r)


def run_case(bench, case, kind):
    """Every round of a mount case, the tools interleaved, on an emulator holding only the
    case's data."""
    for rnd in range(bench.args.rounds):
        if bench.loaded != {kind} or bench.azurite.grew(bench.sizes, [kind]):
            # An emulator holding only the case's data (6 and 7 share one; 9 is 8):
            # Azurite's cost per request grows with the blobs it holds (a linear scan
            # per lookup), which would measure the emulator, not the mounts.
            fresh_loaded(bench, case, [kind], rnd, ["large"] if case == 5 else [])
        tools = (["dataref", "rclone"] + (["download"] if case == 5 else [])
                 + (["dataref+cache"] if case in CACHE_CASES else []))
        for tool in round_order(tools, rnd, bench.args.rounds):
            if tool == "download":
                download_run(bench, case, rnd)
            else:
                mount_run(bench, case, rnd, tool)
