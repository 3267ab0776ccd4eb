"""Names PetSage puts on the wire that more than one of its programs reads.

The management listener marks its 404s with a header, so that a program sent there
instead of the public port (``petsage smoke``) can say so rather than fail oddly. The
service writes it and the ``petsage`` command reads it; the command must not load the
application to know its name.
"""

LISTENER_HEADER = "PetSage-Listener"
MANAGEMENT_LISTENER = "management"
