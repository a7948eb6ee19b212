"""Tests for bench/svgplot.py. Run from the repository root:

    python3 -m unittest bench/test_svgplot.py
"""

import math
import os
import re
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import svgplot  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
NAN = float("nan")
INF = float("inf")


class Base(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self._n = 0

    def tearDown(self):
        self._tmp.cleanup()

    def path(self):
        self._n += 1
        return os.path.join(self.dir, f"chart{self._n}.svg")

    def check(self, path, title, names=()):
        """Parse the file, check the frame and that title and names are there."""
        with open(path, "rb") as fh:
            raw = fh.read()
        root = ET.fromstring(raw)
        self.assertEqual(root.tag, SVG + "svg")
        self.assertEqual(root.get("viewBox"), "0 0 720 400")
        self.assertEqual(root.get("font-family"), "sans-serif")
        rects = root.findall(SVG + "rect")
        self.assertTrue(rects and rects[0].get("fill") == "#ffffff", "white background first")
        text = "".join(root.itertext())
        self.assertIn(title, text)
        for name in names:
            self.assertIn(name, text)
        # No non-finite numbers leak into attributes.
        for el in root.iter():
            for value in el.attrib.values():
                self.assertIsNone(re.search(r"\b(nan|inf)\b", value, re.I), (el.tag, value))
        return root, raw.decode("utf-8")


class LineChart(Base):
    SERIES = {
        "shoal (auto)": [(0, 0), (1, 2), (2, 4), (3, 4), (4, 1)],
        "lambda (c=1)": [(0, 0), (1, 10), (2, 50), (3, 100), (4, 100)],
    }

    def test_basic_and_step(self):
        for step in (False, True):
            p = self.path()
            svgplot.line_chart(p, "Instances over time", "time (s)", "instances", self.SERIES, step=step)
            root, text = self.check(p, "Instances over time", ["shoal (auto)", "lambda (c=1)", "time (s)", "instances"])
            self.assertEqual(len(root.findall(f".//{SVG}polyline")), 2)

    def test_step_is_axis_aligned(self):
        p = self.path()
        svgplot.line_chart(p, "t", "x", "y", {"a": [(0, 1), (1, 3), (2, 2)]}, step=True)
        root, _ = self.check(p, "t", ["a"])
        pts = [tuple(map(float, xy.split(","))) for xy in root.find(f".//{SVG}polyline").get("points").split()]
        for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
            self.assertTrue(x1 == x2 or y1 == y2, (x1, y1, x2, y2))

    def test_edge_cases(self):
        cases = {
            "empty dict": {},
            "empty series": {"a": [], "b": []},
            "single point": {"a": [(5, 3)]},
            "all equal": {"a": [(1, 7), (2, 7), (3, 7)], "b": [(1, 7)]},
            "all zero": {"a": [(0, 0), (0, 0)]},
            "negative": {"a": [(-5, -3), (5, -1)]},
            "nan and none": {"a": [(0, NAN), (1, None), (None, 2), (2, 3), (INF, 1), (3, 4)]},
            "malformed points": {"a": [None, (), (1,), "xy", (1, 2)]},
            "none series": {"a": None},
            "huge and tiny": {"a": [(0, 1e-9), (1, 2e-9)], "b": [(1e12, 1e15), (2e12, 3e15)]},
        }
        for label, series in cases.items():
            for step in (False, True):
                with self.subTest(label, step=step):
                    p = self.path()
                    svgplot.line_chart(p, label, "x", "y", series, step=step)
                    self.check(p, label, list(series))
        p = self.path()
        svgplot.line_chart(p, "none", None, None, None, y_min=None)
        self.check(p, "none")

    def test_y_min(self):
        def y_labels(y_min):
            p = self.path()
            svgplot.line_chart(p, "t", "x", "y", {"a": [(0, 50), (1, 60)]}, y_min=y_min)
            root, _ = self.check(p, "t")
            return [t.text for t in root.iter(SVG + "text") if t.get("text-anchor") == "end"]

        self.assertEqual(y_labels(0.0)[0], "0")
        self.assertNotIn("0", y_labels(None))


class CdfChart(Base):
    SERIES = {
        "shoal (auto)": [1.5, 2.0, 2.0, 3.1, 10.0, 12.0, 40.0],
        "lambda (c=1)": [5.0, 50.0, 500.0, 120.0],
    }

    def test_basic(self):
        for log_x in (False, True):
            p = self.path()
            svgplot.cdf_chart(p, "Latency", "latency (ms)", self.SERIES, log_x=log_x)
            root, _ = self.check(p, "Latency", ["shoal (auto)", "lambda (c=1)", "fraction of requests", "latency (ms)"])
            self.assertEqual(len(root.findall(f".//{SVG}polyline")), 2)

    def test_log_ticks_are_decades(self):
        p = self.path()
        svgplot.cdf_chart(p, "t", "ms", {"a": [0.5, 3, 2000]}, log_x=True)
        _, text = self.check(p, "t")
        for label in ("0.1", "1", "10", "100", "1000", "10000"):
            self.assertIn(f'text-anchor="middle">{label}</text>', text)

    def test_many_samples_stay_small(self):
        samples = [math.exp((i * 7919 % 10007) / 1000) for i in range(100_000)]
        p = self.path()
        svgplot.cdf_chart(p, "big", "ms", {"a": samples, "b": [s * 2 for s in samples]}, log_x=True)
        self.check(p, "big", ["a", "b"])
        self.assertLess(os.path.getsize(p), 100_000)

    def test_edge_cases(self):
        cases = {
            "empty dict": {},
            "empty series": {"a": []},
            "single sample": {"a": [42.0]},
            "all equal": {"a": [3.0] * 10},
            "zeros and negatives": {"a": [0, -1, 0, 5, 10], "b": [0.0]},
            "only non-positive": {"a": [0, -2]},
            "nan and none": {"a": [NAN, None, 1.0, INF, "x", 2.0]},
            "none series": {"a": None},
        }
        for label, series in cases.items():
            for log_x in (False, True):
                with self.subTest(label, log_x=log_x):
                    p = self.path()
                    svgplot.cdf_chart(p, label, "ms", series, log_x=log_x)
                    self.check(p, label, list(series))


class BarChart(Base):
    CATS = ["10 requests", "100 requests"]
    SERIES = {"shoal (auto)": [12.345, 1234], "lambda (c=1)": [0.0123, None]}

    def test_basic(self):
        for log_y in (False, True):
            p = self.path()
            svgplot.bar_chart(p, "p99 latency", "ms", self.CATS, self.SERIES, log_y=log_y)
            root, text = self.check(p, "p99 latency", ["shoal (auto)", "lambda (c=1)", "ms", *self.CATS])
            for label in ("12.3", "1234", "0.012", "n/a"):
                self.assertIn(f">{label}</text>", text)
            fills = [r.get("fill") for r in root.iter(SVG + "rect")]
            self.assertEqual(fills.count(svgplot.PALETTE[0]), 2 + 1)  # two bars + legend swatch
            # None draws no bar; on a linear axis 0.0123 next to 1234 is under 0.05 px tall and is
            # left out too, on the log axis it is a visible bar.
            self.assertEqual(fills.count(svgplot.PALETTE[1]), 1 + (1 if log_y else 0))

    def test_edge_cases(self):
        cases = {
            "empty dict": (["a"], {}),
            "no categories": ([], {"s": []}),
            "all none": (["a", "b"], {"s": [None, None]}),
            "all zero": (["a", "b"], {"s": [0, 0]}),
            "all equal": (["a", "b"], {"s": [5, 5], "t": [5, 5]}),
            "single": (["a"], {"s": [1.0]}),
            "negative": (["a", "b"], {"s": [-3, 4], "t": [0, -10]}),
            "nan": (["a", "b"], {"s": [NAN, 2], "t": [INF, None]}),
            "short and long lists": (["a", "b", "c"], {"s": [1], "t": [1, 2, 3, 4, 5]}),
            "none series": (["a"], {"s": None}),
            "many bars": ([f"category {i}" for i in range(12)], {f"s{i}": [i * j + 0.5 for j in range(12)] for i in range(10)}),
            "long names": (["a very long category name that will not fit at all"] * 3,
                           {"a contender with a really very long name indeed": [1, 2, 3]}),
        }
        for label, (cats, series) in cases.items():
            for log_y in (False, True):
                with self.subTest(label, log_y=log_y):
                    p = self.path()
                    svgplot.bar_chart(p, label, "ms", cats, series, log_y=log_y)
                    self.check(p, label, list(series))
        p = self.path()
        svgplot.bar_chart(p, "none", None, None, None)
        self.check(p, "none")

    def test_log_zero_is_clipped_not_dropped(self):
        p = self.path()
        svgplot.bar_chart(p, "t", "ms", ["a", "b"], {"s": [0, 20]}, log_y=True)
        root, text = self.check(p, "t")
        bars = [r for r in root.iter(SVG + "rect") if r.get("fill") == svgplot.PALETTE[0]]
        self.assertEqual(len(bars), 3)  # both bars (0 drawn at 20) + legend swatch
        self.assertIn(">0</text>", text)


class Common(Base):
    def test_escaping(self):
        title = 'a < b & "c" > \'d\''
        name = "<script>&amp;"
        for draw in (
            lambda p: svgplot.line_chart(p, title, "x<", "y&", {name: [(0, 1), (1, 2)]}),
            lambda p: svgplot.cdf_chart(p, title, "x<", {name: [1, 2]}, log_x=True),
            lambda p: svgplot.bar_chart(p, title, "y&", ["c<1>"], {name: [1]}),
        ):
            p = self.path()
            draw(p)
            _, text = self.check(p, title, [name])
            self.assertNotIn("<script>", text)

    def test_control_characters(self):
        p = self.path()
        svgplot.line_chart(p, "bell\x07 title", "x", "y", {"nul\x00name": [(0, 1)]})
        self.check(p, "title")

    def test_deterministic(self):
        series = {"b": [(i, (i * 37 % 11) / 3) for i in range(50)], "a": [(0, 1)]}
        samples = {"b": [(i * 37 % 101) / 7 for i in range(500)], "a": [1.0, 2.0]}
        draws = [
            lambda p: svgplot.line_chart(p, "t", "x", "y", series),
            lambda p: svgplot.line_chart(p, "t", "x", "y", series, step=True),
            lambda p: svgplot.cdf_chart(p, "t", "x", samples),
            lambda p: svgplot.cdf_chart(p, "t", "x", samples, log_x=True),
            lambda p: svgplot.bar_chart(p, "t", "y", ["c1", "c2"], {"b": [1.5, None], "a": [0.01, 300]}),
            lambda p: svgplot.bar_chart(p, "t", "y", ["c1", "c2"], {"b": [1.5, None], "a": [0.01, 300]}, log_y=True),
        ]
        for i, draw in enumerate(draws):
            with self.subTest(i):
                p1, p2 = self.path(), self.path()
                draw(p1)
                draw(p2)
                with open(p1, "rb") as f1, open(p2, "rb") as f2:
                    self.assertEqual(f1.read(), f2.read())

    def test_numbers_are_short(self):
        p = self.path()
        svgplot.line_chart(p, "t", "x", "y", {"a": [(i / 3, i / 7) for i in range(30)]})
        root, _ = self.check(p, "t")
        for el in root.iter():
            for key, value in el.attrib.items():
                if key in ("x", "y", "x1", "x2", "y1", "y2", "width", "height", "cx", "cy", "points"):
                    self.assertIsNone(re.search(r"\.\d\d", value), (key, value))


    def test_colours_follow_series_order(self):
        p1, p2 = self.path(), self.path()
        svgplot.line_chart(p1, "t", "x", "y", {"first": [(0, 1), (1, 2)], "second": [(0, 2), (1, 1)]})
        svgplot.cdf_chart(p2, "t", "x", {"first": [1, 2], "second": [2, 3]})
        for p in (p1, p2):
            root, _ = self.check(p, "t")
            colours = [pl.get("stroke") for pl in root.findall(f".//{SVG}polyline")]
            self.assertEqual(colours, list(svgplot.PALETTE[:2]))

    def test_creates_parent_directory(self):
        p = os.path.join(self.dir, "sub", "dir", "c.svg")
        svgplot.bar_chart(p, "t", "y", ["a"], {"s": [1]})
        self.check(p, "t", ["s"])


class Helpers(unittest.TestCase):
    def test_fmt_value(self):
        cases = {
            1234: "1234", 12.345: "12.3", 0.0123: "0.012", 0: "0", 12.0: "12", 1.5: "1.5",
            -4.25: "-4.25", 0.5: "0.5", 250000: "250000", 1_234_567: "1.23M", 0.00001234: "1.2e-5",
        }
        for v, want in cases.items():
            self.assertEqual(svgplot._fmt_value(v), want, v)

    def test_nice_ticks(self):
        for lo, hi in [(0, 1), (0, 97.3), (3.7, 4.1), (-12, 530), (0, 0.003), (1e6, 7.5e6), (0, 3)]:
            with self.subTest(lo=lo, hi=hi):
                axis = svgplot._linear_axis(lo, hi, 5)
                vals = [v for v, _ in axis.ticks]
                self.assertLessEqual(axis.lo, lo)
                self.assertGreaterEqual(axis.hi, hi)
                self.assertTrue(3 <= len(vals) <= 11, vals)
                step = vals[1] - vals[0]
                mant = step / 10 ** math.floor(math.log10(step) + 1e-9)
                self.assertTrue(any(abs(mant - m) < 1e-6 for m in (1, 2, 5)), step)
                labels = [lbl for _, lbl in axis.ticks]
                self.assertEqual(len(set(labels)), len(labels), labels)
        labels = [lbl for _, lbl in svgplot._linear_axis(0, 1, 5).ticks]
        self.assertEqual(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"])

    def test_log_ticks(self):
        axis = svgplot._log_axis(0.05, 3000)
        self.assertEqual([lbl for _, lbl in axis.ticks], ["0.01", "0.1", "1", "10", "100", "1000", "10000"])


if __name__ == "__main__":
    unittest.main()
