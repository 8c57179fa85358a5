"""Cases 1-4, Azure Blob transfers: `dataref download`/`upload` against a tuned `rclone copy`
and curl (downloads only), each run checked (bytes on disk, blobs after an upload). Also the
download command lines that the emulator's warm-up and case 5's yardstick reuse.
"""

import os
import shutil

from .azurite import CONTAINER, fresh_loaded
from .cases import round_order
from .procs import die

# rclone, tuned as in the brief.
RCLONE_FLAGS = {
    ("download", "large"): ["--transfers", "8", "--multi-thread-streams", "8"],
    ("download", "small"): ["--transfers", "16"],
    ("upload", "large"): ["--transfers", "8", "--azureblob-upload-concurrency", "16",
                          "--no-check-dest"],
    ("upload", "small"): ["--transfers", "16", "--no-check-dest"],
}
# curl for many small blobs: one process, one URL list, this many at once.
CURL_PARALLEL = 16


def download_cmds(bench, kind, out_dir):
    """tool -> the command that downloads the `kind` data set into out_dir."""
    tools, prefix = bench.tools, "big" if kind == "large" else "small"
    rclone = (tools.rc + ["copy", f"az:{CONTAINER}/{prefix}", os.path.join(out_dir, prefix)]
              + RCLONE_FLAGS[("download", kind)])
    if kind == "large":
        curl = ["curl", "-sS", "--fail", "-o", os.path.join(out_dir, "big.bin"),
                bench.azurite.url("big/big.bin")]
    else:
        curl_cfg = os.path.join(bench.work, "curl-small.cfg")
        os.makedirs(os.path.join(out_dir, "small"))
        with open(curl_cfg, "w") as f:
            for name in sorted(os.listdir(bench.small_dir)):
                f.write(f'url = "{bench.azurite.url("small/" + name)}"\n'
                        f'output = "{out_dir}/small/{name}"\n')
        curl = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(CURL_PARALLEL),
                "-K", curl_cfg]
    return {"dataref": tools.dataref_download(prefix, out_dir), "rclone": rclone, "curl": curl}


def upload_cmds(bench, kind):
    src = bench.big if kind == "large" else bench.small_dir
    return {
        "dataref": bench.tools.dataref_upload("up", src),
        "rclone": bench.tools.rc + ["copy", src, f"az:{CONTAINER}/up"]
        + RCLONE_FLAGS[("upload", kind)],
    }


def check_local(path, size):
    total = 0
    for dirpath, _, files in os.walk(path):
        for n in files:
            total += os.path.getsize(os.path.join(dirpath, n))
    if total != size:
        die(f"{path}: {total} bytes on disk after the run, expected {size}")


def timed_download(bench, case, rnd, kind, tool, label=None, verify=None):
    """One timed download by `tool` into a fresh directory, its bytes checked (and
    verify(dest) if given); the large file's directory is removed after (one inode:
    harmless, and saves disk), the small files' kept until the end."""
    label = label or tool
    dest = bench.fresh_dest(case, rnd, label)
    r, _ = bench.timed(download_cmds(bench, kind, dest)[tool], label)
    check_local(dest, bench.sizes[kind])
    if verify:
        verify(dest)
    if kind == "large":
        shutil.rmtree(dest)
    return r


def run_case(bench, case, direction, kind):
    """Every round of a transfer case, the tools interleaved."""
    for rnd in range(bench.args.rounds):
        if direction == "download" and (rnd == 0 or bench.azurite.grew(bench.sizes, [kind])):
            # One emulator per download case (reads do not fill it; restarted only if its
            # memory grows).
            fresh_loaded(bench, case, [kind], rnd, [kind])
        tools = ["dataref", "rclone", "curl"] if direction == "download" else ["dataref", "rclone"]
        for tool in round_order(tools, rnd, bench.args.rounds):
            if direction == "download":
                r = timed_download(bench, case, rnd, kind, tool)
            else:
                # The emulator slows as it fills: every upload starts on an empty one.
                bench.azurite.fresh()
                bench.loaded.clear()
                r, _ = bench.timed(upload_cmds(bench, kind)[tool], tool)
                total, _ = bench.azurite.list_md5("up")
                expect = 1 if kind == "large" else bench.args.small_count
                if total != expect:
                    die(f"{tool}: {total} blobs after upload, expected {expect}")
            bench.record(case, tool, r)
