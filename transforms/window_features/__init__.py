"""Window-aggregation features: the window spec and the aggregation per entity and window."""
