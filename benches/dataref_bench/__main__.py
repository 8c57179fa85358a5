"""`python3 -m dataref_bench` (with benches/ on sys.path): the same as scripts/bench."""

from .cli import main

main()
