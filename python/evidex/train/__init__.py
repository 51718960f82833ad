"""Training: RL of a reasoner against Embed-RL rewards (`rl`); embedder training is issue #7."""
