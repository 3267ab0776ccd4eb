"""The fault record: run every fault test and write docs/reliability.md."""
