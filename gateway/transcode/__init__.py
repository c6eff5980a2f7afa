"""Transcoding: PyAV codec steps (run in worker threads) and shared, on-demand variants."""
