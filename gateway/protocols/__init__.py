"""One folder per protocol of the matrix: its sessions, its ingest and egress adapters, its HTTP
routes. A protocol imports the hub, the planner, the transcoder and the wire formats, never
another protocol; ``gateway.app`` wires them."""
