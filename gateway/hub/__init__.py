"""The live streams: one ``Stream`` per key, its GOP cache and sinks (``stream``), the session
service every protocol starts publishers and viewers through (``sessions``), and the
serialize-once fan-out to bounded viewers (``output``, ``fanout``)."""
