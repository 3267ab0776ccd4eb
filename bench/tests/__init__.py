"""Tests of the benchmark's own logic (parsing, ratios); none of them time anything."""
