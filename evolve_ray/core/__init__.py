"""Pure algorithm core: losses, log-probs, prompt building, planning, selection, metrics."""
