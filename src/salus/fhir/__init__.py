"""The FHIR R4 model: definitions, validation, FHIRPath, OperationOutcome errors, references."""
