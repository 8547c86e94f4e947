"""textok: language-guided image tokenization (TexTok, Zha et al., CVPR 2025) and its data pipeline.

    textok --help                 # the CLI (also: python -m textok --help)
    import textok.pipeline        # Apache Beam stages: caption -> encode -> shards + pools
    import textok.trainer         # PyTorch: TexTok, losses, DiT, sampling, metrics
    import textok.schemas         # the Parquet contract between the two
"""
__version__ = "0.2.0"
