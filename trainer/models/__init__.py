"""One file per architecture: TexTok (tokenizer + detokenizer), the StyleGAN discriminator, DiT and its diffusion process."""
