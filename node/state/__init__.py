"""What a site keeps between rounds and restarts: atomic checkpoints, links and their
backlogs, membership, the privacy ledger, and secrets that never come from a config."""
