"""One Murmur site: model vectors, compressors, local training, the gossip protocol, CLI."""
