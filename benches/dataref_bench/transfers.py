"""Cases 1-4, Azure Blob transfers: `dataref download`/`upload` against a tuned `rclone copy`
and curl (downloads only), each run checked (bytes on disk, blobs after an upload). Case 10:
the large blob stored three times, stamped with CRC64 + MD5, MD5 only and nothing, each
downloaded by the three tools, dataref's summary line checked for the verification it did.
Also the download command lines that the emulator's warm-up and case 5's yardstick reuse,
and the untimed MD5 check of a downloaded large file.
"""

import base64
import hashlib
import os
import re
import shutil
import time

from .azurite import CONTAINER, fresh_loaded, stored_checksums
from .cases import STAMPINGS, rotation, round_order
from .procs import MIB, TIMED_ENV, die, log, run

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


def download_cmds(bench, kind, out_dir, prefix=None):
    """tool -> the command that downloads the `kind` data set into out_dir (the large blob:
    `prefix`/big.bin, prefix "big" unless given, e.g. case 10's stamped copies)."""
    tools = bench.tools
    prefix = prefix or ("big" if kind == "large" else "small")
    rclone = (tools.rc + ["copy", f"az:{CONTAINER}/{prefix}", os.path.join(out_dir, prefix)]
              + RCLONE_FLAGS[("download", kind)])
    if kind == "large":
        curl = ["curl", "-sS", "--fail", "-o", os.path.join(out_dir, "big.bin"),
                bench.azurite.url(f"{prefix}/big.bin")]
    else:
        curl_cfg = os.path.join(bench.work, "curl-small.cfg")
        os.makedirs(os.path.join(out_dir, "small"))
        with open(curl_cfg, "w") as f:
            for name in sorted(os.listdir(bench.small_dir)):
                f.write(f'url = "{bench.azurite.url("small/" + name)}"\n'
                        f'output = "{out_dir}/small/{name}"\n')
        curl = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(CURL_PARALLEL),
                "-K", curl_cfg]
    verify = "auto" if prefix.startswith(STAMPED_PREFIX) else None
    return {"dataref": tools.dataref_download(prefix, out_dir, verify), "rclone": rclone,
            "curl": curl}


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


def file_md5(path):
    h = hashlib.md5()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def source_md5(bench):
    """The large source file's MD5 (hex), computed once."""
    if bench.big_md5 is None:
        bench.big_md5 = file_md5(bench.big)
    return bench.big_md5


def check_md5(bench, path, what):
    """Untimed: every byte of the large file, as read back, against the source."""
    got = file_md5(path)
    if got != source_md5(bench):
        die(f"{what}: MD5 {got} of the large file, expected {bench.big_md5}")
    log(f"  {what}: MD5 of all {bench.args.large_mib} MiB matches the source")


def only_file(dest):
    """The one file under dest (a large download)."""
    found = [os.path.join(d, n) for d, _, files in os.walk(dest) for n in files]
    if len(found) != 1:
        die(f"{dest}: {len(found)} files after the download, expected 1")
    return found[0]


def timed_download(bench, case, rnd, kind, tool, label=None, verify=None, prefix=None,
                   summary=None):
    """One timed download by `tool` into a fresh directory, its bytes checked (and
    verify(dest) if given, summary(stderr) too); the large file's directory is removed
    after (one inode: harmless, and saves disk), the small files' kept until the end."""
    label = label or tool
    dest = bench.fresh_dest(case, rnd, label.replace("/", "-"))
    r, _, err = bench.timed(download_cmds(bench, kind, dest, prefix)[tool], label)
    check_local(dest, bench.sizes[kind])
    if summary:
        summary(r, err)
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
                r, _, _ = bench.timed(upload_cmds(bench, kind)[tool], tool)
                total, _ = bench.azurite.list_md5("up")
                expect = 1 if kind == "large" else bench.args.small_count
                if total != expect:
                    die(f"{tool}: {total} blobs after upload, expected {expect}")
            bench.record(case, tool, r)


# --- case 10: the large blob by how it is stamped -----------------------------------------

STAMPED_PREFIX = "stamped-"
STAMPED_TOOLS = ["dataref", "rclone", "curl"]
CHECKED_RE = re.compile(r"checked: (\d+) by CRC64, (\d+) by MD5, (\d+) unchecked")
CHECKS = ("crc64", "md5", "unchecked")


def stamped_prefix(stamping):
    return STAMPED_PREFIX + stamping


def stamping_error(found, stamping, md5_b64):
    """Why the checksums a HEAD `found` (stored_checksums) are not exactly those the
    stamping intends (None if they are); a stored Content-MD5 must be the source's."""
    want = STAMPINGS[stamping][1]
    have = {k for k, v in found.items() if v}
    if have != want:
        name = lambda s: " + ".join(sorted(s)) or "none"
        return f"stores {name(have)}, expected {name(want)} ({found})"
    if found["md5"] and found["md5"] != md5_b64:
        return f"Content-MD5 {found['md5']} is not the source's {md5_b64}"
    return None


def parse_checked(stderr):
    """{"crc64": n, "md5": n, "unchecked": n} from `dataref download`'s summary line
    ("..., checked: 1 by CRC64, 0 by MD5, 0 unchecked"), None if it has no such counts."""
    found = CHECKED_RE.findall(stderr)
    return dict(zip(CHECKS, map(int, found[-1]))) if found else None


def expected_checked(stamping, files=1):
    """What `--verify auto` must report for `files` blobs of this stamping."""
    by = STAMPINGS[stamping][2]
    return {k: files if k == by else 0 for k in CHECKS}


def stamped_order(stampings, tools, rnd):
    """(stamping, tool) pairs of round rnd: the stampings rotate from round to round, and
    within a round the tools' order shifts by one per stamping, so every tool takes every
    position within each round."""
    return [(s, t) for i, s in enumerate(rotation(stampings, rnd))
            for t in rotation(tools, rnd + i)]


def fresh_stamped(bench, case, rnd):
    """A new emulator holding the large source three times, under stamped-<stamping>/, each
    as `dataref upload` stores it (CRC64 metadata + Content-MD5), then stripped to what its
    stamping keeps and checked with a HEAD; then one untimed curl pass over each."""
    az = bench.azurite
    az.fresh()
    md5_b64 = base64.b64encode(bytes.fromhex(source_md5(bench))).decode()
    for stamping in STAMPINGS:
        t0 = time.monotonic()
        prefix = stamped_prefix(stamping)
        blob = f"{prefix}/big.bin"
        run(bench.tools.dataref_upload(prefix, bench.big))
        if stamping != "crc64":
            az.clear_metadata(blob)
        if stamping == "none":
            az.clear_md5(blob)
        status, headers = az.head(blob)
        if status != 200:
            die(f"HEAD {blob}: HTTP {status}")
        try:
            found = stored_checksums(headers)
        except ValueError as e:
            die(f"{blob}: {e}")
        error = stamping_error(found, stamping, md5_b64)
        if error:
            die(f"{blob}: {error}")
        bench.stamp_notes[stamping] = found
        log(f" stored {blob}, {STAMPINGS[stamping][0]}: crc64 {found['crc64']}, Content-MD5 "
            f"{found['md5']} (HEAD checked), in {time.monotonic() - t0:.1f} s")
    for stamping in STAMPINGS:
        warm = bench.fresh_dest(case, -1 - rnd, f"warmup-{stamping}")
        run(download_cmds(bench, "large", warm, stamped_prefix(stamping))["curl"],
            env=TIMED_ENV)
        shutil.rmtree(warm)
    bench.loaded.clear()
    bench.loaded.add("stamped")


def run_stamped(bench, case):
    """Every round of case 10: each stamping downloaded by dataref (`--verify auto`, its
    summary line checked for the expected verification), rclone and curl; sizes checked
    on every run, the MD5 of every download of round 1 (untimed)."""
    rounds, stampings = bench.args.rounds, list(STAMPINGS)
    held = {"stamped": len(stampings) * bench.sizes["large"]}
    for rnd in range(rounds):
        if bench.loaded != {"stamped"} or bench.azurite.grew(held, ["stamped"]):
            fresh_stamped(bench, case, rnd)
        order = stamped_order(stampings, STAMPED_TOOLS, rnd)
        log(f" round {rnd + 1}/{rounds}: " + ", ".join(
            f"{s} ({' '.join(t for s2, t in order if s2 == s)})"
            for s in dict.fromkeys(s for s, _ in order)))
        for stamping, tool in order:
            label = f"{tool}/{stamping}"

            def summary(r, err, stamping=stamping):
                got, want = parse_checked(err), expected_checked(stamping)
                if got != want:
                    die(f"dataref download of the {STAMPINGS[stamping][0]} blob: its summary "
                        f"says {got}, expected {want} (a silent fallback?)\n{err[-1000:]}")
                r["checked"] = got

            def verify(dest, label=label):
                check_md5(bench, only_file(dest), label)

            r = timed_download(bench, case, rnd, "large", tool, label=label,
                               prefix=stamped_prefix(stamping),
                               verify=verify if rnd == 0 else None,
                               summary=summary if tool == "dataref" else None)
            bench.record(case, label, r)
