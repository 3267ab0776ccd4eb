"""The revisions of PetSage's schema, each chained on the one before."""
