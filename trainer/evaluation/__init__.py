"""Measuring and generating: metrics, tokenizer and generation evaluation, sampling, image grids, efficiency."""
