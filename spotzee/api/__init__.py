"""FastAPI app: ingestion (Segment spec), admin routers, health and metrics."""
