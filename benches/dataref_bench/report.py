"""What the benchmark prints: medians of the rounds, speed ratios (with the range of the
per-round ratios), the Markdown tables of the transfer cases (1-4, with the CPU per small
file and issue 19's target for it), of case 10 (the large blob by how it is stamped, issue
19's targets) and of the mount cases (5-9, issue 5's targets), each target with a verdict,
the notes under them, and the --json file.

Pure functions of the measurements (results[case][tool] = [run, ...]), so they can be
tested without running anything.
"""

import json
import statistics

from .cases import CASES, STAMPINGS, title
from .mounts import CACHE_CASES, MOUNT_TTL, READERS, RCLONE_MOUNT
from .procs import MIB, STRIPPED_ENV
from .transfers import CHECKS, CURL_PARALLEL, RCLONE_FLAGS, stamped_prefix

# Targets of issue 5, for the mount table.
TARGET_VS_RCLONE = 1.5
TARGET_VS_DOWNLOAD = 0.8
TARGET_COLD_WARM = 5.0
TARGET_RSS_MIB = 512
# Targets of issue 19: dataref's CPU per small file at most this fraction of rclone's (cases
# 3-4); case 10's CRC64-stamped download this much faster than rclone's, and than curl's GET.
TARGET_CPU_PER_FILE = 0.5
TARGET_STAMPED_VS_RCLONE = 1.3
TARGET_STAMPED_VS_CURL = 0.9
# The tools, in the order of the notes' per-tool figures.
TOOLS = ("dataref", "rclone", "curl", "download", "dataref+cache")


def median(xs):
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def med(results, case, tool, key):
    """The median of `key` over the tool's runs of the case (None if it has none)."""
    runs = results.get(case, {}).get(tool, [])
    return median([r[key] for r in runs]) if runs else None


def speed_ratio(runs, other, base="dataref"):
    """other's median wall time / base's (> 1: base is faster), and as text with the range of
    the per-round ratios (runs of one round are adjacent: they see the same machine state)."""
    o, b = runs.get(other), runs.get(base)
    if not o or not b:
        return None, "—"
    value = median(r["wall"] for r in o) / median(r["wall"] for r in b)
    text = f"{value:.2f}×"
    pairs = [x["wall"] / y["wall"] for x, y in zip(o, b)]
    if len(pairs) > 1:
        text += f" ({min(pairs):.2f}–{max(pairs):.2f})"
    return value, text


def fmt_mib_s(size, secs):
    return f"{size / MIB / secs:,.0f}"


def cell(x, size=None, unit="", fmt="{:.2f}"):
    """A median as table text: "—" for none, with the rate in parentheses when size is given."""
    if x is None:
        return "—"
    return fmt.format(x) + (f" ({fmt_mib_s(size, x)}{unit})" if size is not None else "")


def judge(checks):
    """(target text, verdict text) of [(target, value, threshold), ...]: met when value >=
    threshold, "—" when there is no value; "—" for both when there are no checks."""
    if not checks:
        return "—", "—"
    return ("; ".join(c[0] for c in checks),
            "; ".join("—" if v is None else ("met" if v >= t else "**missed**")
                      for _, v, t in checks))


def cpu_ms_per_file(results, case, tool, files):
    """The tool's median CPU seconds (user + sys) in the case, in ms per file."""
    cpu = med(results, case, tool, "cpu")
    return None if cpu is None else cpu * 1000 / files


def checked_text(runs):
    """What dataref's summary lines said it checked, e.g. "1 by CRC64" ("—" if no run says)."""
    said = []
    for r in runs:
        c = r.get("checked")
        if c is None:
            continue
        text = ", ".join(f"{n} {'unchecked' if k == 'unchecked' else 'by ' + k.upper()}"
                         for k, n in ((k, c.get(k, 0)) for k in CHECKS) if n)
        if text not in said:
            said.append(text or "nothing")
    return " / ".join(said) or "—"


def _titled(case, args):
    return f"{case}. " + title(case, args.large_mib, args.small_count, args.small_kib, args.wide)


def transfer_table(results, cases, args, sizes):
    lines = [
        f"dataref vs rclone vs curl on Azurite ({args.rounds} round(s), median; "
        f"speed ratios are other tool's time / dataref's, > 1 means dataref is faster; "
        f"in parentheses the range of the per-round ratios)",
        "",
        "| case | dataref s (MiB/s) | rclone s (MiB/s) | curl s (MiB/s) "
        "| dataref/rclone speed ratio | dataref/curl ratio | peak RSS dataref/rclone (MiB) "
        "| CPU s dataref/rclone | CPU ms per file, dataref / rclone | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        m = lambda tool, key: med(results, case, tool, key)
        wall = lambda tool: cell(m(tool, "wall"), sizes[CASES[case][2]])
        per_file, checks = "—", []
        if CASES[case][2] == "small":
            d, r = (cpu_ms_per_file(results, case, t, args.small_count)
                    for t in ("dataref", "rclone"))
            per_file = f"{cell(d)} / {cell(r)}"
            checks.append((f"CPU/file ≤ {TARGET_CPU_PER_FILE:g}× rclone's",
                           r / d if d and r is not None else None, 1 / TARGET_CPU_PER_FILE))
        target, verdict = judge(checks)
        lines.append(
            f"| {_titled(case, args)} | {wall('dataref')} | {wall('rclone')} | {wall('curl')} "
            f"| {speed_ratio(results[case], 'rclone')[1]} "
            f"| {speed_ratio(results[case], 'curl')[1]} "
            f"| {m('dataref', 'rss_mib'):.0f} / {m('rclone', 'rss_mib'):.0f} "
            f"| {m('dataref', 'cpu'):.2f} / {m('rclone', 'cpu'):.2f} "
            f"| {per_file} | {target} | {verdict} |")
    return lines


def stamped_table(results, case, args, sizes):
    """Case 10: one row per stamping of the large blob, each tool's runs of it under
    "tool/stamping"."""
    lines = [
        f"Case {case}, {title(case, args.large_mib, args.small_count, args.small_kib, args.wide)}"
        f": the same content stored three times ({args.rounds} round(s), median; speed "
        f"ratios are the other tool's time / dataref's, > 1 means dataref is faster; in "
        f"parentheses the range of the per-round ratios; dataref runs `download --verify "
        f"auto`, 'checked' is what its summary line said)",
        "",
        "| stamping (checksums stored) | dataref s (MiB/s) | rclone s (MiB/s) | curl s (MiB/s) "
        "| dataref/rclone speed ratio | dataref/curl ratio | CPU s dataref / rclone "
        "| dataref checked | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    all_runs = results.get(case, {})
    for stamping, (label, _, _) in STAMPINGS.items():
        runs = {t: all_runs[f"{t}/{stamping}"] for t in ("dataref", "rclone", "curl")
                if f"{t}/{stamping}" in all_runs}
        sub = {case: runs}
        m = lambda tool, key: med(sub, case, tool, key)
        wall = lambda tool: cell(m(tool, "wall"), sizes["large"])
        vs_rclone, vs_rclone_text = speed_ratio(runs, "rclone")
        vs_curl, vs_curl_text = speed_ratio(runs, "curl")
        checks = []
        if stamping == "crc64":
            checks = [(f"≥ {TARGET_STAMPED_VS_RCLONE}× rclone", vs_rclone,
                       TARGET_STAMPED_VS_RCLONE),
                      (f"≥ {TARGET_STAMPED_VS_CURL}× curl", vs_curl, TARGET_STAMPED_VS_CURL)]
        target, verdict = judge(checks)
        lines.append(
            f"| {case}. {label} | {wall('dataref')} | {wall('rclone')} | {wall('curl')} "
            f"| {vs_rclone_text} | {vs_curl_text} "
            f"| {cell(m('dataref', 'cpu'))} / {cell(m('rclone', 'cpu'))} "
            f"| {checked_text(runs.get('dataref', []))} | {target} | {verdict} |")
    return lines


def mount_table(results, cases, args, sizes):
    lines = [
        f"dataref mount vs rclone mount on the same Azurite ({args.rounds} round(s), median "
        "seconds of the command through the mount, a fresh mount for every run; speed "
        "ratios are the other's time / dataref mount's, > 1 means dataref is faster; in "
        "parentheses the range of the per-round ratios; RSS and CPU are the mount daemon's)",
        "",
        "| case | dataref mount s | rclone mount s | dataref download s "
        "| dataref mount + disk cache s "
        "| dataref/rclone mount speed ratio | mount/download speed ratio "
        "| cold/warm dataref / rclone | peak RSS dataref / rclone (MiB) "
        "| daemon CPU s dataref / rclone | target | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        size = {5: sizes["large"], 6: sizes["small"]}.get(case)
        runs = results.get(case, {})

        def c(tool, key="wall", fmt="{:.2f}"):
            return cell(med(results, case, tool, key), size if size and key == "wall" else None,
                        " MiB/s", fmt)

        vs_rclone, vs_rclone_text = speed_ratio(runs, "rclone")
        vs_download, vs_download_text = speed_ratio(runs, "download")
        rss = med(results, case, "dataref", "daemon_rss_mib")
        checks = [(f"≥ {TARGET_VS_RCLONE}× rclone", vs_rclone, TARGET_VS_RCLONE)]
        if case == 5:
            checks.append((f"≥ {TARGET_VS_DOWNLOAD}× download", vs_download, TARGET_VS_DOWNLOAD))
        cold_warm = "—"
        if case == 9:
            pairs = {t: speed_ratio({"cold": results[8][t], "warm": runs[t]}, "cold", "warm")
                     for t in ("dataref", "rclone") if t in runs}
            cold_warm = " / ".join(pairs[t][1] for t in pairs)
            checks.append((f"cold/warm ≥ {TARGET_COLD_WARM:g}×", pairs["dataref"][0],
                           TARGET_COLD_WARM))
        checks.append((f"RSS ≤ {TARGET_RSS_MIB} MiB", TARGET_RSS_MIB / rss if rss else None, 1))
        target, verdict = judge(checks)
        download_rss = (f" (download {med(results, case, 'download', 'rss_mib'):.0f})"
                        if "download" in runs else "")
        download_cpu = (f" (download {med(results, case, 'download', 'cpu'):.2f})"
                        if "download" in runs else "")
        lines.append(
            f"| {_titled(case, args)} | {c('dataref')} | {c('rclone')} | {c('download')} "
            f"| {c('dataref+cache')} "
            f"| {vs_rclone_text} | {vs_download_text} | {cold_warm} "
            f"| {c('dataref', 'daemon_rss_mib', '{:.0f}')} / "
            f"{c('rclone', 'daemon_rss_mib', '{:.0f}')}{download_rss} "
            f"| {c('dataref', 'daemon_cpu')} / {c('rclone', 'daemon_cpu')}{download_cpu} "
            f"| {target} | {verdict} |")
    return lines


def notes(results, cases, transfer_cases, mount_cases, versions, elapsed, md5_notes, environ,
          nproc, stamp_notes=None):
    out = [
        f"- Machine: {nproc} CPU(s) shared by the tool and Azurite; {versions['azurite']} "
        f"(Azurite, in memory, 127.0.0.1), {versions['rclone']}, {versions['curl']}. "
        f"Total measuring time {elapsed / 60:.1f} min.",
        f"- Timed runs have {', '.join(STRIPPED_ENV)} removed from their environment"
        + (f" (this shell had {', '.join(k for k in STRIPPED_ENV if k in environ)} set)"
           if any(k in environ for k in STRIPPED_ENV) else "") + ".",
    ]
    for case, kind, blobs, with_md5 in md5_notes:
        out.append(f"- Case {case} preload of the {kind} data (by `dataref upload`): {with_md5} "
                   f"of {blobs} blob(s) carry a Content-MD5 (`dataref upload` also stores a "
                   "CRC64, which `dataref download` checks first).")
    if transfer_cases:
        out += [
            "- Transfers: wall time is the whole command (process start, listing, transfer, "
            "verification, exit); peak RSS and CPU (user+sys) from /usr/bin/time.",
            "- Verification IS inside dataref's timed path: downloads check the blob's stored "
            "CRC64 range by range as the ranges land (the Content-MD5, hashed in order beside "
            "the transfer, when there is no CRC64); uploads compute the MD5 and the CRC64 "
            "while reading and store both (Content-MD5 per request / x-ms-blob-content-md5 "
            "on commit, metadata crc64). rclone "
            "verifies MD5 for small downloads and for uploads, but NOT after a multi-thread "
            "download (case 1: its -vv log says 'Src hash empty - aborting Dst hash check').",
            "- rclone flags: " + "; ".join(
                f"{d} {k}: `{' '.join(f)}`" for (d, k), f in RCLONE_FLAGS.items()),
            f"- curl: one GET of the large blob (SAS); for small blobs one curl process "
            f"fetching every URL with `--parallel --parallel-max {CURL_PARALLEL}`. No curl "
            "for uploads.",
            "- Azurite is restarted before every upload run (in memory, it slows as it fills "
            "and keeps deleted data); for downloads one instance per case, preloaded and "
            "warmed up with one untimed curl pass. Tools rotate: A B / B A for two, "
            "A B C / B C A / C A B for three.",
        ]
    stamped_cases = [c for c in cases if CASES[c][1] == "stamped"]
    if stamped_cases:
        shown = "; ".join(
            f"{stamped_prefix(s)}/: crc64 {(stamp_notes or {})[s]['crc64'] or 'none'}, "
            f"Content-MD5 {(stamp_notes or {})[s]['md5'] or 'none'}"
            for s in STAMPINGS if s in (stamp_notes or {}))
        out += [
            f"- Case {stamped_cases[0]}: the large source uploaded three times by `dataref "
            "upload` (CRC64 metadata + Content-MD5 each) into one Azurite, warmed up with one "
            "untimed curl pass over each; then stamped-md5/'s metadata cleared with Set Blob "
            "Metadata (`PUT ?comp=metadata`, no x-ms-meta-*), stamped-none/'s too and its "
            "Content-MD5 with Set Blob Properties (`PUT ?comp=properties`, no "
            "x-ms-blob-content-md5; the other content properties sent back unchanged). A HEAD of each showed exactly the checksums intended"
            + (f" ({shown}; every Content-MD5 the source's)" if shown else "") + ".",
            f"- Case {stamped_cases[0]} runs: `dataref download --verify auto`, whose summary "
            "line must say `checked: 1 by CRC64` / `1 by MD5` / `1 unchecked` for the three "
            "blobs (the run fails otherwise: no silent fallback); `rclone copy` with case 1's "
            "flags (a multi-thread download: no hash check); one curl GET. Sizes checked "
            "after every run, the MD5 of every download of round 1 (untimed). Order: the "
            "stampings rotate from round to round, and within a round the tools' order "
            "shifts by one per stamping.",
        ]
    if mount_cases:
        all_within_ttl = all(r.get("within_ttl", True) for t in results.get(9, {}).values()
                             for r in t)
        out += [
            f"- Mounts: every timed run has a mount of its own, mounted just before and "
            f"unmounted right after (a new FUSE superblock: no page cache, dentry or "
            f"attribute of an earlier run survives; the large file also gets "
            f"POSIX_FADV_DONTNEED before its read — drop_caches is not used, it would hit "
            f"the whole machine). Like for like, neither tool keeps a disk cache in the compared "
            f"runs: dataref `dataref mount --attribute-ttl {MOUNT_TTL}` (its default: no "
            f"disk cache), rclone `rclone mount {' '.join(RCLONE_MOUNT)} --cache-dir NEW_DIR` "
            f"(cache mode off). Cases {', '.join(map(str, CACHE_CASES))} also run dataref "
            f"with `--cache-dir NEW_DIR` (the setting of `dataref run` mounts: every block "
            f"read is also written to the disk cache, which starts empty; the directory must "
            f"be gone after the unmount): the 'dataref mount + disk cache' column. An Azurite of its own for each mount data set (the large "
            f"file; the small files, cases 6-7; the wide folder, cases 8-9), preloaded and "
            f"warmed up like the downloads'.",
            f"- Timed through the mount (LC_ALL=C): 5 `cat FILE | wc -c`; 6 `find DIR -type f "
            f"| xargs -P {READERS} -n 50 cat | wc -c`; 7 `ls -lR DIR`; 8 `ls -l DIR` on the "
            f"fresh mount; 9 the same `ls -l` again on that mount right after (within the "
            f"{MOUNT_TTL} s TTL: "
            + ("every warm listing was" if all_within_ttl else "NOT every warm listing was — see the log")
            + "). Case 5's yardstick: "
            "`dataref download` of the same blob to local disk (MD5-verified inside).",
            "- Checks: bytes counted by `wc -c` == expected on every run; every `ls` output "
            "has the expected number of files and total size; the large file's MD5 against "
            "the source once per tool, untimed (round 1: a separate fresh mount per tool, "
            "and the downloaded file).",
            "- Peak RSS: VmHWM of the mount daemon from /proc/PID/status just before its "
            "unmount (the mount's whole life: start-up and the one workload; for 8 and 9 "
            "both listings). Daemon CPU: utime+stime from /proc/PID/stat over the timed "
            "command. The client's own CPU and RSS (/usr/bin/time) are in --json.",
        ]
    az = []
    for case in cases:
        labels = results.get(case, {})
        for tool in [t for t in TOOLS if t in labels] + [t for t in labels if t not in TOOLS]:
            runs = labels.get(tool)
            if runs:
                w = med(results, case, tool, "wall")
                a = med(results, case, tool, "azurite_cpu")
                cpu = median([r["cpu"] + r.get("daemon_cpu", 0.0) for r in runs])
                az.append(f"{case}/{tool}: tool {cpu / w:.2f}, Azurite {a / w:.2f}")
    out.append("- Cores busy during the runs (median CPU s / wall s; for mounts client + "
               "daemon), case/tool: " + "; ".join(az))
    others = [(r["other_cpu"] / r["wall"], case, tool) for case in cases
              for tool, runs in results.get(case, {}).items() for r in runs]
    if others:
        worst = max(others)
        out.append(f"- Other processes during the runs: at most {worst[0]:.2f} cores "
                   f"(case {worst[1]}, {worst[2]})"
                   + (" — NOISY: rerun on a quiet machine." if worst[0] > 0.3 else "."))
    return out


def render(results, cases, args, sizes, versions, elapsed, md5_notes, environ, nproc,
           stamp_notes=None):
    """The whole report for stdout: the tables (transfers, case 10, mounts), then the notes."""
    transfer_cases = [c for c in cases if CASES[c][1] in ("download", "upload")]
    mount_cases = [c for c in cases if CASES[c][1] == "mount"]
    tables = []
    if transfer_cases:
        tables.append(transfer_table(results, transfer_cases, args, sizes))
    for case in cases:
        if CASES[case][1] == "stamped":
            tables.append(stamped_table(results, case, args, sizes))
    if mount_cases:
        tables.append(mount_table(results, mount_cases, args, sizes))
    lines = [line for i, t in enumerate(tables) for line in ([""] if i else []) + t]
    return ("\n".join(lines) + "\n\n"
            + "\n".join(["Notes:"] + notes(results, cases, transfer_cases, mount_cases,
                                           versions, elapsed, md5_notes, environ, nproc,
                                           stamp_notes)))


def write_json(path, versions, rounds, results):
    with open(path, "w") as f:
        json.dump({"versions": versions, "rounds": rounds, "results": results}, f, indent=1)
