"""Unit tests of the benchmark's pure parts: the interleaving order, case titles, medians,
ratios and their formatting, the report's tables, and argument parsing. Nothing is started.

Run: python3 -m unittest discover -s benches
"""

import contextlib
import io
import os
import unittest
from unittest import mock

from dataref_bench import cli, report
from dataref_bench.cases import CASES, large_label, rotation, title
from dataref_bench.procs import MIB


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

    def test_nine_cases(self):
        self.assertEqual(sorted(CASES), list(range(1, 10)))
        self.assertEqual([c for c in CASES if CASES[c][1] == "mount"], [5, 6, 7, 8, 9])


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
        self.assertEqual(lines[2].count("|"), 9)
        self.assertEqual(lines[3], "|---|---|---|---|---|---|---|---|")
        self.assertEqual(lines[4], "| 1. download 1 × 16 MiB | 1.00 (16) | 1.50 (11) "
                                   "| 0.50 (32) | 1.50× (1.00–2.00) | 0.50× (0.50–0.50) "
                                   "| 20 / 20 | 1.00 / 1.00 |")

    def test_upload_row_has_no_curl(self):
        results = {4: {"dataref": [run(1.0)], "rclone": [run(2.0)]}}
        row = report.transfer_table(results, [4], self.args, self.sizes)[-1]
        self.assertIn("| 4. upload 40 × 64 KiB | 1.00 (2) | 2.00 (1) | — | 2.00× | — |", row)

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

    def test_only_mount_cases_print_no_transfer_table(self):
        text = report.render(self.mount_results(), [5], self.args, self.sizes,
                             {"azurite": "a", "rclone": "r", "curl": "c"}, 1.0, [], {}, 2)
        self.assertTrue(text.startswith("dataref mount vs rclone mount"))
        self.assertNotIn("- Transfers:", text)


class Arguments(unittest.TestCase):
    def test_defaults(self):
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("BENCH_ROUNDS", None)
            args, cases = cli.parse_args([])
        self.assertEqual(cases, list(range(1, 10)))
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
        for argv in (["--cases", "0"], ["--cases", "1,10"], ["--rounds", "0"]):
            with contextlib.redirect_stderr(io.StringIO()) as err, \
                    self.assertRaises(SystemExit) as exit_:
                cli.parse_args(argv)
            self.assertEqual(exit_.exception.code, 1)
            self.assertIn("--cases takes 1..9", err.getvalue())

    def test_disk_needed(self):
        args = args_of("--rounds", "1", "--large-mib", "16", "--small-count", "40")
        small = 40 * 64 * 1024
        self.assertEqual(cli.disk_needed(args, False), 2 * 16 * MIB + 5 * small + 512 * MIB)
        self.assertEqual(cli.disk_needed(args, True), 3 * 16 * MIB + 5 * small + 512 * MIB)


if __name__ == "__main__":
    unittest.main()
