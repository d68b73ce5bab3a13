"""Every model is imported here explicitly; importing registers it (see :mod:`ecalf.registry`)."""

from ecalf.models import calf, dlinear, itransformer, naive, patchtst  # noqa: F401
