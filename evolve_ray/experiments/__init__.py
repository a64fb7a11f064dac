"""The paper experiment: `reproduce`, the comparison it reports, and the warm-start build."""
