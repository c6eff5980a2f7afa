"""``rtmp`` and ``miniprogram``: RTMP publish and play (``server``), HTTP-FLV / WS-FLV
(``routes``), FLV-tag ingest (``ingest``) and the RTMP / FLV outputs made once per stream."""
