"""The tests of ``petsage.instance``: the memory a master shares with its workers."""
