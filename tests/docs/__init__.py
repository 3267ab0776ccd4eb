"""The documentation: README.md and docs/, held to the code, the files and the build.

The settings reference is generated (``python -m tests.docs.settings_page``); every
other page is written by hand and checked by the tests here: its links and paths, its
commands (run by a test or marked illustrative), and the facts that once drifted.
"""
