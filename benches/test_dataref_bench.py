"""Unit tests of the benchmark's pure parts: the interleaving order, case titles, medians,
ratios and their formatting, the report's tables (CPU per small file, case 10's stampings,
targets and verdicts), case 10's checksum and summary-line checks, the download command lines,
and argument parsing. Nothing is started.

Run: python3 -m unittest discover -s benches
"""

import contextlib
import io
import os
import types
import unittest
from unittest import mock

from dataref_bench import checkpoint, cli, report, scale, transfers
from dataref_bench.azurite import Azurite, kept_properties, stored_checksums
from dataref_bench.cases import CASES, STAMPINGS, large_label, rotation, title
from dataref_bench.procs import MIB
from dataref_bench.tools import Tools


def run(wall, **kw):
    return dict({"wall": wall, "rss_mib": 20.0, "cpu": 1.0, "azurite_cpu": 0.5,
                 "other_cpu": 0.0}, **kw)


def args_of(*argv):
    return cli.parse_args(list(argv))[0]


class Interleaving(unittest.TestCase):
    def test_two_tools_alternate(self):
        tools = ["dataref", "rclone"]
        self.assertEqual([rotation(tools, r) for r in range(3)],
                         [["dataref", "rclone"], ["rclone", "dataref"], ["dataref", "rclone"]])

    def test_three_tools_rotate_through_every_position(self):
        tools = ["dataref", "rclone", "curl"]
        orders = [rotation(tools, r) for r in range(4)]
        self.assertEqual(orders[:3], [["dataref", "rclone", "curl"],
                                      ["rclone", "curl", "dataref"],
                                      ["curl", "dataref", "rclone"]])
        self.assertEqual(orders[3], orders[0])
        for i in range(3):
            self.assertEqual({o[i] for o in orders[:3]}, set(tools))

    def test_four_tools_rotate(self):
        tools = ["dataref", "rclone", "download", "dataref+cache"]
        self.assertEqual(rotation(tools, 1), ["rclone", "download", "dataref+cache", "dataref"])
        self.assertEqual(rotation(tools, 4), tools)

    def test_rotation_does_not_change_its_argument(self):
        tools = ["a", "b"]
        rotation(tools, 1)
        self.assertEqual(tools, ["a", "b"])


class Titles(unittest.TestCase):
    def test_sizes_in_titles(self):
        self.assertEqual(large_label(1024), "1 GiB")
        self.assertEqual(large_label(2560), "2.5 GiB")
        self.assertEqual(large_label(16), "16 MiB")
        self.assertEqual(title(3, 16, 40, 64, 200), "download 40 × 64 KiB")
        self.assertEqual(title(8, 1024, 2000, 64, 10000), "`ls -l` of 10,000 entries, cold")
        self.assertEqual(title(1, 1024, 2000, 64, 10000), "download 1 × 1 GiB")

    def test_ten_cases(self):
        self.assertEqual(sorted(CASES), list(range(1, 11)))
        self.assertEqual([c for c in CASES if CASES[c][1] == "mount"], [5, 6, 7, 8, 9])
        self.assertEqual([c for c in CASES if CASES[c][1] == "stamped"], [10])

    def test_case_10_title_and_stampings(self):
        self.assertEqual(title(10, 1024, 2000, 64, 10000),
                         "download of one 1 GiB blob, by how it is stamped")
        self.assertEqual(list(STAMPINGS), ["crc64", "md5", "none"])
        self.assertEqual([(v[1], v[2]) for v in STAMPINGS.values()],
                         [({"crc64", "md5"}, "crc64"), ({"md5"}, "md5"), (set(), "unchecked")])


class Ratios(unittest.TestCase):
    def test_median(self):
        self.assertEqual(report.median([3, 1, 2]), 2)
        self.assertEqual(report.median(iter([1, 2, 3, 4])), 2.5)
        self.assertNotEqual(report.median([]), report.median([]))  # NaN

    def test_med_of_a_tool_without_runs_is_none(self):
        results = {1: {"dataref": [run(1.0), run(3.0), run(2.0)]}}
        self.assertEqual(report.med(results, 1, "dataref", "wall"), 2.0)
        self.assertIsNone(report.med(results, 1, "rclone", "wall"))
        self.assertIsNone(report.med(results, 2, "dataref", "wall"))

    def test_speed_ratio_with_the_range_of_rounds(self):
        runs = {"dataref": [run(1.0), run(2.0), run(4.0)],
                "rclone": [run(3.0), run(3.0), run(6.0)]}
        value, text = report.speed_ratio(runs, "rclone")
        self.assertAlmostEqual(value, 1.5)
        self.assertEqual(text, "1.50× (1.50–3.00)")

    def test_speed_ratio_of_one_round_has_no_range(self):
        value, text = report.speed_ratio({"dataref": [run(2.0)], "curl": [run(1.0)]}, "curl")
        self.assertEqual((value, text), (0.5, "0.50×"))

    def test_speed_ratio_of_a_missing_tool(self):
        self.assertEqual(report.speed_ratio({"dataref": [run(1.0)]}, "curl"), (None, "—"))

    def test_cells(self):
        self.assertEqual(report.fmt_mib_s(1024 * MIB, 2.0), "512")
        self.assertEqual(report.fmt_mib_s(4096 * MIB, 2.0), "2,048")
        self.assertEqual(report.cell(None, MIB), "—")
        self.assertEqual(report.cell(2.0, 1024 * MIB), "2.00 (512)")
        self.assertEqual(report.cell(2.0, 1024 * MIB, " MiB/s"), "2.00 (512 MiB/s)")
        self.assertEqual(report.cell(30.4, fmt="{:.0f}"), "30")


class Tables(unittest.TestCase):
    def setUp(self):
        self.args = args_of("--rounds", "2", "--large-mib", "16", "--small-count", "40",
                            "--wide", "200")
        self.sizes = {"large": 16 * MIB, "small": 40 * 64 * 1024, "wide": 200}

    def test_transfer_row(self):
        results = {1: {"dataref": [run(1.0), run(1.0)], "rclone": [run(2.0), run(1.0)],
                       "curl": [run(0.5), run(0.5)]}}
        lines = report.transfer_table(results, [1], self.args, self.sizes)
        self.assertTrue(lines[0].startswith("dataref vs rclone vs curl on Azurite (2 round(s)"))
        self.assertEqual(lines[2].count("|"), 12)
        self.assertIn("| CPU ms per file, dataref / rclone | target | verdict |", lines[2])
        self.assertEqual(lines[3], "|---|---|---|---|---|---|---|---|---|---|---|")
        self.assertEqual(lines[4], "| 1. download 1 × 16 MiB | 1.00 (16) | 1.50 (11) "
                                   "| 0.50 (32) | 1.50× (1.00–2.00) | 0.50× (0.50–0.50) "
                                   "| 20 / 20 | 1.00 / 1.00 | — | — | — |")

    def test_upload_row_has_no_curl(self):
        results = {4: {"dataref": [run(1.0)], "rclone": [run(2.0)]}}
        row = report.transfer_table(results, [4], self.args, self.sizes)[-1]
        self.assertIn("| 4. upload 40 × 64 KiB | 1.00 (2) | 2.00 (1) | — | 2.00× | — |", row)

    def test_cpu_per_small_file_and_its_verdict(self):
        # 40 files: CPU seconds × 1000 / 40 = ms per file; met when dataref's ≤ half rclone's.
        results = {
            3: {"dataref": [run(1.0, cpu=0.5), run(1.0, cpu=0.3)],
                "rclone": [run(2.0, cpu=1.6), run(2.0, cpu=1.6)], "curl": [run(1.0)] * 2},
            4: {"dataref": [run(1.0, cpu=0.8)], "rclone": [run(2.0, cpu=1.6)]},
            2: {"dataref": [run(1.0)], "rclone": [run(2.0)]},
        }
        self.assertAlmostEqual(report.cpu_ms_per_file(results, 3, "dataref", 40), 10.0)
        self.assertIsNone(report.cpu_ms_per_file(results, 3, "download", 40))
        lines = report.transfer_table(results, [3, 4, 2], self.args, self.sizes)
        header, rows = lines[2], lines[4:]
        for row in rows:
            self.assertEqual(row.count("|"), header.count("|"))
        self.assertTrue(rows[0].endswith(
            "| 0.40 / 1.60 | 10.00 / 40.00 | CPU/file ≤ 0.5× rclone's | met |"), rows[0])
        # Exactly half is met; more than half is missed.
        self.assertTrue(rows[1].endswith(
            "| 20.00 / 40.00 | CPU/file ≤ 0.5× rclone's | met |"), rows[1])
        results[4]["dataref"] = [run(1.0, cpu=0.81)]
        row = report.transfer_table(results, [4], self.args, self.sizes)[-1]
        self.assertTrue(row.endswith("| 20.25 / 40.00 | CPU/file ≤ 0.5× rclone's | **missed** |"))
        # Large cases have no per-file column, target or verdict.
        self.assertTrue(rows[2].endswith("| — | — | — |"))

    def test_judge(self):
        self.assertEqual(report.judge([]), ("—", "—"))
        self.assertEqual(report.judge([("a", 2.0, 2.0), ("b", 1.0, 1.3), ("c", None, 1)]),
                         ("a; b; c", "met; **missed**; —"))

    def stamped_results(self):
        checked = lambda by: {k: int(k == by) for k in transfers.CHECKS}
        res = {}
        for stamping, dataref_wall in (("crc64", 1.0), ("md5", 2.0), ("none", 1.0)):
            by = STAMPINGS[stamping][2]
            res[f"dataref/{stamping}"] = [run(dataref_wall, cpu=0.5, checked=checked(by))] * 2
            res[f"rclone/{stamping}"] = [run(1.4, cpu=1.5), run(1.6, cpu=1.5)]
            res[f"curl/{stamping}"] = [run(0.95), run(0.95)]
        return {10: res}

    def test_stamped_rows_targets_and_verdicts(self):
        lines = report.stamped_table(self.stamped_results(), 10, self.args, self.sizes)
        self.assertTrue(lines[0].startswith(
            "Case 10, download of one 16 MiB blob, by how it is stamped: the same content "
            "stored three times (2 round(s)"))
        header, rows = lines[2], lines[4:]
        self.assertEqual(lines[3], "|---|---|---|---|---|---|---|---|---|---|")
        self.assertEqual(len(rows), 3)
        for row in rows:
            self.assertEqual(row.count("|"), header.count("|"))
        self.assertEqual(
            rows[0], "| 10. CRC64 + MD5 (as dataref uploads) | 1.00 (16) | 1.50 (11) "
            "| 0.95 (17) | 1.50× (1.40–1.60) | 0.95× (0.95–0.95) | 0.50 / 1.50 | 1 by CRC64 "
            "| ≥ 1.3× rclone; ≥ 0.9× curl | met; met |")
        self.assertTrue(rows[1].startswith("| 10. MD5 only (metadata cleared) | 2.00 (8) "))
        self.assertTrue(rows[1].endswith("| 0.50 / 1.50 | 1 by MD5 | — | — |"))
        self.assertIn("| 10. no checksum (MD5 cleared too) |", rows[2])
        self.assertTrue(rows[2].endswith("| 1 unchecked | — | — |"))

    def test_stamped_verdict_missed_and_missing_runs(self):
        results = self.stamped_results()
        results[10]["rclone/crc64"] = [run(1.1), run(1.1)]
        row = report.stamped_table(results, 10, self.args, self.sizes)[4]
        self.assertTrue(row.endswith("| ≥ 1.3× rclone; ≥ 0.9× curl | **missed**; met |"))
        row = report.stamped_table({10: {}}, 10, self.args, self.sizes)[4]
        self.assertEqual(row, "| 10. CRC64 + MD5 (as dataref uploads) | — | — | — | — | — "
                              "| — / — | — | ≥ 1.3× rclone; ≥ 0.9× curl | —; — |")

    def test_checked_text(self):
        c = lambda a, b, n: {"crc64": a, "md5": b, "unchecked": n}
        self.assertEqual(report.checked_text([]), "—")
        self.assertEqual(report.checked_text([run(1.0)]), "—")
        self.assertEqual(report.checked_text([run(1.0, checked=c(1, 0, 0))] * 3), "1 by CRC64")
        self.assertEqual(report.checked_text([run(1.0, checked=c(0, 1, 0)),
                                              run(1.0, checked=c(0, 0, 1))]),
                         "1 by MD5 / 1 unchecked")
        self.assertEqual(report.checked_text([run(1.0, checked=c(0, 0, 0))]), "nothing")

    def mount_results(self):
        mount = lambda wall, rss: run(wall, daemon_rss_mib=rss, daemon_cpu=0.2)
        return {
            5: {"dataref": [mount(1.0, 200)], "rclone": [mount(2.0, 100)],
                "download": [run(1.5)], "dataref+cache": [mount(1.2, 210)]},
            8: {"dataref": [mount(1.0, 30)], "rclone": [mount(1.2, 70)]},
            9: {"dataref": [mount(0.1, 30)], "rclone": [mount(0.1, 70)]},
        }

    def test_mount_rows_and_verdicts(self):
        lines = report.mount_table(self.mount_results(), [5, 8, 9], self.args, self.sizes)
        self.assertEqual(lines[3], "|---|---|---|---|---|---|---|---|---|---|---|---|")
        header, rows = lines[2], lines[4:]
        self.assertEqual(len(rows), 3)
        for row in rows:
            self.assertEqual(row.count("|"), header.count("|"))
        self.assertEqual(
            rows[0], "| 5. `cat` of 1 × 16 MiB | 1.00 (16 MiB/s) | 2.00 (8 MiB/s) "
            "| 1.50 (11 MiB/s) | 1.20 (13 MiB/s) | 2.00× | 1.50× | — | 200 / 100 (download 20) "
            "| 0.20 / 0.20 (download 1.00) "
            "| ≥ 1.5× rclone; ≥ 0.8× download; RSS ≤ 512 MiB | met; met; met |")
        self.assertTrue(rows[1].endswith("| ≥ 1.5× rclone; RSS ≤ 512 MiB | **missed**; met |"))
        self.assertIn("| 10.00× / 12.00× |", rows[2])
        self.assertTrue(rows[2].endswith(
            "| ≥ 1.5× rclone; cold/warm ≥ 5×; RSS ≤ 512 MiB | **missed**; met; met |"))

    def test_render_puts_the_tables_then_the_notes(self):
        results = {**self.mount_results(),
                   1: {"dataref": [run(1.0)], "rclone": [run(2.0)], "curl": [run(0.5)]}}
        versions = {"azurite": "3.35.0", "rclone": "rclone v1.60", "curl": "curl 7.88"}
        text = report.render(results, [1, 5, 8, 9], self.args, self.sizes, versions, 90.0,
                             [(1, "large", 1, 1)], {"RUST_LOG": "debug"}, 2)
        tables, notes = text.split("\n\nNotes:\n")
        self.assertEqual(len([l for l in tables.splitlines() if l.startswith("|---")]), 2)
        self.assertIn("\n\ndataref mount vs rclone mount", tables)
        self.assertIn("Total measuring time 1.5 min.", notes)
        self.assertIn("(this shell had RUST_LOG set)", notes)
        self.assertIn("- Case 1 preload of the large data (by `dataref upload`): 1 of 1", notes)
        self.assertIn("every warm listing was)", notes)
        self.assertIn("1/curl: tool 2.00, Azurite 1.00", notes)
        self.assertTrue(notes.endswith("at most 0.00 cores (case 9, rclone)."))

    def test_render_with_case_10_between_transfers_and_mounts(self):
        results = {**self.mount_results(), **self.stamped_results(),
                   3: {"dataref": [run(1.0)], "rclone": [run(2.0)], "curl": [run(0.5)]}}
        versions = {"azurite": "3.35.0", "rclone": "rclone v1.60", "curl": "curl 7.88"}
        stamps = {"crc64": {"crc64": "ae8b14860a799888", "md5": "M=="},
                  "md5": {"crc64": None, "md5": "M=="}, "none": {"crc64": None, "md5": None}}
        text = report.render(results, [3, 10, 5], self.args, self.sizes, versions, 60.0, [],
                             {}, 2, stamps)
        tables, notes = text.split("\n\nNotes:\n")
        self.assertEqual(len([l for l in tables.splitlines() if l.startswith("|---")]), 3)
        parts = tables.split("\n\n")  # each table: its title, a blank line, its rows
        self.assertEqual(len(parts), 6)
        self.assertTrue(parts[0].startswith("dataref vs rclone vs curl"))
        self.assertTrue(parts[2].startswith("Case 10, "))
        self.assertTrue(parts[4].startswith("dataref mount vs rclone mount"))
        self.assertIn("3. download 40 × 64 KiB", parts[1])
        self.assertNotIn("10.", parts[1])
        self.assertEqual(len(parts[3].splitlines()), 5)
        self.assertIn("(stamped-crc64/: crc64 ae8b14860a799888, Content-MD5 M==; stamped-md5/: "
                      "crc64 none, Content-MD5 M==; stamped-none/: crc64 none, Content-MD5 "
                      "none; every Content-MD5 the source's).", notes)
        self.assertIn("`checked: 1 by CRC64` / `1 by MD5` / `1 unchecked`", notes)
        self.assertIn("10/dataref/crc64: tool 0.50, Azurite 0.50", notes)

    def test_only_mount_cases_print_no_transfer_table(self):
        text = report.render(self.mount_results(), [5], self.args, self.sizes,
                             {"azurite": "a", "rclone": "r", "curl": "c"}, 1.0, [], {}, 2)
        self.assertTrue(text.startswith("dataref mount vs rclone mount"))
        self.assertNotIn("- Transfers:", text)


class Stamping(unittest.TestCase):
    MD5 = "1B2M2Y8AsgTpgAmY7PhCfg=="

    def test_stored_checksums_from_a_head(self):
        self.assertEqual(stored_checksums({"X-Ms-Meta-Crc64": "AE8B14860A799888",
                                           "Content-MD5": self.MD5, "ETag": '"x"'}),
                         {"crc64": "AE8B14860A799888", "md5": self.MD5})
        self.assertEqual(stored_checksums({"content-md5": self.MD5, "x-ms-meta-other": "1"}),
                         {"crc64": None, "md5": self.MD5})
        self.assertEqual(stored_checksums({"Content-MD5": "", "x-ms-meta-crc64": ""}),
                         {"crc64": None, "md5": None})
        with self.assertRaisesRegex(ValueError, "not 16 hex digits"):
            stored_checksums({"x-ms-meta-crc64": "ae8b14860a79988"})

    def test_clearing_the_md5_keeps_the_other_content_properties(self):
        head = {"Content-Type": "application/octet-stream", "Content-MD5": self.MD5,
                "Content-Length": "5", "Cache-Control": "no-cache", "content-encoding": "",
                "x-ms-meta-crc64": "ae8b14860a799888", "ETag": '"x"'}
        self.assertEqual(kept_properties(head),
                         {"x-ms-blob-content-type": "application/octet-stream",
                          "x-ms-blob-cache-control": "no-cache"})
        self.assertEqual(kept_properties({}), {})

    def test_each_stamping_stores_exactly_what_it_intends(self):
        full = {"crc64": "ae8b14860a799888", "md5": self.MD5}
        md5_only = {"crc64": None, "md5": self.MD5}
        nothing = {"crc64": None, "md5": None}
        err = lambda found, s: transfers.stamping_error(found, s, self.MD5)
        self.assertIsNone(err(full, "crc64"))
        self.assertIsNone(err(md5_only, "md5"))
        self.assertIsNone(err(nothing, "none"))
        self.assertIn("stores crc64 + md5, expected md5", err(full, "md5"))
        self.assertIn("stores md5, expected none", err(md5_only, "none"))
        self.assertIn("stores none, expected crc64 + md5", err(nothing, "crc64"))
        self.assertIn("stores crc64, expected md5",
                      err({"crc64": "ae8b14860a799888", "md5": None}, "md5"))
        self.assertIn("is not the source's", err({"crc64": None, "md5": "X=="}, "md5"))

    def test_summary_line_counts(self):
        line = ("downloaded 1 file, 1.00 GiB in 3.2 s (320 MiB/s), checked: 1 by CRC64, 0 by "
                "MD5, 0 unchecked\n")
        self.assertEqual(transfers.parse_checked(line), {"crc64": 1, "md5": 0, "unchecked": 0})
        self.assertEqual(transfers.parse_checked(
            "skipped x\n" + line.replace("1 by CRC64, 0 by MD5", "0 by CRC64, 12 by MD5")),
            {"crc64": 0, "md5": 12, "unchecked": 0})
        self.assertIsNone(transfers.parse_checked("downloaded 1 file, 1.00 GiB in 3.2 s\n"))

    def test_expected_checks(self):
        self.assertEqual(transfers.expected_checked("crc64"),
                         {"crc64": 1, "md5": 0, "unchecked": 0})
        self.assertEqual(transfers.expected_checked("md5"), {"crc64": 0, "md5": 1, "unchecked": 0})
        self.assertEqual(transfers.expected_checked("none", 3),
                         {"crc64": 0, "md5": 0, "unchecked": 3})
        # A fallback to a weaker check is a mismatch.
        self.assertNotEqual(transfers.parse_checked("checked: 0 by CRC64, 1 by MD5, 0 unchecked"),
                            transfers.expected_checked("crc64"))

    def test_order_of_a_round(self):
        stampings, tools = list(STAMPINGS), ["dataref", "rclone", "curl"]
        self.assertEqual(transfers.stamped_order(stampings, tools, 0), [
            ("crc64", "dataref"), ("crc64", "rclone"), ("crc64", "curl"),
            ("md5", "rclone"), ("md5", "curl"), ("md5", "dataref"),
            ("none", "curl"), ("none", "dataref"), ("none", "rclone")])
        for rnd in range(3):
            order = transfers.stamped_order(stampings, tools, rnd)
            self.assertEqual(sorted(order), sorted((s, t) for s in stampings for t in tools))
            by_stamping = [[t for s2, t in order if s2 == s] for s in stampings]
            for pos in range(3):  # every tool in every position within the round
                self.assertEqual({o[pos] for o in by_stamping}, set(tools))
        firsts = [transfers.stamped_order(stampings, tools, r)[0][0] for r in range(3)]
        self.assertEqual(sorted(firsts), sorted(stampings))

    def test_download_commands_of_a_stamped_blob(self):
        tools = object.__new__(Tools)
        tools.dr, tools.rc = ["dataref"], ["rclone"]
        bench = types.SimpleNamespace(tools=tools, azurite=Azurite("azurite", 10000, "/x", "s=1"))
        cmds = transfers.download_cmds(bench, "large", "/out", transfers.stamped_prefix("md5"))
        self.assertEqual(cmds["dataref"][-4:], ["--no-progress", "--overwrite", "--verify",
                                                "auto"])
        self.assertIn("stamped-md5", cmds["dataref"])
        self.assertEqual(cmds["rclone"][:4], ["rclone", "copy", "az:bench/stamped-md5",
                                              "/out/stamped-md5"])
        self.assertEqual(cmds["curl"][-1],
                         "http://127.0.0.1:10000/devstoreaccount1/bench/stamped-md5/big.bin?s=1")
        # Case 1's blob: no --verify (dataref's default), the usual prefix.
        cmds = transfers.download_cmds(bench, "large", "/out")
        self.assertNotIn("--verify", cmds["dataref"])
        self.assertIn("big", cmds["dataref"])
        self.assertTrue(cmds["curl"][-1].endswith("/bench/big/big.bin?s=1"))


class Arguments(unittest.TestCase):
    def test_defaults(self):
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("BENCH_ROUNDS", None)
            args, cases = cli.parse_args([])
        self.assertEqual(cases, list(range(1, 11)))
        self.assertEqual((args.rounds, args.large_mib, args.small_count, args.small_kib,
                          args.wide, args.max_wait), (3, 1024, 2000, 64, 10000, 120))
        self.assertFalse(args.no_build or args.keep)
        self.assertIsNone(args.json)

    def test_rounds_from_the_environment(self):
        with mock.patch.dict(os.environ, {"BENCH_ROUNDS": "2"}):
            self.assertEqual(args_of().rounds, 2)

    def test_cases_in_the_order_given(self):
        self.assertEqual(cli.parse_args(["--cases", "9, 5,1,"])[1], [9, 5, 1])

    def test_dataref_implies_no_build(self):
        self.assertTrue(args_of("--dataref", "/bin/true").no_build)

    def test_bad_cases_and_rounds_exit(self):
        for argv in (["--cases", "0"], ["--cases", "1,11"], ["--rounds", "0"]):
            with contextlib.redirect_stderr(io.StringIO()) as err, \
                    self.assertRaises(SystemExit) as exit_:
                cli.parse_args(argv)
            self.assertEqual(exit_.exception.code, 1)
            self.assertIn("--cases takes 1..10", err.getvalue())

    def test_disk_needed(self):
        args = args_of("--rounds", "1", "--large-mib", "16", "--small-count", "40")
        small = 40 * 64 * 1024
        self.assertEqual(cli.disk_needed(args, False), 2 * 16 * MIB + 5 * small + 512 * MIB)
        self.assertEqual(cli.disk_needed(args, True), 3 * 16 * MIB + 5 * small + 512 * MIB)


class Scale(unittest.TestCase):
    def test_sizes_are_sorted_positive_and_fill_whole_folders(self):
        self.assertEqual(scale.parse_sizes("100000, 1000,10000"), [1000, 10000, 100000])
        self.assertEqual(scale.parse_sizes("50"), [50])
        for bad in ("", "0", "-5", "1500"):
            with self.assertRaises(ValueError, msg=bad):
                scale.parse_sizes(bad)
        self.assertEqual(scale.layout(50), (1, 50))
        self.assertEqual(scale.layout(10000), (10, 1000))

    def test_growth_compares_the_marginal_cost_of_the_last_and_first_steps(self):
        # A fixed 0.5 s, then 0.1 s per 1,000 up to 10,000 and 0.12 s per 1,000 after.
        rows = [{"n": 1000, "find": 0.6}, {"n": 10000, "find": 1.5},
                {"n": 100000, "find": 12.3}]
        self.assertAlmostEqual(scale.growth(rows, "find"), 1.2)
        self.assertIsNone(scale.growth(rows[:2], "find"))
        flat = [dict(r, find=1.0) for r in rows]
        self.assertIsNone(scale.growth(flat, "find"), "a first step of nothing: no ratio")
        self.assertEqual(scale.verdict(1.2), "met")
        self.assertEqual(scale.verdict(1.6), "**missed**")
        self.assertIsNone(scale.growth(rows[:1], "find"))
        self.assertEqual(scale.verdict(None), "—")

    def test_the_table_has_a_row_per_size_and_the_growth_row(self):
        row = lambda n, k: {"n": n, "download": 0.5 * k, "download_rss": 20 + k,
                            "find": 0.2 * k, "ls": 0.4 * k, "mount_rss": 15 + k}
        text = scale.table([row(1000, 1), row(10000, 10), row(100000, 150)])
        lines = text.splitlines()
        self.assertEqual(len(lines), 6)
        self.assertIn("| 1,000 | 0.50 (500) | 21 | 0.20 (200) | 0.40 (400) | 16 (16.00) |",
                      lines[2])
        self.assertIn("| 10,000 | 5.00 (500) |", lines[3])
        # Each 1,000 more cost 0.5 s up to 10,000 and 0.78 s after: 1.56x, missed.
        self.assertIn("1.56× **missed**", lines[5])

    def test_the_scale_option_is_parsed_and_checked(self):
        args, _ = cli.parse_args(["--scale", "10000,1000"])
        self.assertEqual(args.scale, [1000, 10000])
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit):
            cli.parse_args(["--scale", "1500"])

    def test_the_scale_study_runs_on_a_local_datastore_or_through_azurite(self):
        self.assertEqual(cli.parse_args(["--scale", "1000"])[0].scale_on, "local")
        args, _ = cli.parse_args(["--scale", "1000", "--scale-on", "azurite"])
        self.assertEqual(args.scale_on, "azurite")
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit):
            cli.parse_args(["--scale", "1000", "--scale-on", "s3"])
        self.assertEqual(scale.title("local", 3),
                         "## Scale: a local datastore, medians of 3 round(s)")
        self.assertIn("Azurite", scale.title("azurite", 1))


class CheckpointTable(unittest.TestCase):
    """`--checkpoint`: medians, ratios over the rounds, and the two goals' verdicts."""

    def rows(self, durable):
        return [{"plain_blocked": 2.0, "sync_blocked": s, "durable": durable, "upload": 2.5}
                for s in (2.0, 2.1, 2.4)]

    def test_met_within_the_goals(self):
        table = checkpoint.table(self.rows(durable=3.0), 1024)
        self.assertIn("| script blocked saving | 2.10 | 2.00", table)
        self.assertIn("1.05× (1.00–1.20) | ≤ 1.10× | met |", table)
        # 1.1 x 2.5 s + 1 s = 3.75 s
        self.assertIn("| commit → durable | 3.00 | 2.50", table)
        self.assertIn("(3.75 s) | met |", table)

    def test_missed_past_the_bound(self):
        table = checkpoint.table(self.rows(durable=4.0), 1024)
        self.assertIn("(3.75 s) | **missed** |", table)


if __name__ == "__main__":
    unittest.main()
