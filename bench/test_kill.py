"""The kill test's own parts, without Shoal: the ledger records what the function reports,
refuses a chosen first delivery (and records none of that call), and the function reads
the three event shapes Shoal hands it (SQS batch, async invoke, Scheduled Event).

    python3 -m unittest bench/test_kill.py
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kill  # noqa: E402


def call(ledger: kill.Ledger, event: dict) -> tuple[bool, str]:
    """Run the function's handler once in a plain `node` (no sandbox) against the ledger."""
    script = (
        f"require({json.dumps(str(kill.FUNCTION / 'index.js'))}).handler({json.dumps(event)}, "
        "{awsRequestId: 'r-1'})"
        ".then(r => console.log('ok ' + JSON.stringify(r)), e => console.log('error ' + e.message))"
    )
    out = subprocess.run(
        ["node", "-e", script], env={"LEDGER": ledger.addr}, capture_output=True, text=True, timeout=30
    )
    line = out.stdout.strip()
    return line.startswith("ok "), line


class LedgerAndFunction(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        # Refuse the first delivery of queue ids numbered 5 mod 10, and async ids 1 mod 2.
        self.ledger = kill.Ledger(kill.Trigger(), 10, 2, Path(self.dir.name) / "ledger.log")

    def tearDown(self) -> None:
        self.ledger.close()
        self.dir.cleanup()

    def test_a_queue_batch_is_recorded_and_a_chosen_id_fails_the_whole_call_once(self) -> None:
        batch = {"Records": [{"body": f"q{i:07d}", "eventSource": "aws:sqs"} for i in range(3, 7)]}
        ok, line = call(self.ledger, batch)
        self.assertFalse(ok, line)
        self.assertIn("q0000005", line)
        self.assertEqual(self.ledger.snapshot()[0], {}, "a refused call records nothing")
        ok, line = call(self.ledger, batch)
        self.assertTrue(ok, line)
        self.assertEqual(line, 'ok {"recorded":4}')
        ok, _ = call(self.ledger, batch)
        self.assertTrue(ok)
        delivered = self.ledger.snapshot()[0]
        self.assertEqual(delivered, {f"q{i:07d}": 2 for i in range(3, 7)})
        self.assertEqual(self.ledger.injected["queue"], 1)

    def test_async_and_schedule_events_are_recorded_by_their_ids(self) -> None:
        self.assertTrue(call(self.ledger, {"id": "a0000000"})[0])
        self.assertFalse(call(self.ledger, {"id": "a0000001"})[0])
        self.assertTrue(call(self.ledger, {"id": "a0000001"})[0])
        fire = {
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event", "source": "aws.events",
            "time": "2026-11-29T21:00:00Z", "detail": {},
            "resources": ["arn:aws:events:local:000000000000:rule/killfn-schedule-1"],
        }
        self.assertTrue(call(self.ledger, fire)[0])
        delivered = self.ledger.snapshot()[0]
        self.assertEqual(
            delivered,
            {
                "a0000000": 1,
                "a0000001": 1,
                "killfn-schedule-1|2026-11-29T21:00:00Z|53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa": 1,
            },
        )
        self.assertEqual(self.ledger.request_ids, {"a0000000": {"r-1"}, "a0000001": {"r-1"}})
        self.assertEqual(
            self.ledger.schedule,
            [("killfn-schedule-1", "2026-11-29T21:00:00Z", "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa")],
        )

    def test_the_function_fails_when_the_ledger_is_gone(self) -> None:
        self.ledger.close()
        ok, line = call(self.ledger, {"id": "a0000002"})
        self.assertFalse(ok, line)
        self.ledger = kill.Ledger(kill.Trigger(), 0, 0, Path(self.dir.name) / "ledger2.log")

    def test_manifest_names_the_triggers_asked_for(self) -> None:
        both = kill.manifest("127.0.0.1:1", queue=True, schedule=True)
        self.assertIn('events = [{ queue = "kill-q", batch_size = 10 }, { schedule = "rate(1 minute)" }, ', both)
        self.assertIn('env = { LEDGER = "127.0.0.1:1" }', both)
        self.assertNotIn("events", kill.manifest("127.0.0.1:1", queue=False, schedule=False))


class Orphans(unittest.TestCase):
    def test_grandchildren_that_outlive_their_killed_parent_are_found_and_ended(self) -> None:
        parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
        deadline = kill.time.monotonic() + 10
        while len(kill.descendants(parent.pid)) < 2 and kill.time.monotonic() < deadline:
            kill.time.sleep(0.01)
        before = kill.descendants(parent.pid)
        self.assertEqual(len(before), 2, before)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        lingering = kill.linger(before, 0.2)
        self.assertEqual(lingering, before)
        self.assertTrue(all("sleep 60" in kill.cmdline(pid) for pid in lingering))
        kill.end(lingering)
        deadline = kill.time.monotonic() + 10
        while kill.still_alive(before) and kill.time.monotonic() < deadline:
            kill.time.sleep(0.01)
        self.assertEqual(kill.still_alive(before), {}, "the orphans were ended")


class Report(unittest.TestCase):
    def test_the_kill_section_is_replaced_in_place_or_appended(self) -> None:
        from shoalbench.killreport import splice

        self.assertEqual(splice("# B\n\n## a\nx\n", "## kill test\nnew\n"), "# B\n\n## a\nx\n\n## kill test\nnew\n")
        self.assertEqual(
            splice("# B\n\n## kill test\nold\n\n## z\ny\n", "## kill test\nnew\n"),
            "# B\n\n## kill test\nnew\n\n## z\ny\n",
        )
        self.assertEqual(splice("# B\n\n## kill test\nold\n", "## kill test\nnew\n"), "# B\n\n## kill test\nnew\n")

    def test_the_cluster_section_leaves_the_single_node_one_alone(self) -> None:
        from shoalbench.killreport import CLUSTER_HEADING, splice

        both = splice("# B\n\n## kill test\nold\n", f"{CLUSTER_HEADING}\none\n", CLUSTER_HEADING)
        self.assertEqual(both, f"# B\n\n## kill test\nold\n\n{CLUSTER_HEADING}\none\n")
        self.assertEqual(
            splice(both, f"{CLUSTER_HEADING}\ntwo\n", CLUSTER_HEADING),
            f"# B\n\n## kill test\nold\n\n{CLUSTER_HEADING}\ntwo\n",
        )
        self.assertEqual(
            splice(both, "## kill test\nnew\n"), f"# B\n\n## kill test\nnew\n\n{CLUSTER_HEADING}\none\n"
        )


if __name__ == "__main__":
    unittest.main()
