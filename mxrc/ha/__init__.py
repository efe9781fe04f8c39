"""Leadership: leases with fencing tokens behind one backend interface."""
