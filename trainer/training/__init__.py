"""The training loops and what they are built from: distribution, optimiser/EMA, NaN guards, config, logging, checkpoints, losses."""
