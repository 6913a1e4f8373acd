"""steer's engine: backbone adapters, probes, the guided DDIM loop."""
