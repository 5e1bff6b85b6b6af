"""Looking at a net without running it: the one net walker (trace), the summary table and the
memory model."""
