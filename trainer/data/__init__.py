"""Reading prepared data: the shard loader (images + caption embeddings) and the latent-token files for the DiT."""
