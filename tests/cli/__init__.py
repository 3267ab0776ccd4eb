"""The tests of ``petsage.cli``: the ``petsage`` command's parts, in process."""
