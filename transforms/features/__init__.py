"""Feature preprocessing: the spec, cleansing, statistics, skew, the artifacts a run writes, TensorBoard."""
