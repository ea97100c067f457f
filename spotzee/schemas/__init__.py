"""The single contract: pydantic models at the edges, msgspec Structs for records, table values and rows."""
