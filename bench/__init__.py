"""PetSage's load benchmark: PetSage beside bare WSGI, bare Flask and FastAPI baselines.

Run it from the repository root with ``bash bench/run`` (``--quick`` for the short,
end-to-end check CI runs); results go to ``bench/results/``.
"""
