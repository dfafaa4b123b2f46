"""Fault injection: the SDK against a misbehaving data plane, every message accounted for."""
