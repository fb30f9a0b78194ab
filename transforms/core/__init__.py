"""The ground floor: plain accumulators, hash splits, records as they enter (JSON, checks), config files."""
