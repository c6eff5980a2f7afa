"""The HTTP application (aiohttp): app factory, API, CORS, static assets, the shared HTTP /
WebSocket viewer and transfer framings. Protocols add their routes; this package imports none."""
