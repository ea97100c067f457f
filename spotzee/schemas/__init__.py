"""The single contract: pydantic models for every record, row and API body."""
