"""The scale study (`scripts/bench --scale 1000,10000,100000`): how dataref's cost grows with
the number of entries, on a local datastore so that no emulator is in the picture, or with
`--scale-on azurite` through Azure Blob (a fresh Azurite per size, the files preloaded with
`dataref upload`, untimed). For each size N (one-byte files in folders of 1,000): `dataref
download` of all of them, and `find` and `ls -lR` through a fresh `dataref mount` each; wall
time and peak RSS. The goal is linear time and flat RSS per 1,000 entries. Every figure includes
a fixed part (start-up, the mount, the binary's own memory), so the check compares marginal
costs: what each 1,000 entries more cost between the two largest sizes against between the two
smallest ("growth"; 1.00 is linear).
"""

import os
import subprocess
import time

from .azurite import Azurite, account_sas, free_port
from .mounts import Mount, cleanup_mounts
from .procs import PDEATHSIG, TIMED_ENV, die, log, run, wait_for_quiet
from .tools import Tools

FILES_PER_DIR = 1000
# The marginal cost per 1,000 entries at the largest step may be at most this many times the
# smallest step's.
MAX_GROWTH = 1.5


def parse_sizes(text):
    """`1000,10000` -> [1000, 10000], sorted; each a positive multiple of FILES_PER_DIR or
    smaller than it."""
    sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"--scale takes positive entry counts, got {text!r}")
    if any(n > FILES_PER_DIR and n % FILES_PER_DIR for n in sizes):
        raise ValueError(f"--scale sizes above {FILES_PER_DIR} must be multiples of it")
    return sizes


def layout(n):
    """(folders, files per folder) for n entries."""
    per = min(n, FILES_PER_DIR)
    return n // per, per


def make_tree(root, n):
    """n one-byte files under root, in folders d0000.. of FILES_PER_DIR (kept if present)."""
    dirs, per = layout(n)
    marker = root + ".complete"  # beside the datastore, not in it
    if os.path.exists(marker):
        return
    log(f"writing {n:,} one-byte files in {dirs} folders")
    for d in range(dirs):
        folder = os.path.join(root, f"d{d:04d}")
        os.makedirs(folder, exist_ok=True)
        for f in range(per):
            with open(os.path.join(folder, f"f{f:04d}"), "wb") as out:
                out.write(b"x")
    open(marker, "w").close()


def per_thousand(value, n):
    return value / (n / 1000)


def marginal(a, b, key):
    """What 1,000 entries more cost between rows a and b (b the larger)."""
    return (b[key] - a[key]) / ((b["n"] - a["n"]) / 1000)


def growth(rows, key):
    """The marginal cost per 1,000 entries between the two largest sizes over that between the
    two smallest (None with fewer than three sizes, or when the first step cost nothing
    measurable)."""
    if len(rows) < 3:
        return None
    first = marginal(rows[0], rows[1], key)
    if first <= 0:
        return None
    return marginal(rows[-2], rows[-1], key) / first


def verdict(g):
    if g is None:
        return "—"
    return "met" if g <= MAX_GROWTH else "**missed**"


def table(rows):
    """The Markdown table: one row per size, then the growth row with verdicts."""
    head = ("| entries | download s (ms per 1k) | download peak RSS MiB | mount `find` s "
            "(ms per 1k) | mount `ls -lR` s (ms per 1k) | mount peak RSS MiB (MiB per 1k) |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        n = r["n"]
        lines.append(
            f"| {n:,} | {r['download']:.2f} ({per_thousand(r['download'], n) * 1000:.0f}) "
            f"| {r['download_rss']:.0f} | {r['find']:.2f} ({per_thousand(r['find'], n) * 1000:.0f}) "
            f"| {r['ls']:.2f} ({per_thousand(r['ls'], n) * 1000:.0f}) "
            f"| {r['mount_rss']:.0f} ({per_thousand(r['mount_rss'], n):.2f}) |")
    g = {k: growth(rows, k) for k in ("download", "download_rss", "find", "ls", "mount_rss")}
    cell = lambda k: "—" if g[k] is None else f"{g[k]:.2f}× {verdict(g[k])}"
    lines.append(f"| growth of the cost of 1k more, last step / first (≤ {MAX_GROWTH}×) "
                 f"| {cell('download')} "
                 f"| {cell('download_rss')} | {cell('find')} | {cell('ls')} "
                 f"| {cell('mount_rss')} |")
    return "\n".join(lines)


def _timed(cmd, max_wait, expect_lines=None):
    """(wall seconds, peak RSS MiB of cmd itself, stdout line count); dies on failure."""
    wait_for_quiet(max_wait)
    tfile = f"/tmp/dataref-scale-time.{os.getpid()}"
    full = ["/usr/bin/time", "-o", tfile, "-f", "%M"] + PDEATHSIG + cmd
    t0 = time.perf_counter()
    p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=TIMED_ENV)
    wall = time.perf_counter() - t0
    with open(tfile) as f:
        rss = int(f.read().split()[-1]) / 1024
    os.unlink(tfile)
    if p.returncode != 0:
        die(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode()[-2000:]}")
    lines = p.stdout.count(b"\n")
    if expect_lines is not None and lines < expect_lines:
        die(f"{' '.join(cmd)}: {lines} lines, expected at least {expect_lines}")
    return wall, rss, lines


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


STORES = ("local", "azurite")
# The folder the Azurite variant uploads the tree to.
AZURITE_PREFIX = "scale"


def title(store, rounds):
    where = ("Azure Blob through Azurite (in memory; a fresh emulator per size)"
             if store == "azurite" else "a local datastore")
    return f"## Scale: {where}, medians of {rounds} round(s)"


class LocalSource:
    """The tree as a local datastore: `dataref` registered on it, nothing to stop."""

    def __init__(self, dataref, work, n, root, _azurite_bin):
        config = os.path.join(work, f"scale-config-{n}")
        os.makedirs(config, exist_ok=True)
        run([dataref, "--config-dir", config, "datastore", "register", "local", "--name",
             "scale", "--root", root, "--overwrite"])
        self.dr = [dataref, "--config-dir", config]
        # What `download` and `mount` are given to name the tree.
        self.download_from = self.mount_from = ["--datastore", "scale"]

    def download(self, dest):
        return (self.dr + ["download"] + self.download_from
                + ["--target-path", dest, "--no-progress"])

    def mount(self, mnt):
        return self.dr + ["mount"] + self.mount_from + [mnt]

    def stop(self):
        pass


class AzuriteSource(LocalSource):
    """The tree uploaded to a fresh Azurite of its own (the emulator slows as it fills, so no
    size shares one): `dataref` registered on its container, under AZURITE_PREFIX."""

    def __init__(self, dataref, work, n, root, azurite_bin):
        home = os.path.join(work, f"scale-azurite-{n}")
        self.azurite = Azurite(azurite_bin, free_port(), os.path.join(home, "azurite"),
                               account_sas())
        self.azurite.start()
        tools = Tools(dataref, home, self.azurite.endpoint)
        t0 = time.monotonic()
        run(tools.dataref_upload(AZURITE_PREFIX, root))
        log(f"uploaded {n:,} files to Azurite in {time.monotonic() - t0:.0f} s (untimed)")
        self.dr = tools.dr
        self.download_from = ["--datastore", "bench", "--prefix", AZURITE_PREFIX]
        self.mount_from = ["--datastore", "bench", "--path", AZURITE_PREFIX]

    def stop(self):
        self.azurite.stop()


def run_scale(dataref, work, sizes, rounds, max_wait, store="local", azurite_bin=None):
    """Measures every size `rounds` times (medians) on `store` (one of STORES); returns the
    rows for `table`."""
    source_of = {"local": LocalSource, "azurite": AzuriteSource}[store]
    rows = []
    for n in sizes:
        root = os.path.join(work, f"scale-{n}")
        make_tree(root, n)
        source = source_of(dataref, work, n, root, azurite_bin)
        dirs, _ = layout(n)
        runs = {"download": [], "download_rss": [], "find": [], "ls": [], "mount_rss": []}
        for rnd in range(rounds):
            dest = os.path.join(work, f"scale-out-{n}-{rnd}")
            wall, rss, _ = _timed(source.download(dest), max_wait)
            got = sum(len(files) for _, _, files in os.walk(dest))
            if got != n:
                die(f"download of {n}: {got} files arrived")
            runs["download"].append(wall)
            runs["download_rss"].append(rss)
            # Kept until the work directory goes: deleting 100,000 files between runs makes
            # ext4 scan recently deleted inodes when the next run creates its own.
            for what, cmd in (("find", ["find"]), ("ls", ["ls", "-lR"])):
                mnt = os.path.join(work, f"scale-mnt-{n}-{rnd}-{what}")
                mount = Mount("dataref", source.mount(mnt), mnt,
                              os.path.join(work, "unused-cache", f"{n}-{rnd}-{what}"),
                              os.path.join(work, "logs"))
                wall, _, lines = _timed(cmd + [mnt], max_wait, expect_lines=n + dirs)
                runs[what].append(wall)
                runs["mount_rss"].append(mount.unmount())
            log(f"  {n:,} entries, round {rnd + 1}: download {runs['download'][-1]:.2f} s, "
                f"find {runs['find'][-1]:.2f} s, ls -lR {runs['ls'][-1]:.2f} s, "
                f"mount RSS {runs['mount_rss'][-1]:.0f} MiB")
        source.stop()
        rows.append({"n": n, **{k: _median(v) for k, v in runs.items()}})
    cleanup_mounts()
    return rows
