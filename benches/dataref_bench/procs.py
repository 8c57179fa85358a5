"""Processes and measurements: logging, process groups that die with the benchmark, and one
timed run (wall clock, /usr/bin/time's peak RSS and CPU, Azurite's and a mount daemon's CPU
from /proc, and how busy the rest of the machine was).

Everything started here runs in its own process group, is killed at exit and dies with the
benchmark (PR_SET_PDEATHSIG), so nothing outlives a killed run.
"""

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1024 * 1024

# The measured tool runs under /usr/bin/time; setpriv (util-linux) makes it die with time too,
# so nothing outlives a killed benchmark. It execs the tool: nothing extra is measured.
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
# Debug settings that change what is measured: with RUST_BACKTRACE set, every error value the
# Azure SDK builds (also for a header that is merely absent) captures a backtrace.
STRIPPED_ENV = ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG")
TIMED_ENV = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
# Commands run through a mount (`ls` sorts bytewise, whatever this shell's locale).
MOUNT_ENV = dict(TIMED_ENV, LC_ALL="C")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


# --- process groups: everything we start dies with us ---------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
_live_groups = set()


def child_setup():
    """preexec_fn: an own process group (so a whole tree can be killed), death with the parent."""
    os.setpgid(0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_group(pid, sig=signal.SIGKILL):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _cleanup_groups():
    for pid in list(_live_groups):
        kill_group(pid)
    _live_groups.clear()


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def install_handlers():
    """At exit every live group is killed; SIGTERM/SIGINT/SIGHUP exit through atexit too.
    Called first thing, so this atexit hook runs after every later one."""
    atexit.register(_cleanup_groups)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def spawn(cmd, **kw):
    """Starts cmd in a process group of its own, killed at exit unless ended first."""
    p = subprocess.Popen(cmd, preexec_fn=child_setup, **kw)
    _live_groups.add(p.pid)
    return p


def forget(p):
    """The last step of ending a process started by spawn(): its whole group is killed."""
    kill_group(p.pid)
    _live_groups.discard(p.pid)


def end(p, sig=signal.SIGTERM, timeout=5, on_timeout=None):
    """Sends sig to p's group, waits up to timeout s (then on_timeout() and SIGKILL), and
    kills whatever is left of the group."""
    kill_group(p.pid, sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        if on_timeout:
            on_timeout()
        kill_group(p.pid)
        p.wait()
    forget(p)


def _communicate(cmd, **kw):
    """Runs cmd to its end in its own group, with text stdout/stderr captured."""
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = p.communicate()
    finally:
        forget(p)
    return p.returncode, out, err


def run(cmd, check=True, quiet=True, **kw):
    """Runs an untimed helper command in its own process group."""
    code, out, err = _communicate(cmd, **kw)
    if check and code != 0:
        die(f"{' '.join(cmd)} exited {code}\n{out}\n{err}")
    if not quiet and out.strip():
        log(out.strip())
    return code, out, err


# --- /proc sampling ---------------------------------------------------------------------------

def proc_cpu_seconds(pid):
    """utime+stime of a live process (for Azurite's share of the work)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def busy_core_seconds():
    """Core-seconds the whole machine has spent busy since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait, threshold=0.25):
    """Waits (up to max_wait s) until other processes use less than `threshold` cores: a
    compiler running beside the benchmark would make every number meaningless."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        b0 = busy_core_seconds()
        time.sleep(1.0)
        load = busy_core_seconds() - b0
        if load < threshold:
            return load
        if time.monotonic() >= deadline:
            log(f"warning: the machine stays busy ({load:.2f} cores used by others); "
                "measuring anyway")
            return load
        if not warned:
            log(f"waiting for a quiet machine ({load:.2f} cores busy)...")
            warned = True


def proc_rss_mib(pid, field="VmRSS"):
    """Resident memory now (VmRSS) or its peak over the process's life (VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- one timed run ----------------------------------------------------------------------------

def timed(cmd, azurite_pid, label, work, max_wait, daemon=None, env=None):
    """One measured run: wall (monotonic clock), peak RSS and CPU from /usr/bin/time, and
    the CPU seconds a mount daemon (pid `daemon`) spent meanwhile. Returns (run, stdout,
    stderr)."""
    wait_for_quiet(max_wait)
    fd, tfile = tempfile.mkstemp(prefix="time.", dir=work)
    os.close(fd)
    full = ["/usr/bin/time", "-o", tfile, "-f", "%e %M %U %S"] + PDEATHSIG + cmd
    az_cpu0 = proc_cpu_seconds(azurite_pid)
    daemon_cpu0 = proc_cpu_seconds(daemon) if daemon else 0.0
    busy0 = busy_core_seconds()
    start = time.monotonic()
    t0 = time.perf_counter()
    code, out, err = _communicate(full, env=env or TIMED_ENV)
    wall = time.perf_counter() - t0
    az_cpu = proc_cpu_seconds(azurite_pid) - az_cpu0
    daemon_cpu = proc_cpu_seconds(daemon) - daemon_cpu0 if daemon else 0.0
    busy = busy_core_seconds() - busy0
    with open(tfile) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    os.unlink(tfile)
    if code != 0:
        die(f"{label}: {' '.join(cmd)} exited {code}\n{out[-2000:]}\n{err}\n{lines}")
    _e, rss_kib, user, sys_ = lines[-1].split()
    r = {"wall": wall, "rss_mib": int(rss_kib) / 1024, "cpu": float(user) + float(sys_),
         "user": float(user), "sys": float(sys_), "azurite_cpu": az_cpu, "start": start,
         # Everything else the machine did meanwhile (other jobs, kernel writeback).
         "other_cpu": max(0.0, busy - az_cpu - daemon_cpu - float(user) - float(sys_))}
    if daemon:
        r["daemon_cpu"] = daemon_cpu
    log(f"  {label:8s} {wall:7.2f} s  cpu {r['cpu']:6.2f} s (u {r['user']:.2f} s {r['sys']:.2f})"
        f"  rss {r['rss_mib']:7.1f} MiB"
        + (f"  mount cpu {daemon_cpu:6.2f} s rss {proc_rss_mib(daemon):.0f} MiB" if daemon else "")
        + f"  azurite cpu {az_cpu:6.2f} s"
        f" ({az_cpu / wall:.2f} cores, rss {proc_rss_mib(azurite_pid):.0f} MiB)"
        f"  others {r['other_cpu'] / wall:.2f} cores")
    return r, out, err
