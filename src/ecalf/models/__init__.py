"""Every model is imported here explicitly; importing registers it (see :mod:`ecalf.registry`)."""
