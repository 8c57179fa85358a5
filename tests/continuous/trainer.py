"""A training script's checkpointing, as PyTorch DCP and the Hugging Face Trainer do it, run by
dataref with `sync: continuous`; it checks storage with the Azure Storage Python SDK while it runs.

    trainer.py checkpoints OUT CONN CONTAINER PREFIX REPORT
        5 DCP-style checkpoints (shards, then `.metadata.tmp` renamed to `.metadata`) and 5 HF-style
        ones (`tmp-checkpoint-N/` renamed to `checkpoint-N/`). After each commit it waits until
        the checkpoint is complete in storage and notes how long that took. A thread lists the
        container every 50 ms and notes every commit marker seen without all its data, and every
        name under a temporary name. Writes REPORT (JSON) and exits 0 when all held.
    trainer.py until-killed OUT CONN CONTAINER PREFIX BIG_MIB
        DCP checkpoints 1 and 2 (waiting until each is in storage), then checkpoint 3's shards (one
        of BIG_MIB), then `OUT/../ready-to-kill`, and waits to be killed before its `.metadata`.
    trainer.py resume OUT
        Checks checkpoints 1 and 2 are there (restored) and commits checkpoint 3.
"""

import json
import os
import sys
import threading
import time

SHARDS = {"__0_0.distcp": 3 << 20, "__1_0.distcp": 1 << 20, "__2_0.distcp": 200 << 10}
HF_FILES = {"model.safetensors": 2 << 20, "optimizer.pt": 1 << 20, "scheduler.pt": 1 << 10}


def write(path, size, seed):
    block = (f"{seed}:" * 64).encode()[:4096].ljust(4096, b".")
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def dcp_save(out, step, big=None):
    folder = os.path.join(out, "dcp", f"step-{step}")
    os.makedirs(folder, exist_ok=True)
    shards = dict(SHARDS)
    if big:
        shards["__0_0.distcp"] = big
    for name, size in shards.items():
        write(os.path.join(folder, name), size, f"dcp{step}{name}")
    return folder, shards


def dcp_commit(folder, step):
    tmp = os.path.join(folder, ".metadata.tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "shards": sorted(SHARDS)}, f)
    os.rename(tmp, os.path.join(folder, ".metadata"))


def hf_save(out, step):
    tmp = os.path.join(out, "hf", f"tmp-checkpoint-{step}")
    os.makedirs(tmp, exist_ok=True)
    # The Trainer writes its state before the weights are all out; the rename commits.
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step}, f)
    for name, size in HF_FILES.items():
        write(os.path.join(tmp, name), size, f"hf{step}{name}")
    os.rename(tmp, os.path.join(out, "hf", f"checkpoint-{step}"))


def expected(prefix):
    """Each checkpoint: its marker and the data that must be there before it."""
    checkpoints = {}
    for step in range(1, 6):
        base = f"{prefix}/dcp/step-{step}"
        checkpoints[f"{base}/.metadata"] = {f"{base}/{n}": s for n, s in SHARDS.items()}
        base = f"{prefix}/hf/checkpoint-{step}"
        checkpoints[f"{base}/trainer_state.json"] = {f"{base}/{n}": s for n, s in HF_FILES.items()}
    return checkpoints


def listing(container, prefix):
    return {b.name: b.size for b in container.list_blobs(name_starts_with=prefix + "/")}


def wait_for(container, prefix, marker, deadline_s=60):
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if marker in listing(container, prefix):
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"{marker} not in storage after {deadline_s} s")


def container_of(conn, name):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(conn).get_container_client(name)


def checkpoints(out, conn, container_name, prefix, report_path):
    container = container_of(conn, container_name)
    markers = expected(prefix)
    problems, seen, stop = [], set(), threading.Event()

    def observe():
        while not stop.is_set():
            names = listing(container, prefix)
            for name in names:
                if "tmp" in name:
                    problems.append(f"temporary name in storage: {name}")
                if name in markers and name not in seen:
                    seen.add(name)
                    missing = [d for d, size in markers[name].items() if names.get(d) != size]
                    if missing:
                        problems.append(f"{name} in storage before {missing}")
            time.sleep(0.05)

    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    latencies = {}
    for step in range(1, 6):
        folder, _ = dcp_save(out, step)
        dcp_commit(folder, step)
        marker = f"{prefix}/dcp/step-{step}/.metadata"
        latencies[marker] = wait_for(container, prefix, marker)
        hf_save(out, step)
        marker = f"{prefix}/hf/checkpoint-{step}/trainer_state.json"
        latencies[marker] = wait_for(container, prefix, marker)
    time.sleep(0.3)  # one more look by the observer
    stop.set()
    observer.join()
    final = listing(container, prefix)
    for marker, data in markers.items():
        for name, size in {marker: None, **data}.items():
            if name not in final or (size is not None and final[name] != size):
                problems.append(f"{name} not complete in storage before the script ended")
    with open(report_path, "w") as f:
        json.dump({"problems": problems, "latencies": latencies, "seen": sorted(seen)}, f)
    sys.exit(1 if problems else 0)


def until_killed(out, conn, container_name, prefix, big_mib):
    container = container_of(conn, container_name)
    for step in (1, 2):
        folder, _ = dcp_save(out, step)
        dcp_commit(folder, step)
        wait_for(container, prefix, f"{prefix}/dcp/step-{step}/.metadata")
    dcp_save(out, 3, big=int(big_mib) << 20)
    open(os.path.join(os.path.dirname(out), "ready-to-kill"), "w").close()
    time.sleep(600)


def resume(out):
    for step in (1, 2):
        for name in [".metadata", *SHARDS]:
            path = os.path.join(out, "dcp", f"step-{step}", name)
            if not os.path.isfile(path):
                raise SystemExit(f"not restored: {path}")
    dcp_commit(os.path.join(out, "dcp", "step-3"), 3)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"checkpoints": checkpoints, "until-killed": until_killed, "resume": resume}[mode](*args)
