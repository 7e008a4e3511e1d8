"""Tests of the crash loop's checker (standard library only): python3 -m unittest bench/test_crash_loop.py"""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crash_loop as C  # noqa: E402


def node(model, doubt=None):
    n = C.Node("n0", "token", random.Random(1))
    n.model = dict(model)
    n.doubt = doubt
    return n


class Check(unittest.TestCase):
    def test_what_was_acknowledged_must_be_there(self):
        self.assertEqual(node({"a": (True, 2), "b": (False, 1)}).check({"a": 2}), (None, None))
        err, _ = node({"a": (True, 2)}).check({})
        self.assertIn("acknowledged", err)
        err, _ = node({"a": (True, 2)}).check({"a": 1})
        self.assertIn("acknowledged", err)
        err, _ = node({"b": (False, 1)}).check({"b": 1})
        self.assertIn("acknowledged", err, "a stopped container came back")
        err, _ = node({}).check({"x": 1})
        self.assertIn("acknowledged", err, "a container nobody wrote")

    def test_an_in_doubt_write_is_all_or_nothing(self):
        # A replace that stops a and starts b: either both or neither.
        doubt = ({"a": (True, 1), "b": None}, {"a": (False, 1), "b": (True, 1)})
        n = node({"a": (True, 1)}, doubt)
        self.assertEqual(n.check({"b": 1}), (None, True))
        self.assertEqual(n.model, {"a": (False, 1), "b": (True, 1)})
        self.assertEqual(node({"a": (True, 1)}, doubt).check({"a": 1}), (None, False))
        err, _ = node({"a": (True, 1)}, doubt).check({"a": 1, "b": 1})
        self.assertIn("in part", err)
        err, _ = node({"a": (True, 1)}, doubt).check({"a": 5})
        self.assertIn("neither", err)


if __name__ == "__main__":
    unittest.main()
