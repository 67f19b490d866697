"""Salus: a FHIR-native digital health platform."""

__version__ = "0.1.0"
