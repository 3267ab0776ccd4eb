"""A PetSage instance: one gunicorn master and its workers.

- ``directory``: its identity on the host and the directory other processes find it
  by (its lock, its record, its metrics files);
- ``memory``: the memory its master shares with its workers (drain state, each
  worker's heartbeat and lease, the health snapshot).

Under the application layer: health and metrics use it; it uses neither.
"""
