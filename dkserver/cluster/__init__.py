"""Several dkserver nodes as one server: PostgreSQL holds the data, Redis
what is live (who is connected where, live delivery between nodes, limits
that must hold cluster-wide).  Nothing here runs without ``--redis``."""
