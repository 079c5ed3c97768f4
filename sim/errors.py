"""Exception tree of the simulator package.

SimError (a murmur.errors.MurmurError)
└── DataError   a dataset, CSV column, partition or site column that cannot be used
Both derive from ValueError: they are bad user input, reported in one line with exit 2.
"""

from murmur.errors import MurmurError


class SimError(MurmurError, ValueError):
    """Base class for every error raised by the simulator package."""


class DataError(SimError):
    """The dataset or its partition cannot be used as requested; the message says why."""
