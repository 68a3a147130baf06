"""Black-box fault cases against the real servers: the edge as a process."""
