"""The shared vocabulary every layer uses: threat models, specs and the allowlist, statistics,
batching, resumable state and atomic writes, runtime switches, distributed helpers, safe loading.
Imports nothing above it and no Lightning; torch only where a tensor is handled."""
