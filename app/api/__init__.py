"""HTTP routes that are not transports: publishing, tickets, operators."""
