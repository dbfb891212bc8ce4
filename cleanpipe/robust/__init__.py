"""Training methods that resist label noise: each a loss/selection step the engine runs."""
