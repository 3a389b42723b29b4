"""Test kits for code that plugs into Clarion (a broker backend, for now).

:mod:`clarion.testing.broker` holds the broker conformance suites. Importing it needs pytest
and pytest-asyncio, which Clarion does not need at run time: install the ``test`` extra, or
those two packages, in the environment that runs your tests.
"""
