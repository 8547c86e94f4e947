"""textok data pipeline (Apache Beam): images -> captions -> T5 embeddings -> shards + pools."""
