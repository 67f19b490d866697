"""Security and compliance: SMART on FHIR authorization, scopes and roles, consent, audit, encryption.

A capability beside the service (see docs/architecture.md): the doors turn a
request's credentials into a ``Principal``; the service asks ``policy`` what
that principal may do and writes the audit trail in the same transaction as
the change it records.
"""
