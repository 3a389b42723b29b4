"""The two-node broker conformance suite (:class:`MultiNodeBrokerConformance`), shipped in
:mod:`clarion.testing.broker`; Clarion's own backends subclass it from here."""

from clarion.testing.broker import MultiNodeBrokerConformance, Recorder, new_id

__all__ = ["MultiNodeBrokerConformance", "Recorder", "new_id"]
