"""The broker conformance suite, shipped as :mod:`clarion.testing.broker` for third-party
backends; this module keeps ``from broker_conformance import …`` working in Clarion's tests."""

from clarion.testing.broker import *  # noqa: F403
from clarion.testing.broker import __all__  # noqa: F401
