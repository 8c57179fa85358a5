"""The emulator: one Azurite (in memory, on a free loopback port) started, restarted and
stopped by the benchmark, the account SAS and REST helpers that talk to it (container,
HEAD and the checksums it shows, clearing a blob's metadata or its Content-MD5, listing with
Content-MD5), and the data sets put into it outside the timed part (preloaded with `dataref
upload`, then warmed up with one untimed curl pass).
"""

import base64
import hashlib
import hmac
import http.client
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from .procs import MIB, TIMED_ENV, die, end, log, proc_rss_mib, run, spawn

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "bench"
AZURITE_VERSION = "3.35.0"


def stored_checksums(headers):
    """The whole-object checksums a blob's HEAD shows: {"crc64": the `x-ms-meta-crc64`
    metadata dataref writes (16 hex digits), "md5": the Content-MD5 (base64)}, each None when
    absent; a crc64 that is not 16 hex digits is named, not taken as absent."""
    h = {k.lower(): v.strip() for k, v in headers.items()}
    crc64 = h.get("x-ms-meta-crc64") or None
    if crc64 is not None and not re.fullmatch(r"[0-9a-fA-F]{16}", crc64):
        raise ValueError(f"x-ms-meta-crc64 is {crc64!r}, not 16 hex digits")
    return {"crc64": crc64, "md5": h.get("content-md5") or None}


# The content properties Set Blob Properties would clear with the Content-MD5 (response
# header -> request header): sent back unchanged, so only the MD5 goes. rclone 1.60 crashes
# (nil pointer) listing a blob that has no Content-Type.
KEPT_PROPERTIES = {
    "content-type": "x-ms-blob-content-type",
    "content-encoding": "x-ms-blob-content-encoding",
    "content-language": "x-ms-blob-content-language",
    "content-disposition": "x-ms-blob-content-disposition",
    "cache-control": "x-ms-blob-cache-control",
}


def kept_properties(headers):
    """The Set Blob Properties headers that keep a blob's content properties (from its
    HEAD's `headers`) as they are, x-ms-blob-content-md5 left out."""
    h = {k.lower(): v for k, v in headers.items()}
    return {req: h[resp] for resp, req in KEPT_PROPERTIES.items() if h.get(resp)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def account_sas(hours=12):
    """An account SAS (signed with the account key) for every service call of this run."""
    expiry = (datetime.now(timezone.utc) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    permissions, services, resource_types, version = "racwdl", "b", "sco", "2025-01-05"
    to_sign = "\n".join([ACCOUNT, permissions, services, resource_types, "", expiry, "", "",
                         version, "", ""])
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), to_sign.encode(),
                                    hashlib.sha256).digest()).decode()
    q = urllib.parse.quote
    return (f"sv={version}&ss={services}&srt={resource_types}&sp={permissions}"
            f"&se={q(expiry, safe='')}&sig={q(sig, safe='')}")


class Azurite:
    """The emulator process, and the requests the benchmark itself sends to it."""

    def __init__(self, binary, port, workdir, sas):
        self.binary, self.port, self.workdir, self.sas = binary, port, workdir, sas
        self.endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        deadline = time.monotonic() + 30
        while True:
            self.proc = spawn(
                [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                 "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--silent",
                 "--disableTelemetry"],
                cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.stop()
            if time.monotonic() >= deadline:
                die(f"Azurite did not start on port {self.port}: {err}")
            time.sleep(0.3)  # the port may still be held by the previous instance

    def stop(self):
        if self.proc is None:
            return
        end(self.proc, timeout=5)
        self.proc = None

    def fresh(self):
        """A new, empty emulator with the benchmark's container."""
        self.stop()
        self.start()
        self.create_container()

    def grew(self, sizes, kinds):
        """Whether its memory outgrew what the data sets `kinds` need (time to restart)."""
        return proc_rss_mib(self.pid) > 3 * sum(sizes[k] for k in kinds) / MIB + 1024

    def url(self, blob):
        """A blob's URL with the SAS, for curl."""
        return f"{self.endpoint}/{CONTAINER}/{blob}?{self.sas}"

    def rest(self, method, path, query="", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        url = (f"/{ACCOUNT}/{path}?{query}&{self.sas}" if query
               else f"/{ACCOUNT}/{path}?{self.sas}")
        conn.request(method, url, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), body

    def create_container(self):
        for _ in range(50):
            try:
                status, _, body = self.rest("PUT", CONTAINER, "restype=container")
                if status in (201, 409):
                    return
                die(f"create container: HTTP {status} {body[:300]!r}")
            except OSError:
                time.sleep(0.1)
        die("create container: Azurite does not answer")

    def head(self, blob):
        """(HTTP status, headers) of a HEAD of the blob."""
        status, headers, _ = self.rest("HEAD", f"{CONTAINER}/{blob}")
        return status, headers

    def clear_metadata(self, blob):
        """Set Blob Metadata with no x-ms-meta-* header: every metadata key (dataref's crc64
        among them) is removed; the properties, Content-MD5 included, are kept."""
        status, _, body = self.rest("PUT", f"{CONTAINER}/{blob}", "comp=metadata")
        if status != 200:
            die(f"Set Blob Metadata {blob}: HTTP {status} {body[:300]!r}")

    def clear_md5(self, blob):
        """Set Blob Properties without x-ms-blob-content-md5: the Content-MD5 is cleared; the
        other content properties (which it would clear too) are sent back as the HEAD shows
        them, the metadata is untouched."""
        status, headers = self.head(blob)
        if status != 200:
            die(f"HEAD {blob}: HTTP {status}")
        status, _, body = self.rest("PUT", f"{CONTAINER}/{blob}", "comp=properties",
                                    kept_properties(headers))
        if status != 200:
            die(f"Set Blob Properties {blob}: HTTP {status} {body[:300]!r}")

    def has_md5(self, blob):
        """Whether the blob exists and carries a Content-MD5."""
        status, headers, _ = self.rest("HEAD", f"{CONTAINER}/{blob}")
        md5 = {k.lower(): v for k, v in headers.items()}.get("content-md5")
        return status == 200 and bool(md5)

    def list_md5(self, prefix):
        """(blobs, blobs with a Content-MD5) under prefix/."""
        total = with_md5 = 0
        marker = ""
        while True:
            q = (f"restype=container&comp=list&prefix={urllib.parse.quote(prefix + '/')}"
                 "&maxresults=5000")
            if marker:
                q += f"&marker={urllib.parse.quote(marker)}"
            status, _, body = self.rest("GET", CONTAINER, q)
            if status != 200:
                die(f"list {prefix}: HTTP {status}")
            root = ET.fromstring(body)
            for blob in root.iter("Blob"):
                total += 1
                md5 = blob.find("Properties/Content-MD5")
                if md5 is not None and (md5.text or "").strip():
                    with_md5 += 1
            marker = (root.findtext("NextMarker") or "").strip()
            if not marker:
                return total, with_md5


# --- the data sets in the emulator ----------------------------------------------------------

def preload(bench, kind):
    """Puts the data to read in place with dataref (so blobs carry Content-MD5); returns
    (blobs, blobs with a Content-MD5)."""
    az = bench.azurite
    if kind == "large":
        run(bench.tools.dataref_upload("big", bench.big))
        return 1, 1 if az.has_md5("big/big.bin") else 0
    prefix, src = ("small", bench.small_dir) if kind == "small" else ("wide", bench.wide_dir)
    run(bench.tools.dataref_upload(prefix, src))
    blobs, with_md5 = az.list_md5(prefix)
    expect = bench.args.small_count if kind == "small" else bench.args.wide
    if blobs != expect:
        die(f"preload of {prefix}/: {blobs} blobs, expected {expect}")
    return blobs, with_md5


def fresh_loaded(bench, case, kinds, rnd, downloaded):
    """A new emulator with `kinds` preloaded outside the timed part, then one untimed curl
    pass so that no tool pays for the emulator's warm-up after the preload. `downloaded`:
    the kinds that `dataref download` reads (and verifies) in this case."""
    bench.azurite.fresh()
    for kind in kinds:
        t0 = time.monotonic()
        blobs, with_md5 = preload(bench, kind)
        log(f" preloaded {blobs} blob(s) of the {kind} data in {time.monotonic() - t0:.1f} s")
        if kind in downloaded and (case, kind) not in [n[:2] for n in bench.md5_notes]:
            bench.md5_notes.append((case, kind, blobs, with_md5))
        if with_md5 != blobs:
            log(f"warning: only {with_md5} of {blobs} preloaded blobs carry Content-MD5")
        if kind != "wide":
            warm = bench.fresh_dest(case, -1 - rnd, f"warmup-{kind}")
            run(bench.download_cmds(kind, warm)["curl"], env=TIMED_ENV)
            if kind == "large":
                shutil.rmtree(warm)
    bench.loaded.clear()
    bench.loaded.update(kinds)
