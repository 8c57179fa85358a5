"""dataref's benchmark against rclone and curl on Azurite (run by scripts/bench; see
benches/README.md).

Modules, in the order they build on each other: procs (processes, /proc sampling, one timed
run), cases (the nine cases, the tools' rotation), azurite (the emulator, its REST helpers,
the preloaded data sets), tools (installing and configuring the tools), transfers (cases
1-4), mounts (cases 5-9), context (what a run shares), report (tables, notes, JSON) and cli
(arguments and the run as a whole).
"""
