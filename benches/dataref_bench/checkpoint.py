"""The checkpoint study (`scripts/bench --checkpoint`, `sync: continuous`): a script saves one
checkpoint of --large-mib (four shards, then `.metadata` by rename, as PyTorch DCP does) into
an output folder, against Azurite. Two questions, each against its own baseline, interleaved
round by round:

- blocked: how long the save keeps the script busy when `dataref run` syncs the folder
  continuously, against the same save into a plain local folder with no dataref at all (the
  goal: equal within noise — the script never waits on the network);
- durable: from the commit (the rename) to the checkpoint durable in storage (its marker's
  `durable_at` in result.json), against `dataref upload` of the same folder (the goal: at most
  1.1x of it + 1 s).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from .procs import die, log, wait_for_quiet

BLOCKED_GOAL = 1.10  # "equal within noise"
DURABLE_GOAL = (1.10, 1.0)  # x the upload, + seconds

SAVE = r'''
import json, os, sys, time
out, mib, stamp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
folder = os.path.join(out, "step-1")
os.makedirs(folder, exist_ok=True)
block = os.urandom(1 << 20)
started = time.monotonic()
for shard in range(4):
    with open(os.path.join(folder, f"__{shard}_0.distcp"), "wb") as f:
        for _ in range(mib // 4):
            f.write(block)
with open(os.path.join(folder, ".metadata.tmp"), "w") as f:
    json.dump({"shards": 4}, f)
os.rename(os.path.join(folder, ".metadata.tmp"), os.path.join(folder, ".metadata"))
blocked = time.monotonic() - started
with open(stamp, "w") as f:
    json.dump({"blocked": blocked, "committed": time.time()}, f)
# Under dataref: stay until the checkpoint is durable (so it is not the stage-out's).
live = os.environ.get("BENCH_LIVE")
while live and '"checkpoint":"step-1"' not in (open(live).read() if os.path.exists(live) else ""):
    time.sleep(0.05)
'''


def _save(work, out, mib, env=None):
    """Runs the save directly; returns its stamp."""
    script = os.path.join(work, "save.py")
    stamp = os.path.join(work, "stamp.json")
    subprocess.run([sys.executable, script, out, str(mib), stamp], check=True, env=env)
    with open(stamp) as f:
        return json.load(f)


def _job(tools, work, rnd, mib):
    """`dataref run` of the save with the folder synced continuously; (stamp, durable_at)."""
    job = os.path.join(work, f"job-{rnd}")
    shutil.rmtree(job, ignore_errors=True)
    os.makedirs(job)
    stamp = os.path.join(job, "stamp.json")
    manifest = {
        "data_references": {"ckpt": {
            "datastore": "bench", "path_on_datastore": f"ckpt/r{rnd}", "mode": "upload",
            "path_on_compute": "out", "overwrite": True, "sync": "continuous"}},
        "environment": {"BENCH_LIVE": os.path.join(job, ".dataref/live.json")},
        "command": [sys.executable, os.path.join(work, "save.py"), os.path.join(job, "out"),
                    str(mib), stamp],
    }
    with open(os.path.join(job, "job.json"), "w") as f:
        json.dump(manifest, f)
    subprocess.run(tools.dr + ["run", "--no-progress", os.path.join(job, "job.json")],
                   check=True, cwd=job, stdout=subprocess.DEVNULL)
    with open(stamp) as f:
        saved = json.load(f)
    with open(os.path.join(job, ".dataref/result.json")) as f:
        result = json.load(f)
    checkpoints = result["references"]["ckpt"]["sync"]["checkpoints"]
    if not checkpoints:
        die(f"round {rnd}: no checkpoint recorded: {result}")
    return saved, checkpoints[0]["durable_at"], os.path.join(job, "out")


def run_checkpoint(azurite, tools, work, mib, rounds, max_wait):
    """Rows of measurements, one per round (each on a fresh emulator: it holds data in
    memory)."""
    with open(os.path.join(work, "save.py"), "w") as f:
        f.write(SAVE)
    rows = []
    for rnd in range(rounds):
        azurite.fresh()
        wait_for_quiet(max_wait)
        plain = os.path.join(work, "plain")
        shutil.rmtree(plain, ignore_errors=True)
        baseline = _save(work, plain, mib)
        shutil.rmtree(plain, ignore_errors=True)
        wait_for_quiet(max_wait)
        saved, durable_at, out = _job(tools, work, rnd, mib)
        wait_for_quiet(max_wait)
        started = time.monotonic()
        subprocess.run(tools.dataref_upload(f"upload/r{rnd}", out), check=True,
                       stdout=subprocess.DEVNULL)
        upload = time.monotonic() - started
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        row = {"plain_blocked": baseline["blocked"], "sync_blocked": saved["blocked"],
               "durable": durable_at - saved["committed"], "upload": upload}
        log(f"round {rnd + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()))
        rows.append(row)
    return rows


def table(rows, mib):
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}

    def ratio(a, b):
        """The medians' ratio, and its range over the rounds."""
        each = [r[a] / r[b] for r in rows]
        return f"{med[a] / med[b]:.2f}× ({min(each):.2f}–{max(each):.2f})"

    blocked = med["sync_blocked"] / med["plain_blocked"]
    bound = DURABLE_GOAL[0] * med["upload"] + DURABLE_GOAL[1]
    lines = [
        f"| checkpoint of {mib} MiB (4 shards + `.metadata` by rename) | continuous sync s "
        "| baseline s | ratio | goal | verdict |",
        "|---|---|---|---|---|---|",
        f"| script blocked saving | {med['sync_blocked']:.2f} | {med['plain_blocked']:.2f} "
        f"(plain local folder, no dataref) | {ratio('sync_blocked', 'plain_blocked')} "
        f"| ≤ {BLOCKED_GOAL:.2f}× | {'met' if blocked <= BLOCKED_GOAL else '**missed**'} |",
        f"| commit → durable | {med['durable']:.2f} | {med['upload']:.2f} (`dataref upload` "
        f"of the folder) | {ratio('durable', 'upload')} | ≤ 1.1× + 1 s "
        f"({bound:.2f} s) | {'met' if med['durable'] <= bound else '**missed**'} |",
    ]
    return "\n".join(lines)
