"""Orders: customers order offerings; partners fulfil their parts; the saga decides."""
