"""textok trainers (PyTorch): shard loader, TexTok tokenizer, losses, DiT, sampling, metrics."""
