"""The ten cases (what each measures, in which direction, on which data), case 10's three
stampings of the large blob, and the order in which the tools take turns, so that drift in the
machine or the emulator favours none."""

from .procs import log

CASES = {
    1: ("download 1 × {large}", "download", "large"),
    2: ("upload 1 × {large}", "upload", "large"),
    3: ("download {count} × {small}", "download", "small"),
    4: ("upload {count} × {small}", "upload", "small"),
    # Through a FUSE mount (kind: the data it reads); 8 and 9 share their mounts.
    5: ("`cat` of 1 × {large}", "mount", "large"),
    6: ("{count} × {small}, `xargs -P 8 cat`", "mount", "small"),
    7: ("`ls -lR` of the {count} files, cold", "mount", "small"),
    8: ("`ls -l` of {wide} entries, cold", "mount", "wide"),
    9: ("`ls -l` of {wide} entries, warm", "mount", "wide"),
    # The large blob stored three times, each stamped differently (STAMPINGS), downloaded.
    10: ("download of one {large} blob, by how it is stamped", "stamped", "large"),
}

# Case 10: stamping -> (what the row says, the checksums stored with the blob, what
# `dataref download --verify auto` must report having checked it by: "crc64", "md5" or
# "unchecked", as its summary line counts them).
STAMPINGS = {
    "crc64": ("CRC64 + MD5 (as dataref uploads)", {"crc64", "md5"}, "crc64"),
    "md5": ("MD5 only (metadata cleared)", {"md5"}, "md5"),
    "none": ("no checksum (MD5 cleared too)", set(), "unchecked"),
}


def large_label(large_mib):
    return f"{large_mib / 1024:g} GiB" if large_mib >= 1024 else f"{large_mib} MiB"


def title(case, large_mib, small_count, small_kib, wide):
    """The case's description with this run's sizes, e.g. "download 2000 × 64 KiB"."""
    return CASES[case][0].format(large=large_label(large_mib), count=small_count,
                                 small=f"{small_kib} KiB", wide=f"{wide:,}")


def rotation(tools, rnd):
    """A B, B A, ... for two tools; A B C, B C A, C A B, ... for three."""
    if len(tools) == 2:
        return tools if rnd % 2 == 0 else tools[::-1]
    return tools[rnd % len(tools):] + tools[:rnd % len(tools)]


def round_order(tools, rnd, rounds):
    """The tools' order in round rnd (from 0) of `rounds`, logged."""
    order = rotation(tools, rnd)
    log(f" round {rnd + 1}/{rounds}: {' '.join(order)}")
    return order
