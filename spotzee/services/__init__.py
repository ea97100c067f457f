"""Application services the API calls: segments, lists, journeys, templates, providers, tenancy,
the scheduler and journey stats; ``container.Services`` opens and wires them."""
