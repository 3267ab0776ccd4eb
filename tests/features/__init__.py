"""The tests of the features tools/new-feature made, one module per feature."""
