"""The subscription core: transport-agnostic sessions, fan-out and publishing rules."""
