"""Tests for bench/shoalbench/plots.py: each chart kind drawn from a small fixed data set.
Run from the repository root (installs matplotlib first if this python3 lacks it):

    python3 -m unittest bench/test_plots.py
"""

import math
import os
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shoalbench import plots  # noqa: E402
from shoalbench.tools import ensure_matplotlib  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"

CONTENDERS = ["direct", "lambda-model", "fixed-80", "shoal-auto", "capped-serial"]
LATENCIES = {c: [2000 + 150 * i + 37 * k for k in range(40)] for i, c in enumerate(CONTENDERS)}
INSTANCES = {c: [(t * 0.5, min(t, 3 + 4 * i)) for t in range(20)] for i, c in enumerate(CONTENDERS)}


def setUpModule():
    ensure_matplotlib()


class Charts(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)

    def path(self, name):
        # A folder that does not exist yet: the scenarios rely on the chart creating it.
        return os.path.join(self._tmp.name, "plots", name)

    def texts(self, path):
        """The SVG's text, after checking that it parses as SVG with a white page."""
        root = ET.parse(path).getroot()
        self.assertEqual(root.tag, SVG + "svg")
        # 720 x 400 px, the size the report's layout expects (the SVG is in points).
        self.assertEqual(root.get("viewBox"), "0 0 540 300")
        return [t.strip() for t in root.itertext() if t.strip()]

    def series_colours(self, path, n):
        """The first n palette colours, in the order the file first draws them (black is
        left out: the axes are drawn in it too)."""
        with open(path, encoding="utf-8") as fh:
            svg = fh.read().lower()
        wanted = [c.lower() for c in plots.PALETTE[:n] if c != "#000000"]
        return sorted((c for c in wanted if c in svg), key=svg.index)

    def test_line_chart_names_every_series_and_its_axes(self):
        p = self.path("sustained-instances.svg")
        plots.line_chart(p, "sustained: instances over time", "seconds", "instances", INSTANCES, step=True)
        texts = self.texts(p)
        for want in ["sustained: instances over time", "seconds", "instances", *CONTENDERS]:
            self.assertIn(want, texts)
        # One colour per contender, in the palette's order.
        self.assertEqual(self.series_colours(p, len(CONTENDERS)), [c.lower() for c in plots.PALETTE[: len(CONTENDERS)]])
        # Counts get whole-number ticks only.
        ticks = [float(t) for t in texts if t.replace(".", "", 1).isdigit()]
        self.assertTrue(ticks)
        self.assertTrue(all(t.is_integer() for t in ticks), ticks)

    def test_line_chart_with_gaps_and_an_empty_series(self):
        p = self.path("limit.svg")
        series = {"mean limit": [(0, 16), (1, float("nan")), (2, 8), (3, None), (4, 1.5)], "nothing": []}
        plots.line_chart(p, "limit vs Little's law", "seconds", "in-flight limit", series)
        texts = self.texts(p)
        self.assertIn("mean limit", texts)
        self.assertIn("nothing (no data)", texts)
        self.assertNotIn("no data", texts)

    def test_no_data_at_all_is_said_on_the_chart(self):
        p = self.path("empty.svg")
        plots.line_chart(p, "empty", "seconds", "instances", {"direct": []})
        self.assertIn("no data", self.texts(p))

    def test_cdf_chart_linear_and_log(self):
        for log_x in (False, True):
            with self.subTest(log_x=log_x):
                p = self.path(f"latency-{log_x}.svg")
                plots.cdf_chart(p, "seed-burst-10: latency", "latency (ms)", LATENCIES, log_x=log_x)
                texts = self.texts(p)
                for want in ["seed-burst-10: latency", "latency (ms)", "fraction of requests", *CONTENDERS]:
                    self.assertIn(want, texts)
        # Log axis: whole decades around 2000-7900 ms, in plain numbers.
        self.assertIn("1000", texts)
        self.assertIn("10000", texts)

    def test_bar_chart_labels_values_and_missing_ones(self):
        p = self.path("overhead-throughput.svg")
        cats = ["1 concurrent", "16 concurrent"]
        series = {"direct": [6388.4, 40279.3], "shoal-native": [2849.5, None], "shoal-provided": [0.0123, float("nan")]}
        plots.bar_chart(p, "overhead: throughput", "requests per second", cats, series)
        texts = self.texts(p)
        for want in ["overhead: throughput", "requests per second", *cats, *series, "6388", "40279", "0.0123"]:
            self.assertIn(want, texts)
        self.assertEqual(texts.count("n/a"), 2)

    def test_same_input_same_bytes(self):
        """Re-running a report must not churn the committed plots in git."""
        outputs = []
        for n in range(2):
            p = self.path(f"again-{n}.svg")
            plots.cdf_chart(p, "again", "latency (ms)", LATENCIES, log_x=True)
            with open(p, "rb") as fh:
                outputs.append(fh.read())
        self.assertEqual(outputs[0], outputs[1])
        self.assertNotIn(b"<dc:date>", outputs[0])


if __name__ == "__main__":
    unittest.main()
