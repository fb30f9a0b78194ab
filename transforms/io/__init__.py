"""The ground floor: sources, sinks, dead letters and the guarded record boundary, UDFs, progress lines,
file readers."""
