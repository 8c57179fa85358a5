"""The tools being measured and the ones measuring: rclone, curl, /usr/bin/time, fuse3 and
Azurite found or installed (apt-get as root, npm into .tools/azurite), the dataref binary
built or located, and each measured tool configured for this run's emulator (a dataref
registry and an rclone config of their own in the work directory).
"""

import os
import shutil
import subprocess

from .azurite import ACCOUNT, AZURITE_VERSION, CONTAINER, KEY
from .procs import ROOT, die, log, run


def _apt(pkg):
    if os.geteuid() != 0:
        die(f"{pkg} is missing: sudo apt-get install -y {pkg}")
    log(f"installing {pkg} (apt)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.call(["apt-get", "install", "-y", "-q", pkg], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        subprocess.call(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", pkg], env=env)


def ensure_tools(args, mounts):
    """Installs what is missing, builds dataref unless told not to; returns (dataref binary,
    azurite binary, {tool: version})."""
    if not shutil.which("rclone"):
        _apt("rclone")
    if not os.access("/usr/bin/time", os.X_OK):
        _apt("time")
    if not shutil.which("curl"):
        _apt("curl")
    if mounts:
        if os.geteuid() != 0:
            die("cases 5-9 mount FUSE filesystems: run as root")
        if not shutil.which("fusermount3"):
            _apt("fuse3")
    azurite = os.environ.get("DATAREF_AZURITE_BLOB") or os.path.join(
        ROOT, ".tools/azurite/node_modules/.bin/azurite-blob")
    if not os.access(azurite, os.X_OK):
        if not shutil.which("npm"):
            _apt("npm")
        log(f"installing azurite@{AZURITE_VERSION} (npm)")
        run(["npm", "install", "--prefix", os.path.join(ROOT, ".tools/azurite"), "--no-audit",
             "--no-fund", "--loglevel=error", f"azurite@{AZURITE_VERSION}"])
    if not args.no_build:
        log("cargo build --release")
        run(["cargo", "build", "--release", "--locked"], cwd=ROOT)
    dataref = os.path.abspath(args.dataref or os.path.join(ROOT, "target/release/dataref"))
    if not os.access(dataref, os.X_OK):
        die(f"{dataref} not found (run without --no-build)")
    rclone_version = run(["rclone", "version"])[1].splitlines()[0]
    curl_version = run(["curl", "--version"])[1].splitlines()[0].split(" (")[0]
    azurite_version = run([azurite, "--version"], check=False)[1].strip() or AZURITE_VERSION
    return dataref, azurite, {"rclone": rclone_version, "curl": curl_version,
                              "azurite": azurite_version}


class Tools:
    """dataref and rclone set up for the emulator at `endpoint`: `dr` and `rc` are the
    command prefixes every run of them starts with."""

    def __init__(self, dataref, work, endpoint):
        # dataref: a registry of its own.
        config_dir = os.path.join(work, "dataref-config")
        shutil.rmtree(config_dir, ignore_errors=True)
        os.makedirs(config_dir)
        keyfile = os.path.join(work, "account.key")
        with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(KEY)
        os.chmod(keyfile, 0o600)
        run([dataref, "--config-dir", config_dir, "datastore", "register", "azure-blob",
             "--name", "bench", "--account", ACCOUNT, "--container", CONTAINER,
             "--key-file", keyfile, "--endpoint", endpoint, "--create-if-not-exists"])
        self.dr = [dataref, "--config-dir", config_dir]

        # rclone: its own config file.
        rclone_conf = os.path.join(work, "rclone.conf")
        with open(rclone_conf, "w") as f:
            f.write(f"[az]\ntype = azureblob\nuse_emulator = true\nendpoint = {endpoint}\n")
        self.rc = ["rclone", "--config", rclone_conf, "-q"]

    def dataref_upload(self, target, src):
        return self.dr + ["upload", "--datastore", "bench", "--target-path", target,
                          "--overwrite", "--no-progress", src]

    def dataref_download(self, prefix, out_dir, verify=None):
        """`dataref download` of prefix into out_dir (with `--verify verify` if given)."""
        return self.dr + ["download", "--datastore", "bench", "--prefix", prefix,
                          "--target-path", out_dir, "--no-progress", "--overwrite"] + (
                              ["--verify", verify] if verify else [])

    def dataref_mount(self, mnt, ttl, cache=None):
        """`dataref mount` of the datastore on mnt; with cache, a disk cache directory that
        the mount creates and deletes at its unmount."""
        cmd = self.dr + ["mount", "--datastore", "bench", "--attribute-ttl", str(ttl)]
        return cmd + (["--cache-dir", cache] if cache else []) + [mnt]

    def rclone_mount(self, mnt, cache, flags):
        return self.rc + ["mount", f"az:{CONTAINER}", mnt, "--cache-dir", cache] + flags
