"""Every model is imported here explicitly; importing registers it (see :mod:`ecalf.registry`)."""

from ecalf.models import calf, dlinear, itransformer, linear, naive, patchtst  # noqa: F401
